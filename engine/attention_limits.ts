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
//   onnxruntime's "SafeInt ... Integer overflow", and with more bindings than a shader may have with
//   "Too many storage buffers in shader". On the CPU machine (llvmpipe: 128 MiB bindings, 32 buffers
//   a shader), with 32 query heads at a 131072 bound, 129 items load, 208 and 255 need too many
//   buffers and 257 overflow (as the 1B shape's batch of 256 did on the H100, BENCHMARKS session 22).
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
/**
 * ... and, past one binding, in as many as a shader has room for. On llvmpipe (128 MiB bindings, 32 a
 * shader; 32 heads at a 131072 bound, 16 MiB of scores an item) 129 items ran, 208 needed 34 buffers and
 * 255 needed 38: one more per ~12 items, not per 8 as one per binding of scores would be, so the kernel
 * binds more than the scores. One binding per 128 MiB of scores beside 16 others rejects both failures
 * (and 129 items, which ran: a step splits a little sooner than it must). Scores in one binding always
 * fit: the calls that ran before this rule.
 */
const OTHER_BINDINGS = 16;

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
  const scores = items * lim.numHeads * maxKv * 4, segments = Math.ceil(scores / lim.bindLimit);
  if (scores >= SCORE_BYTES || (segments > 1 && segments + OTHER_BINDINGS > lim.maxStorageBuffers)) {
    return false;
  }
  if (!long) return true;
  const gathered = items * maxKv * lim.kvHeads * lim.headSize * 2;
  const queries = items * maxQ * lim.numHeads * lim.headSize * 2;
  return gathered <= lim.bindLimit && queries <= lim.bindLimit;
}
