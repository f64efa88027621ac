// Time to first token of one long prompt on an idle engine, and how many steps its prefill takes,
// under several --max-chunk-tokens settings side by side in one process (same adapter, same load).
// `--max-chunk-tokens 31` is the engine before multi-item prefill steps: one 31-token chunk per step.
//
//   deno run -A bench/prefill_ttft.ts [--model ../shared/models/stories260K] [--prompt-len 450]
//     [--caps 31,none] [--repeats 5] [--max-batch-tokens 2048] [--max-model-len 512] [--dtype auto]
//     [--json FILE]
//
// The prompt is random token ids (seeded), so any model works. Each setting gets its own engine, one
// warmup request, then `repeats` requests one after another; TTFT is the engine's own (arrival to
// the first token read back).

import { parseArgs } from "node:util";
import { startLocalEngine } from "../engine/local_engine.ts";
import { loadModel } from "../engine/model/load.ts";
import { neutralSamplingParams } from "../engine/protocol.ts";

const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: "../shared/models/stories260K" },
    "prompt-len": { type: "string", default: "450" },
    caps: { type: "string", default: "31,none" },
    repeats: { type: "string", default: "5" },
    "max-batch-tokens": { type: "string", default: "2048" },
    "max-model-len": { type: "string" },
    dtype: { type: "string", default: "auto" },
    json: { type: "string" },
  },
});
const promptLen = Number(args["prompt-len"]), repeats = Number(args.repeats);
const model = await loadModel(args.model!);
const V = model.config.vocabSize;
let state = 12345;
const nextId = () => (state = (state * 1103515245 + 12345) % 2 ** 31) % V;
const prompts = Array.from({ length: repeats + 1 }, () => Array.from({ length: promptLen }, nextId));

interface Row {
  cap: string;
  ttftMs: number[];
  prefillSteps: number;
  adapter: string;
}
const rows: Row[] = [];
for (const cap of args.caps!.split(",")) {
  const h = await startLocalEngine(model, {
    dtype: args.dtype as "auto" | "f16" | "f32",
    maxBatchTokens: Number(args["max-batch-tokens"]),
    maxChunkTokens: cap === "none" ? undefined : Number(cap),
    maxModelLen: args["max-model-len"] ? Number(args["max-model-len"]) : undefined,
    graphCache: null,
    graphCaptureEager: false,
  });
  try {
    let prefillSteps = 0;
    h.engine.onStep = (s) => void (s.prefillTokens > 0 && prefillSteps++);
    const ttftMs: number[] = [];
    for (const [i, prompt] of prompts.entries()) {
      prefillSteps = 0;
      const events = await h.generate(
        `r${i}`,
        prompt,
        neutralSamplingParams({ maxTokens: 4, ignoreEos: true }),
      );
      const done = events.at(-1)!;
      if (done.type !== "done") throw new Error(`request failed: ${JSON.stringify(done)}`);
      if (i > 0) ttftMs.push(done.timeToFirstToken * 1000); // request 0 warms the shaders up
    }
    rows.push({ cap, ttftMs, prefillSteps, adapter: h.runner.adapterName });
  } finally {
    await h.close();
  }
}

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
console.log(
  `${args.model}, prompt ${promptLen} tokens, ${repeats} requests per setting, on ${rows[0]?.adapter}`,
);
console.log("--max-chunk-tokens | prefill steps | TTFT mean ms | TTFT min..max ms");
for (const r of rows) {
  const lo = Math.min(...r.ttftMs), hi = Math.max(...r.ttftMs);
  console.log(
    `${r.cap.padEnd(18)} | ${String(r.prefillSteps).padEnd(13)} | ${
      mean(r.ttftMs).toFixed(0).padEnd(12)
    } | ` +
      `${lo.toFixed(0)}..${hi.toFixed(0)}`,
  );
}
if (args.json) await Deno.writeTextFile(args.json, JSON.stringify({ args, rows }, null, 2));
