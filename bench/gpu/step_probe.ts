// Times single engine steps of a SmolLM2-135M-shaped random model: dispatch (CPU) and readback.
// deno run -A bench/gpu/step_probe.ts [dtype]
// QUICK=1: only the 256-row cases. STEPS=N timed steps a case; DEPTHS=2,3 pipelined timings ("" for none). TRACE=1: counts and times every WebGPU API call made during
// the timed dispatches, to split a step's CPU cost between WebGPU calls and the rest (ORT's wasm), and
// the GPU memory held after each case.
// RAGTIME_ORT_EP (JSON): ORT WebGPU EP options for this process (see engine/sessions.ts).
// MODEL=PATH: a GGUF file or HF folder instead of the random SmolLM2 shape. CASES="B:q:past,...": the
// steps to time instead of the default list (B items of q tokens over past cached ones).
import { ModelRunner, type StepInputs } from "../../engine/model_runner.ts";
import { loadModel } from "../../engine/model/load.ts";
import { smollm2ShapedModel } from "./probe_model.ts";

const dtype = (Deno.args[0] ?? "f16") as "f16" | "f32";
const trace = new Map<string, { n: number; ms: number }>();
let tracing = false;
// GPU memory the process holds (what it created and has not destroyed: ORT's WebGPU EP allocates through
// this device), tracked under TRACE to see what ORT's buffer cache keeps between steps.
const sizes = new WeakMap<GPUBuffer, number>();
const mem = { live: 0, peak: 0, created: 0 };
function track(b: GPUBuffer): GPUBuffer {
  sizes.set(b, b.size);
  mem.live += b.size;
  mem.created++;
  mem.peak = Math.max(mem.peak, mem.live);
  return b;
}
function untrack(b: GPUBuffer) {
  mem.live -= sizes.get(b) ?? 0;
  sizes.delete(b);
}
const gib = (n: number) => (n / 2 ** 30).toFixed(2);
if (Deno.env.get("TRACE")) {
  const protos: [string, object][] = [
    ["device", GPUDevice.prototype],
    ["queue", GPUQueue.prototype],
    ["encoder", GPUCommandEncoder.prototype],
    ["pass", GPUComputePassEncoder.prototype],
    ["buffer", GPUBuffer.prototype],
  ];
  for (const [tag, proto] of protos) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      const desc = Object.getOwnPropertyDescriptor(proto, name);
      if (!desc || typeof desc.value !== "function" || name === "constructor") continue;
      const orig = desc.value as (...a: unknown[]) => unknown;
      const key = `${tag}.${name}`;
      Object.defineProperty(proto, name, {
        ...desc,
        value: function (this: unknown, ...args: unknown[]) {
          if (key === "device.createBuffer") return track(orig.apply(this, args) as GPUBuffer);
          if (key === "buffer.destroy") untrack(this as GPUBuffer);
          if (!tracing) return orig.apply(this, args);
          const t = performance.now();
          try {
            return orig.apply(this, args);
          } finally {
            const e = trace.get(key) ?? { n: 0, ms: 0 };
            e.n++;
            e.ms += performance.now() - t;
            trace.set(key, e);
          }
        },
      });
    }
  }
}

const modelPath = Deno.env.get("MODEL");
const model = modelPath ? await loadModel(modelPath) : smollm2ShapedModel();
const vocab = model.config.vocabSize;
const t0 = performance.now();
const runner = await ModelRunner.create(model, {
  dtype,
  blockSize: 16,
  kvCacheMb: 2048,
  cacheDir: Deno.env.get("GRAPH_CACHE") ?? null,
  log: console.log,
});
console.log(
  `runner ready in ${
    ((performance.now() - t0) / 1000).toFixed(1)
  } s; nodes/layer ${runner.nodesPerLayer}, total ${runner.totalNodes}`,
);

function inputs(B: number, q: number, past: number, sample = false): StepInputs {
  const bpS = Math.ceil((past + q) / 16);
  const T = B * q;
  const bt = new Int32Array(B * bpS);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < bpS; j++) bt[b * bpS + j] = (b * bpS + j) % runner.numBlocks;
  }
  const cu = new Int32Array(B + 1);
  for (let b = 0; b < B; b++) cu[b + 1] = cu[b] + q;
  const rows = Int32Array.from({ length: B }, (_, b) => cu[b + 1] - 1);
  return {
    inputIds: Int32Array.from({ length: T }, (_, i) => (i * 31) % vocab),
    idSrc: new Int32Array(T).fill(-1),
    cuSeqlens: cu,
    pastSeqlens: new Int32Array(B).fill(past),
    blockTable: bt,
    maxBlocks: bpS,
    sampleRows: rows,
    sampleU: new Float32Array(B).fill(sample ? 0.5 : -1),
    invTemp: new Float32Array(B).fill(1),
    sampleFilters: new Float32Array(3 * B).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits: false,
  };
}

const all: [number, number, number, boolean][] = Deno.env.get("CASES")
  ? Deno.env.get("CASES")!.split(",").map((c) => {
    const [B, q, past] = c.split(":").map(Number);
    return [B, q, past ?? 0, false];
  })
  : [
    [1, 1, 100, false],
    [64, 1, 300, false],
    [256, 1, 300, false],
    [256, 1, 300, true],
    [64, 31, 0, false],
    [256, 31, 0, false],
  ];
// QUICK=1: the cases that decide the reference workload's step time.
const only = Deno.env.get("ONLY_B");
const cases = all.filter(([B]) => only ? B === Number(only) : !Deno.env.get("QUICK") || B === 256);
const N = Number(Deno.env.get("STEPS") ?? 10);
// DEPTHS="": serial steps only (large steps, where the pipelined timing adds nothing but time).
const depths = (Deno.env.get("DEPTHS") ?? "2,3").split(",").filter(Boolean).map(Number);
const pct = (v: number[], p: number) =>
  [...v].sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor(p * v.length))];
console.log(`ORT EP options: ${Deno.env.get("RAGTIME_ORT_EP") ?? "{}"}`);
for (const [B, q, past, sample] of cases) {
  const inp = inputs(B, q, past, sample);
  // warm-up (shader compilation)
  await runner.read(await runner.run(inp));
  await runner.read(await runner.run(inp));
  const dispatch: number[] = [];
  trace.clear();
  const tA = performance.now();
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    tracing = true;
    const h = await runner.run(inp);
    tracing = false;
    dispatch.push(performance.now() - t);
    await runner.read(h);
  }
  const serial = (performance.now() - tA) / N;
  // Pipelined as the engine runs: two steps in flight (dispatch i+1, then read i), or three (read
  // of i requested after dispatching i+1, awaited after dispatching i+2).
  const piped: Record<number, number> = {};
  for (const depth of depths) {
    const tB = performance.now();
    const flight = [];
    for (let i = 0; i < N + depth - 1; i++) {
      flight.push(await runner.run(inp));
      if (flight.length >= 2) runner.startRead(flight[flight.length - 2]);
      if (flight.length >= depth) await runner.read(flight.shift()!);
    }
    while (flight.length) await runner.read(flight.shift()!);
    piped[depth] = (performance.now() - tB) / (N + depth - 1);
  }
  const mean = dispatch.reduce((a, b) => a + b, 0) / N;
  console.log(
    `B=${B} q=${q} past=${past}${sample ? " sampled" : ""}: dispatch mean ${mean.toFixed(2)} p50 ${
      pct(dispatch, 0.5).toFixed(2)
    } max ${Math.max(...dispatch).toFixed(2)} ms, serial step ${serial.toFixed(2)} ms, ` +
      depths.map((d) => `${d} in flight ${piped[d].toFixed(2)} ms`).join(", "),
  );
  if (trace.size) {
    console.log(
      `  GPU memory held: ${gib(mem.live)} GiB (peak ${
        gib(mem.peak)
      } GiB), ${mem.created} buffers created so far`,
    );
    let total = 0;
    const rows = [...trace].sort((a, b) => b[1].ms - a[1].ms);
    for (const [, e] of rows) total += e.ms;
    console.log(`  WebGPU calls per dispatch: ${(total / N).toFixed(2)} ms of ${mean.toFixed(2)} ms`);
    for (const [k, e] of rows.slice(0, 12)) {
      console.log(
        `    ${k.padEnd(32)} ${(e.n / N).toFixed(0).padStart(6)} calls ${
          (e.ms / N).toFixed(2).padStart(8)
        } ms ${((1000 * e.ms) / e.n).toFixed(1)} us/call`,
      );
    }
  }
}
await runner.close();
