// ragtime's own WGSL for two programs of onnxruntime's PagedAttention. The decode program
// (FlashAttentionPagedDecodeQKV) runs every item of 1-31 query tokens (every decode) as one workgroup per
// (sequence, head, query tile, tile of keys); onnxruntime's reduces each tile's softmax statistics in
// one thread and accumulates through workgroup memory in f16, ours gives each key of the tile a thread
// and reduces in a tree, in f32, with the same outputs (per-tile partial output and (max, sum), which
// onnxruntime's VxReduce program combines). The prefill program (FlashAttention, prompt parts on the
// long-query path over KV gathered per sequence) is below.
//
// Both are swapped in where onnxruntime creates the shader module: the program's text is read for its
// interface (bindings, uniforms, tile sizes), and a program that does not look exactly as expected
// keeps onnxruntime's code. A row's result depends only on its own sequence's keys, in a fixed order
// whatever else the workgroup, the step or the query bound holds, so batching still never changes a
// request's tokens. Keys and values have one head size (every model the engine builds).

/** WebGPU's default limit on a workgroup's memory; a kernel that would need more is not used. */
const WORKGROUP_BYTES = 16384;

/** Whose attention kernels run: ragtime's (default) or onnxruntime's own (`--attention-kernels`). */
export type AttentionKernels = "ragtime" | "onnxruntime";

let decided = false;
let replaced = 0;

/** How many programs have been given ragtime's code in this process (tests, logs). */
export function attentionKernelsReplaced(): number {
  return replaced;
}

/**
 * Makes every WebGPU device of this process (Deno's or Dawn's, whichever `GPUDevice` is when this
 * runs) create ragtime's attention kernels in place of onnxruntime's. The first call decides, before
 * onnxruntime creates its first session (the engine worker passes the server's setting; tests and
 * probes get RAGTIME_ATTENTION_KERNELS).
 */
export function installAttentionKernels(which: AttentionKernels = kernelsFromEnv()): void {
  if (decided) return;
  decided = true;
  if (which === "onnxruntime") return;
  const proto = (globalThis as { GPUDevice?: { prototype: GPUDevice } }).GPUDevice?.prototype;
  if (!proto) return;
  const create = proto.createShaderModule;
  proto.createShaderModule = function (this: GPUDevice, d: GPUShaderModuleDescriptor) {
    const code = replaceDecodeKernel(d.code) ?? replacePrefillKernel(d.code);
    if (code !== null) replaced++;
    return create.call(this, code === null ? d : { ...d, code });
  };
}

function kernelsFromEnv(): AttentionKernels {
  return Deno.env.get("RAGTIME_ATTENTION_KERNELS") === "onnxruntime" ? "onnxruntime" : "ragtime";
}

/** The interface parts of onnxruntime's decode program that ours relies on, verbatim. */
const EXPECTED = [
  "@group(0) @binding(0) var<storage, read> q: array<vec4<f16>>;",
  "@group(0) @binding(1) var<storage, read> present_key: array<vec4<f16>>;",
  "@group(0) @binding(2) var<storage, read> present_value: array<vec4<f16>>;",
  "@group(0) @binding(3) var<storage, read> block_table: array<i32>;",
  "@group(0) @binding(4) var<storage, read> seqlens_k: array<i32>;",
  "@group(0) @binding(5) var<storage, read> seqlens_q: array<i32>;",
  "@group(0) @binding(6) var<storage, read_write> out_split_vx: array<vec4<f16>>;",
  "@group(0) @binding(7) var<storage, read_write> metadata: array<vec2<f32>>;",
  "@group(0) @binding(8) var<uniform> uniforms: Uniforms;",
  // causal, per-sequence query lengths (left-aligned), no attention bias
  "let q_len_b = u32(seqlens_q[batch_idx]);",
  "let total_sequence_length = u32(seqlens_k[batch_idx]) + 1u;",
  "return q_element_t(0);",
];

/**
 * What both kernels take from onnxruntime's program: its storage bindings and Uniforms struct,
 * verbatim, and the integer constants that `patterns` capture; null when any is missing or not a
 * positive integer, or the struct lacks one of `fields`.
 */
function readInterface(
  code: string,
  patterns: RegExp[],
  fields: string[],
): { numbers: number[]; bindings: string; uniforms: string } | null {
  const numbers = patterns.map((re) => Number(code.match(re)?.[1] ?? NaN));
  const uniforms = code.match(/struct Uniforms \{[^}]*\};/)?.[0];
  if (!uniforms || !numbers.every((n) => Number.isInteger(n) && n > 0)) return null;
  if (fields.some((f) => !new RegExp(`\\b${f}: `).test(uniforms))) return null;
  const header = code.slice(0, code.indexOf("struct Uniforms"));
  return { numbers, uniforms, bindings: header.slice(header.indexOf("@group(0)")) };
}

/**
 * ragtime's code for `code` when it is onnxruntime's paged decode program in the form this was
 * written against; null otherwise (the program keeps its own code).
 */
export function replaceDecodeKernel(code: string): string | null {
  if (!code.includes("out_split_vx") || !code.includes("tile_row_base")) return null;
  if (EXPECTED.some((line) => !code.includes(line))) return null;
  const found = readInterface(code, [
    /var<workgroup> tile_max: array<f32, (\d+)>;/,
    /var<workgroup> tile_row_base: array<u32, (\d+)>;/,
    /var<workgroup> tile_output: array<array<q_value_t, (\d+)>, \d+>;/,
  ], NEEDED_UNIFORMS);
  if (!found) return null;
  const [mTile, tile, hv] = found.numbers;
  // One key row per thread, and the value columns split into whole groups of key rows.
  if (tile > 256 || tile % hv !== 0 || tile & (tile - 1)) return null;
  // q rows, key offsets, two reduction rows and probabilities, value partials
  const bytes = mTile * hv * 16 + tile * 4 + 3 * mTile * tile * 4 + mTile * tile * 16;
  if (bytes > WORKGROUP_BYTES) return null;
  return decodeKernel(mTile, tile, hv, found.uniforms, found.bindings);
}

const NEEDED_UNIFORMS = [
  "block_table_stride",
  "head_size_vec",
  "total_sequence_length",
  "alpha",
  "n_reps",
  "num_present_sequence_length_tile",
  "num_heads",
  "batch_size",
  "new_sequence_length",
  "block_size",
  "kv_num_heads",
];

/**
 * M query rows a workgroup (onnxruntime's m_tile), TILE keys (one a thread), HV vec4s a head.
 * Rows past a sequence's own query length (the padding of short items) are not computed: their
 * partial outputs are 0 with statistics (0, 1), so onnxruntime's reduction gives them 0.
 */
function decodeKernel(M: number, TILE: number, HV: number, uniforms: string, bindings: string): string {
  return `enable f16;
const M: u32 = ${M}u;
const TILE: u32 = ${TILE}u;
const HV: u32 = ${HV}u;
const G: u32 = ${TILE / HV}u;
const LOWEST: f32 = -3.4028234663852886e+38f;
${bindings}${uniforms}
@group(0) @binding(8) var<uniform> uniforms: Uniforms;

var<workgroup> q_s: array<array<vec4<f32>, HV>, M>;
var<workgroup> row_base: array<u32, TILE>;
var<workgroup> red_max: array<array<f32, TILE>, M>;
var<workgroup> red_sum: array<array<f32, TILE>, M>;
var<workgroup> p_s: array<array<f32, TILE>, M>;
var<workgroup> part: array<array<array<vec4<f32>, HV>, G>, M>;

@compute @workgroup_size(TILE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let wg = wid.z * nwg.x * nwg.y + wid.y * nwg.x + wid.x;
  let n_kv_tiles = (uniforms.total_sequence_length + TILE - 1u) / TILE;
  let n_q = uniforms.new_sequence_length;
  let n_q_tiles = (n_q + M - 1u) / M;
  let kv_tile = wg % n_kv_tiles;
  let tile_off = kv_tile * TILE;
  let q_base = ((wg / n_kv_tiles) % n_q_tiles) * M;
  let bh = wg / (n_kv_tiles * n_q_tiles);
  let head = bh % uniforms.num_heads;
  let b = bh / uniforms.num_heads;
  if (b >= uniforms.batch_size) {
    return;
  }
  let total = u32(seqlens_k[b]) + 1u;
  let q_len = u32(seqlens_q[b]);
  let past = total - q_len;
  let rows = min(M, n_q - q_base);
  let meta_base = (bh * n_q + q_base) * uniforms.num_present_sequence_length_tile + kv_tile;
  // query tiles that only pad the item to the step's bound: nothing reads their rows
  if (q_base >= q_len) {
    return;
  }
  if (tile_off >= total) {
    if (t < rows) {
      metadata[meta_base + t * uniforms.num_present_sequence_length_tile] = vec2<f32>(LOWEST, 0.0);
    }
    return;
  }
  // rows of this tile that are queries of the sequence (the rest pad the item to the step's bound)
  let real = min(rows, q_len - q_base);

  for (var i = t; i < M * HV; i += TILE) {
    let m = i / HV;
    if (m < real) {
      let off = ((b * n_q + q_base + m) * uniforms.num_heads + head) * uniforms.head_size_vec + i % HV;
      q_s[m][i % HV] = vec4<f32>(q[off]) * uniforms.alpha;
    }
  }
  let key = tile_off + t;
  let in_seq = key < total;
  var base = 0u;
  if (in_seq) {
    let block = u32(block_table[b * uniforms.block_table_stride + key / uniforms.block_size]);
    base = ((block * uniforms.block_size + key % uniforms.block_size) * uniforms.kv_num_heads +
            head / uniforms.n_reps) * uniforms.head_size_vec;
  }
  row_base[t] = base;
  workgroupBarrier();

  var s: array<f32, M>;
  var ok: array<bool, M>;
  if (in_seq) {
    for (var j = 0u; j < HV; j++) {
      let k4 = vec4<f32>(present_key[base + j]);
      for (var m = 0u; m < M; m++) {
        s[m] += dot(k4, q_s[m][j]);
      }
    }
  }
  for (var m = 0u; m < M; m++) {
    ok[m] = in_seq && m < real && key <= past + q_base + m;
    red_max[m][t] = select(LOWEST, s[m], ok[m]);
    red_sum[m][t] = select(0.0, 1.0, ok[m]);
  }
  workgroupBarrier();
  for (var w = TILE / 2u; w > 0u; w >>= 1u) {
    if (t < w) {
      for (var m = 0u; m < M; m++) {
        let m1 = red_max[m][t];
        let m2 = red_max[m][t + w];
        let mx = max(m1, m2);
        red_sum[m][t] = red_sum[m][t] * exp(m1 - mx) + red_sum[m][t + w] * exp(m2 - mx);
        red_max[m][t] = mx;
      }
    }
    workgroupBarrier();
  }
  for (var m = 0u; m < M; m++) {
    p_s[m][t] = select(0.0, exp(s[m] - red_max[m][0]) / red_sum[m][0], ok[m]);
  }
  if (t < rows) {
    let stats = select(vec2<f32>(0.0, 1.0), vec2<f32>(red_max[t][0], red_sum[t][0]), t < real);
    metadata[meta_base + t * uniforms.num_present_sequence_length_tile] = stats;
  }
  workgroupBarrier();

  let col = t % HV;
  var o: array<vec4<f32>, M>;
  for (var r = t / HV; r < TILE; r += G) {
    if (tile_off + r < total) {
      let v4 = vec4<f32>(present_value[row_base[r] + col]);
      for (var m = 0u; m < M; m++) {
        o[m] += p_s[m][r] * v4;
      }
    }
  }
  for (var m = 0u; m < M; m++) {
    part[m][t / HV][col] = o[m];
  }
  workgroupBarrier();
  for (var i = t; i < M * HV; i += TILE) {
    let m = i / HV;
    if (m < rows) {
      var acc = vec4<f32>(0.0);
      for (var g = 0u; g < G; g++) {
        acc += part[m][g][i % HV];
      }
      out_split_vx[(meta_base + m * uniforms.num_present_sequence_length_tile) * HV + i % HV] = vec4<f16>(acc);
    }
  }
}
`;
}

/** The interface parts of onnxruntime's FlashAttention program (long queries over gathered KV). */
const EXPECTED_PREFILL = [
  "@group(0) @binding(0) var<storage, read> q: array<vec4<f16>>;",
  "@group(0) @binding(1) var<storage, read> present_key: array<vec4<f16>>;",
  "@group(0) @binding(2) var<storage, read> present_value: array<vec4<f16>>;",
  "@group(0) @binding(3) var<storage, read> seqlens_k: array<i32>;",
  "@group(0) @binding(4) var<storage, read> seqlens_q: array<i32>;",
  "@group(0) @binding(5) var<storage, read_write> output: array<vec4<f16>>;",
  "@group(0) @binding(6) var<uniform> uniforms: Uniforms;",
  "const max_k_step : u32 = 32;",
  // causal over per-sequence query lengths, no sliding window, no attention bias
  "let first_query_window_start = 0u;",
  "let local_window_start = 0u;",
  "let q_len_b = u32(seqlens_q[batch_idx]);",
  "let query_tile_start = (workgroup_idx % uniforms.num_seq_tile) * workgroup_size_x;",
];

/**
 * ragtime's code for onnxruntime's FlashAttention program when `code` is that program in the form
 * this was written against; null otherwise. onnxruntime's gives each query row one thread, which
 * walks all its keys alone; here LANES threads share a row, each taking every LANES-th key of a tile
 * with its own running softmax, merged at the end. Each row still sees its keys in tiles of 32 from the
 * first, and a tile with no key the row may see leaves its state exactly as it was, so a row's bits
 * do not depend on how the prompt was cut into steps (long-query mode's invariance).
 */
export function replacePrefillKernel(code: string): string | null {
  if (!code.includes("fn loadq(") || EXPECTED_PREFILL.some((line) => !code.includes(line))) return null;
  const found = readInterface(code, [
    /const workgroup_size_x: u32 = (\d+);/,
    /const head_size : u32 = (\d+);/,
    /const num_heads : u32 = (\d+);/,
  ], ["new_sequence_length", "present_sequence_length", "batch_size", "n_reps", "alpha"]);
  if (!found) return null;
  const [qt, head, heads] = found.numbers;
  if (head % 8 !== 0 || qt * LANES > 256) return null;
  // key and value tiles, then each thread's statistics and merged vec4
  if (2 * 32 * (head / 4) * 8 + qt * LANES * (8 + 16) > WORKGROUP_BYTES) return null;
  return prefillKernel(qt, head / 4, heads, found.uniforms, found.bindings);
}

/**
 * Threads that share a query row in the prefill kernel: on an H100 (135M shape, 150 prompt tokens over
 * 900 cached) a replay took 49.8 ms with one, 21.4 with two, 26.6 with four (docs/BENCHMARKS.md,
 * session 31). RAGTIME_PREFILL_LANES (1, 2, 4 or 8) is for such experiments.
 */
const LANES_ASKED = Number(Deno.env.get("RAGTIME_PREFILL_LANES"));
const LANES = [1, 2, 4, 8].includes(LANES_ASKED) ? LANES_ASKED : 2;

function prefillKernel(QT: number, HV: number, HEADS: number, uniforms: string, bindings: string): string {
  return `enable f16;
const QT: u32 = ${QT}u;
const HV: u32 = ${HV}u;
const NUM_HEADS: u32 = ${HEADS}u;
const LANES: u32 = ${LANES}u;
const KT: u32 = 32u;
const LOWEST: f32 = -3.4028234663852886e+38f;
${bindings}${uniforms}
@group(0) @binding(6) var<uniform> uniforms: Uniforms;

var<workgroup> k_tile: array<array<vec4<f16>, HV>, KT>;
var<workgroup> v_tile: array<array<vec4<f16>, HV>, KT>;
var<workgroup> stats: array<vec2<f32>, QT * LANES>;
// one vec4 of each thread's output at a time (workgroup memory stays under WebGPU's 16 KiB default)
var<workgroup> merge: array<vec4<f32>, QT * LANES>;

@compute @workgroup_size(QT * LANES)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let wg = wid.z * nwg.x * nwg.y + wid.y * nwg.x + wid.x;
  let bh = wg / uniforms.num_seq_tile;
  let head = bh % NUM_HEADS;
  let b = bh / NUM_HEADS;
  if (b >= uniforms.batch_size) {
    return;
  }
  let row = t / LANES;
  let lane = t % LANES;
  let q_tile = wg % uniforms.num_seq_tile;
  // query tiles that only pad the item to the step's bound: nothing reads their rows, and
  // onnxruntime's kernel walked the whole context for them
  let q_len = u32(seqlens_q[b]);
  if (q_tile * QT >= q_len) {
    return;
  }
  let q_idx = q_tile * QT + row;
  let n_q = uniforms.new_sequence_length;
  let valid_q = q_idx < n_q;
  let total = u32(seqlens_k[b]) + 1u;
  let past = total - q_len;
  let loop_bound = min(total, past + (q_tile + 1u) * QT);
  let visible_end = past + q_idx + 1u;

  var q_r: array<vec4<f32>, HV>;
  if (valid_q) {
    let off = ((b * n_q + q_idx) * NUM_HEADS + head) * HV;
    for (var i = 0u; i < HV; i++) {
      q_r[i] = vec4<f32>(q[off + i]) * uniforms.alpha;
    }
  }
  let kv_base = (bh / uniforms.n_reps) * uniforms.present_sequence_length * HV;
  var m = LOWEST;
  var l = 0.0;
  var o: array<vec4<f32>, HV>;
  for (var k_start = 0u; k_start < loop_bound; k_start += KT) {
    workgroupBarrier();
    for (var i = t; i < KT * HV; i += QT * LANES) {
      let key = k_start + i / HV;
      var kv = vec4<f16>(0.0);
      var vv = vec4<f16>(0.0);
      if (key < total) {
        kv = present_key[kv_base + k_start * HV + i];
        vv = present_value[kv_base + k_start * HV + i];
      }
      k_tile[i / HV][i % HV] = kv;
      v_tile[i / HV][i % HV] = vv;
    }
    workgroupBarrier();
    var s: array<f32, KT / LANES>;
    var tile_max = LOWEST;
    for (var j = 0u; j < KT / LANES; j++) {
      let k = j * LANES + lane;
      var d = 0.0;
      for (var i = 0u; i < HV; i++) {
        d += dot(q_r[i], vec4<f32>(k_tile[k][i]));
      }
      s[j] = select(LOWEST, d, k_start + k < visible_end);
      tile_max = max(tile_max, s[j]);
    }
    let m_new = max(m, tile_max);
    let scale = exp(m - m_new);
    var sum = 0.0;
    for (var j = 0u; j < KT / LANES; j++) {
      s[j] = select(0.0, exp(s[j] - m_new), k_start + j * LANES + lane < visible_end);
      sum += s[j];
    }
    l = l * scale + sum;
    m = m_new;
    for (var i = 0u; i < HV; i++) {
      var acc = o[i] * scale;
      for (var j = 0u; j < KT / LANES; j++) {
        acc += s[j] * vec4<f32>(v_tile[j * LANES + lane][i]);
      }
      o[i] = acc;
    }
  }

  // merge the lanes of a row, lane 0 first
  stats[t] = vec2<f32>(m, l);
  workgroupBarrier();
  var m_all = LOWEST;
  for (var j = 0u; j < LANES; j++) {
    m_all = max(m_all, stats[row * LANES + j].x);
  }
  var l_all = 0.0;
  for (var j = 0u; j < LANES; j++) {
    let st = stats[row * LANES + j];
    l_all += st.y * exp(st.x - m_all);
  }
  let w = exp(m - m_all) / l_all;
  let out_off = ((b * n_q + q_idx) * NUM_HEADS + head) * HV;
  for (var i = 0u; i < HV; i++) {
    merge[t] = o[i] * w;
    workgroupBarrier();
    if (lane == 0u && valid_q) {
      var acc = merge[t];
      for (var j = 1u; j < LANES; j++) {
        acc += merge[t + j];
      }
      output[out_off + i] = vec4<f16>(acc);
    }
    workgroupBarrier();
  }
}
`;
}
