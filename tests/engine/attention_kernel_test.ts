// ragtime's paged decode-attention kernel (engine/attention_kernel.ts), run alone on WebGPU against
// attention computed on the CPU: causal rows of several queries, padding rows, keys over several
// tiles and scattered KV blocks, grouped heads; and a row's bits whatever the batch beside it.

import { assert, assertEquals } from "../helpers/assert.ts";
import { replaceDecodeKernel, replacePrefillKernel } from "../../engine/attention_kernel.ts";
import { readBuffer } from "../helpers/gpu_read.ts";
import { prng } from "../helpers/fuzz_cases.ts";

// The interface of onnxruntime-web 1.30's FlashAttentionPagedDecodeQKV program that the kernel
// reads (bindings, uniforms, tile sizes); the body is irrelevant to it.
const UNIFORMS = `struct Uniforms {
  block_table_shape: vec2<u32>,
  block_table_stride: u32,
  head_size_vec: u32,
  total_sequence_length: u32,
  alpha: f32,
  present_sequence_length: u32,
  n_reps: u32,
  num_present_sequence_length_tile: u32,
  num_heads: u32,
  batch_size: u32,
  attn_bias_dim0: u32,
  attn_bias_dim1: u32,
  attn_bias_dim3: u32,
  new_sequence_length: u32,
  block_size: u32,
  max_num_blocks_per_seq: u32,
  kv_num_heads: u32
};`;
const UNIFORM_WORDS = 20; // 18 fields (the vec2 counts two), rounded up to 16 bytes
const BINDINGS = [
  "q: array<vec4<f16>>",
  "present_key: array<vec4<f16>>",
  "present_value: array<vec4<f16>>",
  "block_table: array<i32>",
  "seqlens_k: array<i32>",
  "seqlens_q: array<i32>",
].map((b, i) => `@group(0) @binding(${i}) var<storage, read> ${b};`).join("\n") + `
@group(0) @binding(6) var<storage, read_write> out_split_vx: array<vec4<f16>>;
@group(0) @binding(7) var<storage, read_write> metadata: array<vec2<f32>>;
`;
const M_TILE = 2, TILE = 64, HEAD = 64, HV = HEAD / 4;
const ORT_LIKE = `enable f16;
const workgroup_size_x: u32 = 64;
${BINDINGS}${UNIFORMS}
@group(0) @binding(8) var<uniform> uniforms: Uniforms;
alias q_value_t = vec4<f16>;
alias q_element_t = f16;
var<workgroup> tile_max: array<f32, ${M_TILE}>;
var<workgroup> tile_row_base: array<u32, ${TILE}>;
var<workgroup> tile_output: array<array<q_value_t, ${HV}>, ${M_TILE}>;
fn loadAttentionBias() -> q_element_t {
  return q_element_t(0);
}
fn main_body(batch_idx: u32) {
  let total_sequence_length = u32(seqlens_k[batch_idx]) + 1u;
  let q_len_b = u32(seqlens_q[batch_idx]);
  // out_split_vx
}
`;

const HEADS = 4, KV_HEADS = 2, BLOCK = 16, NUM_BLOCKS = 64;

/** One sequence of a step: its K/V (positions 0..total-1, per kv head) and its query rows. */
interface Seq {
  total: number;
  qLen: number;
  k: Float32Array; // [total, KV_HEADS, HEAD]
  v: Float32Array;
  q: Float32Array; // [qLen, HEADS, HEAD]
}

/** Values rounded to f16, as they will be stored. */
function f16Values(n: number, r: () => number, scale: number): Float32Array {
  return Float32Array.from(new Float16Array(Array.from({ length: n }, () => (r() - 0.5) * scale)));
}

function makeSeq(total: number, qLen: number, seed: number): Seq {
  const r = prng(seed);
  return {
    total,
    qLen,
    k: f16Values(total * KV_HEADS * HEAD, r, 2),
    v: f16Values(total * KV_HEADS * HEAD, r, 2),
    q: f16Values(qLen * HEADS * HEAD, r, 2),
  };
}

/** Attention of each query row on the CPU (float64): row i sees keys 0..total-qLen+i. */
function reference(s: Seq): Float64Array {
  const out = new Float64Array(s.qLen * HEADS * HEAD);
  const past = s.total - s.qLen, alpha = 1 / Math.sqrt(HEAD);
  for (let i = 0; i < s.qLen; i++) {
    for (let h = 0; h < HEADS; h++) {
      const kh = Math.floor(h / (HEADS / KV_HEADS)), n = past + i + 1;
      const scores = Array.from({ length: n }, (_, t) => {
        let d = 0;
        for (let x = 0; x < HEAD; x++) {
          d += s.q[(i * HEADS + h) * HEAD + x] * s.k[(t * KV_HEADS + kh) * HEAD + x];
        }
        return d * alpha;
      });
      const mx = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - mx)), sum = e.reduce((a, b) => a + b, 0);
      for (let x = 0; x < HEAD; x++) {
        let o = 0;
        for (let t = 0; t < n; t++) o += e[t] * s.v[(t * KV_HEADS + kh) * HEAD + x];
        out[(i * HEADS + h) * HEAD + x] = o / sum;
      }
    }
  }
  return out;
}

let device: GPUDevice | null = null;
async function gpu(): Promise<GPUDevice> {
  if (device) return device;
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter?.features.has("shader-f16")) throw new Error("no WebGPU adapter with shader-f16");
  return device = await adapter.requestDevice({ requiredFeatures: ["shader-f16"] });
}

/** Uploads `inputs` and `outputs`, runs `code` over them (bindings in that order, then `uniforms`), reads outputs. */
async function dispatch(
  code: string,
  inputs: ArrayBufferView[],
  outputs: ArrayBufferView[],
  uniforms: ArrayBufferView,
  workgroups: number,
): Promise<ArrayBuffer[]> {
  const dev = await gpu();
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const upload = (data: ArrayBufferView, use = usage) => {
    const b = dev.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage: use });
    dev.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
    return b;
  };
  const ins = inputs.map((d) => upload(d)), outs = outputs.map((d) => upload(d));
  const uniform = upload(uniforms, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  const all = [...ins, ...outs, uniform];
  const pipeline = dev.createComputePipeline({
    layout: "auto",
    compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
  });
  const group = dev.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: all.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(workgroups);
  pass.end();
  dev.queue.submit([enc.finish()]);
  const read = await Promise.all(outs.map((b) => readBuffer(dev, b)));
  all.forEach((b) => b.destroy());
  return read;
}

/** Each sequence's rows against attention on the CPU, within fp16 rounding. */
function assertNearReference(seqs: Seq[], outputs: ArrayLike<number>[]) {
  seqs.forEach((s, b) => {
    const want = reference(s);
    let worst = 0;
    want.forEach((w, i) => worst = Math.max(worst, Math.abs(w - outputs[b][i])));
    assert(worst < 4e-3, `sequence ${b}: max abs error ${worst}`);
  });
}

/**
 * Runs the kernel on a step of `seqs` (query bound nQ, the longest qLen unless given), blocks handed
 * out in a scattered order, then combines the key tiles as onnxruntime's VxReduce does. Returns
 * each sequence's output rows [qLen, HEADS, HEAD] and the raw per-tile statistics.
 */
async function run(seqs: Seq[], nQ = Math.max(...seqs.map((s) => s.qLen))) {
  const code = replaceDecodeKernel(ORT_LIKE);
  assert(code !== null, "the kernel accepts onnxruntime's interface");
  const B = seqs.length, maxTotal = Math.max(...seqs.map((s) => s.total));
  const tiles = Math.ceil(maxTotal / TILE), blocksPerSeq = Math.ceil(maxTotal / BLOCK);
  // scattered blocks: sequence b's j-th block is a permutation of the pool
  const order = Array.from({ length: NUM_BLOCKS }, (_, i) => (i * 37 + 11) % NUM_BLOCKS);
  const table = new Int32Array(B * blocksPerSeq);
  const keys = new Float16Array(NUM_BLOCKS * BLOCK * KV_HEADS * HEAD);
  const values = new Float16Array(keys.length);
  let next = 0;
  seqs.forEach((s, b) => {
    for (let j = 0; j < Math.ceil(s.total / BLOCK); j++) table[b * blocksPerSeq + j] = order[next++];
    for (let t = 0; t < s.total; t++) {
      const slot = table[b * blocksPerSeq + Math.floor(t / BLOCK)] * BLOCK + t % BLOCK;
      keys.set(s.k.subarray(t * KV_HEADS * HEAD, (t + 1) * KV_HEADS * HEAD), slot * KV_HEADS * HEAD);
      values.set(s.v.subarray(t * KV_HEADS * HEAD, (t + 1) * KV_HEADS * HEAD), slot * KV_HEADS * HEAD);
    }
  });
  // queries unpacked to the bound: [B, nQ, HEADS, HEAD]; padding rows hold garbage
  const q = new Float16Array(B * nQ * HEADS * HEAD).fill(7);
  seqs.forEach((s, b) => q.set(s.q, b * nQ * HEADS * HEAD));
  const u = new Uint32Array(UNIFORM_WORDS), uf = new Float32Array(u.buffer);
  u.set([B, blocksPerSeq, blocksPerSeq, HV, maxTotal]);
  uf[5] = 1 / Math.sqrt(HEAD);
  u.set([maxTotal, HEADS / KV_HEADS, tiles, HEADS, B, 0, 0, 0, nQ, BLOCK, blocksPerSeq, KV_HEADS], 6);

  const outWords = B * HEADS * nQ * tiles * HV * 4;
  const [splitRaw, metaRaw] = await dispatch(
    code,
    [q, keys, values, table, Int32Array.from(seqs, (s) => s.total - 1), Int32Array.from(seqs, (s) => s.qLen)],
    [new Float16Array(outWords).fill(-9), new Float32Array(B * HEADS * nQ * tiles * 2).fill(-9)],
    u,
    B * HEADS * Math.ceil(nQ / M_TILE) * tiles,
  );
  const split = new Float16Array(splitRaw, 0, outWords), stats = new Float32Array(metaRaw);

  // VxReduce: tiles up to the sequence's own length, rescaled by their statistics
  const outputs = seqs.map((s, b) => {
    const o = new Float64Array(s.qLen * HEADS * HEAD);
    const n = Math.ceil(s.total / TILE);
    for (let h = 0; h < HEADS; h++) {
      for (let i = 0; i < s.qLen; i++) {
        const row = ((b * HEADS + h) * nQ + i) * tiles;
        let gMax = -Infinity, gSum = 0;
        for (let t = 0; t < n; t++) gMax = Math.max(gMax, stats[(row + t) * 2]);
        for (let t = 0; t < n; t++) gSum += stats[(row + t) * 2 + 1] * Math.exp(stats[(row + t) * 2] - gMax);
        for (let t = 0; t < n; t++) {
          const w = stats[(row + t) * 2 + 1] * Math.exp(stats[(row + t) * 2] - gMax) / gSum;
          for (let x = 0; x < HEAD; x++) o[(i * HEADS + h) * HEAD + x] += w * split[(row + t) * HEAD + x];
        }
      }
    }
    return o;
  });
  return { outputs, split, stats, tiles, nQ };
}

Deno.test("decode attention kernel: causal rows over scattered blocks and several key tiles equal attention on the CPU", async () => {
  // a decode, a 3-token item (its rows see 1-3 more keys), one past two tiles, one inside a tile
  const seqs = [makeSeq(70, 1, 1), makeSeq(5, 3, 2), makeSeq(150, 2, 3), makeSeq(64, 1, 4)];
  const { outputs } = await run(seqs, 3);
  assertNearReference(seqs, outputs);
});

Deno.test("decode attention kernel: padding rows and tiles past a sequence's end hold neutral values or are skipped", async () => {
  const seqs = [makeSeq(40, 1, 5), makeSeq(130, 2, 6)];
  const { split, stats, tiles, nQ } = await run(seqs, 3);
  assertEquals([tiles, nQ], [3, 3]);
  // sequence 0, head 0: tile 0 computed; tiles 1-2 lie past its 40 keys
  for (const t of [1, 2]) assertEquals(stats[t * 2 + 1], 0, `tile ${t} past the end: sum 0`);
  // its row 1 pads the item beside row 0: statistics (0, 1) and zero output in the tile it covers
  const row = 1 * tiles;
  assertEquals([stats[row * 2], stats[row * 2 + 1]], [0, 1]);
  assert(split.subarray(row * HEAD, (row + 1) * HEAD).every((x) => x === 0), "padding row 1 is zero");
  // row 2 is a query tile of padding alone: not computed (its buffers keep what they held)
  assertEquals(stats[2 * tiles * 2 + 1], -9);
});

Deno.test("decode attention kernel: a row's bits do not depend on the sequences or query bound beside it", async () => {
  const target = makeSeq(100, 1, 9);
  const alone = (await run([target], 2)).outputs[0];
  const crowded = (await run([makeSeq(200, 3, 10), makeSeq(17, 1, 11), target], 31)).outputs[2];
  assertEquals(Array.from(crowded), Array.from(alone));
});

Deno.test("decode attention kernel: a program unlike onnxruntime's expected one keeps its own code", () => {
  assert(replaceDecodeKernel(ORT_LIKE) !== null);
  assertEquals(replaceDecodeKernel(ORT_LIKE.replace("read> seqlens_q", "read> seqlens_x")), null);
  assertEquals(replaceDecodeKernel(ORT_LIKE.replace("return q_element_t(0);", "return bias;")), null);
  assertEquals(replaceDecodeKernel("@compute fn main() {}"), null);
});

// onnxruntime-web 1.30's FlashAttention program (long queries over KV gathered per sequence), its
// interface only.
const PREFILL_QT = 64;
const PREFILL_LIKE = `enable f16;
const workgroup_size_x: u32 = ${PREFILL_QT};
@group(0) @binding(0) var<storage, read> q: array<vec4<f16>>;
@group(0) @binding(1) var<storage, read> present_key: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> present_value: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> seqlens_k: array<i32>;
@group(0) @binding(4) var<storage, read> seqlens_q: array<i32>;
@group(0) @binding(5) var<storage, read_write> output: array<vec4<f16>>;
struct Uniforms {
  new_sequence_length: u32,
  total_sequence_length: u32,
  present_sequence_length: u32,
  batch_size: u32,
  n_reps: u32,
  alpha: f32,
  num_seq_tile: u32,
  attn_bias_dim0: u32,
  attn_bias_dim1: u32,
  attn_bias_dim3: u32,
  local_window_size: u32
};
@group(0) @binding(6) var<uniform> uniforms: Uniforms;
const head_size : u32 = ${HEAD};
const num_heads : u32 = ${HEADS};
const max_k_step : u32 = 32;
fn loadq(batch_idx : u32) {}
fn main_body(workgroup_idx: u32, batch_idx: u32) {
  let query_tile_start = (workgroup_idx % uniforms.num_seq_tile) * workgroup_size_x;
  let q_len_b = u32(seqlens_q[batch_idx]);
  let first_query_window_start = 0u;
  let local_window_start = 0u;
}
`;

/** Runs the prefill kernel on `seqs` (KV laid out per sequence and kv head, as gathered). */
async function runPrefill(seqs: Seq[]): Promise<Float32Array[]> {
  const code = replacePrefillKernel(PREFILL_LIKE);
  assert(code !== null, "the kernel accepts onnxruntime's interface");
  const B = seqs.length, nQ = Math.max(...seqs.map((s) => s.qLen));
  const present = Math.max(...seqs.map((s) => s.total)), tiles = Math.ceil(nQ / PREFILL_QT);
  const keys = new Float16Array(B * KV_HEADS * present * HEAD), values = new Float16Array(keys.length);
  const q = new Float16Array(B * nQ * HEADS * HEAD).fill(3);
  seqs.forEach((s, b) => {
    q.set(s.q, b * nQ * HEADS * HEAD);
    for (let t = 0; t < s.total; t++) {
      for (let h = 0; h < KV_HEADS; h++) {
        const from = (t * KV_HEADS + h) * HEAD, to = ((b * KV_HEADS + h) * present + t) * HEAD;
        keys.set(s.k.subarray(from, from + HEAD), to);
        values.set(s.v.subarray(from, from + HEAD), to);
      }
    }
  });
  const u = new Uint32Array(12), uf = new Float32Array(u.buffer);
  u.set([nQ, present, present, B, HEADS / KV_HEADS, 0, tiles]);
  uf[5] = 1 / Math.sqrt(HEAD);
  const [out] = await dispatch(
    code,
    [q, keys, values, Int32Array.from(seqs, (s) => s.total - 1), Int32Array.from(seqs, (s) => s.qLen)],
    [new Float16Array(B * nQ * HEADS * HEAD)],
    u,
    B * HEADS * tiles,
  );
  const result = new Float16Array(out, 0, B * nQ * HEADS * HEAD);
  return seqs.map((s, b) =>
    Float32Array.from(result.subarray(b * nQ * HEADS * HEAD, (b * nQ + s.qLen) * HEADS * HEAD))
  );
}

/** The last `n` query rows of `s` as an item of their own over the rest as cached past. */
function tail(s: Seq, n: number): Seq {
  return { ...s, qLen: n, q: s.q.subarray((s.qLen - n) * HEADS * HEAD) };
}

Deno.test("prefill attention kernel: prompts over cached past, across query tiles, equal attention on the CPU", async () => {
  const seqs = [makeSeq(200, 130, 21), makeSeq(33, 33, 22), makeSeq(100, 5, 23)];
  const got = await runPrefill(seqs);
  assertNearReference(seqs, got);
});

Deno.test("prefill attention kernel: a row's bits do not depend on how the prompt was cut or what runs beside it", async () => {
  const whole = makeSeq(150, 150, 31);
  const [all] = await runPrefill([whole]);
  for (const n of [40, 97, 1]) {
    const [, part] = await runPrefill([makeSeq(77, 70, 32), tail(whole, n)]);
    assertEquals(Array.from(part), Array.from(all.subarray((150 - n) * HEADS * HEAD)), `last ${n} rows`);
  }
});

Deno.test("prefill attention kernel: a program unlike onnxruntime's expected one keeps its own code", () => {
  assert(replacePrefillKernel(PREFILL_LIKE) !== null);
  assertEquals(
    replacePrefillKernel(PREFILL_LIKE.replace("local_window_start = 0u", "local_window_start = w")),
    null,
  );
  assertEquals(
    replacePrefillKernel(PREFILL_LIKE.replace("max_k_step : u32 = 32", "max_k_step : u32 = 16")),
    null,
  );
  assertEquals(replacePrefillKernel(ORT_LIKE), null);
  assertEquals(replaceDecodeKernel(PREFILL_LIKE), null);
});
