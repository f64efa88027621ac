// How much one PagedAttention call may hold. onnxruntime-web's WebGPU kernel sizes its buffers by a
// call's attention items times attn_meta's context bound (upper bounds, not the real lengths), so a long
// context beside many items fails inside onnxruntime, at warmup or in the middle of serving:
//
// - On the long-query kernel (queries of 32 tokens and more) it gathers every item's K and V into padded
//   buffers of items x bound x KV heads x head size in fp16, and refuses one larger than the device can
//   bind ("k_padded/v_padded scratch requires ... bytes"). The 1B shape's 16-item prompt steps at a
//   131072-token bound need 2 GiB.
// - On the short kernel (decodes, chunks under 32 tokens) it keeps items x query heads x bound scores in
//   f32, a buffer bound in segments of the device's binding limit. Past 2^32 bytes it fails with
//   onnxruntime's "SafeInt ... Integer overflow", and with more segments than a shader may bind with
//   "Too many storage buffers in shader". On the CPU machine (llvmpipe: 128 MiB bindings, 32 buffers
//   a shader), with 32 query heads at a 131072 bound, 129 items load, 255 need 38 buffers and 257
//   overflow (as the 1B shape's batch of 256 did on the H100, docs/BENCHMARKS.md session 22).
//
// ModelRunner keeps every call within both: captured shapes past them are not captured, and a step past
// them runs as several calls over its items in order (attention items never read each other's queries,
// and a later call reads the KV an earlier one wrote, so a request's tokens do not change).

export interface AttentionLimits {
  numHeads: number;
  kvHeads: number;
  /** Head size as the KV pool stores it (paddedHeadDim). */
  headSize: number;
  /** Largest storage buffer the device binds, in bytes. */
  bindLimit: number;
  /** Storage buffers one shader may bind (maxStorageBuffersPerShaderStage). */
  maxStorageBuffers: number;
}

/** Short kernel: its scores stay below 2^32 bytes ... */
const SCORE_BYTES = 2 ** 32;
/** ... in as many bindings as a shader has room for beside the kernel's other ones (6 seen). */
const OTHER_BINDINGS = 8;

/**
 * Whether a call of `items` attention items (padding items included) with attn_meta [maxQ, maxKv] fits,
 * on the long-query kernel if `long`.
 */
export function attentionFits(
  lim: AttentionLimits,
  items: number,
  [maxQ, maxKv]: [number, number],
  long: boolean,
): boolean {
  const scores = items * lim.numHeads * maxKv * 4;
  if (scores >= SCORE_BYTES || Math.ceil(scores / lim.bindLimit) > lim.maxStorageBuffers - OTHER_BINDINGS) {
    return false;
  }
  if (!long) return true;
  const gathered = items * maxKv * lim.kvHeads * lim.headSize * 2;
  const queries = items * maxQ * lim.numHeads * lim.headSize * 2;
  return gathered <= lim.bindLimit && queries <= lim.bindLimit;
}
