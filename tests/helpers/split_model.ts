// A random model large enough for split-K at 8 (K >= 256 everywhere), a prompt for it, and its logits
// alone or beside companions in one step: what the split-K and prompt-graph tests compare.

import type { ModelRunner } from "../../engine/model_runner.ts";
import { stepInputs } from "./step_inputs.ts";

/** Hidden 256 (qkv 256 -> 512, gate/up 256 -> 1024, LM head 256 -> 320), o 256 -> 256, down 512 -> 256. */
export const SPLIT_SHAPE = {
  hiddenSize: 256,
  intermediateSize: 512,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  vocabSize: 320,
};

const V = SPLIT_SHAPE.vocabSize;

export const PROMPT = Array.from({ length: 20 }, (_, i) => (i * 37 + 3) % V);

/**
 * PROMPT's logits (every row) in one step, alone or beside `companions` 31-token prompts; the prompt in
 * blocks 0-1, each companion in blocks of its own. `asPrompt`: as a prompt part (long-query mode
 * "prompts": the long-query kernel and the prompt graph).
 */
export async function promptLogits(
  runner: ModelRunner,
  companions: number,
  asPrompt = false,
): Promise<Float32Array> {
  const items = [{ ids: PROMPT, past: 0, blocks: [0, 1] }];
  for (let k = 0; k < companions; k++) {
    items.push({
      ids: Array.from({ length: 31 }, (_, i) => (i * 11 + 5 * k + 7) % V),
      past: 0,
      blocks: [2 + 2 * k, 3 + 2 * k],
    });
  }
  const s = stepInputs(items, 2);
  const r = await runner.read(await runner.run(asPrompt ? { ...s, longFrom: 0 } : s));
  return r.logits!.slice(0, PROMPT.length * V);
}

/** Largest |a[off + i] - b[i]|. */
export function maxAbsDiff(a: Float32Array, b: ArrayLike<number>, off = 0): number {
  let m = 0;
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(a[off + i] - b[i]));
  return m;
}
