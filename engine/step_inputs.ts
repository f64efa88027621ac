// The flat inputs of one ragged step: built by the engine from the scheduler's plan, consumed by the
// model runner and its captured sessions (a module of its own so neither imports the other for it).

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
  /** Read back full logits (CPU sampling, logprobs). */
  wantLogits: boolean;
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
