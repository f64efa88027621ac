// GPU time of each way to multiply activations by a weight matrix on onnxruntime-web's WebGPU EP, for
// the weight shapes of a Llama-3.2-1B-shaped model and decode/prefill row counts (issue 12).
//
//   deno run -A bench/gpu/matmul_probe.ts [--quick] [--ops LIST] [--shapes LIST] [--rows-m LIST]
//     [--target-mb MB] [--max-reps N] [--steps N] [--rows] [--rows-only] [--rows-max N]
//     [--rows-shapes LIST] [--rows-ops LIST] [--json FILE]
//
// --ops: comma-separated, default all of
//   mm16     MatMul fp16, weight [K,N] (what the step graph does today)
//   mm32     MatMul fp32 (activations fp32 too, as --dtype f32)
//   gemm16t  Gemm fp16, transB=1, weight stored [N,K]
//   nb4, nb8 com.microsoft MatMulNBits, 4 / 8 bits, block 32, fp16 scales, default zero points
//   nb4a4, nb8a4  the same with accuracy_level 4 (int8 activations: ORT's DP4A kernels where it picks them)
//   mulsum16 Mul + ReduceSum over a [N,K] weight, M=1 only (one thread per weight element, reduced over K)
//   splitk8  split-K: x as [8, M, K/8] by weight [8, K/8, N] (a batched MatMul, 8x the workgroups),
//            then ReduceSum over the 8 partial products
//   splitk2, splitk4, splitk16, splitk32, splitk64  the same with 2-64 slices (only when named in --ops)
//   conv16   a 1x1 Conv fp16 over x as an image of M pixels and K channels, weight [N,K,1,1] (only when
//            named in --ops): onnxruntime's WebGPU EP runs Conv channels-last with its own tiled program
// --shapes: KxN list (default the 1B's q/o, k/v, packed qkv, gate/up, packed gate+up, down, LM head);
// --rows-m: row counts M (default 1,16,128,512).
//
// How: one ONNX graph per (op, shape) built with engine/onnx/builder.ts: one input x [M, K] and `reps`
// independent copies of the op, each over its own weight (graph inputs fed from GPU buffers, as the engine
// does), so that the weights stream from memory rather than sit in the 50 MB L2: reps is target-mb / weight
// bytes, within [2, max-reps] (two at least: runs are told apart by their first node). Timing is
// onnxruntime's WebGPU profiling (each program in its own compute pass between timestamp queries, as
// op_profile.ts): GPU us per op is the median over `steps` runs of the run's program time divided by reps
// (helper programs of the formulation, such as splitk's Transpose, included). GB/s counts the weight bytes an
// op reads, TFLOP/s 2*M*K*N. The kernel column names the programs ORT ran. Agreement: rep 0's output at
// sampled rows and columns against a float64 CPU product over the weights the op holds (err: kernel accuracy;
// the dequantized weights for MatMulNBits) and against mm16's output (d16: what switching from today's op
// changes, quantization included).
//
// --rows: rows dependence (run before the timing table). For each op in --rows-ops (default
// mm16,mm32,gemm16t,nb4,nb8) and shape in --rows-shapes (default 64x128 (stories260K's qkv), 2048x3072,
// 8192x2048), runs M = 1..rows-max (default 32) with the same row 0 and other rows random, and compares row
// 0's output with M=1's bit for bit: which M change it, and which kernel ran at each M. --rows-only skips the
// timing table.
//
// --quick: small shapes, few reps and steps, rows up to 12: a correctness run for llvmpipe.
// Output: the table and rows report on stdout as each shape finishes; --json FILE is rewritten after
// every shape. Outputs have unit-order values (variance ~1/3), so err and d16 are roughly relative.
// GPU host (H200): `source bench/gpu/setup.sh && deno run -A bench/gpu/matmul_probe.ts --rows --json FILE`.

import { parseArgs } from "node:util";
import * as ort from "onnxruntime-web/webgpu";
import { GraphBuilder, TensorType } from "../../engine/onnx/builder.ts";
import { endProfiling, gpuEvents, type ProfileEvent, splitRuns } from "./ort_profile.ts";

const { values: a } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    ops: { type: "string" },
    shapes: { type: "string" },
    "rows-m": { type: "string" },
    "target-mb": { type: "string" },
    "max-reps": { type: "string" },
    steps: { type: "string" },
    rows: { type: "boolean", default: false },
    "rows-only": { type: "boolean", default: false },
    "rows-max": { type: "string" },
    "rows-shapes": { type: "string" },
    "rows-ops": { type: "string" },
    json: { type: "string" },
  },
});

const BLOCK = 32;
const ALL_OPS = ["mm16", "mm32", "gemm16t", "nb4", "nb8", "nb4a4", "nb8a4", "mulsum16", "splitk8"];
// Wider splits and a 1x1 convolution, measured on request only (--ops ...,splitk16,conv16).
const EXTRA_OPS = ["splitk2", "splitk4", "splitk16", "splitk32", "splitk64", "conv16"];
const shapeList = (s: string) =>
  s.split(",").map((x) => {
    const [K, N] = x.trim().split("x").map(Number);
    if (!(K > 0 && N > 0) || K % BLOCK) throw new Error(`bad shape ${x} (KxN, K a multiple of ${BLOCK})`);
    return { K, N };
  });
const numList = (s: string) => s.split(",").map(Number);
const num = (v: string | undefined, d: number) => (v === undefined ? d : Number(v));

const Q = a.quick;
const opt = {
  ops: (a.ops ?? ALL_OPS.join(",")).split(","),
  shapes: shapeList(
    a.shapes ??
      (Q
        ? "64x64,64x32,64x96,128x64,96x1000"
        : "2048x2048,2048x512,2048x3072,2048x8192,2048x16384,8192x2048,2048x128256"),
  ),
  ms: numList(a["rows-m"] ?? (Q ? "1,5,16" : "1,16,128,512")),
  targetBytes: num(a["target-mb"], Q ? 1 : 256) * 2 ** 20,
  maxReps: num(a["max-reps"], Q ? 2 : 64),
  steps: num(a.steps, Q ? 1 : 3),
  rows: a.rows || a["rows-only"],
  timing: !a["rows-only"],
  rowsMax: num(a["rows-max"], Q ? 12 : 32),
  rowsShapes: shapeList(a["rows-shapes"] ?? (Q ? "64x128" : "64x128,2048x3072,8192x2048")),
  rowsOps: (a["rows-ops"] ?? "mm16,mm32,gemm16t,nb4,nb8").split(","),
};
for (const o of [...opt.ops, ...opt.rowsOps]) {
  if (!ALL_OPS.includes(o) && !EXTRA_OPS.includes(o)) throw new Error(`unknown op ${o}`);
}

// ---------- weights: a small random pool, rows of W^T copied from it (fast at LM-head size) ----------

/** xorshift32 in [-1, 1). */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 31 - 1;
  };
}

const POOL = 1 << 20; // elements; a multiple of BLOCK

/**
 * The weight of one shape: column n of W (row n of W^T) is pool[off[n] .. off[n] + K), off[n] a
 * multiple of BLOCK, so that every layout and the quantized blocks are copies from pool-sized tables.
 */
class Weight {
  readonly pool16: Float16Array;
  readonly off: Uint32Array;
  private q = new Map<number, { bytes: Uint8Array; scales: Float16Array; deq: Float64Array }>();

  constructor(readonly K: number, readonly N: number, seed: number) {
    const r = rng(seed), amp = Math.sqrt(3 / K); // unit-variance outputs for unit-range inputs
    this.pool16 = new Float16Array(POOL + K);
    for (let i = 0; i < this.pool16.length; i++) this.pool16[i] = r() * amp;
    const blocks = POOL / BLOCK;
    this.off = Uint32Array.from({ length: N }, () => BLOCK * Math.floor(((r() + 1) / 2) * blocks));
  }

  at(k: number, n: number): number {
    return this.pool16[this.off[n] + k];
  }

  private kn16Cache: Uint16Array | null = null;

  /** [K, N] row-major, 16-bit words (kept: mm16 and splitk8 both use it). */
  kn16(): Uint16Array {
    if (this.kn16Cache) return this.kn16Cache;
    const { K, N, off } = this, p = new Uint16Array(this.pool16.buffer), out = new Uint16Array(K * N);
    for (let k = 0; k < K; k++) for (let n = 0, b = k * N; n < N; n++) out[b + n] = p[off[n] + k];
    return this.kn16Cache = out;
  }

  kn32(): Float32Array {
    const { K, N, off } = this, p = new Float32Array(this.pool16), out = new Float32Array(K * N);
    for (let k = 0; k < K; k++) for (let n = 0, b = k * N; n < N; n++) out[b + n] = p[off[n] + k];
    return out;
  }

  /** [N, K] row-major (W^T), 16-bit words. */
  nk16(): Uint16Array {
    const { K, N, off } = this, p = new Uint16Array(this.pool16.buffer), out = new Uint16Array(K * N);
    for (let n = 0; n < N; n++) out.set(p.subarray(off[n], off[n] + K), n * K);
    return out;
  }

  /**
   * Symmetric block quantization of the pool (zero point 2^(bits-1), MatMulNBits' default), then
   * MatMulNBits' layout: B [N, K/32, 32*bits/8] (4-bit: element 2j in the low nibble of byte j),
   * scales [N * K/32].
   */
  quant(bits: 4 | 8) {
    let q = this.q.get(bits);
    if (!q) {
      const blob = BLOCK * bits / 8, zp = 1 << (bits - 1), qmax = zp - 1, len = this.pool16.length;
      const bytes = new Uint8Array(len / BLOCK * blob), scales = new Float16Array(len / BLOCK);
      const deq = new Float64Array(len);
      for (let blk = 0; blk < len / BLOCK; blk++) {
        let amax = 0;
        for (let i = 0; i < BLOCK; i++) amax = Math.max(amax, Math.abs(this.pool16[blk * BLOCK + i]));
        scales[blk] = amax / qmax || 1;
        const s = scales[blk];
        for (let i = 0; i < BLOCK; i++) {
          const v = Math.max(0, Math.min(2 * zp - 1, Math.round(this.pool16[blk * BLOCK + i] / s) + zp));
          deq[blk * BLOCK + i] = (v - zp) * s;
          if (bits === 8) bytes[blk * blob + i] = v;
          else bytes[blk * blob + (i >> 1)] |= (i & 1) ? v << 4 : v;
        }
      }
      q = { bytes, scales, deq };
      this.q.set(bits, q);
    }
    const { K, N, off } = this, nb = K / BLOCK, blob = BLOCK * bits / 8;
    const B = new Uint8Array(N * nb * blob), S = new Uint16Array(N * nb);
    const sBits = new Uint16Array(q.scales.buffer);
    for (let n = 0; n < N; n++) {
      const b0 = off[n] / BLOCK;
      B.set(q.bytes.subarray(b0 * blob, (b0 + nb) * blob), n * nb * blob);
      S.set(sBits.subarray(b0, b0 + nb), n * nb);
    }
    return { B, S, deqAt: (k: number, n: number) => q.deq[off[n] + k] };
  }
}

// ---------- ops as graphs ----------

interface WeightTensor {
  type: "float16" | "float32" | "uint8";
  dims: number[];
  data: Uint8Array;
}

interface OpDef {
  act: "f16" | "f32";
  m1Only?: boolean;
  /** The weight the op holds, for the float64 reference: W's fp16 values or their dequantized 4/8 bits. */
  ref: "exact" | 4 | 8;
  tensors: (w: Weight) => WeightTensor[];
  /** Adds the op for one rep: x, the rep's weight input names; returns the output ([M, N]). */
  node: (g: GraphBuilder, x: string, w: string[], K: number, N: number) => string;
  /** Nodes shared by all reps (reshaping x), added once. */
  prelude?: (g: GraphBuilder, x: string, K: number) => string;
}

const u8 = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

function nbits(bits: 4 | 8, accuracy: number): OpDef {
  return {
    act: "f16",
    ref: bits,
    tensors: (w) => {
      const { B, S } = w.quant(bits);
      return [
        { type: "uint8", dims: [w.N, w.K / BLOCK, BLOCK * bits / 8], data: B },
        { type: "float16", dims: [w.N * w.K / BLOCK], data: u8(S) },
      ];
    },
    node: (g, x, [b, s], K, N) =>
      g.op1("MatMulNBits", [x, b, s], {
        K,
        N,
        bits,
        block_size: BLOCK,
        ...(accuracy ? { accuracy_level: accuracy } : {}),
      }, "com.microsoft"),
  };
}

/** split-K by S: x as [S, M, K/S] by the weight as [S, K/S, N] (its [K, N] row-major bytes), summed over S. */
function splitK(S: number): OpDef {
  return {
    act: "f16",
    ref: "exact",
    tensors: (w) => [{ type: "float16", dims: [S, w.K / S, w.N], data: u8(w.kn16()) }],
    prelude: (g, x, K) =>
      g.op1("Transpose", [g.op1("Reshape", [x, g.constI64([0, S, K / S])])], { perm: [1, 0, 2] }),
    node: (g, x, [w]) => g.op1("ReduceSum", [g.op1("MatMul", [x, w]), g.constI64([0])], { keepdims: 0 }),
  };
}
const OPS: Record<string, OpDef> = {
  mm16: {
    act: "f16",
    ref: "exact",
    tensors: (w) => [{ type: "float16", dims: [w.K, w.N], data: u8(w.kn16()) }],
    node: (g, x, [w]) => g.op1("MatMul", [x, w]),
  },
  mm32: {
    act: "f32",
    ref: "exact",
    tensors: (w) => [{ type: "float32", dims: [w.K, w.N], data: u8(w.kn32()) }],
    node: (g, x, [w]) => g.op1("MatMul", [x, w]),
  },
  gemm16t: {
    act: "f16",
    ref: "exact",
    tensors: (w) => [{ type: "float16", dims: [w.N, w.K], data: u8(w.nk16()) }],
    node: (g, x, [w]) => g.op1("Gemm", [x, w], { transB: 1 }),
  },
  nb4: nbits(4, 0),
  nb8: nbits(8, 0),
  nb4a4: nbits(4, 4),
  nb8a4: nbits(8, 4),
  mulsum16: {
    act: "f16",
    m1Only: true,
    ref: "exact",
    tensors: (w) => [{ type: "float16", dims: [w.N, w.K], data: u8(w.nk16()) }],
    prelude: (g, x) => g.op1("Unsqueeze", [x, g.constI64([1])]), // [M, 1, K]
    node: (g, x, [w]) => g.op1("ReduceSum", [g.op1("Mul", [x, w]), g.constI64([-1])], { keepdims: 0 }),
  },
  conv16: {
    act: "f16",
    ref: "exact",
    tensors: (w) => [{ type: "float16", dims: [w.N, w.K, 1, 1], data: u8(w.nk16()) }],
    // x [M, K] as NCHW [1, K, M, 1] through a transpose the EP's channels-last layout cancels.
    prelude: (g, x, K) =>
      g.op1("Transpose", [g.op1("Reshape", [x, g.constI64([1, -1, 1, K])])], { perm: [0, 3, 1, 2] }),
    node: (g, x, [w], _K, N) =>
      g.op1("Reshape", [
        g.op1("Transpose", [g.op1("Conv", [x, w], { kernel_shape: [1, 1] })], { perm: [0, 2, 3, 1] }),
        g.constI64([-1, N]),
      ]),
  },
  splitk2: splitK(2),
  splitk4: splitK(4),
  splitk8: splitK(8),
  splitk16: splitK(16),
  splitk32: splitK(32),
  splitk64: splitK(64),
};

const ONNX_ACT = { f16: TensorType.FLOAT16, f32: TensorType.FLOAT } as const;
const ONNX_W = { float16: TensorType.FLOAT16, float32: TensorType.FLOAT, uint8: TensorType.UINT8 } as const;

function buildGraph(op: OpDef, K: number, N: number, tensors: WeightTensor[], reps: number): Uint8Array {
  const g = new GraphBuilder();
  const x0 = g.input("x", ONNX_ACT[op.act], ["M", K]);
  const x = op.prelude ? op.prelude(g, x0, K) : x0;
  for (let r = 0; r < reps; r++) {
    const names = tensors.map((t, i) => g.input(`w${r}_${i}`, ONNX_W[t.type], t.dims));
    op.node(g, x, names, K, N);
    // The op's own output becomes the graph output (an Identity would add a copy program).
    g.nodes[g.nodes.length - 1].outputs[0] = `y${r}`;
    g.output(`y${r}`, ONNX_ACT[op.act], ["M", N]);
  }
  return g.encode("matmul-probe");
}

// ---------- sessions, runs ----------

ort.env.wasm.numThreads = 1;
ort.env.logLevel = "error";
const EP = { name: "webgpu", validationMode: "disabled" } as ort.InferenceSession.ExecutionProviderConfig;
let device: GPUDevice | null = null;

interface Probe {
  session: ort.InferenceSession;
  feeds: Record<string, ort.Tensor>;
  buffers: GPUBuffer[];
  reps: number;
  weightBytes: number;
  act: "f16" | "f32";
}

async function openProbe(op: OpDef, w: Weight, reps: number, profile: boolean): Promise<Probe> {
  const tensors = op.tensors(w);
  const weightBytes = tensors.reduce((s, t) => s + t.data.byteLength, 0);
  // Two reps at least: runs are told apart in the profile by their first node.
  if (reps <= 0) reps = Math.max(2, Math.min(opt.maxReps, Math.ceil(opt.targetBytes / weightBytes)));
  const outputs = Array.from({ length: reps }, (_, r) => `y${r}`);
  const session = await ort.InferenceSession.create(buildGraph(op, w.K, w.N, tensors, reps), {
    executionProviders: [
      { name: "webgpu", validationMode: "disabled" } as ort.InferenceSession.ExecutionProviderConfig,
    ],
    logSeverityLevel: 3,
    enableProfiling: profile,
    preferredOutputLocation: Object.fromEntries(outputs.map((o) => [o, "gpu-buffer"])),
  });
  device = await ort.env.webgpu.device;
  const feeds: Record<string, ort.Tensor> = {};
  const buffers: GPUBuffer[] = [];
  for (let r = 0; r < reps; r++) {
    tensors.forEach((t, i) => {
      const size = Math.ceil(t.data.byteLength / 4) * 4;
      const buf = device!.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      if (size === t.data.byteLength) device!.queue.writeBuffer(buf, 0, t.data);
      else {
        const padded = new Uint8Array(size);
        padded.set(t.data);
        device!.queue.writeBuffer(buf, 0, padded);
      }
      buffers.push(buf);
      feeds[`w${r}_${i}`] = ort.Tensor.fromGpuBuffer(buf, { dataType: t.type, dims: t.dims });
    });
  }
  return { session, feeds, buffers, reps, weightBytes, act: op.act };
}

async function closeProbe(p: Probe) {
  await p.session.release();
  for (const b of p.buffers) b.destroy();
}

/** Activations: row i of x is the same for every M (row 0 is what --rows follows). */
function activations(K: number, rows: number, seed: number): Float16Array {
  const r = rng(seed), x = new Float16Array(rows * K);
  for (let i = 0; i < x.length; i++) x[i] = r();
  return x;
}

/** Runs the probe once on the first M rows of x; returns rep 0's output when asked, else null. */
async function runOnce(p: Probe, x: Float16Array, M: number, K: number, read: boolean) {
  const xs = x.subarray(0, M * K);
  const xt = p.act === "f16"
    ? new ort.Tensor("float16", new Uint16Array(xs.buffer, xs.byteOffset, xs.length), [M, K])
    : new ort.Tensor("float32", new Float32Array(xs), [M, K]);
  const out = await p.session.run({ x: xt, ...p.feeds });
  // Read as it comes (no conversion of a whole LM-head output): only sampled entries are looked at.
  let y: Float16Array | Float32Array | null = null;
  if (read) {
    const d = await out.y0.getData();
    y = d instanceof Uint16Array ? new Float16Array(d.buffer, d.byteOffset, d.length) : d as Float32Array;
  } else await device!.queue.onSubmittedWorkDone();
  for (const t of Object.values(out)) t.dispose();
  return y;
}

// ---------- timing table ----------

interface Result {
  op: string;
  K: number;
  N: number;
  M: number;
  reps: number;
  us: number | null;
  gbs: number | null;
  tflops: number | null;
  kernel: string;
  err: number | null;
  d16: number | null;
  refMax: number | null;
  error?: string;
}

const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor((v.length - 1) / 2)];
/** The WebGPU program's name ("node&Op&Program"). */
const programOf = (e: ProfileEvent) => e.name.split("&")[2] ?? e.name;
/** The program and its cache hint (the tiling ORT chose, e.g. MatMul[ActivationKind: 0;|4-1-1|1|4|1|1]). */
const kernelOf = (e: ProfileEvent) =>
  /^[^[]*(\[[^\]]*\])?/.exec(String(e.args?.cache_key ?? ""))?.[0] || programOf(e);
const nodeOf = (e: ProfileEvent) => e.name.split("&")[0];

/** Sampled (row, column) pairs of an [M, N] output. */
function samples(M: number, N: number): [number, number][] {
  const rows = [...new Set([0, M - 1, ...Array.from({ length: 6 }, (_, i) => Math.floor((i + 1) * M / 7))])];
  const cols = [
    ...new Set([0, N - 1, ...Array.from({ length: 254 }, (_, i) => Math.floor((i + 1) * N / 255))]),
  ];
  return rows.flatMap((r) => cols.map((c): [number, number] => [r, c]));
}

async function timeShape(w: Weight, x: Float16Array, results: Result[]) {
  const { K, N } = w;
  const d16 = new Map<number, Float32Array>(); // mm16's sampled outputs by M
  const refs = new Map<string, Float64Array>(); // float64 references by weight kind and M
  for (const name of opt.ops) {
    const op = OPS[name];
    const ms = opt.ms.filter((M) => !op.m1Only || M === 1);
    if (!ms.length) continue;
    let p: Probe | null = null;
    try {
      p = await openProbe(op, w, 0, true);
      const wAt = op.ref === "exact" ? (k: number, n: number) => w.at(k, n) : w.quant(op.ref).deqAt;
      const checks: { err: number; d16: number | null; refMax: number }[] = [];
      for (const M of ms) {
        const S = samples(M, N);
        let y: Float16Array | Float32Array | null = null;
        // One warm-up (shader compile), then `steps` runs; the last one's output is checked.
        for (let i = 0; i <= opt.steps; i++) y = await runOnce(p, x, M, K, i === opt.steps);
        let err = 0, refMax = 0, dd = 0;
        const got = new Float32Array(S.length);
        const refKey = `${op.ref}:${M}`;
        const ref = refs.get(refKey) ?? Float64Array.from(S, ([r, c]) => {
          let s = 0;
          for (let k = 0; k < K; k++) s += x[r * K + k] * wAt(k, c);
          return s;
        });
        refs.set(refKey, ref);
        S.forEach(([r, c], j) => {
          got[j] = y![r * N + c];
          err = Math.max(err, Math.abs(got[j] - ref[j]));
          refMax = Math.max(refMax, Math.abs(ref[j]));
        });
        if (name === "mm16") d16.set(M, got);
        const base = d16.get(M);
        if (base) { for (let j = 0; j < S.length; j++) dd = Math.max(dd, Math.abs(got[j] - base[j])); }
        checks.push({ err, d16: base ? dd : null, refMax });
      }
      const runs = splitRuns(gpuEvents(await endProfiling(p.session)), nodeOf);
      const per = opt.steps + 1;
      if (runs.length !== per * ms.length) {
        throw new Error(`found ${runs.length} runs in the profile, expected ${per * ms.length}`);
      }
      ms.forEach((M, i) => {
        const measured = runs.slice(i * per + 1, (i + 1) * per);
        const us = median(measured.map((r) => r.reduce((s, e) => s + e.dur, 0))) / p!.reps;
        const kernel = [...new Set(measured[0].map(programOf))].join("+");
        results.push({
          op: name,
          K,
          N,
          M,
          reps: p!.reps,
          us,
          gbs: p!.weightBytes / us / 1e3,
          tflops: 2 * M * K * N / us / 1e6,
          kernel,
          ...checks[i],
        });
      });
    } catch (e) {
      const msg = String((e as Error).message ?? e).split("\n")[0].slice(0, 160);
      for (const M of ms) {
        results.push({
          op: name,
          K,
          N,
          M,
          reps: p?.reps ?? 0,
          us: null,
          gbs: null,
          tflops: null,
          kernel: "",
          err: null,
          d16: null,
          refMax: null,
          error: msg,
        });
      }
    } finally {
      if (p) await closeProbe(p);
    }
  }
}

const HEAD = ["shape KxN", "M", "op", "reps", "us/op", "speedup", "GB/s", "TFLOP/s", "err", "d16", "kernel"];
const WIDTH = [12, 4, 8, 4, 9, 7, 6, 7, 7, 7, 0];
const line = (c: string[]) =>
  c.map((s, i) => (i === c.length - 1 ? s : i < 3 ? s.padEnd(WIDTH[i]) : s.padStart(WIDTH[i]))).join("  ");

/** One shape's rows of the table (fixed widths, so that shapes printed as they finish line up). */
function printShape(results: Result[]) {
  const f = (v: number | null, d: number) => (v === null ? "-" : v.toFixed(d));
  const e = (v: number | null) => (v === null ? "-" : v.toExponential(1));
  for (const M of new Set(results.map((r) => r.M))) {
    const base = results.find((b) => b.op === "mm16" && b.M === M);
    for (const r of results.filter((r) => r.M === M)) {
      console.log(line([
        `${r.K}x${r.N}`,
        String(r.M),
        r.op,
        String(r.reps),
        f(r.us, 1),
        base?.us && r.us ? (base.us / r.us).toFixed(2) : "-",
        f(r.gbs, 0),
        f(r.tflops, 2),
        e(r.err),
        e(r.d16),
        r.error ? `ERROR ${r.error}` : r.kernel,
      ]));
    }
    console.log("");
  }
}

// ---------- rows dependence ----------

interface RowsResult {
  op: string;
  K: number;
  N: number;
  /** Per M (1..rowsMax): elements of row 0 whose bits differ from M=1's, and the kernel that ran. */
  perM: { M: number; diff: number; maxAbs: number; kernel: string }[];
  error?: string;
}

async function rowsShape(w: Weight, x: Float16Array, out: RowsResult[]) {
  const { K, N } = w;
  for (const name of opt.rowsOps) {
    const op = OPS[name];
    if (op.m1Only) continue;
    const res: RowsResult = { op: name, K, N, perM: [] };
    let p: Probe | null = null;
    try {
      p = await openProbe(op, w, 2, true);
      let row0: Float32Array | null = null;
      const Ms = Array.from({ length: opt.rowsMax }, (_, i) => i + 1);
      for (const M of Ms) {
        const y = Float32Array.from((await runOnce(p, x, M, K, true))!.subarray(0, N));
        row0 ??= y;
        let diff = 0, maxAbs = 0;
        for (let n = 0; n < N; n++) {
          if (!Object.is(y[n], row0[n])) diff++;
          maxAbs = Math.max(maxAbs, Math.abs(y[n] - row0[n]));
        }
        res.perM.push({ M, diff, maxAbs, kernel: "" });
      }
      const runs = splitRuns(gpuEvents(await endProfiling(p.session)), nodeOf);
      if (runs.length === Ms.length) {
        runs.forEach((r, i) => res.perM[i].kernel = [...new Set(r.map(kernelOf))].join(" + "));
      }
    } catch (e) {
      res.error = String((e as Error).message ?? e).split("\n")[0].slice(0, 160);
    } finally {
      if (p) await closeProbe(p);
    }
    out.push(res);
  }
}

function printRows(out: RowsResult[]) {
  for (const r of out) {
    const tag = `${r.op.padEnd(8)} ${`${r.K}x${r.N}`.padEnd(10)}`;
    if (r.error) {
      console.log(`${tag} ERROR ${r.error}`);
      continue;
    }
    console.log(`${tag} M=1..${r.perM.length}: ${r.perM.map((m) => (m.diff ? "x" : ".")).join("")}`);
    // Runs of equal (differs?, kernel): where the kernel or the result switches.
    let start = 0;
    for (let i = 1; i <= r.perM.length; i++) {
      const a = r.perM[start], b = r.perM[i];
      if (b && (b.diff > 0) === (a.diff > 0) && b.kernel === a.kernel) continue;
      const seg = r.perM.slice(start, i);
      const maxAbs = Math.max(...seg.map((m) => m.maxAbs));
      const diff = Math.max(...seg.map((m) => m.diff));
      console.log(
        `    M ${a.M}..${seg[seg.length - 1].M}: ${
          diff ? `differs (up to ${diff}/${r.N} elements, max ${maxAbs.toExponential(1)})` : "same"
        }  ${a.kernel}`,
      );
      start = i;
    }
  }
}

// ---------- main ----------

// A session kept open for the whole run: onnxruntime drops its WebGPU context (and device) when the
// last session is released, and weight buffers must live on the device of the session they feed.
const keeper = new GraphBuilder();
keeper.input("k", TensorType.FLOAT, [1]);
keeper.op("Identity", ["k"], {}, { name: "k_out" });
keeper.output("k_out", TensorType.FLOAT, [1]);
await ort.InferenceSession.create(keeper.encode("keeper"), { executionProviders: [EP] });

const results: Result[] = [];
const rowsOut: RowsResult[] = [];
device = await ort.env.webgpu.device;
const adapterName = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo?.description ?? "";
console.log(`adapter: ${adapterName}; onnxruntime-web ${ort.env.versions.web}`);
// Written after every shape, so that a run cut short still leaves what it measured.
const saveJson = () =>
  a.json &&
  Deno.writeTextFileSync(
    a.json,
    JSON.stringify({ adapter: adapterName, options: opt, results, rows: rowsOut }, null, 1) + "\n",
  );
// Rows first: the cheaper question, answered even if a long timing run is cut short.
if (opt.rows) {
  console.log(
    "rows dependence: does row 0's output change with M (row 0's input fixed, other rows random)?\n" +
      "'.' = bit-identical to M=1, 'x' = differs; then runs of M with the kernel (program[cache hint]) that ran",
  );
  for (const [i, { K, N }] of opt.rowsShapes.entries()) {
    const mine: RowsResult[] = [];
    await rowsShape(new Weight(K, N, 2000 + i), activations(K, opt.rowsMax, 9 + K), mine);
    rowsOut.push(...mine);
    printRows(mine);
    saveJson();
  }
}
if (opt.timing) {
  console.log(
    "\nGPU us per op: median over runs of the run's GPU program time / reps (profiled); speedup: mm16's us / this" +
      " op's;\nGB/s: weight bytes read; err: max |y - float64 product over the op's own weights| at sampled" +
      " entries;\nd16: max |y - mm16's y| there (quantization included)\n",
  );
  console.log(line(HEAD));
  const maxM = Math.max(...opt.ms);
  for (const [i, { K, N }] of opt.shapes.entries()) {
    const t0 = performance.now(), mine: Result[] = [];
    await timeShape(new Weight(K, N, 1000 + i), activations(K, maxM, 7 + K), mine);
    results.push(...mine);
    printShape(mine);
    saveJson();
    console.error(`shape ${K}x${N} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}
if (a.json) console.log(`wrote ${a.json}`);
