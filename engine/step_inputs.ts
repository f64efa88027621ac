// The flat inputs of one ragged step: built by the engine from the scheduler's plan, consumed by the
// model runner and its captured sessions (a module of its own so neither imports the other for it).

import { sliceEdits } from "./logit_edits.ts";

/** Flat inputs of one ragged step, built by the engine from the scheduler's plan. */
export interface StepInputs {
  /** [T] token ids known on the CPU (0 where idSrc >= 0). */
  inputIds: Int32Array;
  /** [T] -1, or the row of the previous step's next_ids that holds this token. */
  idSrc: Int32Array;
  /** [B+1] cumulative new-token counts. */
  cuSeqlens: Int32Array;
  /** [B] tokens already in the cache per sequence. */
  pastSeqlens: Int32Array;
  /** [B, maxBlocks] block ids, padded with 0. */
  blockTable: Int32Array;
  maxBlocks: number;
  /** [S] flat token rows whose logits are sampled. */
  sampleRows: Int32Array;
  /** [S] per-row uniform for GPU sampling; negative means greedy. */
  sampleU: Float32Array;
  /** [S] 1 / temperature (1 for greedy rows). */
  invTemp: Float32Array;
  /** [S * 3] top_k (0: off), top_p, min_p per sampled row, applied on the GPU (gpu_sampler.ts). */
  sampleFilters: Float32Array;
  /**
   * By-token changes of sampled rows' logits before sampling (logit_bias, penalties): each row's
   * header, with its index in sampleRows, then its entries (engine/logit_edits.ts).
   */
  sampleEdits: Float32Array;
  /** Read back full logits (CPU sampling, logprobs). */
  wantLogits: boolean;
  /**
   * In long-query mode "prompts": the first of the items that run on the long-query kernel (prompt
   * chunks, which the engine puts last); the items before it run on the short one. Absent: none.
   */
  longFrom?: number;
}

/** A sampled row's filters when it has none: top_k off, top_p 1, min_p 0. */
export const NO_FILTERS = [0, 1, 0] as const;

/**
 * One sequence's `ids` as a step of its own, over `past` cached tokens in `blockTable`'s blocks, its
 * last row sampled greedily (warm-ups and probes). `longFrom` 0: on the long-query kernel.
 */
export function singleSequenceStep(
  ids: Int32Array,
  past: number,
  blockTable: Int32Array,
  longFrom?: number,
): StepInputs {
  const n = ids.length;
  return {
    inputIds: ids,
    idSrc: new Int32Array(n).fill(-1),
    cuSeqlens: Int32Array.of(0, n),
    pastSeqlens: Int32Array.of(past),
    blockTable,
    maxBlocks: blockTable.length,
    sampleRows: Int32Array.of(n - 1),
    sampleU: Float32Array.of(-1),
    invTemp: Float32Array.of(1),
    sampleFilters: Float32Array.from(NO_FILTERS),
    sampleEdits: new Float32Array(0),
    wantLogits: false,
    ...(longFrom === undefined ? {} : { longFrom }),
  };
}

/**
 * Cuts the span [start, start + n) of one sequence into attention items of at most `itemTokens`
 * tokens, as [start, length] pairs in order. Each becomes a row of cu_seqlens / past_seqlens /
 * block_table with the sequence's own block table: PagedAttention writes every new K/V of a step
 * before it attends, so an item sees the items before it as cached context.
 */
export function attentionItems(start: number, n: number, itemTokens: number): [number, number][] {
  const out: [number, number][] = [];
  for (let p = start; p < start + n; p += itemTokens) out.push([p, Math.min(itemTokens, start + n - p)]);
  return out;
}

/**
 * A step cut after its leading decodes (one-token items whose token is sampled, as the scheduler
 * puts first) into two steps, the decodes and the rest, when there are at least `min` decodes and
 * something after them; null otherwise. Sampled rows keep their order (see sliceItems).
 */
export function splitDecodes(s: StepInputs, min: number): { decode: StepInputs; rest: StepInputs } | null {
  const B = s.pastSeqlens.length;
  let D = 0;
  while (D < B && s.cuSeqlens[D + 1] - s.cuSeqlens[D] === 1 && s.sampleRows[D] === D) D++;
  if (s.wantLogits || D < Math.max(1, min) || D === B) return null;
  return { decode: sliceItems(s, 0, D).part, rest: sliceItems(s, D, B).part };
}

/**
 * Items [from, to) of a step as a step of their own. Its sampled rows are the whole step's that fall
 * in those items, in order (`sampled` of them); a part that samples nothing gets one unused row, as
 * every step needs one, which its caller does not count.
 */
export function sliceItems(s: StepInputs, from: number, to: number): { part: StepInputs; sampled: number } {
  const M = s.maxBlocks, t0 = s.cuSeqlens[from], t1 = s.cuSeqlens[to];
  let r0 = 0;
  while (r0 < s.sampleRows.length && s.sampleRows[r0] < t0) r0++;
  let r1 = r0;
  while (r1 < s.sampleRows.length && s.sampleRows[r1] < t1) r1++;
  const sampled = r1 - r0;
  const part: StepInputs = {
    inputIds: s.inputIds.slice(t0, t1),
    idSrc: s.idSrc.slice(t0, t1),
    cuSeqlens: s.cuSeqlens.slice(from, to + 1).map((c) => c - t0),
    pastSeqlens: s.pastSeqlens.slice(from, to),
    blockTable: s.blockTable.slice(from * M, to * M),
    maxBlocks: M,
    sampleRows: sampled ? s.sampleRows.slice(r0, r1).map((r) => r - t0) : Int32Array.of(0),
    sampleU: sampled ? s.sampleU.slice(r0, r1) : Float32Array.of(-1),
    invTemp: sampled ? s.invTemp.slice(r0, r1) : Float32Array.of(1),
    sampleFilters: sampled ? s.sampleFilters.slice(3 * r0, 3 * r1) : Float32Array.from(NO_FILTERS),
    sampleEdits: sliceEdits(s.sampleEdits, r0, sampled ? r1 : r0),
    wantLogits: s.wantLogits && sampled > 0,
  };
  return { part, sampled };
}
