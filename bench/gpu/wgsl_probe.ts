// What Deno's WebGPU itself allows, apart from onnxruntime-web's kernels: GPU time of hand-written WGSL
// kernels on the shapes of a decode/prefill step, to set beside matmul_probe.ts (onnxruntime's MatMul and
// split-K on the same shapes, same card).
//
//   deno run -A bench/gpu/wgsl_probe.ts [--shapes KxN,...] [--rows 1,16,256,2048] [--target-mb 256]
//     [--chain 1000] [--slices S] [--json FILE]
//
// Kernels (f16 weights [K, N] row-major and activations, f32 accumulation, f16 output):
//   rowdot  decode-shaped: each thread owns 4 columns and one of S contiguous slices of K (S from K, so a
//           thread loops ~128 k whatever K is); the S partial sums are added in slice order. Rows go in
//           tiles of 4 per workgroup, so the weights are read once per 4 rows.
//   tiled   prefill-shaped: 64x64 output tiles, 16x16 threads of 4x4 outputs, K in steps of 16 through
//           workgroup memory, and the same per-output arithmetic as rowdot: a partial sum per slice of K
//           (fma from zero, in k order), the partials added in slice order.
// Both therefore give every output the same bits whatever the row count and whichever kernel ran: checked
// here bit for bit (row 0 of every row count against rowdot at 1 row, and tiled against rowdot), which is
// the batch-invariance a step graph needs without a row floor.
// chain: the GPU cost of one dependent dispatch (a 64-thread kernel that increments one buffer), N in one pass.
//
// Timing: GPU timestamps at the start and end of one compute pass holding R dispatches of the kernel,
// each over its own copy of the weight (R copies span --target-mb, so weights stream from memory, not L2),
// all writing one output (so the driver orders them, as in a step); us per op = pass time / R, the median of
// 3 passes. Deno's WebGPU has no subgroups on these adapters, and neither kernel uses them.

import { parseArgs } from "node:util";
import { passUs as timedPass, readBack as readFrom } from "./gpu_timing.ts";

const readBack = (src: GPUBuffer, bytes: number) => readFrom(device, src, bytes);
const passUs = (encode: (pass: GPUComputePassEncoder) => void) => timedPass(device, encode);

const { values: a } = parseArgs({
  options: {
    shapes: { type: "string" },
    rows: { type: "string" },
    "target-mb": { type: "string" },
    chain: { type: "string" },
    slices: { type: "string" },
    json: { type: "string" },
    quick: { type: "boolean", default: false },
  },
});
const Q = a.quick;
const shapes = (a.shapes ??
  (Q
    ? "64x64,128x192"
    : "576x960,576x576,576x3072,1536x576,2048x3072,2048x2048,2048x16384,8192x2048,576x49152"))
  .split(",").map((s) => s.split("x").map(Number) as [number, number]);
const rowsList = (a.rows ?? (Q ? "1,5,16,70" : "1,16,64,256,2048,8192")).split(",").map(Number);
const targetBytes = Number(a["target-mb"] ?? (Q ? 1 : 256)) * 2 ** 20;
const chainN = Number(a.chain ?? (Q ? 50 : 1000));

const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no WebGPU adapter");
const hasTs = adapter.features.has("timestamp-query");
const device = await adapter.requestDevice({
  requiredFeatures: ["shader-f16", ...(hasTs ? ["timestamp-query" as GPUFeatureName] : [])],
  requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
    maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
  },
});
console.log(`adapter: ${adapter.info.description || adapter.info.vendor}; timestamps: ${hasTs}`);

const RT = 4; // rows per rowdot workgroup
const rowdotSrc = (S: number) => {
  const WX = 256 / S;
  return `enable f16;
struct P { T: u32, K: u32, N4: u32, KS: u32 }
@group(0) @binding(0) var<storage, read> x: array<f16>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f16>>;
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> part: array<array<vec4<f32>, 256>, ${RT}>;
@compute @workgroup_size(${WX}, ${S})
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
  let c4 = min(g.x * ${WX}u + l.x, p.N4 - 1u);
  let t0 = g.y * ${RT}u;
  var acc: array<vec4<f32>, ${RT}>;
  let k0 = l.y * p.KS;
  for (var k = k0; k < k0 + p.KS; k++) {
    let wv = vec4<f32>(w[k * p.N4 + c4]);
    for (var r = 0u; r < ${RT}u; r++) {
      let t = min(t0 + r, p.T - 1u);
      acc[r] = fma(vec4<f32>(f32(x[t * p.K + k])), wv, acc[r]);
    }
  }
  for (var r = 0u; r < ${RT}u; r++) { part[r][l.y * ${WX}u + l.x] = acc[r]; }
  workgroupBarrier();
  let t = t0 + l.y;
  if (l.y < ${RT}u && t < p.T && g.x * ${WX}u + l.x < p.N4) {
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < ${S}u; j++) { s = s + part[l.y][j * ${WX}u + l.x]; }
    y[t * p.N4 + c4] = vec4<f16>(s);
  }
}`;
};

const tiledSrc = `enable f16;
struct P { T: u32, K: u32, N4: u32, KS: u32 }
@group(0) @binding(0) var<storage, read> x: array<f16>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f16>>;
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> As: array<array<f16, 16>, 64>;
var<workgroup> Bs: array<array<vec4<f16>, 16>, 16>;
@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
  let i = l.y * 16u + l.x;
  let row0 = g.y * 64u;
  let c40 = g.x * 16u;
  var acc: array<vec4<f32>, 4>;
  var tot: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    for (var j = 0u; j < 4u; j++) {
      let e = i * 4u + j;
      let t = min(row0 + e / 16u, p.T - 1u);
      As[e / 16u][e % 16u] = x[t * p.K + k0 + e % 16u];
    }
    Bs[i / 16u][i % 16u] = w[(k0 + i / 16u) * p.N4 + min(c40 + i % 16u, p.N4 - 1u)];
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      if ((k0 + kk) % p.KS == 0u) {
        for (var r = 0u; r < 4u; r++) { tot[r] = tot[r] + acc[r]; acc[r] = vec4<f32>(0.0); }
      }
      let b = vec4<f32>(Bs[kk][l.x]);
      for (var r = 0u; r < 4u; r++) {
        acc[r] = fma(vec4<f32>(f32(As[l.y * 4u + r][kk])), b, acc[r]);
      }
    }
    workgroupBarrier();
  }
  let c4 = c40 + l.x;
  for (var r = 0u; r < 4u; r++) {
    let t = row0 + l.y * 4u + r;
    if (t < p.T && c4 < p.N4) { y[t * p.N4 + c4] = vec4<f16>(tot[r] + acc[r]); }
  }
}`;

const chainSrc = `@group(0) @binding(0) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { b[g.x] = b[g.x] + 1.0; }`;

const pipelines = new Map<string, GPUComputePipeline>();
function pipeline(key: string, code: string): GPUComputePipeline {
  let p = pipelines.get(key);
  if (!p) {
    p = device.createComputePipeline({
      layout: "auto",
      compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
    });
    pipelines.set(key, p);
  }
  return p;
}

/**
 * Slices of K: --slices S where S divides K, else ~128 k per thread, at least 8, a power of two that
 * divides K. Fewer k per thread means more threads and shorter serial loops (decode is latency-bound).
 */
function slices(K: number): number {
  const forced = Number(a.slices ?? 0);
  if (forced && K % forced === 0) return forced;
  let S = 8;
  while (S < 64 && K / (S * 2) >= 128 && K % (S * 2) === 0) S *= 2;
  if (K % S) throw new Error(`K=${K} does not split into ${S}`);
  return S;
}

function buffer(bytes: number, usage: number, data?: ArrayBufferView): GPUBuffer {
  const b = device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage });
  if (data) device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
  return b;
}
const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

async function median3(f: () => Promise<number>): Promise<number> {
  const v = [await f(), await f(), await f()].sort((x, y) => x - y);
  return v[1];
}

function rand16(n: number, seed: number, amp: number): Float16Array {
  let s = seed >>> 0 || 1;
  const out = new Float16Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 31 - 1) * amp;
  }
  return out;
}

interface Row {
  kernel: string;
  K: number;
  N: number;
  M: number;
  us: number;
  gbs: number;
  tflops: number;
}
const results: { chain?: { n: number; usPerDispatch: number }; rows: Row[]; bits: string[] } = {
  rows: [],
  bits: [],
};

// ---------- chain ----------
{
  const b = buffer(256, STORAGE);
  const p = pipeline("chain", chainSrc);
  const bg = device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: b } }],
  });
  const us = await median3(() =>
    passUs((pass) => {
      pass.setPipeline(p);
      pass.setBindGroup(0, bg);
      for (let i = 0; i < chainN; i++) pass.dispatchWorkgroups(1);
    })
  );
  results.chain = { n: chainN, usPerDispatch: us / chainN };
  console.log(`chain: ${chainN} dependent dispatches in one pass: ${(us / chainN).toFixed(2)} us each`);
}

// ---------- matmuls ----------
console.log("kernel  K x N          M      us/op    GB/s(weights)  TFLOP/s");
const maxM = Math.max(...rowsList);
for (const [K, N] of shapes) {
  const S = slices(K), KS = K / S, N4 = N / 4;
  const wBytes = K * N * 2;
  const copies = Math.max(2, Math.min(64, Math.floor(targetBytes / wBytes)));
  const w0 = rand16(K * N, 7 + K + N, Math.sqrt(3 / K));
  const ws = Array.from({ length: copies }, () => buffer(wBytes, STORAGE, w0));
  const x = buffer(maxM * K * 2, STORAGE, rand16(maxM * K, 3 + K, 1));
  const y = buffer(maxM * N * 2, STORAGE);
  const kernels: [string, GPUComputePipeline, (M: number) => [number, number]][] = [
    ["rowdot", pipeline(`rowdot${S}`, rowdotSrc(S)), (M) => [Math.ceil(N4 / (256 / S)), Math.ceil(M / RT)]],
    ["tiled", pipeline("tiled", tiledSrc), (M) => [Math.ceil(N4 / 16), Math.ceil(M / 64)]],
  ];
  const row0 = new Map<string, Uint16Array>();
  for (const M of rowsList) {
    const u = buffer(16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, new Uint32Array([M, K, N4, KS]));
    for (const [name, pl, grid] of kernels) {
      if (name === "rowdot" && M > 256) continue;
      const [gx, gy] = grid(M);
      const bgs = ws.map((wb) =>
        device.createBindGroup({
          layout: pl.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: x } },
            { binding: 1, resource: { buffer: wb } },
            { binding: 2, resource: { buffer: y } },
            { binding: 3, resource: { buffer: u } },
          ],
        })
      );
      const once = () =>
        passUs((pass) => {
          pass.setPipeline(pl);
          for (const bg of bgs) {
            pass.setBindGroup(0, bg);
            pass.dispatchWorkgroups(gx, gy);
          }
        });
      await once(); // warm-up (pipeline compile, first touch)
      const us = (await median3(once)) / copies;
      const r: Row = {
        kernel: name,
        K,
        N,
        M,
        us,
        gbs: wBytes / us / 1e3,
        tflops: (2 * M * K * N) / us / 1e6,
      };
      results.rows.push(r);
      console.log(
        `${name.padEnd(7)} ${`${K} x ${N}`.padEnd(14)} ${String(M).padStart(5)} ${
          us.toFixed(1).padStart(9)
        } ${r.gbs.toFixed(0).padStart(10)} ${r.tflops.toFixed(2).padStart(10)}`,
      );
      // Row 0's bits, for the invariance check (every copy holds the same weight).
      row0.set(`${name}@${M}`, new Uint16Array(await readBack(y, Math.ceil(N * 2 / 16) * 16)).slice(0, N));
    }
    u.destroy();
  }
  const ref = row0.get(`rowdot@${rowsList[0]}`)!;
  const diff: string[] = [];
  for (const [key, v] of row0) {
    let n = 0;
    for (let i = 0; i < N; i++) if (v[i] !== ref[i]) n++;
    if (n) diff.push(`${key}: ${n} of ${N} differ`);
  }
  // And against a float64 product, so that equal bits are not equally wrong.
  const xs = rand16(K, 3 + K, 1);
  let maxErr = 0;
  for (let n = 0; n < N; n += Math.max(1, Math.floor(N / 64))) {
    let s = 0;
    for (let k = 0; k < K; k++) s += xs[k] * w0[k * N + n];
    const got = new Float16Array(ref.buffer, ref.byteOffset, N)[n];
    maxErr = Math.max(maxErr, Math.abs(got - s));
  }
  const line = `${K}x${N} (S=${S}): row 0 ${
    diff.length ? "DIFFERS: " + diff.join("; ") : `bit-identical across kernels and M=${rowsList.join(",")}`
  }; max |err| vs float64 ${maxErr.toExponential(2)}`;
  results.bits.push(line);
  console.log(line);
  for (const b of [...ws, x, y]) b.destroy();
  if (a.json) await Deno.writeTextFile(a.json, JSON.stringify(results, null, 1));
}
