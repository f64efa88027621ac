// What prefix caching costs when nothing is shared: one engine with --prefix-caching on and one
// with it off in one process (same adapter, same load), taking turns over rounds of the same
// random-prompt requests (no two prompts share a full block), each round timed end to end.
//
//   deno run -A bench/prefix_cost.ts [--model ../shared/models/stories260K/stories260K.gguf]
//     [--requests 48] [--rounds 4] [--max-model-len 512] [--json FILE]
//
// Prompts 16-128 tokens, outputs 16-64 (EOS ignored), greedy, as the random workload of
// docs/BENCHMARKS.md's prefix-caching section. Graph capture stays on, as in the server.

import { parseArgs } from "node:util";
import { startLocalEngine } from "../engine/local_engine.ts";
import { loadModel } from "../engine/model/load.ts";
import { neutralSamplingParams } from "../engine/protocol.ts";

const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: "../shared/models/stories260K/stories260K.gguf" },
    requests: { type: "string", default: "48" },
    rounds: { type: "string", default: "4" },
    "max-model-len": { type: "string", default: "512" },
    json: { type: "string" },
  },
});
const model = await loadModel(args.model!);
const V = model.config.vocabSize;
let state = 7;
const rand = () => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
const between = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
const rounds = Number(args.rounds), n = Number(args.requests);
// Round 0 warms up; every round's requests are new prompts (a cache hit would need a repeat).
const work = Array.from({ length: rounds + 1 }, () =>
  Array.from({ length: n }, () => ({
    prompt: Array.from({ length: between(16, 128) }, () => 3 + Math.floor(rand() * (V - 3))),
    out: between(16, 64),
  })));

const engines: { on: boolean; h: Awaited<ReturnType<typeof startLocalEngine>>; tps: number[] }[] = [];
for (const on of [true, false]) {
  const h = await startLocalEngine(model, {
    maxModelLen: Number(args["max-model-len"]),
    maxSeqs: 16,
    graphCache: null,
    prefixCaching: on,
  });
  engines.push({ on, h, tps: [] });
}
try {
  for (const [i, round] of work.entries()) {
    // ABBA order: a load that drifts during a pair weighs on both settings alike.
    const order = i % 2 === 0 ? engines : [...engines].reverse();
    for (const e of order) {
      const t0 = performance.now();
      const all = await Promise.all(
        round.map((r, j) =>
          e.h.generate(`r${i}-${j}`, r.prompt, neutralSamplingParams({ maxTokens: r.out, ignoreEos: true }))
        ),
      );
      const s = (performance.now() - t0) / 1000;
      for (const events of all) {
        if (events.at(-1)?.type !== "done") {
          throw new Error(`request failed: ${JSON.stringify(events.at(-1))}`);
        }
      }
      if (i > 0) e.tps.push(round.reduce((a, r) => a + r.out, 0) / s);
    }
  }
} finally {
  for (const e of engines) await e.h.close();
}
const [on, off] = engines;
const ratios = on.tps.map((x, k) => x / off.tps[k]);
const gmean = Math.exp(ratios.reduce((a, r) => a + Math.log(r), 0) / ratios.length);
console.log(
  `${args.model}, ${n} requests a round, ${rounds} rounds per setting, on ${on.h.runner.adapterName}`,
);
console.log(`output tok/s, caching on:  ${on.tps.map((x) => x.toFixed(1)).join(" ")}`);
console.log(`output tok/s, caching off: ${off.tps.map((x) => x.toFixed(1)).join(" ")}`);
console.log(
  `on / off per round: ${ratios.map((r) => r.toFixed(3)).join(" ")}; geometric mean ${gmean.toFixed(3)}`,
);
if (args.json) {
  await Deno.writeTextFile(args.json, JSON.stringify({ args, on: on.tps, off: off.tps, ratios, gmean }));
}
