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

/**
 * A step cut after its leading decodes (one-token items whose token is sampled, as the scheduler
 * puts first) into two steps, the decodes and the rest, when there are at least `min` decodes and
 * something after them; null otherwise. Sampled rows keep their order: the decodes' are rows
 * 0..D-1 of the whole step, the rest's follow (a rest that samples nothing gets one unused row, as
 * every step needs one).
 */
export function splitDecodes(s: StepInputs, min: number): { decode: StepInputs; rest: StepInputs } | null {
  const B = s.pastSeqlens.length, M = s.maxBlocks;
  let D = 0;
  while (D < B && s.cuSeqlens[D + 1] - s.cuSeqlens[D] === 1 && s.sampleRows[D] === D) D++;
  if (s.wantLogits || D < Math.max(1, min) || D === B) return null;
  const decode: StepInputs = {
    inputIds: s.inputIds.slice(0, D),
    idSrc: s.idSrc.slice(0, D),
    cuSeqlens: s.cuSeqlens.slice(0, D + 1),
    pastSeqlens: s.pastSeqlens.slice(0, D),
    blockTable: s.blockTable.slice(0, D * M),
    maxBlocks: M,
    sampleRows: s.sampleRows.slice(0, D),
    sampleU: s.sampleU.slice(0, D),
    invTemp: s.invTemp.slice(0, D),
    wantLogits: false,
  };
  const sampled = s.sampleRows.length > D;
  const rest: StepInputs = {
    inputIds: s.inputIds.slice(D),
    idSrc: s.idSrc.slice(D),
    cuSeqlens: s.cuSeqlens.slice(D).map((c) => c - D),
    pastSeqlens: s.pastSeqlens.slice(D),
    blockTable: s.blockTable.slice(D * M),
    maxBlocks: M,
    sampleRows: sampled ? s.sampleRows.slice(D).map((r) => r - D) : Int32Array.of(0),
    sampleU: sampled ? s.sampleU.slice(D) : Float32Array.of(-1),
    invTemp: sampled ? s.invTemp.slice(D) : Float32Array.of(1),
    wantLogits: false,
  };
  return { decode, rest };
}
