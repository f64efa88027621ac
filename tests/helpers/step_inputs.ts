// Hand-built step inputs for tests that drive the model runner directly: one item per segment, every
// token's row sampled greedily, logits read back.

import type { StepInputs } from "../../engine/step_inputs.ts";

/** A segment of one sequence: its new token ids, tokens already cached, and its block table. */
export interface Seg {
  ids: number[];
  past: number;
  blocks: number[];
}

export function stepInputs(segs: Seg[], maxBlocks: number): StepInputs {
  const ids = segs.flatMap((s) => s.ids);
  const cu = [0];
  for (const s of segs) cu.push(cu[cu.length - 1] + s.ids.length);
  const bt = new Int32Array(segs.length * maxBlocks);
  segs.forEach((s, i) => bt.set(s.blocks, i * maxBlocks));
  const rows = Int32Array.from(ids.keys());
  return {
    inputIds: Int32Array.from(ids),
    idSrc: new Int32Array(ids.length).fill(-1),
    cuSeqlens: Int32Array.from(cu),
    pastSeqlens: Int32Array.from(segs.map((s) => s.past)),
    blockTable: bt,
    maxBlocks,
    sampleRows: rows,
    sampleU: new Float32Array(rows.length).fill(-1),
    invTemp: new Float32Array(rows.length).fill(1),
    sampleFilters: new Float32Array(3 * rows.length).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits: true,
  };
}
