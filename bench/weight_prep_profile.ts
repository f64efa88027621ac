// Where the CPU weight preparation of a start goes, stage by stage, for one model:
//   deno run -A bench/weight_prep_profile.ts MODEL [--dtype f16|f32] [--layers N]
// For every linear layer (q/k/v and gate/up packed, o, down), the embedding and the LM head, it times
// the stages of the CPU path (weights.ts): decode (stored dtype -> f16 bits or f32), pack (concatRows),
// transpose, encode (to the graph's dtype) and the GPU write (mapped buffer, as uploadWeights), and
// reports the totals and element rates. --layers limits the layers timed (the sums then cover those).
// Then the GPU path (weight_upload.ts) on every weight of the graph (all layers): per path (GPU
// layout, CPU raw()), the host time until upload() returns and the wait for the queue after it.

import process from "node:process";
import { parseArgs } from "node:util";
import { loadModel } from "../engine/model/load.ts";
import {
  asF32,
  concatRows,
  encodeAs,
  f16BitsOrF32,
  transpose,
  type Values,
} from "../engine/model/weights.ts";
import type { WeightTensor } from "../engine/model/types.ts";
import { stepWeightTensors } from "../engine/model/graph.ts";
import { WeightUploader } from "../engine/weight_upload.ts";

const { values: args, positionals } = parseArgs({
  args: Deno.args,
  options: { dtype: { type: "string" }, layers: { type: "string" } },
  allowPositionals: true,
});
const path = positionals[0] ?? "";
if (!path) {
  console.error("usage: deno run -A bench/weight_prep_profile.ts MODEL [--dtype f16|f32] [--layers N]");
  Deno.exit(2);
}
const act = (args.dtype ?? "f16") as "f16" | "f32";
let t = performance.now();
const model = await loadModel(path);
console.log(`read: ${((performance.now() - t) / 1000).toFixed(2)} s`);
const cfg = model.config;
const layers = Math.min(cfg.numLayers, Number(args.layers ?? cfg.numLayers));

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: { maxBufferSize: adapter.limits.maxBufferSize },
});

const stages = ["decode", "pack", "transpose", "encode", "write"];
const totals: Record<string, number> = Object.fromEntries(stages.map((s) => [s, 0]));
/** Process CPU time (ms): on a shared machine the wall clock also counts other jobs' turns. */
const cpuTotals: Record<string, number> = Object.fromEntries(stages.map((s) => [s, 0]));
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
};
let elements = 0, bytesOut = 0;
const time = <T>(stage: string, f: () => T): T => {
  const t0 = performance.now(), c0 = cpuMs();
  const r = f();
  totals[stage] += performance.now() - t0;
  cpuTotals[stage] += cpuMs() - c0;
  return r;
};
const decode = (w: WeightTensor): Values =>
  time("decode", () => act === "f16" ? f16BitsOrF32(w) : asF32(f16BitsOrF32(w)));

async function write(bytes: Uint8Array) {
  const t0 = performance.now(), c0 = cpuMs();
  const buf = device.createBuffer({
    size: Math.ceil(bytes.length / 4) * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    mappedAtCreation: true,
  });
  new Uint8Array(buf.getMappedRange()).set(bytes);
  buf.unmap();
  device.queue.submit([]);
  await device.queue.onSubmittedWorkDone();
  buf.destroy();
  totals.write += performance.now() - t0;
  cpuTotals.write += cpuMs() - c0;
  bytesOut += bytes.length;
}

/** One [out, in] linear (parts packed along out) -> [in, out] in the graph's dtype. */
async function linear(names: string[]) {
  const parts = names.map((n) => decode(model.weights.get(n)));
  const packed = time("pack", () => concatRows(parts));
  const cols = model.weights.get(names[0]).shape[1];
  const rows = packed.length / cols;
  const tr = time("transpose", () => transpose(packed, rows, cols));
  const bytes = time("encode", () => encodeAs(tr, act));
  elements += packed.length;
  await write(bytes);
}

t = performance.now();
const emb = "model.embed_tokens.weight";
{
  const v = decode(model.weights.get(emb));
  const bytes = time("encode", () => encodeAs(v, act));
  elements += v.length;
  await write(bytes);
}
for (let l = 0; l < layers; l++) {
  const p = `model.layers.${l}.`;
  await linear(["q", "k", "v"].map((x) => `${p}self_attn.${x}_proj.weight`));
  await linear([`${p}self_attn.o_proj.weight`]);
  await linear([`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`]);
  await linear([`${p}mlp.down_proj.weight`]);
}
await linear([cfg.tieEmbeddings ? emb : "lm_head.weight"]);
const wall = (performance.now() - t) / 1000;
const stored = model.weights.get(emb).dtype;
console.log(
  `${path} (stored ${stored}, graph ${act}), embedding + ${layers} layers + LM head: ` +
    `${(elements / 1e6).toFixed(1)}M elements, ${(bytesOut / 2 ** 20).toFixed(1)} MiB written, ${
      wall.toFixed(2)
    } s`,
);
for (const k of stages) {
  const [w, c] = [totals[k] / 1000, cpuTotals[k] / 1000];
  console.log(
    `  ${k.padEnd(9)} wall ${w.toFixed(2).padStart(6)} s  cpu ${c.toFixed(2).padStart(6)} s  ` +
      `${(elements / c / 1e6).toFixed(0).padStart(5)} M el/cpu-s`,
  );
}

// The GPU path, every weight of the graph (rotary tables for 4096 positions).
const uploader = new WeightUploader(device);
const gpuT: Record<string, { n: number; host: number; wait: number; cpu: number; mib: number }> = {};
t = performance.now();
for (const w of stepWeightTensors(model, { dtype: act, maxPositions: 4096 })) {
  const path = w.layout ? "layout" : "raw";
  const before = { ...uploader.counts };
  const t0 = performance.now(), c0 = cpuMs();
  const buf = await uploader.upload(w);
  const t1 = performance.now();
  await device.queue.onSubmittedWorkDone();
  const key = uploader.counts.gpu > before.gpu ? "gpu" : `cpu (${path})`;
  const e = gpuT[key] ??= { n: 0, host: 0, wait: 0, cpu: 0, mib: 0 };
  e.n++;
  e.host += t1 - t0;
  e.wait += performance.now() - t1;
  e.cpu += cpuMs() - c0;
  e.mib += buf.size / 2 ** 20;
  buf.destroy();
}
uploader.destroy();
console.log(`GPU path, all weights: ${((performance.now() - t) / 1000).toFixed(2)} s`);
for (const [k, e] of Object.entries(gpuT)) {
  console.log(
    `  ${k.padEnd(12)} ${String(e.n).padStart(4)} tensors ${e.mib.toFixed(1).padStart(7)} MiB  host ` +
      `${(e.host / 1000).toFixed(2)} s  queue wait ${(e.wait / 1000).toFixed(2)} s  process cpu ${
        (e.cpu / 1000).toFixed(2)
      } s`,
  );
}
device.destroy();
