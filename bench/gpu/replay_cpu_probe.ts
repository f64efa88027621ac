// Where the CPU of one captured decode step goes (issue 11): the step's calling-thread CPU split
// into CapturedStep.run (its input writes, then onnxruntime-web's run(): JS glue plus the replay
// it encodes and submits), submits outside it, and the rest (ragtime's own code), with the WebGPU
// calls a step makes counted; as onnxruntime-web does it and with ModelRunner's two cuts.
//
//   deno run -A bench/gpu/replay_cpu_probe.ts [--model PATH] [--dtype f16] [--batch 1]
//     [--context 1024] [--past 200] [--steps 30] [--kv-cache-mb 256] [--narrow] [--split-k 8]
//
// Without --model: the SmolLM2-135M-shaped random model (probe_model.ts). Steps run serially
// (dispatch, then read), each row fed the previous step's id on the GPU, as the engine does.
// Thread CPU comes from /proc/thread-self/schedstat (Linux): on a software adapter the GPU's work
// runs on other threads, so it is the dispatching thread's own cost. GRAPH_CACHE=DIR caches graphs.
import { parseArgs } from "node:util";
import { CapturedStep } from "../../engine/captured_steps.ts";
import { ModelRunner, type StepInputs } from "../../engine/model_runner.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { randomModel } from "../../tests/helpers/random_model.ts";
import { SMOLLM2_135M_SHAPE, smollm2ShapedModel } from "./probe_model.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    dtype: { type: "string", default: "f16" },
    batch: { type: "string", default: "1" },
    context: { type: "string", default: "1024" },
    past: { type: "string", default: "200" },
    steps: { type: "string", default: "30" },
    "kv-cache-mb": { type: "string", default: "256" },
    narrow: { type: "boolean", default: false },
    "split-k": { type: "string" },
  },
});
const B = Number(a.batch), N = Number(a.steps), past = Number(a.past);
// --narrow: SmolLM2's layers, heads and vocab with narrow heads and FFN: the same graph and the
// same inputs, far less GPU work (a software adapter then runs a step in well under a second).
let model: LoadedModel = a.model
  ? await loadModel(a.model)
  : a.narrow
  ? randomModel("llama", 1, { ...SMOLLM2_135M_SHAPE, hiddenSize: 144, headDim: 16, intermediateSize: 384 })
  : smollm2ShapedModel();
const context = Math.min(model.config.maxContext, Number(a.context));
model = { ...model, config: { ...model.config, maxContext: context } };

function threadCpuMs(): number {
  return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]) / 1e6;
}

/** Thread CPU spent inside a method, and its calls, while `on`; inside run() or outside it. */
const meters: Record<string, { ms: number; calls: number }> = {};
let on = false, inRun = 0, variant = "";
function meter<T extends object>(proto: T, method: keyof T & string, label: string, timed: boolean) {
  const orig = proto[method] as unknown as (...args: unknown[]) => unknown;
  const isRun = label === "CapturedStep.run";
  let depth = 0;
  (proto as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
    if (!on) return orig.apply(this, args);
    const key = `${variant}|${isRun || !inRun ? label : `${label} (in run)`}`;
    const m = meters[key] ??= { ms: 0, calls: 0 };
    m.calls++;
    if (!timed || depth > 0) return orig.apply(this, args);
    depth++;
    if (isRun) inRun++;
    const t = threadCpuMs();
    const end = () => {
      m.ms += threadCpuMs() - t;
      depth--;
      if (isRun) inRun--;
    };
    try {
      const r = orig.apply(this, args);
      if (r instanceof Promise) return r.finally(end);
      end();
      return r;
    } catch (e) {
      end();
      throw e;
    }
  };
}
meter(CapturedStep.prototype, "run", "CapturedStep.run", true);
meter(GPUQueue.prototype, "writeBuffer", "queue.writeBuffer", true);
meter(GPUQueue.prototype, "submit", "queue.submit", true);
meter(GPUCommandEncoder.prototype, "beginComputePass", "beginComputePass", false);
meter(GPUCommandEncoder.prototype, "finish", "commandEncoder.finish", false);
meter(GPUComputePassEncoder.prototype, "dispatchWorkgroups", "dispatchWorkgroups", false);
meter(GPUComputePassEncoder.prototype, "setBindGroup", "setBindGroup", false);
meter(GPUComputePassEncoder.prototype, "setPipeline", "setPipeline", false);
meter(GPUDevice.prototype, "createCommandEncoder", "createCommandEncoder", false);
meter(GPUDevice.prototype, "createBindGroup", "createBindGroup", false);
meter(GPUDevice.prototype, "createBuffer", "createBuffer", false);

const runner = await ModelRunner.create(model, {
  dtype: a.dtype as "f16" | "f32",
  blockSize: 16,
  kvCacheMb: Number(a["kv-cache-mb"]),
  cacheDir: Deno.env.get("GRAPH_CACHE") ?? null,
  maxSeqs: B,
  splitK: a["split-k"] ? Number(a["split-k"]) : undefined,
  capture: { batchSizes: [B], kvCaps: [], promptRows: [], eager: true },
  log: console.log,
});
await runner.warmup();

const per = Math.ceil((past + 1) / runner.blockSize);
const step: StepInputs = {
  inputIds: new Int32Array(B),
  idSrc: Int32Array.from({ length: B }, (_, b) => b),
  cuSeqlens: Int32Array.from({ length: B + 1 }, (_, i) => i),
  pastSeqlens: new Int32Array(B).fill(past),
  blockTable: Int32Array.from({ length: B * per }, (_, i) => i % runner.numBlocks),
  maxBlocks: per,
  sampleRows: Int32Array.from({ length: B }, (_, i) => i),
  sampleU: new Float32Array(B).fill(-1),
  invTemp: new Float32Array(B).fill(1),
  sampleFilters: new Float32Array(3 * B).map((_, i) => (i % 3 === 1 ? 1 : 0)),
  sampleEdits: new Float32Array(0),
  wantLogits: false,
};
// The variants alternate step by step, so that a drift in the machine's load falls on all alike.
const variants = [
  { name: "as onnxruntime-web does (all inputs fed, 16 dispatches a submit)", batch: false, refeed: true },
  { name: "one submit a step", batch: true, refeed: true },
  { name: "one submit a step, inputs left bound (the engine's default)", batch: true, refeed: false },
];
const total = variants.map(() => 0);
for (let i = 0; i < 3 * variants.length; i++) {
  Object.assign(runner, { batchSubmits: variants[i % 3].batch, refeedCaptured: variants[i % 3].refeed });
  await runner.read(await runner.run(step));
}
on = true;
for (let i = 0; i < N * variants.length; i++) {
  const k = i % variants.length;
  variant = String(k);
  runner.batchSubmits = variants[k].batch;
  runner.refeedCaptured = variants[k].refeed;
  const t = threadCpuMs();
  const h = await runner.run(step);
  total[k] += threadCpuMs() - t;
  if (h.path !== "captured") throw new Error(`step took the ${h.path} path`);
  on = false;
  await runner.read(h);
  on = true;
}
on = false;
console.log(`batch ${B}, context ${context}, past ${past}: thread CPU per captured step (${N} steps each)`);
variants.forEach((v, k) => {
  const get = (label: string) => meters[`${k}|${label}`] ?? { ms: 0, calls: 0 };
  console.log(`${(total[k] / N).toFixed(2)} ms: ${v.name}`);
  for (const [key, m] of Object.entries(meters)) {
    if (!key.startsWith(`${k}|`)) continue;
    const ms = m.ms ? `${(m.ms / N).toFixed(2)} ms, ` : "";
    console.log(`  ${key.slice(2).padEnd(30)} ${ms}${(m.calls / N).toFixed(1)} calls per step`);
  }
  const rest = total[k] - get("CapturedStep.run").ms - get("queue.submit").ms;
  console.log(`  rest (ragtime's own code)      ${(rest / N).toFixed(2)} ms`);
});
await runner.close();
