// Decode steps captured vs uncaptured (engine/captured_steps.ts): CPU time to dispatch a step and
// the step's time serial and pipelined as the engine runs it (three in flight), per batch size and
// per captured context bound; and what feeding the weights as graph inputs costs an uncaptured step.
// "thread CPU" is the calling thread's CPU time in run() (Linux); "wall" includes any wait on the GPU.
//
//   deno run -A bench/gpu/capture_probe.ts [--model PATH] [--dtype f16|f32] [--batches 1,64,256]
//     [--kv-caps 256] [--context 1024] [--past 200] [--steps 20] [--kv-cache-mb 2048] [--no-feed]
//     [--split LIST]
//
// Without --model: a SmolLM2-135M-shaped model with random weights (bench/gpu/step_probe.ts's).
// Three runners, alive together and measured step by step in turn: (1) capture with the context
// limit as the only bound, which also runs every batch uncaptured; (2) capture with --kv-caps as
// bounds (a step of `past` tokens uses the smallest that fits); (3) unless --no-feed, weights as
// initializers, uncaptured: against (1)'s uncaptured steps, the CPU cost of feeding the weights as
// graph inputs (one GPU tensor each) in every run.
// --split 1,8: runner (1) once per matmul split-K factor (the engine's --matmul-split-k; default its
// default), each measured captured and uncaptured beside the others; (2) and (3) use the first.
// GRAPH_CACHE=DIR caches the built graphs between runs.
import { parseArgs } from "node:util";
import { ModelRunner, type RunnerOptions, type StepInputs } from "../../engine/model_runner.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { ENGINE_DEFAULTS } from "../../engine/protocol.ts";
import { smollm2ShapedModel } from "./probe_model.ts";
import { attentionKernelsReplaced } from "../../engine/attention_kernel.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    dtype: { type: "string", default: "f16" },
    batches: { type: "string", default: "1,64,256" },
    "kv-caps": { type: "string", default: "256" },
    context: { type: "string", default: "1024" },
    past: { type: "string", default: "200" },
    steps: { type: "string", default: "20" },
    "kv-cache-mb": { type: "string", default: "2048" },
    "no-feed": { type: "boolean", default: false },
    split: { type: "string", default: String(ENGINE_DEFAULTS.matmulSplitK) },
  },
});
const list = (s: string) => s.split(",").filter(Boolean).map(Number);
const batches = list(a.batches!), shortCaps = list(a["kv-caps"]!), splits = list(a.split!);
if (!splits.length || splits.some((x) => !Number.isInteger(x) || x < 1)) {
  throw new Error("--split: positive integers");
}
const dtype = a.dtype as "f16" | "f32", N = Number(a.steps), past = Number(a.past);

let model: LoadedModel = a.model ? await loadModel(a.model) : smollm2ShapedModel();
const context = Math.min(model.config.maxContext, Number(a.context));
model = { ...model, config: { ...model.config, maxContext: context } };
if (past + 1 > context) throw new Error(`--past ${past} does not fit --context ${context}`);
console.log(
  `model ${a.model ?? "SmolLM2-135M-shaped (random)"}: ${model.config.numLayers} layers, hidden ` +
    `${model.config.hiddenSize}, vocab ${model.config.vocabSize}; dtype ${dtype}; context ${context}; ` +
    `decode steps at past ${past}; ${N} timed steps per case; matmul split-K ${splits.join(", ")}`,
);

const base: RunnerOptions = {
  dtype,
  blockSize: 16,
  kvCacheMb: Number(a["kv-cache-mb"]),
  cacheDir: Deno.env.get("GRAPH_CACHE") ?? null,
  maxSeqs: Math.max(...batches),
  splitK: splits[0],
  log: console.log,
};

async function runner(opts: Partial<RunnerOptions>): Promise<ModelRunner> {
  const t0 = performance.now();
  const r = await ModelRunner.create(model, { ...base, ...opts });
  await r.warmup();
  console.log(
    `runner ready (graph, sessions, warmup, capture) in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return r;
}

/** B decode rows at `past`, each fed the previous step's id of its row on the GPU. */
function decode(r: ModelRunner, B: number): StepInputs {
  const per = Math.ceil((past + 1) / r.blockSize);
  const bt = Int32Array.from({ length: B * per }, (_, i) => i % r.numBlocks);
  return {
    inputIds: new Int32Array(B),
    idSrc: Int32Array.from({ length: B }, (_, b) => b),
    cuSeqlens: Int32Array.from({ length: B + 1 }, (_, i) => i),
    pastSeqlens: new Int32Array(B).fill(past),
    blockTable: bt,
    maxBlocks: per,
    sampleRows: Int32Array.from({ length: B }, (_, i) => i),
    sampleU: new Float32Array(B).fill(-1),
    invTemp: new Float32Array(B).fill(1),
    sampleFilters: new Float32Array(3 * B).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits: false,
  };
}

/**
 * CPU time of the calling thread in ms (Linux schedstat): on a software adapter the GPU's work runs
 * on the adapter's own threads, so this is the dispatch's CPU cost alone. NaN elsewhere.
 */
function threadCpuMs(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]) / 1e6;
  } catch {
    return NaN;
  }
}

const pct = (v: number[], p: number) =>
  [...v].sort((x, y) => x - y)[Math.min(v.length - 1, Math.floor(p * v.length))];

interface Case {
  label: string;
  r: ModelRunner;
  captured: boolean;
}

/**
 * Serial steps (dispatch, then read) of every case in turn, so that a drift in the machine's load
 * falls on all alike; then each case pipelined as the engine runs it (three steps in flight).
 */
async function measure(B: number, cases: Case[]) {
  const inputs = cases.map((c) => decode(c.r, B));
  const step = async (k: number) => {
    cases[k].r.useCaptured = cases[k].captured;
    const t = performance.now(), c = threadCpuMs();
    const h = await cases[k].r.run(inputs[k]);
    const cpu = threadCpuMs() - c, wall = performance.now() - t;
    await cases[k].r.read(h);
    return { cpu, wall, step: performance.now() - t, path: h.path };
  };
  for (let i = 0; i < 3; i++) for (let k = 0; k < cases.length; k++) await step(k);
  const runs = cases.map(() => ({
    cpu: [] as number[],
    wall: [] as number[],
    step: [] as number[],
    path: "",
  }));
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < cases.length; k++) {
      const m = await step(k);
      runs[k].cpu.push(m.cpu);
      runs[k].wall.push(m.wall);
      runs[k].step.push(m.step);
      runs[k].path = m.path;
    }
  }
  const cpuByCase: number[] = [];
  for (let k = 0; k < cases.length; k++) {
    const { r, label } = cases[k];
    r.useCaptured = cases[k].captured;
    const tP = performance.now();
    const flight = [];
    for (let i = 0; i < N + 2; i++) {
      flight.push(await r.run(inputs[k]));
      if (flight.length >= 2) r.startRead(flight[flight.length - 2]);
      if (flight.length >= 3) await r.read(flight.shift()!);
    }
    while (flight.length) await r.read(flight.shift()!);
    const piped = (performance.now() - tP) / (N + 2);
    const x = runs[k], mean = (v: number[]) => v.reduce((p, q) => p + q, 0) / v.length;
    cpuByCase.push(mean(x.cpu));
    console.log(
      `B=${String(B).padStart(3)} ${label.padEnd(36)} [${x.path}] dispatch: thread CPU ${
        mean(x.cpu).toFixed(2)
      } ms ` +
        `(p50 ${pct(x.cpu, 0.5).toFixed(2)}), wall ${mean(x.wall).toFixed(2)} ms; step serial ` +
        `${mean(x.step).toFixed(2)} ms (p50 ${pct(x.step, 0.5).toFixed(2)}), pipelined ${
          piped.toFixed(2)
        } ms ` +
        `(${((B * 1000) / piped).toFixed(0)} tok/s)`,
    );
  }
  return cpuByCase;
}

// All runners at once (the model's weights and a KV pool each), so that their steps interleave.
const longs: [number, ModelRunner][] = [];
for (const splitK of splits) {
  longs.push([
    splitK,
    await runner({ splitK, capture: { batchSizes: batches, kvCaps: [], promptRows: [], eager: true } }),
  ]);
}
const caps = shortCaps.filter((c) => c > past && c < context);
if (!caps.length) console.log(`no --kv-caps bound in (${past}, ${context}): short bounds skipped`);
const short = caps.length
  ? await runner({ capture: { batchSizes: batches, kvCaps: caps, promptRows: [], eager: true } })
  : null;
const inside = a["no-feed"] ? null : await runner({ capture: null, weightsAsInputs: false });
const tag = (splitK: number) => (splits.length > 1 ? `split ${splitK}, ` : "");
for (const B of batches) {
  const cases: Case[] = [
    ...longs.flatMap(([splitK, r]) => [
      { label: `${tag(splitK)}uncaptured`, r, captured: false },
      { label: `${tag(splitK)}captured, bound ${context}`, r, captured: true },
    ]),
    ...(short ? [{ label: `${tag(splits[0])}captured, bound ${caps[0]}`, r: short, captured: true }] : []),
    ...(inside ? [{ label: `${tag(splits[0])}uncaptured, weights inside`, r: inside, captured: false }] : []),
  ];
  const cpu = await measure(B, cases);
  if (inside) {
    console.log(
      `      feeding the weights as inputs: ${(cpu[0] - cpu[cpu.length - 1]).toFixed(2)} ms of CPU a step`,
    );
  }
}
for (const r of [...longs.map(([, r]) => r), short, inside]) await r?.close();
console.log(`attention decode programs given ragtime's kernel: ${attentionKernelsReplaced()}`);
