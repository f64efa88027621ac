// CPU sampling of one token from one row of logits, with OpenAI/vLLM semantics.
//
// Pipeline, in this order:
//  1. Logprobs (when asked for) come from the raw model logits: log_softmax of the unmodified row,
//     as vLLM reports them by default. Bias, penalties, temperature and filters do not change them.
//  2. logit_bias: added to the logit.
//  3. repetition_penalty (vLLM/HF): each distinct token seen in prompt or output, once:
//     logit / penalty when logit > 0, else logit * penalty.
//  4. frequency_penalty (OpenAI): minus count_in_output * penalty (output tokens only).
//  5. presence_penalty (OpenAI): minus penalty when the token occurs in the output.
//  6. temperature below MIN_SAMPLING_TEMPERATURE (0 included): greedy argmax of the processed logits,
//     ties to the lowest id.
//     Otherwise divide by temperature, then top_k (keep the k largest and every token tied with the
//     k-th, as vLLM does), top_p on the probabilities renormalised over what top_k kept (smallest
//     most-likely-first set whose mass is >= top_p, and every token tied with its last), min_p
//     (drop probability < min_p * max), and renormalise.
//  7. Inverse CDF with u = uniform(seed, k) over the surviving tokens in ascending id order (see
//     engine/rng.ts): the first id whose cumulative probability is > u. The GPU kernel
//     (engine/gpu_sampler.ts), which serves requests that need no CPU logits, follows the same rule:
//     it picks the same token unless u (or top_p's mass) lies within rounding error of a step.
//
// EOS is never masked: ignore_eos only means "do not stop on EOS" (vLLM), and stopping is decided
// by the caller, so eosTokenIds has no effect here.

import type { SamplingParams } from "./protocol.ts";
import { uniform } from "./rng.ts";
import { applyEdits, editsLogits, LogitEdits } from "./logit_edits.ts";

export interface SampledLogprob {
  tokenId: number;
  logprob: number;
}

export interface SampleResult {
  tokenId: number;
  /** Raw log-softmax of the chosen token; null when params.logprobs is null (saves a pass). */
  logprob: number | null;
  /** The params.logprobs most likely tokens of the raw row, most likely first, ties to the lower id. */
  top: SampledLogprob[];
}

export interface SampleContext {
  promptIds: ArrayLike<number>;
  /** Tokens generated so far; its length is k, the RNG counter for this token. */
  outputIds: ArrayLike<number>;
  /** params.seed, or one randomSeed() drawn once per request and kept for its lifetime. */
  seed: number;
  /** Accepted for symmetry with the GPU path; EOS is never masked (see above). */
  eosTokenIds?: readonly number[];
  /**
   * The request's logit-edit entries kept between tokens (Sequence.logitEdits), so that a penalised
   * request does not read its whole prompt again for every token; absent: built for this call.
   */
  edits?: LogitEdits;
}

/**
 * Temperatures below this are greedy, as in vLLM: 1 / temperature would scale the logits past the
 * float range (3e-38 gives 3e37 on the GPU's f32 path), and sampling that sharp is argmax anyway.
 */
export const MIN_SAMPLING_TEMPERATURE = 1e-5;

/** Whether the request samples greedily; the engine's GPU path and sampleToken both decide here. */
export function isGreedy(params: Pick<SamplingParams, "temperature">): boolean {
  // Negated so that a NaN temperature is greedy too rather than poisoning the weights.
  return !(params.temperature >= MIN_SAMPLING_TEMPERATURE);
}

/**
 * Whether this request needs its logits row on the CPU: logprobs are reported from it and a JSON
 * schema masks it there (engine/grammar.ts). Everything else (greedy, temperature, top_k, top_p,
 * min_p, logit_bias and the penalties) runs on the GPU with the same uniform(seed, k) rule
 * (engine/gpu_sampler.ts).
 */
export function needsCpuLogits(params: SamplingParams): boolean {
  return Boolean(params.grammar) || params.logprobs !== null;
}

// Scratch buffers shared by all calls: sampling is synchronous, and allocating a vocab-sized array
// per row (256 rows a step) would churn the GC.
let work = new Float32Array(0);
let weights = new Float64Array(0);
let order = new Int32Array(0);
let marks = new Uint8Array(0);
let heapBuf = new Int32Array(0);

function ensureScratch(vocab: number): void {
  if (work.length >= vocab) return;
  work = new Float32Array(vocab);
  weights = new Float64Array(vocab);
  order = new Int32Array(vocab);
  marks = new Uint8Array(vocab);
  heapBuf = new Int32Array(vocab);
}

/** Samples one token. `logits` is one row (length = vocab size); it is not modified. */
export function sampleToken(logits: Float32Array, params: SamplingParams, ctx: SampleContext): SampleResult {
  const vocab = logits.length;
  ensureScratch(vocab);

  let logprob: number | null = null;
  let top: SampledLogprob[] = [];
  let lse = 0;
  if (params.logprobs !== null) {
    lse = logSumExp(logits);
    top = topLogprobs(logits, Math.min(params.logprobs, vocab), lse);
  }

  let row = logits;
  if (editsLogits(params)) {
    row = work.subarray(0, vocab);
    row.set(logits);
    processInPlace(row, params, ctx);
  }

  const tokenId = isGreedy(params)
    ? argmax(row)
    : sampleTemperature(row, params, uniform(ctx.seed, ctx.outputIds.length));

  if (params.logprobs !== null) logprob = logits[tokenId] - lse;
  return { tokenId, logprob, top };
}

/**
 * The logits after logit_bias and the three penalties (steps 2-5), as a new array; what greedy
 * takes the argmax of and temperature divides.
 */
export function processLogits(
  logits: Float32Array,
  params: SamplingParams,
  ctx: SampleContext,
): Float32Array {
  const row = logits.slice();
  processInPlace(row, params, ctx);
  return row;
}

function processInPlace(row: Float32Array, params: SamplingParams, ctx: SampleContext): void {
  const edits = ctx.edits ?? new LogitEdits(params, ctx.promptIds, row.length);
  applyEdits(row, edits.rowEdits(ctx.outputIds));
}

function argmax(row: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < row.length; i++) {
    // Strict > keeps the lowest id among ties.
    if (row[i] > bestValue) {
      bestValue = row[i];
      best = i;
    }
  }
  return best;
}

function logSumExp(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  if (!Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}

function topLogprobs(row: Float32Array, n: number, lse: number): SampledLogprob[] {
  if (n <= 0) return [];
  const ids = new Int32Array(n);
  const m = selectTopK(row, n, ids);
  const result: SampledLogprob[] = [];
  for (let i = 0; i < m; i++) result.push({ tokenId: ids[i], logprob: row[ids[i]] - lse });
  return result;
}

/** `a` ranks below `b`: smaller logit, or equal logit and larger id. */
function ranksBelow(row: ArrayLike<number>, a: number, b: number): boolean {
  const x = row[a], y = row[b];
  return x < y || (x === y && a > b);
}

function siftDownMin(row: ArrayLike<number>, heap: Int32Array, size: number, i: number): void {
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) return;
    const r = l + 1;
    const c = r < size && ranksBelow(row, heap[r], heap[l]) ? r : l;
    if (!ranksBelow(row, heap[c], heap[i])) return;
    const tmp = heap[i];
    heap[i] = heap[c];
    heap[c] = tmp;
    i = c;
  }
}

/**
 * The k highest-ranked ids of `row` into out[0..k), best first (ties to the lower id), in
 * O(V log k) with a size-k min-heap: most ids lose against the root in a single comparison.
 */
function selectTopK(row: ArrayLike<number>, k: number, out: Int32Array): number {
  const vocab = row.length;
  k = Math.min(k, vocab);
  for (let i = 0; i < k; i++) out[i] = i;
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDownMin(row, out, k, i);
  for (let i = k; i < vocab; i++) {
    // Strict >: an equal logit with a larger id ranks lower than anything already held.
    if (row[i] > row[out[0]]) {
      out[0] = i;
      siftDownMin(row, out, k, 0);
    }
  }
  // Heap sort: popping the worst to the end leaves the array best first.
  for (let end = k - 1; end > 0; end--) {
    const tmp = out[0];
    out[0] = out[end];
    out[end] = tmp;
    siftDownMin(row, out, end, 0);
  }
  return k;
}

/** Temperature, top_k, top_p, min_p, then inverse CDF over ascending ids; `u` in [0, 1). */
function sampleTemperature(row: Float32Array, params: SamplingParams, u: number): number {
  const vocab = row.length;
  const invTemp = 1 / params.temperature;
  const topK = params.topK > 0 && params.topK < vocab ? params.topK : 0;
  const topP = params.topP;
  const minP = params.minP;

  if (topK === 0 && topP >= 1) return sampleWholeVocab(row, invTemp, minP, u);

  // Candidates best first in order[0..m), their weights in weights[id].
  let m = topK > 0 ? topKCandidates(row, topK, topP, invTemp) : nucleusCandidates(row, topP, invTemp);
  if (m === null) return argmax(row);
  if (minP > 0) m = trimMinP(m, minP);
  return pickCandidate(m, u);
}

function rowMax(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  return max;
}

/**
 * No top_k or top_p: weights in id order, min_p zeroes what it drops, so no candidate list (and
 * no sort) is needed. Falls back to argmax when the row has no finite maximum.
 */
function sampleWholeVocab(row: Float32Array, invTemp: number, minP: number, u: number): number {
  const vocab = row.length;
  const max = rowMax(row);
  if (!Number.isFinite(max)) return argmax(row);
  let sum = 0;
  for (let i = 0; i < vocab; i++) {
    // The max token has weight exp(0) = 1, so min_p * max_prob is min_p in weight units.
    let w = Math.exp((row[i] - max) * invTemp);
    if (w < minP) w = 0;
    weights[i] = w;
    sum += w;
  }
  const threshold = u * sum;
  let cum = 0;
  let last = 0;
  for (let i = 0; i < vocab; i++) {
    const w = weights[i];
    if (w === 0) continue;
    cum += w;
    last = i;
    if (cum > threshold) return i;
  }
  return last;
}

/**
 * top_k (then top_p over what it kept): the candidates into order[0..m), best first, their weights
 * into weights[id]. Returns m, or null when the best logit is not finite (the caller takes argmax).
 */
function topKCandidates(row: Float32Array, topK: number, topP: number, invTemp: number): number | null {
  let m = selectTopK(row, topK, order);
  const max = row[order[0]];
  if (!Number.isFinite(max)) return null;
  // Tokens tied with the k-th stay too, as on the GPU (and in vLLM's top_k).
  const kth = row[order[m - 1]];
  for (let j = 0; j < m; j++) marks[order[j]] = 1;
  for (let i = 0; i < row.length; i++) if (row[i] === kth && marks[i] === 0) order[m++] = i;
  for (let j = 0; j < m; j++) marks[order[j]] = 0;
  let total = 0;
  for (let j = 0; j < m; j++) {
    const id = order[j];
    const w = Math.exp((row[id] - max) * invTemp);
    weights[id] = w;
    total += w;
  }
  return topP < 1 ? trimTopP(row, m, topP * total) : m;
}

/**
 * The shortest prefix of order[0..m) whose weight reaches `target` (all m if none does), with the
 * candidates tied with its last.
 */
function trimTopP(row: Float32Array, m: number, target: number): number {
  let cum = 0;
  for (let j = 0; j < m; j++) {
    cum += weights[order[j]];
    if (cum >= target) {
      let n = j + 1;
      while (n < m && row[order[n]] === row[order[j]]) n++;
      return n;
    }
  }
  return m;
}

/**
 * top_p without top_k: weights for the whole vocab (and their bucket masses, which let nucleus()
 * skip the light tail), then the nucleus into order[0..m). Returns m, or null when the row has no
 * finite maximum (the caller takes argmax).
 */
function nucleusCandidates(row: Float32Array, topP: number, invTemp: number): number | null {
  const vocab = row.length;
  const max = rowMax(row);
  if (!Number.isFinite(max)) return null;
  let total = 0;
  bucketMass.fill(0);
  for (let i = 0; i < vocab; i++) {
    const w = Math.exp((row[i] - max) * invTemp);
    weights[i] = w;
    total += w;
    bucketMass[bucketOf(row[i], max, invTemp)] += w;
  }
  return nucleus(row, max, invTemp, topP, total);
}

/** Candidates are best first, so min_p trims a suffix; the best has weight 1 and always stays. */
function trimMinP(m: number, minP: number): number {
  while (m > 1 && weights[order[m - 1]] < minP) m--;
  return m;
}

/** Inverse CDF over order[0..m) re-sorted into ascending ids, the order the GPU kernel uses. */
function pickCandidate(m: number, u: number): number {
  const kept = order.subarray(0, m);
  kept.sort();
  let sum = 0;
  for (let j = 0; j < m; j++) sum += weights[kept[j]];
  const threshold = u * sum;
  let cum = 0;
  for (let j = 0; j < m; j++) {
    cum += weights[kept[j]];
    if (cum > threshold) return kept[j];
  }
  return kept[m - 1];
}

/** `a` has lower weight than `b`, or equal weight and a larger id. */
function weighsLess(a: number, b: number): boolean {
  const x = weights[a], y = weights[b];
  return x < y || (x === y && a > b);
}

function siftDownMax(heap: Int32Array, size: number, i: number): void {
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) return;
    const r = l + 1;
    const c = r < size && weighsLess(heap[l], heap[r]) ? r : l;
    if (!weighsLess(heap[i], heap[c])) return;
    const tmp = heap[i];
    heap[i] = heap[c];
    heap[c] = tmp;
    i = c;
  }
}

// top_p without top_k buckets the weights by ln(weight) rounded down: bucket b holds weights in
// (e^-(b+1), e^-b], and the last bucket everything smaller.
const BUCKETS = 64;
const bucketMass = new Float64Array(BUCKETS);

function bucketOf(x: number, max: number, invTemp: number): number {
  const d = (max - x) * invTemp;
  // NaN and -Infinity logits land in the last bucket.
  return d < BUCKETS - 1 ? Math.floor(d) : BUCKETS - 1;
}

/**
 * top_p without top_k: the most likely ids (ties to the lower id) until their weight reaches
 * topP * total, best first in order[0..m). Whole buckets of the lightest tokens whose summed mass
 * is below (1 - topP) * total cannot be in the nucleus, so only the remaining candidates go into
 * a heap: a peaked distribution never pays for ordering the whole vocab.
 */
function nucleus(row: Float32Array, max: number, invTemp: number, topP: number, total: number): number {
  const vocab = row.length;
  // The margin covers summation-order rounding; the heap below decides exactly.
  const droppable = (1 - topP) * total * (1 - 1e-9);
  let cut = 0;
  let tail = 0;
  for (let b = BUCKETS - 1; b > 0; b--) {
    if (tail + bucketMass[b] > droppable) {
      cut = b;
      break;
    }
    tail += bucketMass[b];
  }
  let size = 0;
  if (cut === BUCKETS - 1) {
    for (let i = 0; i < vocab; i++) heapBuf[i] = i;
    size = vocab;
  } else {
    for (let i = 0; i < vocab; i++) if (bucketOf(row[i], max, invTemp) <= cut) heapBuf[size++] = i;
  }
  const m = popNucleus(row, size, topP * total);
  // Rounding left the candidates short of the target: decide over the whole vocab.
  if (m < 0) {
    for (let i = 0; i < vocab; i++) heapBuf[i] = i;
    return Math.abs(popNucleus(row, vocab, topP * total));
  }
  return m;
}

/**
 * Pops heapBuf[0..size) heaviest first into order until `target` is reached, then the ids tied with
 * the last; -m if the target is never reached.
 */
function popNucleus(row: Float32Array, size: number, target: number): number {
  const heap = heapBuf;
  for (let i = (size >> 1) - 1; i >= 0; i--) siftDownMax(heap, size, i);
  let m = 0;
  let cum = 0;
  let reached = false;
  while (size > 0) {
    const id = heap[0];
    if (reached && row[id] !== row[order[m - 1]]) return m;
    order[m++] = id;
    cum += weights[id];
    reached ||= cum >= target;
    heap[0] = heap[--size];
    siftDownMax(heap, size, 0);
  }
  return reached ? m : -m;
}
