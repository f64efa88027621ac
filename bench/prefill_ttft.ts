// Time to first token of a long prompt on an idle engine (or of --at-once prompts sent together), and
// how many steps their prefill takes, under several --max-chunk-tokens settings side by side in one
// process (same adapter, same load: one engine per setting, rounds of requests taking turns over them).
// `--max-chunk-tokens 31` is the engine before multi-item prefill steps: one 31-token chunk per step.
//
//   deno run -A bench/prefill_ttft.ts [--model ../shared/models/stories260K/stories260K.gguf] [--prompt-len 450]
//     [--caps 31,none] [--repeats 5] [--at-once 1] [--max-batch-tokens 2048] [--max-model-len 512]
//     [--dtype auto] [--json FILE]
//
// Prompts are random token ids (seeded), so any model works. Each engine gets one warmup round, then
// `repeats` rounds of `at-once` requests; TTFT is the engine's own (arrival to the first token read
// back). Graph capture is off: it replays decode steps only.

import { parseArgs } from "node:util";
import { startLocalEngine } from "../engine/local_engine.ts";
import { loadModel } from "../engine/model/load.ts";
import { neutralSamplingParams } from "../engine/protocol.ts";

const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: "../shared/models/stories260K/stories260K.gguf" },
    "prompt-len": { type: "string", default: "450" },
    caps: { type: "string", default: "31,none" },
    repeats: { type: "string", default: "5" },
    "at-once": { type: "string", default: "1" },
    "max-batch-tokens": { type: "string", default: "2048" },
    "max-model-len": { type: "string" },
    dtype: { type: "string", default: "auto" },
    json: { type: "string" },
  },
});
const promptLen = Number(args["prompt-len"]),
  repeats = Number(args.repeats),
  atOnce = Number(args["at-once"]);
const model = await loadModel(args.model!);
const V = model.config.vocabSize;
let state = 12345;
const nextId = () => (state = (state * 1103515245 + 12345) % 2 ** 31) % V;
const rounds = Array.from(
  { length: repeats + 1 },
  () => Array.from({ length: atOnce }, () => Array.from({ length: promptLen }, nextId)),
);

interface Row {
  cap: string;
  ttftMs: number[];
  prefillSteps: number;
  /** Prefill steps' time, dispatch to results processed, summed per round (pipelined steps overlap). */
  prefillStepMs: number[];
}
// Every setting's engine at once, requests round-robin over them: a busy machine weighs on all alike.
const engines = [];
for (const cap of args.caps!.split(",")) {
  const h = await startLocalEngine(model, {
    dtype: args.dtype as "auto" | "f16" | "f32",
    maxBatchTokens: Number(args["max-batch-tokens"]),
    maxChunkTokens: cap === "none" ? undefined : Number(cap),
    maxModelLen: args["max-model-len"] ? Number(args["max-model-len"]) : undefined,
    graphCache: null,
    graphCapture: false,
  });
  const row: Row = { cap, ttftMs: [], prefillSteps: 0, prefillStepMs: [] };
  engines.push({ h, row });
}
try {
  for (const [i, round] of rounds.entries()) {
    for (const { h, row } of engines) {
      let steps = 0, ms = 0;
      h.engine.onStep = (s) => {
        if (s.prefillTokens === 0) return;
        steps++;
        ms += s.stepMs;
      };
      const p = neutralSamplingParams({ maxTokens: 4, ignoreEos: true });
      const all = await Promise.all(round.map((prompt, j) => h.generate(`r${i}-${j}`, prompt, p)));
      if (i === 0) continue; // round 0 warms the shaders up
      for (const events of all) {
        const done = events.at(-1)!;
        if (done.type !== "done") throw new Error(`request failed: ${JSON.stringify(done)}`);
        row.ttftMs.push(done.timeToFirstToken * 1000);
      }
      row.prefillStepMs.push(ms);
      row.prefillSteps = steps;
    }
  }
} finally {
  for (const { h } of engines) await h.close();
}
const rows = engines.map((e) => e.row);
const adapter = engines[0]?.h.runner.adapterName;

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
console.log(
  `${args.model}, prompts of ${promptLen} tokens, ${repeats} rounds of ${atOnce} per setting, ` +
    `--max-batch-tokens ${args["max-batch-tokens"]}, on ${adapter}`,
);
console.log(
  "--max-chunk-tokens | prefill steps | TTFT mean / median ms | min..max ms | prefill steps' time, mean ms",
);
for (const r of rows) {
  const ttft = `${mean(r.ttftMs).toFixed(0)} / ${median(r.ttftMs).toFixed(0)}`;
  const range = `${Math.min(...r.ttftMs).toFixed(0)}..${Math.max(...r.ttftMs).toFixed(0)}`;
  console.log(
    `${r.cap.padEnd(18)} | ${String(r.prefillSteps).padEnd(13)} | ${ttft.padEnd(21)} | ${
      range.padEnd(11)
    } | ` +
      mean(r.prefillStepMs).toFixed(0),
  );
}
if (args.json) await Deno.writeTextFile(args.json, JSON.stringify({ args, adapter, rows }, null, 2));
