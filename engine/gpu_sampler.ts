// Sampling on the GPU: temperature, top_k, top_p and min_p for every sampled row of a step in one
// WGSL dispatch on onnxruntime's device, so such requests keep their logits on the GPU, stay in
// captured and pipelined steps, and cost ~one kernel instead of a [rows, vocab] read-back and a sort
// per row on the CPU (64 top_p rows of a 128k vocabulary took ~1.8 s a step that way on the H100).
//
// One workgroup per row, so a row's result never depends on which rows share its step. Every sum is
// a fixed-order reduction (strided per thread, then a tree): the same row gives the same bits
// wherever it runs. The rule is the CPU sampler's (engine/sampler.ts), with filters as thresholds
// on the logit: top_k keeps every token at least as likely as the k-th most likely one, top_p every
// token at least as likely as the least likely one of the smallest most-likely-first set reaching
// top_p of the mass top_k kept (so ties at a boundary are kept together, as vLLM's top_k does),
// min_p drops weights below min_p times the best. Then the inverse CDF over ascending ids with the
// row's own uniform u. logit_bias and the penalties edit the few logits they change first, in place
// (editShader). Thresholds are exact, found over an order-preserving integer key of the logit: top_k's
// a byte at a time (4 passes over the row, counting into a workgroup histogram), top_p's a bit at a
// time (32 passes, as its sums are floats).

import { EDIT_FLOATS, EDIT_HEADER, EDIT_PENDING } from "./logit_edits.ts";

/** Floats per row in the parameter buffer: u, 1 / temperature, top_k, top_p, min_p, padding. */
export const SAMPLER_PARAMS = 8;

/** The kernel for one vocabulary size and workgroup size (constants, so its loops are fixed). */
function shader(vocab: number, workgroup: number): string {
  return /* wgsl */ `
const V: u32 = ${vocab}u;
const WG: u32 = ${workgroup}u;
const CHUNK: u32 = ${Math.ceil(vocab / workgroup)}u;
const LOWEST: f32 = -3.4028234e38;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> greedy: array<i32>;
@group(0) @binding(2) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sampled: array<i32>;

var<workgroup> red: array<f32, WG>;
var<workgroup> oneF: f32;
var<workgroup> oneU: u32;
var<workgroup> oneU2: u32;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> p0: vec4<f32>;
var<workgroup> p1: vec4<f32>;

// NaN never wins: it reads as the lowest float.
fn logit(i: u32) -> f32 {
  let x = logits[i];
  return select(LOWEST, x, x == x);
}

// Order-preserving: a < b as floats exactly when key(a) < key(b) (and -0 keys below +0).
fn key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Workgroup reductions; each returns a value every invocation agrees on (uniform control flow).
fn sumF(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (t < s) { red[t] = red[t] + red[t + s]; }
    workgroupBarrier();
  }
  if (t == 0u) { oneF = red[0]; }
  return workgroupUniformLoad(&oneF);
}

// A token's weight if the filters keep it (key at least th, weight at least minP), else 0: the one
// expression every sum and the walk use, so they see the same bits.
fn kept(i: u32, mx: f32, invT: f32, th: u32, minP: f32) -> f32 {
  let x = logit(i);
  let w = exp((x - mx) * invT);
  return select(0.0, w, key(x) >= th && w >= minP);
}

// This invocation's strided share of a row's kept mass.
fn massFrom(t: u32, base: u32, mx: f32, invT: f32, th: u32, minP: f32) -> f32 {
  var s = 0.0;
  for (var i = t; i < V; i += WG) { s += kept(base + i, mx, invT, th, minP); }
  return s;
}

fn maxF(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (t < s) { red[t] = max(red[t], red[t + s]); }
    workgroupBarrier();
  }
  if (t == 0u) { oneF = red[0]; }
  return workgroupUniformLoad(&oneF);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let r = wid.x;
  let t = lid.x;
  if (t == 0u) {
    p0 = params[2u * r];
    p1 = params[2u * r + 1u];
  }
  let a = workgroupUniformLoad(&p0);
  let b = workgroupUniformLoad(&p1);
  let u = a.x;
  let invT = a.y;
  let topK = u32(a.z);
  let topP = a.w;
  let minP = b.x;
  // Greedy rows keep the step's argmax.
  if (u < 0.0) {
    if (t == 0u) { sampled[r] = greedy[r]; }
    return;
  }
  let base = r * V;

  var m = LOWEST;
  for (var i = t; i < V; i += WG) { m = max(m, logit(base + i)); }
  let mx = maxF(t, m);
  // No finite maximum: the argmax, as on the CPU.
  if (mx <= LOWEST || mx > 3.4028234e38) {
    if (t == 0u) { sampled[r] = greedy[r]; }
    return;
  }
  let top = key(mx);

  // top_k: the largest key that at least topK tokens reach, a byte at a time from the top: count the
  // tokens under the prefix found so far by their next byte, then take the byte where the count from
  // the top reaches what is still needed.
  var kmin = 0u;
  if (topK > 0u && topK < V) {
    var prefix = 0u;
    var need = topK;
    for (var round = 0u; round < 4u; round++) {
      let shift = 24u - 8u * round;
      let mask = select(0u, 0xFFFFFFFFu << (shift + 8u), round > 0u);
      for (var j = t; j < 256u; j += WG) { atomicStore(&hist[j], 0u); }
      workgroupBarrier();
      for (var i = t; i < V; i += WG) {
        let k = key(logit(base + i));
        if ((k & mask) == prefix) { atomicAdd(&hist[(k >> shift) & 255u], 1u); }
      }
      workgroupBarrier();
      if (t == 0u) {
        var above = 0u;
        var d = 255u;
        loop {
          let c = atomicLoad(&hist[d]);
          if (above + c >= need || d == 0u) { break; }
          above += c;
          d -= 1u;
        }
        oneU = d;
        oneU2 = need - above;
      }
      prefix = prefix | (workgroupUniformLoad(&oneU) << shift);
      need = workgroupUniformLoad(&oneU2);
    }
    kmin = prefix;
  }

  // top_p over what top_k kept: the largest key whose tokens and those above hold topP of its mass.
  var pmin = kmin;
  if (topP < 1.0) {
    let goal = topP * sumF(t, massFrom(t, base, mx, invT, kmin, 0.0));
    var p = 0u;
    for (var bit = 0u; bit < 32u; bit++) {
      let cand = p | (0x80000000u >> bit);
      if (sumF(t, massFrom(t, base, mx, invT, max(cand, kmin), 0.0)) >= goal) { p = cand; }
    }
    pmin = max(p, kmin);
  }
  // The most likely token always stays.
  pmin = min(pmin, top);

  // Inverse CDF over ascending ids: each invocation sums its own contiguous chunk, then one walks.
  let lo = min(t * CHUNK, V);
  let hi = min(lo + CHUNK, V);
  var cs = 0.0;
  for (var i = lo; i < hi; i++) { cs += kept(base + i, mx, invT, pmin, minP); }
  red[t] = cs;
  workgroupBarrier();
  if (t != 0u) { return; }
  var total = 0.0;
  for (var j = 0u; j < WG; j++) { total += red[j]; }
  let threshold = u * total;
  var cum = 0.0;
  var lastChunk = WG;
  for (var j = 0u; j < WG; j++) {
    let c = red[j];
    if (c <= 0.0) { continue; }
    lastChunk = j;
    if (cum + c > threshold) {
      // Summed again in the same order: the walk crosses u here unless rounding says otherwise,
      // then the chunk's last kept token.
      var found = i32(-1);
      for (var i = j * CHUNK; i < min(j * CHUNK + CHUNK, V); i++) {
        let w = kept(base + i, mx, invT, pmin, minP);
        if (w > 0.0) {
          cum += w;
          found = i32(i);
          if (cum > threshold) { break; }
        }
      }
      sampled[r] = found;
      return;
    }
    cum += c;
  }
  if (lastChunk == WG) {
    sampled[r] = greedy[r];
    return;
  }
  // u within rounding of 1: the last kept token, as the CPU sampler takes its last candidate.
  var found = i32(-1);
  for (var i = lastChunk * CHUNK; i < min(lastChunk * CHUNK + CHUNK, V); i++) {
    if (kept(base + i, mx, invT, pmin, minP) > 0.0) { found = i32(i); }
  }
  sampled[r] = found;
}
`;
}

/**
 * Logit edits (logit_bias and the penalties: engine/logit_edits.ts, with applyEdits as the rule)
 * in place, one invocation an entry, before the sampling kernel reads the rows. A row's pending token
 * is read from the previous step's ids (`prevIds`), so that it counts as if it were known.
 */
function editShader(vocab: number): string {
  return /* wgsl */ `
const V: u32 = ${vocab}u;
const E: u32 = ${EDIT_FLOATS}u;
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> edits: array<f32>;
@group(0) @binding(2) var<storage, read> prevIds: array<i32>;
// This dispatch's entries within the bound range (see editChunks): [first, first + count).
struct Range { first: u32, count: u32 }
@group(0) @binding(3) var<uniform> range: Range;

fn at(e: u32, k: u32) -> f32 { return edits[e * E + k]; }

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  // Rows of workgroups past 65535 of them (a dispatch's limit per dimension).
  let local = g.y * groups.x * 64u + g.x;
  if (local >= range.count) { return; }
  let e = range.first + local;
  let kind = at(e, 1u);
  if (kind == ${EDIT_HEADER}.0) { return; }
  let h = e - u32(at(e, 5u));
  let src = i32(at(h, 6u));
  var pending = -1;
  if (src >= 0) { pending = prevIds[u32(src)]; }
  var id = i32(kind);
  if (kind == ${EDIT_PENDING}.0) {
    // Edited here unless one of the row's token entries is its own.
    if (pending < 0 || pending >= i32(V)) { return; }
    for (var j = h + 1u; j < e; j++) {
      if (i32(at(j, 1u)) == pending) { return; }
    }
    id = pending;
  }
  let n = at(e, 3u) + select(0.0, 1.0, id == pending);
  let rep = at(h, 2u);
  let i = u32(at(h, 0u)) * V + u32(id);
  var y = logits[i] + at(e, 2u);
  if (rep != 1.0 && (at(e, 4u) != 0.0 || n > 0.0)) { y = select(y * rep, y * at(h, 3u), y > 0.0); }
  if (n > 0.0) { y = (y - n * at(h, 4u)) - at(h, 5u); }
  logits[i] = y;
}
`;
}

/** Workgroups a dispatch may have along one dimension (WebGPU's default limit). */
const MAX_GROUPS_X = 65535;

/** One dispatch of the edit kernel: the entries bound from `offset`, of which it edits [first, first + count). */
export interface EditChunk {
  offset: number;
  first: number;
  count: number;
}

/**
 * The step's edit entries as dispatches whose bound range holds at most `maxEntries` entries, cut
 * between rows (a token entry finds its row's header `back` entries before it) and bound from a
 * multiple of `align` entries (the device's storage offset alignment). One chunk unless the entries
 * pass the device's binding limit (e.g. 256 penalised requests with 16k distinct prompt tokens each
 * on a 128 MiB adapter). A row alone past the limit throws.
 */
export function editChunks(edits: Float32Array, maxEntries: number, align: number): EditChunk[] {
  const n = edits.length / EDIT_FLOATS;
  if (n <= maxEntries) return [{ offset: 0, first: 0, count: n }];
  const heads: number[] = [];
  for (let e = 0; e < n; e++) if (edits[e * EDIT_FLOATS + 1] === EDIT_HEADER) heads.push(e);
  heads.push(n);
  const chunks: EditChunk[] = [];
  for (let i = 0; i < heads.length - 1;) {
    const start = heads[i], offset = start - (start % align);
    let j = i + 1;
    while (j + 1 < heads.length && heads[j + 1] - offset <= maxEntries) j++;
    if (heads[j] - offset > maxEntries) {
      throw new Error(
        `one sequence's logit edits (${
          heads[j] - start
        } entries) pass what one GPU binding holds (${maxEntries})`,
      );
    }
    chunks.push({ offset, first: start - offset, count: heads[j] - start });
    i = j;
  }
  return chunks;
}

/** The sampling kernel's pipeline on one device, and the parameter buffer it reads. */
export class GpuSampler {
  private params: GPUBuffer | null = null;
  /** The step's edit entries: one buffer, or one per dispatch when they pass the largest buffer. */
  private edits: GPUBuffer[] = [];
  /** Each edit dispatch's Range, one per 256 bytes (uniform offset alignment). */
  private ranges: GPUBuffer | null = null;
  /** prevIds when a caller has none (no row of its edits is pending). */
  private readonly noIds: GPUBuffer;

  private constructor(
    private readonly device: GPUDevice,
    private readonly pipeline: GPUComputePipeline,
    private readonly editPipeline: GPUComputePipeline,
    private readonly vocab: number,
    private readonly editGroupsX: number,
    /** Most entries one edit dispatch binds (the device's storage binding limit). */
    private readonly editBindEntries: number,
    /** The largest buffer the device creates (tests lower it). */
    private readonly maxBufferBytes: number,
  ) {
    this.noIds = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  }

  /**
   * Compiles the kernel for `vocab`; a shader the device rejects throws here, not in a step. A row's
   * passes are bound by how many invocations share them: the workgroup is as large as the device
   * allows, up to 1024 (a power of two, for the tree reductions), unless `workgroup` says otherwise.
   * For tests, `edit.groupsX` caps the edit kernel's workgroups along x (beyond it they go in rows)
   * and `edit.bindBytes` lowers the edit list's binding limit (beyond it, several dispatches),
   * `edit.bufferBytes` the largest buffer (beyond it, a buffer per dispatch).
   */
  static async create(
    device: GPUDevice,
    vocab: number,
    workgroup?: number,
    edit: { groupsX?: number; bindBytes?: number; bufferBytes?: number } = {},
  ): Promise<GpuSampler> {
    const limit = Math.min(
      1024,
      device.limits.maxComputeInvocationsPerWorkgroup,
      device.limits.maxComputeWorkgroupSizeX,
    );
    const wg = workgroup ?? 2 ** Math.floor(Math.log2(limit));
    if (!(wg >= 1 && wg <= limit && (wg & (wg - 1)) === 0)) {
      throw new Error(`sampler workgroup ${wg}: a power of two up to ${limit}`);
    }
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code: shader(vocab, wg) });
    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const editPipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module: device.createShaderModule({ code: editShader(vocab) }), entryPoint: "main" },
    });
    const error = await device.popErrorScope();
    if (error) throw new Error(`the GPU sampling kernel did not compile: ${error.message}`);
    const bufferBytes = Math.min(edit.bufferBytes ?? Infinity, device.limits.maxBufferSize);
    const bindBytes = Math.min(
      edit.bindBytes ?? Infinity,
      device.limits.maxStorageBufferBindingSize,
      bufferBytes,
    );
    const entries = Math.floor(bindBytes / (EDIT_FLOATS * 4));
    const groupsX = edit.groupsX ?? MAX_GROUPS_X;
    return new GpuSampler(device, pipeline, editPipeline, vocab, groupsX, entries, bufferBytes);
  }

  /**
   * Queues the sampling of `rows` rows of `logits` ([rows or more, vocab] f32) into a new buffer of
   * [rows] int32 ids (the caller destroys it once read): `greedy` ids where a row's u is negative.
   * `params`: SAMPLER_PARAMS floats a row (see samplerParams). `edits` (LogitEdits' entries) are
   * applied to the rows' logits in place first; their pending tokens are read from `prevIds`.
   */
  sample(
    logits: GPUBuffer,
    greedy: GPUBuffer,
    rows: number,
    params: Float32Array,
    edits: Float32Array = new Float32Array(0),
    prevIds: GPUBuffer = this.noIds,
  ): GPUBuffer {
    const bytes = rows * SAMPLER_PARAMS * 4;
    if (!this.params || this.params.size < bytes) {
      this.params?.destroy();
      this.params = this.device.createBuffer({
        size: Math.max(bytes, 64 * SAMPLER_PARAMS * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
    }
    // Ordered on the queue after the previous call's dispatch, before this one's.
    this.device.queue.writeBuffer(this.params, 0, params.buffer, params.byteOffset, bytes);
    const out = this.device.createBuffer({
      size: Math.max(4, rows * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    });
    const bindGroup = this.device.createBindGroup({
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: logits, size: rows * this.vocab * 4 } },
        { binding: 1, resource: { buffer: greedy, size: rows * 4 } },
        { binding: 2, resource: { buffer: this.params, size: bytes } },
        { binding: 3, resource: { buffer: out, size: rows * 4 } },
      ],
    });
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    const numEdits = edits.length / EDIT_FLOATS;
    if (numEdits > 0) {
      const entryBytes = EDIT_FLOATS * 4;
      const align = Math.max(1, this.device.limits.minStorageBufferOffsetAlignment / entryBytes);
      const chunks = editChunks(edits, this.editBindEntries, align);
      // Where each dispatch binds its range: one buffer, or, for a list past the largest buffer, one
      // per dispatch holding its range alone. Buffers a step does not use are released.
      let binds: { buffer: GPUBuffer; offset: number }[];
      if (edits.byteLength > this.maxBufferBytes) {
        binds = chunks.map((c, i) => ({
          buffer: this.editBuffer(
            i,
            edits.subarray(c.offset * EDIT_FLOATS, (c.offset + c.first + c.count) * EDIT_FLOATS),
          ),
          offset: 0,
        }));
        this.edits.splice(chunks.length).forEach((b) => b.destroy());
      } else {
        const buffer = this.editBuffer(0, edits);
        this.edits.splice(1).forEach((b) => b.destroy());
        binds = chunks.map((c) => ({ buffer, offset: c.offset * entryBytes }));
      }
      const slot = Math.max(256, this.device.limits.minUniformBufferOffsetAlignment);
      if (!this.ranges || this.ranges.size < chunks.length * slot) {
        this.ranges?.destroy();
        this.ranges = this.device.createBuffer({
          size: Math.max(4, chunks.length) * slot,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        });
      }
      const ranges = new Uint32Array((chunks.length * slot) / 4);
      chunks.forEach((c, i) => ranges.set([c.first, c.count], (i * slot) / 4));
      this.device.queue.writeBuffer(this.ranges, 0, ranges);
      pass.setPipeline(this.editPipeline);
      chunks.forEach((c, i) => {
        pass.setBindGroup(
          0,
          this.device.createBindGroup({
            layout: this.editPipeline.getBindGroupLayout(0),
            entries: [
              { binding: 0, resource: { buffer: logits, size: rows * this.vocab * 4 } },
              {
                binding: 1,
                resource: { ...binds[i], size: (c.first + c.count) * entryBytes },
              },
              { binding: 2, resource: { buffer: prevIds } },
              { binding: 3, resource: { buffer: this.ranges!, offset: i * slot, size: 8 } },
            ],
          }),
        );
        const groups = Math.ceil(c.count / 64), x = Math.min(groups, this.editGroupsX);
        pass.dispatchWorkgroups(x, Math.ceil(groups / x));
      });
    }
    pass.setPipeline(this.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(rows);
    pass.end();
    this.device.queue.submit([enc.finish()]);
    return out;
  }

  /** `entries` written to the i-th edit buffer, grown to hold them. */
  private editBuffer(i: number, entries: Float32Array): GPUBuffer {
    let b = this.edits[i];
    if (!b || b.size < entries.byteLength) {
      b?.destroy();
      b = this.edits[i] = this.device.createBuffer({
        size: Math.min(Math.max(entries.byteLength, 4096 * EDIT_FLOATS * 4), this.maxBufferBytes),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
    }
    this.device.queue.writeBuffer(b, 0, entries.buffer, entries.byteOffset, entries.byteLength);
    return b;
  }

  destroy(): void {
    this.params?.destroy();
    this.edits.forEach((b) => b.destroy());
    this.ranges?.destroy();
    this.noIds.destroy();
    this.params = this.ranges = null;
    this.edits = [];
  }
}

/** The step's per-row settings packed for GpuSampler.sample; rows past the step's are greedy. */
export function samplerParams(
  sampleU: Float32Array,
  invTemp: Float32Array,
  filters: Float32Array,
  rows: number,
): Float32Array {
  const out = new Float32Array(Math.max(1, rows) * SAMPLER_PARAMS);
  for (let r = 0; r < out.length / SAMPLER_PARAMS; r++) {
    const o = r * SAMPLER_PARAMS, mine = r < sampleU.length;
    out[o] = mine ? sampleU[r] : -1;
    out[o + 1] = mine ? invTemp[r] : 1;
    out[o + 2] = mine ? filters[3 * r] : 0;
    out[o + 3] = mine ? filters[3 * r + 1] : 1;
    out[o + 4] = mine ? filters[3 * r + 2] : 0;
  }
  return out;
}
