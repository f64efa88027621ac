// ragtime: parse flags, start HTTP at once (/health says 503 while loading), load the engine, serve.

import { createEngineClient } from "./engine/client.ts";
import type { EngineClient } from "./engine/protocol.ts";
import { createApp } from "./http/app.ts";
import { Metrics } from "./http/metrics.ts";
import { type Config, ConfigError, engineSettings, HelpRequested, parseConfig } from "./server/config.ts";
import { serve } from "./server/serve.ts";

/** Where the project's own default model will live (issue: default model); used when --model is absent. */
const DEFAULT_MODEL = new URL("./models/ragtime-mini", import.meta.url).pathname;

function parseOrExit(): Config {
  try {
    return parseConfig(Deno.args, Deno.env);
  } catch (e) {
    if (e instanceof HelpRequested) {
      console.log(e.message);
      Deno.exit(0);
    }
    if (e instanceof ConfigError) {
      console.error(`ragtime: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}

function modelPathOrExit(config: Config): string {
  if (config.model) return config.model;
  try {
    Deno.statSync(`${DEFAULT_MODEL}/config.json`);
    return DEFAULT_MODEL;
  } catch {
    console.error(
      "ragtime: --model: no model given and the built-in default model is not in this checkout " +
        `(${DEFAULT_MODEL}); pass --model PATH (a .gguf file or a Hugging Face folder) or set RAGTIME_MODEL`,
    );
    Deno.exit(2);
  }
}

/**
 * Progress on a terminal: one rewritten line; elsewhere a few plain lines, each phase with the time
 * since startup at which it began (where start time goes: docs/BENCHMARKS.md).
 */
function progressPrinter(t0: number) {
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  let last = "";
  return (m: { phase: string; done?: number; total?: number }) => {
    const mb = (n: number) => (n / 2 ** 20).toFixed(1);
    const line = m.phase === "read" && m.total
      ? `loading: read ${mb(m.done ?? 0)} / ${mb(m.total)} MiB`
      : `loading: ${m.phase}`;
    if (tty) Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${line}`));
    else if (m.phase !== last) {
      console.error(`${line} (at ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
    last = m.phase;
  };
}

const config = parseOrExit();
const modelPath = modelPathOrExit(config);
const log = (line: string) => console.error(line);

let engine: EngineClient | null = null;
let draining = false;
const metrics = new Metrics();
const app = createApp({ engine: () => engine, config, draining: () => draining, metrics });
const server = serve({
  app,
  host: config.host,
  port: config.port,
  shutdownTimeoutS: config.shutdownTimeoutS,
  maxRequests: config.maxConnections,
  front: config.front
    ? {
      maxConnections: config.maxConnections,
      headerTimeoutS: config.headerTimeoutS,
      bodyTimeoutS: config.bodyTimeoutS,
      idleTimeoutS: config.idleTimeoutS,
      sendTimeoutS: config.sendTimeoutS,
    }
    : undefined,
  onDrainStart: () => {
    draining = true;
    log("ragtime: draining (new requests get 503)");
  },
  onListen: (a) => log(`ragtime: listening on http://${a.hostname}:${a.port} (loading ${modelPath})`),
});

metrics.connections = server.connections;

const t0 = performance.now();
const progress = progressPrinter(t0);
try {
  const client = await createEngineClient({
    modelPath,
    settings: engineSettings(config),
    servedName: config.servedModelName,
    log,
    progress,
  });
  if (Deno.stderr.isTerminal()) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
  const r = client.ready;
  log(
    `ragtime: model ${client.info.name} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s ` +
      `(dtype ${r.dtype}, ${r.nodesPerLayer} graph nodes per layer, ${r.kvBlocks} KV blocks of ${r.blockSize}, ` +
      `context ${r.maxContext}, adapter: ${r.adapter}, batching ${config.batching}, long queries ${r.longQueries})`,
  );
  const gen = Object.entries(client.info.generation ?? {});
  if (gen.length > 0) {
    // As vLLM warns: the model's own defaults, not OpenAI's, apply where a request leaves a field out.
    const field: Record<string, string> = {
      topP: "top_p",
      topK: "top_k",
      minP: "min_p",
      repetitionPenalty: "repetition_penalty",
      maxNewTokens: "max_tokens",
    };
    log(
      `ragtime: sampling defaults from generation_config.json for fields a request leaves out: ` +
        gen.map(([k, v]) => `${field[k] ?? k}=${v}`).join(", "),
    );
  }
  if (draining) await client.close();
  else engine = client;
} catch (e) {
  const msg = (e as Error).message;
  // An unusable adapter is not the model's fault (engine/webgpu_check.ts writes these).
  console.error(
    msg.startsWith("WebGPU:") ? `\nragtime: ${msg}` : `\nragtime: failed to load ${modelPath}: ${msg}`,
  );
  await server.drain();
  Deno.exit(1);
}

await server.finished;
const mem = Deno.memoryUsage();
const mib = (b: number) => (b / 2 ** 20).toFixed(0);
log(
  `ragtime: stopped (rss ${mib(mem.rss)} MiB, V8 heap ${mib(mem.heapUsed)} of ${
    mib(mem.heapTotal)
  } MiB used)`,
);
await engine?.close(true);
Deno.exit(0);
