// Weight upload on the GPU: a checkpoint tensor's bytes go to the GPU as stored (f32, bf16 or f16)
// and a compute shader converts them to the graph's dtype and writes them, transposed and packed,
// into the weight's buffer. The CPU path (Initializer.raw, weights.ts) did the same with ~3 passes
// over every element in JS (decode, transpose, encode) before the copy to the GPU; here the host's
// only work is the copy. Results are bit-identical to the CPU path (tests/engine/weight_upload_test.ts):
// rounding to nearest even and subnormals are done on the bits, never by the GPU's float conversions
// (WGSL leaves their rounding to the implementation and may flush f16 subnormals).
//
// A weight takes the GPU path when its Initializer has a `layout` and the shapes suit the shader
// (whole 32-bit words per invocation, bindings within the device's limits); any other goes through
// raw() as before (head-padded projections, norms, rotary tables).

import { TensorType } from "./onnx/builder.ts";
import type { Initializer } from "./model/step_weights.ts";
import type { WeightDType, WeightTensor } from "./model/types.ts";

/** Source bytes staged per dispatch: bounds the GPU's extra memory and wgpu's pending writes. */
const STAGING_BYTES = 64 * 2 ** 20;
/** Bytes queued between two waits for the queue (wgpu holds every write until it has run). */
const FLUSH_BYTES = 256 * 2 ** 20;
const PARAM_WORDS = 12;
const SRC_KIND: Record<WeightDType, number> = { f32: 0, f16: 1, bf16: 2 };
const ELEM_BYTES: Record<WeightDType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Fills weight buffers, one tensor at a time; destroy() frees its staging buffers. */
export class WeightUploader {
  /** Created with the first weight that has a layout; null after a device that refused them. */
  private pipelines: { transpose: GPUComputePipeline; copy: GPUComputePipeline } | null | undefined;
  private staging: GPUBuffer | null = null;
  private params: GPUBuffer | null = null;
  private queued = 0;
  /** Weights that went through the shader, and through raw() (for the log and the tests). */
  readonly counts = { gpu: 0, cpu: 0 };

  private readonly stagingBytes: number;
  private readonly maxBinding: number;
  private readonly cpuOnly: boolean;
  private readonly log: (line: string) => void;

  /**
   * stagingBytes and maxBindingBytes shrink the staging buffer and output bindings (tests: chunked
   * dispatches); cpuOnly converts every weight with raw() (comparisons).
   */
  constructor(
    private readonly device: GPUDevice,
    opts: {
      stagingBytes?: number;
      maxBindingBytes?: number;
      cpuOnly?: boolean;
      log?: (line: string) => void;
    } = {},
  ) {
    this.log = opts.log ?? (() => {});
    this.cpuOnly = opts.cpuOnly ?? false;
    this.maxBinding = Math.min(device.limits.maxStorageBufferBindingSize, opts.maxBindingBytes ?? Infinity);
    this.stagingBytes = Math.floor(Math.min(this.maxBinding, opts.stagingBytes ?? STAGING_BYTES) / 256) * 256;
  }

  /** A new buffer holding `t`'s bytes in the graph's layout (sizes in whole 4-byte words). */
  async upload(t: Initializer): Promise<GPUBuffer> {
    const outBytes = t.type === TensorType.FLOAT16 ? 2 : 4;
    const elements = t.dims.reduce((a, b) => a * b, 1);
    const size = Math.max(4, Math.ceil((elements * outBytes) / 4) * 4);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    if (t.layout && this.pipelines === undefined) {
      this.pipelines = await checkedPipelines(this.device, this.log);
    }
    const plan = this.pipelines ? this.plan(t, elements) : null;
    const buffer = this.device.createBuffer({ size, usage });
    try {
      // writeBuffer, not a buffer mapped at creation: on Deno 2.9 the latter wrote 1 GiB in 1.9 s
      // against 0.06 s (llvmpipe, 2-core machine).
      if (plan) await plan(buffer);
      else await this.writeRaw(buffer, t.raw());
    } catch (e) {
      buffer.destroy();
      throw e;
    }
    this.counts[plan ? "gpu" : "cpu"]++;
    return buffer;
  }

  destroy() {
    this.staging?.destroy();
    this.params?.destroy();
    this.staging = this.params = null;
  }

  /** The GPU path's filling of the weight's buffer, or null where the CPU path must do it. */
  private plan(t: Initializer, elements: number): ((out: GPUBuffer) => Promise<void>) | null {
    const layout = t.layout;
    if (this.cpuOnly || !layout || (t.type !== TensorType.FLOAT16 && t.type !== TensorType.FLOAT)) {
      return null;
    }
    const outF16 = t.type === TensorType.FLOAT16;
    const src = layout.parts[0].dtype;
    if (layout.parts.some((p) => p.dtype !== src)) return null;
    const maxBind = this.stagingBytes;
    const align = this.device.limits.minStorageBufferOffsetAlignment;
    if (!layout.transpose) {
      const [p] = layout.parts;
      if (layout.parts.length !== 1 || count(p) !== elements) return null;
      // Same dtype, same order: the stored bytes are the weight's.
      if ((src === "f32") === !outF16 && src !== "bf16") return (out) => this.writeRaw(out, p.bytes);
      // Chunks start where both the source and the output bindings may (offset alignment).
      const chunk = Math.floor(maxBind / 4 / align) * align;
      if (chunk < align) return null;
      return (out) => this.convert(out, p, outF16, chunk);
    }
    // [K, N], or split-K's [S, K/S, N] over the same bytes.
    if (t.dims.length < 2) return null;
    const N = t.dims[t.dims.length - 1], K = elements / N;
    const rows = layout.parts.map((p) => p.shape[0]);
    if (layout.parts.some((p) => p.shape.length !== 2 || p.shape[1] !== K)) return null;
    if (rows.reduce((a, b) => a + b, 0) !== N) return null;
    // An fp16 invocation writes one word: two outputs of one row, from rows of one part.
    if (outF16 && (N % 2 || rows.some((r) => r % 2))) return null;
    // Source rows per dispatch (even: the chunks' 16-bit elements start on a word).
    const chunkRows = Math.min(2 * 16 * 65535, Math.floor(maxBind / (K * ELEM_BYTES[src]) / 2) * 2);
    if (chunkRows < 2) return null;
    // Output rows per binding: as many as the binding limit takes, starting on aligned offsets.
    const rowBytes = N * (outF16 ? 2 : 4);
    const step = align / gcd(rowBytes, align);
    const maxRows = Math.min(16 * 65535, Math.floor(this.maxBinding / rowBytes));
    const kRows = Math.floor(maxRows / step) * step;
    if (kRows < 1) return null;
    return (out) => this.transposeInto(out, layout.parts, K, N, outF16, chunkRows, kRows);
  }

  /** Copies stored bytes as they are, in pieces (writeBuffer sizes are whole words). */
  private async writeRaw(out: GPUBuffer, bytes: Uint8Array) {
    const whole = bytes.length - (bytes.length % 4);
    for (let off = 0; off < whole; off += this.stagingBytes) {
      const n = Math.min(this.stagingBytes, whole - off);
      this.device.queue.writeBuffer(out, off, bytes, off, n);
      await this.queuedBytes(n);
    }
    if (whole < bytes.length) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(out, whole, tail);
    }
  }

  /** Element-wise dtype conversion, `chunk` elements (a multiple of the offset alignment) per dispatch. */
  private async convert(out: GPUBuffer, p: WeightTensor, outF16: boolean, chunk: number) {
    const n = count(p), eb = ELEM_BYTES[p.dtype], ob = outF16 ? 2 : 4;
    for (let e0 = 0; e0 < n; e0 += chunk) {
      const len = Math.min(chunk, n - e0);
      const staging = this.stage(p.bytes.subarray(e0 * eb, (e0 + len) * eb));
      this.dispatch("copy", out, e0 * ob, outBytes(len, ob, out.size - e0 * ob), staging, [
        SRC_KIND[p.dtype],
        outF16 ? 1 : 0,
        len,
      ], [Math.ceil(len / 2), 1]);
      await this.queuedBytes(len * eb);
    }
  }

  /** Packs and transposes `parts` ([rows_i, K] each) into out ([K, N]). */
  private async transposeInto(
    out: GPUBuffer,
    parts: WeightTensor[],
    K: number,
    N: number,
    outF16: boolean,
    chunkRows: number,
    kRows: number,
  ) {
    const ob = outF16 ? 2 : 4;
    let nBase = 0;
    for (const p of parts) {
      const eb = ELEM_BYTES[p.dtype], R = p.shape[0];
      for (let r0 = 0; r0 < R; r0 += chunkRows) {
        const rows = Math.min(chunkRows, R - r0);
        const staging = this.stage(p.bytes.subarray(r0 * K * eb, (r0 + rows) * K * eb));
        for (let k0 = 0; k0 < K; k0 += kRows) {
          const kCount = Math.min(kRows, K - k0);
          const off = k0 * N * ob;
          this.dispatch("transpose", out, off, outBytes(kCount * N, ob, out.size - off), staging, [
            SRC_KIND[p.dtype],
            outF16 ? 1 : 0,
            rows,
            K,
            N,
            nBase + r0,
            k0,
            kCount,
          ], [Math.ceil(rows / 2 / 16), Math.ceil(kCount / 16)]);
        }
        await this.queuedBytes(rows * K * eb);
      }
      nBase += R;
    }
  }

  /** Queues the bytes' copy into the staging buffer (padded to a whole word). */
  private stage(bytes: Uint8Array): GPUBuffer {
    if (!this.staging) {
      this.staging = this.device.createBuffer({
        size: this.stagingBytes,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
    }
    const whole = bytes.length - (bytes.length % 4);
    if (whole) this.device.queue.writeBuffer(this.staging, 0, bytes, 0, whole);
    if (whole < bytes.length) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(this.staging, whole, tail);
    }
    return this.staging;
  }

  /**
   * One dispatch in its own submit (the parameters' buffer is rewritten before the next one).
   * copy: `x` is the count of element pairs, spread over a 2D grid (at most 65535 workgroups a
   * dimension); transpose: the grid.
   */
  private dispatch(
    kind: "transpose" | "copy",
    out: GPUBuffer,
    outOffset: number,
    outSize: number,
    staging: GPUBuffer,
    params: number[],
    [x, y]: [number, number],
  ) {
    const device = this.device;
    this.params ??= device.createBuffer({
      size: PARAM_WORDS * 4,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    const words = new Uint32Array(PARAM_WORDS);
    words.set(params);
    if (kind === "copy") {
      const groups = Math.ceil(x / 256);
      x = Math.min(groups, 65535);
      y = Math.ceil(groups / x);
      words[8] = x;
    }
    const pipeline = this.pipelines![kind];
    device.queue.writeBuffer(this.params, 0, words);
    const bind = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.params } },
        { binding: 1, resource: { buffer: staging } },
        { binding: 2, resource: { buffer: out, offset: outOffset, size: outSize } },
      ],
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(x, y);
    pass.end();
    device.queue.submit([enc.finish()]);
  }

  /** Counts queued bytes; past FLUSH_BYTES, waits until the queue has run them. */
  private async queuedBytes(n: number) {
    this.queued += n;
    if (this.queued < FLUSH_BYTES) return;
    this.queued = 0;
    this.device.queue.submit([]);
    await this.device.queue.onSubmittedWorkDone();
  }
}

function count(t: WeightTensor): number {
  return t.shape.reduce((a, b) => a * b, 1);
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** The binding's size: `elements` outputs in whole words, never past the buffer's end. */
function outBytes(elements: number, ob: number, left: number): number {
  return Math.min(left, Math.ceil((elements * ob) / 4) * 4);
}

/**
 * The shader's pipelines, or null where the device reports an error creating them: every weight
 * then takes the CPU path (the session device's uncaptured errors would not stop the upload).
 */
async function checkedPipelines(device: GPUDevice, log: (line: string) => void) {
  device.pushErrorScope("validation");
  device.pushErrorScope("internal");
  const module = device.createShaderModule({ code: SHADER });
  const make = (entryPoint: string) =>
    device.createComputePipeline({ layout: "auto", compute: { module, entryPoint } });
  const pipelines = { transpose: make("transpose"), copy: make("copy") };
  const errors = [await device.popErrorScope(), await device.popErrorScope()].filter((e) => e);
  if (errors.length) {
    log(`weights: the layout shader failed (${errors[0]!.message}); converting on the CPU`);
    return null;
  }
  return pipelines;
}

// Parameters: src_kind (0 f32, 1 f16, 2 bf16), out_f16, then per entry point:
//   transpose: rows (source rows staged), K (source columns = output rows), N (output row length),
//              n_base (output column of the first staged row), k0, k_count (output rows bound)
//   copy:      count (elements staged), _, _, _, _, _, groups_x (workgroups along x)
// NaN to fp16 is 0x7e00 with its sign, as Float16Array stores it; f32 NaNs keep their bits (the CPU
// path's JS copies may quiet a signaling NaN or not, depending on how far V8 has optimized them).
const SHADER = /* wgsl */ `
struct Params {
  src_kind: u32, out_f16: u32, a: u32, b: u32,
  c: u32, d: u32, e: u32, f: u32,
  g: u32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn f32_to_f16(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let e = (x >> 23u) & 0xffu;
  let m = x & 0x7fffffu;
  if (e == 0xffu) {
    if (m == 0u) { return sign | 0x7c00u; }
    return sign | 0x7e00u;
  }
  let ue = i32(e) - 127;
  if (ue > 15) { return sign | 0x7c00u; }
  if (ue >= -14) {
    // A carry out of the mantissa steps the exponent, up to infinity: still round to nearest even.
    var h = (u32(ue + 15) << 10u) | (m >> 13u);
    let rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u)) { h = h + 1u; }
    return sign | h;
  }
  if (ue < -25) { return sign; }
  // Subnormal fp16: units of 2^-24.
  let full = m | 0x800000u;
  let shift = u32(-ue - 1);
  var h = full >> shift;
  let rest = full & ((1u << shift) - 1u);
  let half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (h & 1u) == 1u)) { h = h + 1u; }
  return sign | h;
}

fn f16_to_f32(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) {
    if (m == 0u) { return sign | 0x7f800000u; }
    return sign | 0x7fc00000u | (m << 13u);
  }
  if (e != 0u) { return sign | ((e + 112u) << 23u) | (m << 13u); }
  if (m == 0u) { return sign; }
  let top = 31u - countLeadingZeros(m);
  return sign | ((top + 103u) << 23u) | ((m << (23u - top)) & 0x7fffffu);
}

/** Staged element i as f32 bits (16-bit kinds) or fp16 bits (fp16 source, fp16 output). */
fn load(i: u32) -> u32 {
  if (P.src_kind == 0u) { return src[i]; }
  let h = (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
  if (P.src_kind == 2u) { return h << 16u; }
  if (P.out_f16 == 1u) { return h; }
  return f16_to_f32(h);
}

/** The element as output bits: fp16 (low 16 bits) or f32. */
fn convert(i: u32) -> u32 {
  let v = load(i);
  if (P.out_f16 == 1u && P.src_kind != 1u) { return f32_to_f16(v); }
  return v;
}

@compute @workgroup_size(16, 16)
fn transpose(@builtin(global_invocation_id) id: vec3<u32>) {
  // Two outputs of row k, columns n and n + 1: source rows r and r + 1, column k.
  let rows = P.a; let K = P.b; let N = P.c; let n_base = P.d; let k0 = P.e; let k_count = P.f;
  let r = id.x * 2u;
  let kl = id.y;
  if (r >= rows || kl >= k_count) { return; }
  let k = k0 + kl;
  let o = kl * N + n_base + r;
  let lo = convert(r * K + k);
  if (P.out_f16 == 1u) {
    let hi = convert((r + 1u) * K + k);
    dst[o >> 1u] = lo | (hi << 16u);
  } else {
    dst[o] = lo;
    if (r + 1u < rows) { dst[o + 1u] = convert((r + 1u) * K + k); }
  }
}

@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let count = P.a;
  let pair = (wg.y * P.g + wg.x) * 256u + li;
  let i = pair * 2u;
  if (i >= count) { return; }
  let lo = convert(i);
  var hi = 0u;
  if (i + 1u < count) { hi = convert(i + 1u); }
  if (P.out_f16 == 1u) {
    dst[pair] = lo | (hi << 16u);
  } else {
    dst[i] = lo;
    if (i + 1u < count) { dst[i + 1u] = hi; }
  }
}
`;
