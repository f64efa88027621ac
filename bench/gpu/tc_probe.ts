// Can a hand-written WGSL kernel reach the tensor cores from Deno? Times an f16 matmul built on Dawn's
// `chromium-experimental-subgroup-matrix` (f16 x f16 -> f32, 16x16x16 tiles) on the shapes of a prefill
// step, to set beside onnxruntime's MatMul on the same card (matmul_probe.ts --ops mm16, ~30 TFLOP/s on the
// H100). Needs Dawn with the allow_unsafe_apis toggle:
//
//   RAGTIME_DAWN_FEATURES=allow_unsafe_apis deno run -A --preload bench/gpu/dawn.ts bench/gpu/tc_probe.ts \
//     [--shapes MxKxN,...] [--reps 20] [--variants LIST]
//
// C[M, N] = A[M, K] x B[K, N], all row-major, A and B f16, C f32. A variant `d|s:SGMxSGN:TMxTN` runs
// SGM x SGN subgroups (of 32) per workgroup, each computing TM x TN result tiles of 16x16; `d` loads the
// tiles straight from storage, `s` stages 32-deep slices of A and B in workgroup memory first. Each
// variant is checked against the CPU on a small product (exact: small integer operands) before timing.
// Timing: GPU timestamps around one pass of --reps dispatches; the median of 3 passes. `--null` only
// compiles the kernels on Dawn's null backend (no GPU needed); `--verbose` logs each stage.
//
// Found on the H100 (session 26): every variant ends the process with SIGFPE right after its pipeline is
// created, as does the one-tile subgroup_matrix_repro.ts: no timing yet.

import { parseArgs } from "node:util";
import { passUs as timedPass, readBack as readFrom } from "./gpu_timing.ts";

const readBack = (src: GPUBuffer, bytes: number) => readFrom(device, src, bytes);

const { values: a } = parseArgs({
  options: {
    shapes: { type: "string", default: "2048x2048x3072,2048x2048x16384,2048x8192x2048,512x2048x16384" },
    reps: { type: "string", default: "20" },
    "compile-only": { type: "boolean", default: false },
    verbose: { type: "boolean", default: false },
    // Dawn's null backend (no GPU): compiles the kernels, for checking their WGSL anywhere.
    null: { type: "boolean", default: false },
    type: { type: "string", default: "f16" },
    variants: { type: "string", default: "d:1x1:2x2,d:2x2:2x2,d:2x2:4x2,s:2x2:2x2,s:2x2:4x2,s:4x2:2x4" },
  },
});

if (a.null) {
  const dawn = await import("webgpu");
  Object.defineProperty(navigator, "gpu", {
    value: dawn.create(["backend=null", "enable-dawn-features=allow_unsafe_apis"]),
    configurable: true,
  });
  Object.assign(globalThis, dawn.globals);
  a["compile-only"] = true;
}
const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no adapter");
const FEATURE = "chromium-experimental-subgroup-matrix" as GPUFeatureName;
// deno-lint-ignore no-explicit-any
const configs = (adapter.info as any).subgroupMatrixConfigs ?? (adapter as any).subgroupMatrixConfigs;
console.log(`adapter: ${adapter.info.description || adapter.info.vendor}`);
const shown = (configs ?? []).map((c: Record<string, unknown>) =>
  `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`
);
console.log(`subgroup matrix: ${adapter.features.has(FEATURE)}; configs: ${shown.join(", ")}`);
if (!adapter.features.has(FEATURE)) Deno.exit(0);
console.error("requesting the device");
const device = await adapter.requestDevice({
  requiredFeatures: [
    ...(a.type === "i8" ? [] : ["shader-f16"]),
    "subgroups",
    "timestamp-query",
    FEATURE,
  ] as GPUFeatureName[],
  requiredLimits: {
    maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
  },
});

interface Variant {
  name: string;
  staged: boolean;
  sgm: number;
  sgn: number;
  tm: number;
  tn: number;
}

function parseVariant(s: string): Variant {
  const [kind, sg, t] = s.split(":");
  const [sgm, sgn] = sg.split("x").map(Number);
  const [tm, tn] = t.split("x").map(Number);
  return { name: s, staged: kind === "s", sgm, sgn, tm, tn };
}

/** The element type's WGSL: f16 x f16 -> f32 at 16x16x16, or i8 x i8 -> i32 at 16x16x32 (4 to a word). */
const T = a.type === "i8"
  ? {
    ab: "i32",
    word: "i32",
    c: "i32",
    left: "subgroup_matrix_left<i8, 32, 16>",
    right: "subgroup_matrix_right<i8, 16, 32>",
    res: "subgroup_matrix_result<i32, 16, 16>",
    tk: 32,
    kt: 64,
  }
  : {
    ab: "f16",
    word: "vec4<f16>",
    c: "f32",
    left: "subgroup_matrix_left<f16, 16, 16>",
    right: "subgroup_matrix_right<f16, 16, 16>",
    res: "subgroup_matrix_result<f32, 16, 16>",
    tk: 16,
    kt: 32,
  };
const I8 = a.type === "i8";

function kernel(v: Variant, K: number, N: number): string {
  const BM = v.sgm * v.tm * 16, BN = v.sgn * v.tn * 16, threads = 32 * v.sgm * v.sgn, KT = T.kt;
  const accs = Array.from({ length: v.tm * v.tn }, (_, i) => `var c${i} = ${T.res}();`);
  const tile = (
    src: string,
    aOff: (i: number) => string,
    aStride: string,
    bOff: (j: number) => string,
    bStride: string,
  ) => {
    // i8 operands are packed 4 to an i32: their offsets and strides count words.
    const w = (e: string) => (I8 ? `(${e}) / 4u` : e);
    const aO = (i: number) => w(aOff(i)), bO = (j: number) => w(bOff(j));
    [aStride, bStride] = [w(aStride), w(bStride)];
    const lines: string[] = [];
    for (let i = 0; i < v.tm; i++) {
      lines.push(`let a${i} = subgroupMatrixLoad<${T.left}, row_major>(&${src}A, ${aO(i)}, ${aStride});`);
    }
    for (let j = 0; j < v.tn; j++) {
      lines.push(`let b${j} = subgroupMatrixLoad<${T.right}, row_major>(&${src}B, ${bO(j)}, ${bStride});`);
    }
    for (let i = 0; i < v.tm; i++) {
      for (let j = 0; j < v.tn; j++) {
        lines.push(`c${i * v.tn + j} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, c${i * v.tn + j});`);
      }
    }
    return lines.join("\n      ");
  };
  const stores = [];
  for (let i = 0; i < v.tm; i++) {
    for (let j = 0; j < v.tn; j++) {
      stores.push(
        `subgroupMatrixStore<row_major>(&C, (m0 + ${i * 16}u) * ${N}u + n0 + ${j * 16}u, c${
          i * v.tn + j
        }, ${N}u);`,
      );
    }
  }
  const head = `${I8 ? "" : "enable f16;\n"}enable chromium_experimental_subgroup_matrix;
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> A: array<${T.ab}>;
@group(0) @binding(1) var<storage, read> B: array<${T.ab}>;
@group(0) @binding(2) var<storage, read_write> C: array<${T.c}>;
@group(0) @binding(3) var<storage, read> A4: array<${T.word}>;
@group(0) @binding(4) var<storage, read> B4: array<${T.word}>;
${
    v.staged
      ? `var<workgroup> sA: array<${T.ab}, ${
        I8 ? (BM * KT) / 4 : BM * KT
      }>;\nvar<workgroup> sB: array<${T.ab}, ${I8 ? (KT * BN) / 4 : KT * BN}>;`
      : ""
  }
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) li: u32${
    threads > 32 ? ", @builtin(subgroup_id) sgid: u32" : ""
  }) {
  let sg = ${threads > 32 ? "sgid" : "0u"};
  let wm = sg / ${v.sgn}u;
  let wn = sg % ${v.sgn}u;
  let m0 = g.y * ${BM}u + wm * ${v.tm * 16}u;
  let n0 = g.x * ${BN}u + wn * ${v.tn * 16}u;
  ${accs.join("\n  ")}`;
  if (!v.staged) {
    return `${head}
  for (var k = 0u; k < ${K}u; k += ${T.tk}u) {
      ${
      tile("", (i) => `(m0 + ${i * 16}u) * ${K}u + k`, `${K}u`, (j) => `k * ${N}u + n0 + ${j * 16}u`, `${N}u`)
    }
  }
  ${stores.join("\n  ")}
}`;
  }
  // Cooperative copies of a BM x KT slice of A and a KT x BN slice of B, 4 elements (a word) at a time.
  const put = (dst: string, at: string) =>
    I8 ? `${dst}[(${at}) / 4u] = x;` : [0, 1, 2, 3].map((q) => `${dst}[${at} + ${q}u] = x[${q}];`).join(" ");
  return `${head}
  let bm0 = g.y * ${BM}u;
  let bn0 = g.x * ${BN}u;
  for (var k = 0u; k < ${K}u; k += ${KT}u) {
    for (var e = li; e < ${(BM * KT) / 4}u; e += ${threads}u) {
      let r = e / ${KT / 4}u;
      let c = (e % ${KT / 4}u) * 4u;
      let x = A4[((bm0 + r) * ${K}u + k + c) / 4u];
      ${put("sA", `r * ${KT}u + c`)}
    }
    for (var e = li; e < ${(KT * BN) / 4}u; e += ${threads}u) {
      let r = e / ${BN / 4}u;
      let c = (e % ${BN / 4}u) * 4u;
      let x = B4[((k + r) * ${N}u + bn0 + c) / 4u];
      ${put("sB", `r * ${BN}u + c`)}
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${KT}u; kk += ${T.tk}u) {
      ${
    tile(
      "s",
      (i) => `(wm * ${v.tm * 16}u + ${i * 16}u) * ${KT}u + kk`,
      `${KT}u`,
      (j) => `kk * ${BN}u + wn * ${v.tn * 16}u + ${j * 16}u`,
      `${BN}u`,
    )
  }
    }
    workgroupBarrier();
  }
  ${stores.join("\n  ")}
}`;
}

function buffer(bytes: number, usage: number): GPUBuffer {
  return device.createBuffer({ size: Math.max(16, bytes), usage });
}

interface Prepared {
  pipeline: GPUComputePipeline;
  bind: GPUBindGroup;
  grid: [number, number];
  bufs: GPUBuffer[];
}

type Operand = Float16Array | Int8Array;

async function prepare(v: Variant, M: number, K: number, N: number, A: Operand, B: Operand) {
  const BM = v.sgm * v.tm * 16, BN = v.sgn * v.tn * 16;
  if (M % BM || N % BN || K % T.kt) throw new Error(`${v.name}: ${M}x${K}x${N} not a multiple of its tile`);
  log(`${v.name}: compiling`);
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ code: kernel(v, K, N) });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === "error");
  if (errors.length) {
    throw new Error(`${v.name}: ${errors.map((e) => `${e.lineNum}: ${e.message}`).join("; ")}`);
  }
  if (a["compile-only"]) throw new Error("compiled");
  log(`${v.name}: pipeline`);
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const bA = buffer(A.byteLength, S), bB = buffer(B.byteLength, S), bC = buffer(M * N * 4, S);
  device.queue.writeBuffer(bA, 0, A);
  device.queue.writeBuffer(bB, 0, B);
  const layout = pipeline.getBindGroupLayout(0);
  const entries = [bA, bB, bC, bA, bB].map((buf, i) => ({ binding: i, resource: { buffer: buf } }));
  // Bindings a variant does not use are dropped from its "auto" layout.
  const used = v.staged ? [2, 3, 4] : [0, 1, 2];
  const bind = device.createBindGroup({ layout, entries: entries.filter((e) => used.includes(e.binding)) });
  const err = await device.popErrorScope();
  if (err) throw new Error(`${v.name}: ${err.message}`);
  return {
    pipeline,
    bind,
    grid: [N / BN, M / BM] as [number, number],
    bufs: [bA, bB, bC],
  } satisfies Prepared;
}

/** GPU microseconds of one of `reps` dispatches in one pass. */
async function passUs(p: Prepared, reps: number): Promise<number> {
  const us = await timedPass(device, (pass) => {
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, p.bind);
    for (let r = 0; r < reps; r++) pass.dispatchWorkgroups(p.grid[0], p.grid[1]);
  });
  return us / reps;
}

/** Operands of the element type: integers in [-8, 7] (exact), or small random halves for timing. */
function operand(n: number, seed: number, exact: boolean): Operand {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  if (I8) return Int8Array.from({ length: n }, () => (next() >>> 28) - 8);
  return Float16Array.from({ length: n }, () => exact ? (next() >>> 28) - 8 : (next() / 2 ** 32 - 0.5) * 0.1);
}

function log(s: string): void {
  if (a.verbose) console.error(s);
}

const variants = a.variants!.split(",").map(parseVariant);
const reps = Number(a.reps);
const good: Variant[] = [];
for (const v of variants) {
  // Exact check: integer operands in [-8, 7], sums well inside f32's exact range.
  const [M, K, N] = [v.sgm * v.tm * 16 * 2, 128, v.sgn * v.tn * 16 * 2];
  const A = operand(M * K, 1, true), B = operand(K * N, 2, true);
  try {
    const p = await prepare(v, M, K, N, A, B);
    log(`${v.name}: dispatch`);
    await passUs(p, 1);
    const raw = await readBack(p.bufs[2], M * N * 4);
    const C = I8 ? new Int32Array(raw) : new Float32Array(raw);
    let bad = 0;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += A[i * K + k] * B[k * N + j];
        if (C[i * N + j] !== s) bad++;
      }
    }
    p.bufs.forEach((b) => b.destroy());
    console.log(`${v.name}: check ${M}x${K}x${N}: ${bad === 0 ? "exact" : `${bad} of ${M * N} wrong`}`);
    if (bad === 0) good.push(v);
  } catch (e) {
    console.log(`${v.name}: ${(e as Error).message.slice(0, 400)}`);
  }
}

console.log(`\nshape MxKxN       variant        us/op    T${I8 ? "OP" : "FLOP"}/s (${a.type})`);
for (const shape of a.shapes!.split(",")) {
  const [M, K, N] = shape.split("x").map(Number);
  const A = operand(M * K, 3, false), B = operand(K * N, 4, false);
  for (const v of good) {
    try {
      const p = await prepare(v, M, K, N, A, B);
      await passUs(p, 2);
      const t = [await passUs(p, reps), await passUs(p, reps), await passUs(p, reps)].sort((x, y) =>
        x - y
      )[1];
      console.log(
        `${shape.padEnd(17)} ${v.name.padEnd(14)} ${t.toFixed(1).padStart(8)} ${
          (2 * M * K * N / t / 1e6).toFixed(1).padStart(9)
        }`,
      );
      p.bufs.forEach((b) => b.destroy());
    } catch (e) {
      console.log(`${shape} ${v.name}: ${(e as Error).message.slice(0, 300)}`);
    }
  }
}
