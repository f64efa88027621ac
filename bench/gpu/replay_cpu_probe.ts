// Where the CPU of one captured decode step goes (issue 11): the step's calling-thread CPU split
// into CapturedStep.run (its input writes, then onnxruntime-web's run(): JS glue plus the replay
// it encodes and submits), submits outside it, and the rest (ragtime's own code), with the WebGPU
// calls a step makes counted; as onnxruntime-web does it and with ModelRunner's two cuts.
//
//   deno run -A bench/gpu/replay_cpu_probe.ts [--model PATH] [--dtype f16] [--batch 1]
//     [--context 1024] [--past 200] [--steps 30] [--kv-cache-mb 256] [--narrow] [--split-k 8]
//     [--js-replay]
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
import { readBuffer } from "../../tests/helpers/gpu_read.ts";
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
    "js-replay": { type: "boolean", default: false },
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

/**
 * --js-replay: what one CapturedStep.run asks of WebGPU (its input writes, then onnxruntime's
 * encoders and submits), recorded call by call, so that the same work can be issued from JS
 * without onnxruntime's run() and its wasm-to-JS glue.
 */
type PassOp =
  | [kind: "pipe", p: GPUComputePipeline]
  | [kind: "bind", i: number, g: GPUBindGroup, o?: number[]]
  | [
    kind: "go",
    x: number,
    y: number,
    z: number,
  ];
type EncOp = [kind: "pass", ops: PassOp[]] | [kind: "copy", args: unknown[]];
type Event = [kind: "write", b: GPUBuffer, off: number, data: Uint8Array] | [kind: "submit", encs: EncOp[][]];
let recording: Event[] | null = null;
const encOps = new WeakMap<object, EncOp[]>(), passOps = new WeakMap<object, PassOp[]>();
const cbOps = new WeakMap<object, EncOp[]>();
const unrecorded = new Set<string>();
function hookProto<T extends object>(
  proto: T,
  method: string,
  rec: (self: object, args: unknown[], r: unknown) => void,
) {
  const orig = (proto as Record<string, unknown>)[method] as (...args: unknown[]) => unknown;
  // defineProperty: SubmitBatch's own wrappers on the queue object are not writable.
  Object.defineProperty(proto, method, {
    configurable: true,
    value: function (this: object, ...args: unknown[]) {
      const r = orig.apply(this, args);
      if (recording && inRun) rec(this, args, r);
      return r;
    },
  });
}
/**
 * Installs the recording hooks on the prototypes of the device's own objects (Deno's WebGPU or Dawn's,
 * whichever the process runs) and on its queue object, whose methods SubmitBatch has wrapped.
 */
function installRecorder(dev: GPUDevice) {
  const enc0 = dev.createCommandEncoder(), pass0 = enc0.beginComputePass();
  const encProto = Object.getPrototypeOf(enc0), passProto = Object.getPrototypeOf(pass0);
  pass0.end();
  enc0.finish();
  hookProto(
    Object.getPrototypeOf(dev),
    "createCommandEncoder",
    (_d, _a, enc) => encOps.set(enc as object, []),
  );
  hookProto(encProto, "beginComputePass", (enc, _a, pass) => {
    const ops: PassOp[] = [];
    passOps.set(pass as object, ops);
    encOps.get(enc)?.push(["pass", ops]);
  });
  hookProto(encProto, "copyBufferToBuffer", (enc, args) => encOps.get(enc)?.push(["copy", args]));
  hookProto(encProto, "finish", (enc, _a, cb) => cbOps.set(cb as object, encOps.get(enc)!));
  hookProto(passProto, "setPipeline", (p, [pipe]) => {
    passOps.get(p)!.push(["pipe", pipe as GPUComputePipeline]);
  });
  hookProto(passProto, "setBindGroup", (p, [i, g, o]) => {
    passOps.get(p)!.push(["bind", i as number, g as GPUBindGroup, o ? [...(o as number[])] : undefined]);
  });
  hookProto(passProto, "dispatchWorkgroups", (p, [x, y, z]) => {
    passOps.get(p)!.push(["go", x as number, (y ?? 1) as number, (z ?? 1) as number]);
  });
  hookProto(dev.queue, "writeBuffer", (_q, [b, off, data, dOff, size]) => {
    const d = data as ArrayBufferView;
    const bytes = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    const el = (d as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
    const from = ((dOff as number | undefined) ?? 0) * el;
    const len = size === undefined ? bytes.length - from : (size as number) * el;
    recording!.push(["write", b as GPUBuffer, off as number, bytes.slice(from, from + len)]);
  });
  hookProto(dev.queue, "submit", (_q, [cbs]) => {
    recording!.push(["submit", [...(cbs as Iterable<object>)].map((cb) => cbOps.get(cb)!)]);
  });
  for (const m of ["clearBuffer", "copyBufferToTexture", "resolveQuerySet", "writeTimestamp"]) {
    hookProto(encProto, m, () => unrecorded.add(m));
  }
  hookProto(passProto, "dispatchWorkgroupsIndirect", () => unrecorded.add("indirect"));
}

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
// The variants below are onnxruntime's replay (the engine's own issue of its record is --js-replay's).
runner.issueRecorded = false;
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
if (a["js-replay"]) await jsReplay();

/** Records one replay, checks that issuing the record from JS gives its logits, and times both ways. */
async function jsReplay() {
  const cap = (runner as unknown as { captured: (CapturedStep | null)[] }).captured.find((c) =>
    c?.shape.kind === "decode" && c.shape.batch >= B
  )!;
  const V = model.config.vocabSize;
  const dev = (runner as unknown as { device: GPUDevice }).device;
  installRecorder(dev);
  const explicit = (seed: number): StepInputs => ({
    ...step,
    inputIds: Int32Array.from({ length: B }, (_, b) => 3 + ((seed * 7919 + b * 104729) % (V - 3))),
    idSrc: new Int32Array(B).fill(-1),
  });
  const logitsNow = async () => new Float32Array(await readBuffer(dev, cap.logits.gpuBuffer));
  const oneRun = async (s: StepInputs, rec: boolean) => {
    runner.batchSubmits = !rec;
    if (rec) recording = [];
    on = true;
    const h = await runner.run(s);
    on = false;
    await runner.read(h);
    runner.batchSubmits = true;
    const events = recording;
    recording = null;
    return events;
  };
  const issue = (events: Event[]) => {
    const q = dev.queue;
    for (const e of events) {
      if (e[0] === "write") {
        q.writeBuffer(e[1], e[2], e[3]);
        continue;
      }
      const cbs = e[1].map((ops) => {
        const enc = dev.createCommandEncoder();
        for (const op of ops) {
          if (op[0] === "copy") {
            (enc.copyBufferToBuffer as (...x: unknown[]) => void)(...op[1]);
            continue;
          }
          const pass = enc.beginComputePass();
          for (const p of op[1]) {
            if (p[0] === "pipe") pass.setPipeline(p[1]);
            else if (p[0] === "bind") pass.setBindGroup(p[1], p[2], p[3]);
            else pass.dispatchWorkgroups(p[1], p[2], p[3]);
          }
          pass.end();
        }
        return enc.finish();
      });
      q.submit(cbs);
    }
  };
  const events = (await oneRun(explicit(1), true))!;
  const la = await logitsNow();
  await oneRun(explicit(2), false);
  const lb = await logitsNow();
  issue(events);
  const lj = await logitsNow();
  const same = (x: Float32Array, y: Float32Array) => x.every((v, i) => Object.is(v, y[i]));
  const count = (k: string) => events.filter((e) => e[0] === k).length;
  const dispatches = events.flatMap((e) => e[0] === "submit" ? e[1].flat() : [])
    .reduce((n, op) => n + (op[0] === "pass" ? op[1].filter((p) => p[0] === "go").length : 0), 0);
  console.log(
    `recorded: ${count("write")} writes, ${count("submit")} submits, ${dispatches} dispatches` +
      (unrecorded.size ? `; NOT recorded: ${[...unrecorded].join(", ")}` : ""),
  );
  console.log(
    `JS-issued record gives the recorded step's logits bit for bit: ${
      same(lj, la)
    } (another input's differ: ${!same(lb, la)})`,
  );
  // One command buffer a submit group, all submitted at once (as the engine's submit batch does).
  const merged: Event[] = [...events.filter((e) => e[0] === "write"), [
    "submit",
    events.flatMap((e) => e[0] === "submit" ? e[1] : []),
  ]];
  const t = { ort: 0, js: 0, merged: 0 };
  for (let i = 0; i < 3 * N; i++) {
    const k = (["ort", "js", "merged"] as const)[i % 3];
    const t0 = threadCpuMs();
    if (k === "ort") {
      const h = await runner.run(explicit(1));
      t.ort += threadCpuMs() - t0;
      await runner.read(h);
    } else {
      issue(k === "js" ? events : merged);
      t[k] += threadCpuMs() - t0;
      await logitsNow();
    }
  }
  console.log(
    `thread CPU per step (${N} each): runner.run ${(t.ort / N).toFixed(2)} ms; ` +
      `the record issued from JS ${(t.js / N).toFixed(2)} ms, as one submit ${(t.merged / N).toFixed(2)} ms`,
  );
  const lm = await logitsNow();
  console.log(`after the timed loop, logits still the recorded step's: ${same(lm, la)}`);
}
await runner.close();
