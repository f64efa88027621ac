// Logit edits (engine/logit_edits.ts): the entries logit_bias and the penalties send to the GPU, their
// rule on the CPU, a pending token counted as a known one, and a sequence's entries kept between steps.

import { assert, assertEquals } from "../helpers/assert.ts";
import { neutralSamplingParams, type SamplingParams } from "../../engine/protocol.ts";
import {
  applyEdits,
  concatEdits,
  EDIT_FLOATS,
  LogitEdits,
  logitEdits,
  sliceEdits,
} from "../../engine/logit_edits.ts";
import { processLogits } from "../../engine/sampler.ts";

function params(over: Partial<SamplingParams> = {}): SamplingParams {
  return neutralSamplingParams({ temperature: 1, ...over });
}

const entriesOf = (out: Float32Array) =>
  Array.from({ length: out.length / EDIT_FLOATS }, (_, i) => [...out.subarray(i * 8, i * 8 + 8)]);

Deno.test("logitEdits: a header, one entry a changed token, and the pending token last", () => {
  const p = params({
    repetitionPenalty: 1.5,
    frequencyPenalty: 0.5,
    presencePenalty: 0.25,
    logitBias: { 7: 2 },
  });
  const entries = entriesOf(logitEdits(3, p, [4, 4, 5], [5, 6, 6], 10, 9));
  assertEquals(EDIT_FLOATS, 8);
  // [row, -2, repetition, 1 / repetition, frequency, presence, pendingSrc, entries after it]
  assertEquals(entries[0], [3, -2, 1.5, Math.fround(1 / 1.5), 0.5, 0.25, 9, 5]);
  // [0, id, bias, count, inPrompt, back, 0, 0]
  const byId = new Map(entries.slice(1, -1).map((e) => [e[1], e]));
  assertEquals([...byId.keys()].sort(), [4, 5, 6, 7]);
  assertEquals(byId.get(4)!.slice(2, 5), [0, 0, 1]);
  assertEquals(byId.get(5)!.slice(2, 5), [0, 1, 1]);
  assertEquals(byId.get(6)!.slice(2, 5), [0, 2, 0]);
  assertEquals(byId.get(7)!.slice(2, 5), [2, 0, 0]);
  entries.forEach((e, i) => i > 0 && assertEquals(e[5], i, "back: entries before it in the row"));
  assertEquals(entries.at(-1)!.slice(0, 6), [0, -1, 0, 0, 0, 5]);
  // Counts are not taken without a penalty, nor the prompt asked without a repetition penalty, nor a
  // pending entry sent.
  const biasOnly = logitEdits(
    0,
    params({ logitBias: { 7: 2 } }),
    {
      get length(): number {
        throw new Error("prompt asked");
      },
    },
    [7, 7],
    10,
    4,
  );
  assertEquals(entriesOf(biasOnly), [[0, -2, 1, 1, 0, 0, -1, 1], [0, 7, 2, 0, 0, 1, 0, 0]]);
});

Deno.test("applyEdits: a pending token edits the row as the same token known, and as processLogits", () => {
  const logits = Float32Array.from({ length: 12 }, (_, i) => (i - 5.5) * 0.37);
  const prompt = [4, 4, 5, 11];
  const settings: Partial<SamplingParams>[] = [
    { repetitionPenalty: 1.3, frequencyPenalty: 0.5, presencePenalty: 0.25, logitBias: { 7: 2 } },
    { repetitionPenalty: 0.8 },
    { frequencyPenalty: -0.7 },
    { presencePenalty: 1.1, logitBias: { 3: -1 } },
  ];
  for (const over of settings) {
    for (const last of [4, 6, 7, 3, 10]) {
      const p = params(over), output = [5, 6, 6];
      const known = logits.slice(), pending = logits.slice();
      applyEdits(known, logitEdits(0, p, prompt, [...output, last], 12));
      applyEdits(pending, logitEdits(0, p, prompt, output, 12, 0), last);
      assertEquals([...pending], [...known], `${JSON.stringify(over)}, last token ${last}`);
      const cpu = processLogits(logits, p, { promptIds: prompt, outputIds: [...output, last], seed: 0 });
      assertEquals([...cpu], [...known]);
    }
  }
});

Deno.test("LogitEdits: entries kept between steps equal entries built afresh at every step", () => {
  let s = 9;
  const rand = (n: number) => (s = (s * 1103515245 + 12345) % 2147483648) % n;
  const prompt = Array.from({ length: 300 }, () => rand(500));
  const p = params({
    repetitionPenalty: 1.2,
    frequencyPenalty: 0.3,
    presencePenalty: 0.1,
    logitBias: { 3: 1 },
  });
  let asked = 0;
  // The prompt, counting how often its length is taken (once a pass over it).
  const counted: ArrayLike<number> = {
    get length() {
      asked++;
      return prompt.length;
    },
    ...Object.fromEntries(prompt.map((id, i) => [i, id])),
  };
  const kept = new LogitEdits(p, counted, 500);
  const output: number[] = [];
  for (let step = 0; step < 60; step++) {
    // Output tokens arrive one or several at a time (pipelined steps read back later).
    for (let k = rand(3); k > 0; k--) output.push(rand(10) === 0 ? 999 : rand(500));
    const row = rand(8), src = rand(4) - 1;
    const out = new Float32Array(kept.floats(output, src) + 3);
    const end = kept.write(out, 3, row, output, src);
    assertEquals(end, out.length);
    assertEquals([...out.subarray(3)], [...logitEdits(row, p, prompt, output, 500, src)]);
  }
  assertEquals(asked, 1, "the prompt is read once");
});

Deno.test("sliceEdits: a part of a step keeps its rows' entries, renumbered", () => {
  const p = params({ frequencyPenalty: 0.5 });
  const rows = [0, 1, 2, 3].map((r) => logitEdits(r, p, [], Array(r + 1).fill(r), 10, r === 2 ? 5 : -1));
  const all = concatEdits(rows);
  const part = sliceEdits(all, 1, 3);
  assertEquals([...part], [
    ...concatEdits([logitEdits(0, p, [], [1, 1], 10), logitEdits(1, p, [], [2, 2, 2], 10, 5)]),
  ]);
  assertEquals(sliceEdits(all, 4, 6).length, 0);
  assert(sliceEdits(all, 0, 4).every((x, i) => x === all[i]));
});
