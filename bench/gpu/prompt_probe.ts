// What a prompt part on the long-query kernel (long-query mode "prompts") costs, replayed from a
// captured prompt session (engine/captured_steps.ts) or run uncaptured: one sequence's q new tokens
// over `past` cached ones, timed serially (dispatch, then read; the GPU idle before each), so that a
// step's wall time is its dispatch plus the GPU's time for it. Every runner set is measured case by
// case in turn, so that a drift in the machine's load falls on all alike.
//
//   deno run -A bench/gpu/prompt_probe.ts [--model PATH] [--cases 150:900,...] [--rows "128,512;256,512"]
//     [--kv-caps 256,1024] [--context 2048] [--steps 10] [--kv-cache-mb 2048]
//
// --rows: runner variants separated by ";", each a list of captured prompt rows (the server's
//   --graph-capture-prompt-rows); every case runs captured on each and uncaptured on the first.
// Without --model: a SmolLM2-135M-shaped model with random weights (bench/gpu/probe_model.ts).
import { parseArgs } from "node:util";
import { ModelRunner, type RunnerOptions, type StepInputs } from "../../engine/model_runner.ts";
import { singleSequenceStep } from "../../engine/step_inputs.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { smollm2ShapedModel } from "./probe_model.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    cases: { type: "string", default: "30:900,60:900,150:200,150:900,300:900,500:900" },
    rows: { type: "string", default: "128,512" },
    "kv-caps": { type: "string", default: "256,1024" },
    context: { type: "string", default: "2048" },
    steps: { type: "string", default: "10" },
    "kv-cache-mb": { type: "string", default: "2048" },
  },
});
const list = (s: string) => s.split(",").filter(Boolean).map(Number);
const N = Number(a.steps);
let model: LoadedModel = a.model ? await loadModel(a.model) : smollm2ShapedModel();
const context = Math.min(model.config.maxContext, Number(a.context));
model = { ...model, config: { ...model.config, maxContext: context } };
const cases = a.cases!.split(",").map((c) => c.split(":").map(Number) as [number, number]);
const variants = a.rows!.split(";").map(list);
console.log(
  `model ${a.model ?? "SmolLM2-135M-shaped (random)"}: ${model.config.numLayers} layers, hidden ` +
    `${model.config.hiddenSize}; context ${context}; kv caps ${a["kv-caps"]}; ${N} timed steps a case`,
);

const base: RunnerOptions = {
  dtype: "f16",
  blockSize: 16,
  kvCacheMb: Number(a["kv-cache-mb"]),
  cacheDir: Deno.env.get("GRAPH_CACHE") ?? null,
  longQueries: "prompts",
  log: console.log,
};
const runners: ModelRunner[] = [];
for (const promptRows of variants) {
  const t0 = performance.now();
  const r = await ModelRunner.create(model, {
    ...base,
    capture: { batchSizes: [16], kvCaps: list(a["kv-caps"]!), promptRows, eager: true },
  });
  await r.warmup();
  console.log(
    `runner (prompt rows ${promptRows}) ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  runners.push(r);
}

/** One sequence's q prompt tokens over `past` cached ones, on the long-query kernel. */
function prompt(r: ModelRunner, q: number, past: number): StepInputs {
  const blocks = Int32Array.from({ length: Math.ceil((past + q) / r.blockSize) }, (_, i) => 1 + i);
  return singleSequenceStep(Int32Array.from({ length: q }, (_, i) => (i * 7919) % 1000), past, blocks, 0);
}

const pct = (v: number[], p: number) =>
  [...v].sort((x, y) => x - y)[Math.min(v.length - 1, Math.floor(p * v.length))];

interface Variant {
  label: string;
  r: ModelRunner;
  captured: boolean;
}
const vs: Variant[] = [
  { label: `uncaptured`, r: runners[0], captured: false },
  ...runners.map((r, i) => ({ label: `captured, rows ${variants[i]}`, r, captured: true })),
];
for (const [q, past] of cases) {
  if (past + q > context) continue;
  const step = async (v: Variant) => {
    v.r.useCaptured = v.captured;
    const t = performance.now();
    const h = await v.r.run(prompt(v.r, q, past));
    const dispatch = performance.now() - t;
    await v.r.read(h);
    return { dispatch, wall: performance.now() - t, path: h.path };
  };
  for (let i = 0; i < 2; i++) for (const v of vs) await step(v);
  const runs = vs.map(() => ({ dispatch: [] as number[], wall: [] as number[], path: "" }));
  for (let i = 0; i < N; i++) {
    for (const [k, v] of vs.entries()) {
      const m = await step(v);
      runs[k].dispatch.push(m.dispatch);
      runs[k].wall.push(m.wall);
      runs[k].path = m.path;
    }
  }
  for (const [k, v] of vs.entries()) {
    const x = runs[k];
    console.log(
      `q=${String(q).padStart(4)} past=${String(past).padStart(4)} ${v.label.padEnd(28)} [${x.path}] ` +
        `dispatch p50 ${pct(x.dispatch, 0.5).toFixed(2)} ms, step p50 ${pct(x.wall, 0.5).toFixed(2)} ms ` +
        `(min ${Math.min(...x.wall).toFixed(2)})`,
    );
  }
}
for (const r of runners) await r.close();
