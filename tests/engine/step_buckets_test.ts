// Uncaptured steps padded to bucketed shapes (engine/step_buckets.ts): the set of shapes stays small,
// the real rows are untouched, and the padding stays where nothing reads it.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  bucketStep,
  bucketUp,
  DECODE_QUERY_BOUND,
  exactStep,
  KV_BOUND_STEP,
  stepBucketsOn,
} from "../../engine/step_buckets.ts";
import { splitDecodes, type StepInputs } from "../../engine/step_inputs.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, LONG_QUERY_TOKENS, MIN_STEP_ROWS } from "../../engine/protocol.ts";

const RESERVED = 999, BLOCK = 16, MAX_POS = 1024;

/** A step of items with these query lengths and pasts, each sequence's blocks numbered apart. */
function step(qs: number[], pasts: number[], sampled = qs.length): StepInputs {
  const B = qs.length, M = Math.max(1, ...qs.map((q, b) => Math.ceil((q + pasts[b]) / BLOCK)));
  const cu = new Int32Array(B + 1);
  qs.forEach((q, b) => cu[b + 1] = cu[b] + q);
  const T = cu[B];
  const table = new Int32Array(B * M);
  for (let b = 0; b < B; b++) for (let j = 0; j < M; j++) table[b * M + j] = b * 100 + j + 1;
  return {
    inputIds: Int32Array.from({ length: T }, (_, i) => 7 + i),
    idSrc: Int32Array.from({ length: T }, (_, i) => (i % 3 === 0 ? i : -1)),
    cuSeqlens: cu,
    pastSeqlens: Int32Array.from(pasts),
    blockTable: table,
    maxBlocks: M,
    sampleRows: Int32Array.from({ length: sampled }, (_, i) => cu[i + 1] - 1),
    sampleU: new Float32Array(sampled).fill(0.25),
    invTemp: new Float32Array(sampled).fill(2),
    sampleFilters: new Float32Array(3 * sampled).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits: false,
  };
}

Deno.test("bucketUp gives four sizes per octave and never less than asked", () => {
  assertEquals([1, 16, 17, 20, 21, 33, 64, 65, 100, 4097, 8192].map((n) => bucketUp(n, 16)), [
    16,
    16,
    20,
    20,
    24,
    40,
    64,
    80,
    112,
    5120,
    8192,
  ]);
  const sizes = new Set<number>();
  for (let n = 1; n <= 8192; n++) {
    const b = bucketUp(n, 16);
    assert(b >= n && b <= Math.max(16, n * 1.25), `bucketUp(${n}) = ${b}`);
    sizes.add(b);
  }
  // Every token count of an 8192-token budget lands on one of ~40 shapes.
  assert(sizes.size <= 42, `${sizes.size} sizes`);
});

Deno.test("a bucketed step keeps its real rows and pads only with reserved-block items", () => {
  const cases: [number[], number[], number?][] = [
    [[1, 1, 1], [40, 7, 300]], // decode-only: needs a 2-token item
    [[31, 31, 5, 1], [0, 31, 62, 500]],
    [Array(264).fill(31), Array(264).fill(0), 1],
    [[17], [0]],
    [Array(70).fill(1), Array(70).fill(90)],
  ];
  for (const [qs, pasts, sampled] of cases) {
    const s = step(qs, pasts, sampled);
    const { s: p, attnMeta } = bucketStep(s, RESERVED, BLOCK, MAX_POS, MIN_STEP_ROWS);
    const T = s.inputIds.length, B = qs.length, Tp = p.inputIds.length, Bp = p.pastSeqlens.length;
    const what = `items ${qs.length}, ${T} rows`;
    assert(Tp >= T && Bp >= B, what);
    assertEquals(Bp, bucketUp(Bp, 1), `${what}: items bucketed`);
    assertEquals(Tp, bucketUp(Tp, MIN_STEP_ROWS), `${what}: rows bucketed`);
    assertEquals(p.sampleRows.length, bucketUp(s.sampleRows.length, MIN_STEP_ROWS), `${what}: sampled rows`);
    assertEquals(p.maxBlocks, bucketUp(s.maxBlocks, 1), `${what}: table width`);
    // Real rows, items and sampled rows unchanged.
    assertEquals([...p.inputIds.subarray(0, T)], [...s.inputIds], what);
    assertEquals([...p.idSrc.subarray(0, T)], [...s.idSrc], what);
    assertEquals([...p.cuSeqlens.subarray(0, B + 1)], [...s.cuSeqlens], what);
    assertEquals([...p.pastSeqlens.subarray(0, B)], [...s.pastSeqlens], what);
    for (let b = 0; b < B; b++) {
      const M = s.maxBlocks, W = p.maxBlocks;
      assertEquals([...p.blockTable.subarray(b * W, b * W + M)], [
        ...s.blockTable.subarray(b * M, b * M + M),
      ]);
    }
    const S = s.sampleRows.length;
    assertEquals([...p.sampleRows.subarray(0, S)], [...s.sampleRows], what);
    assertEquals([...p.sampleU.subarray(0, S)], [...s.sampleU], what);
    assert(p.sampleU.subarray(S).every((u) => u < 0), `${what}: padded sampled rows are greedy`);
    // Padding items: past 0, 1..BLOCK tokens each (at most 2 beside decodes), in the reserved block, ids
    // from the CPU.
    const decodes = Math.max(...qs) <= DECODE_QUERY_BOUND;
    let maxPadQ = 0;
    for (let b = B; b < Bp; b++) {
      const q = p.cuSeqlens[b + 1] - p.cuSeqlens[b];
      assert(q >= 1 && q <= (decodes ? DECODE_QUERY_BOUND : BLOCK), `${what}: padding item of ${q} tokens`);
      assertEquals(p.pastSeqlens[b], 0);
      assertEquals(p.blockTable[b * p.maxBlocks], RESERVED);
      maxPadQ = Math.max(maxPadQ, q);
    }
    assertEquals(p.cuSeqlens[Bp], Tp, what);
    assert(p.idSrc.subarray(T).every((v) => v === -1), `${what}: padded ids come from the CPU`);
    if (Math.max(...qs) < 2) assert(maxPadQ >= 2, `${what}: a decode-only step gets a 2-token item`);
    // Bounds: above every item, the kernel of items under 32 tokens (decodes: 2, as captured ones
    // have), within the rotary tables.
    const maxKv = Math.max(...qs.map((q, b) => q + pasts[b]));
    assertEquals(attnMeta[0], decodes ? DECODE_QUERY_BOUND : BATCH_INVARIANT_ITEM_TOKENS, what);
    assert(attnMeta[1] >= maxKv && attnMeta[1] <= MAX_POS, `${what}: kv bound ${attnMeta[1]}`);
    assert(attnMeta[1] % KV_BOUND_STEP === 0 || attnMeta[1] === MAX_POS, what);
  }
});

Deno.test("over many random steps each bucketed dimension takes few values", () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const dims = ["rows", "items", "width", "sampled", "kv bound"];
  const seen = dims.map(() => new Set<number>());
  for (let i = 0; i < 3000; i++) {
    const B = 1 + rnd(300);
    const qs = Array.from({ length: B }, () => (rnd(4) === 0 ? 1 + rnd(31) : 1));
    const pasts = qs.map(() => rnd(900));
    const { s, attnMeta } = bucketStep(step(qs, pasts), RESERVED, BLOCK, MAX_POS, MIN_STEP_ROWS);
    [s.inputIds.length, s.pastSeqlens.length, s.maxBlocks, s.sampleRows.length, attnMeta[1]]
      .forEach((v, d) => seen[d].add(v));
  }
  // A buffer's size follows one or two of these: exact sizes would give hundreds of each.
  seen.forEach((set, d) => assert(set.size <= 40, `${dims[d]}: ${set.size} sizes`));
});

Deno.test("an exact step pads only to the row floor and a decode-only step's 2-token item", () => {
  // Decode-only, 3 rows: 13 padding tokens in items of at most 2 give 16 rows and a query bound of 2.
  const d = exactStep(step([1, 1, 1], [40, 7, 300]), RESERVED, MIN_STEP_ROWS, 2, BLOCK);
  assertEquals(d.s.inputIds.length, MIN_STEP_ROWS);
  assertEquals([...d.s.cuSeqlens], [0, 1, 2, 3, 5, 7, 9, 11, 13, 15, 16]);
  for (let b = 3; b < 10; b++) assertEquals(d.s.blockTable[b * d.s.maxBlocks], RESERVED);
  assertEquals(d.attnMeta, [2, 301]);
  // Beside a longer query the row floor goes in one item, within the bound the step has anyway.
  const c = exactStep(step([9, 1], [0, 40]), RESERVED, MIN_STEP_ROWS, 2, BLOCK);
  assertEquals([...c.s.cuSeqlens], [0, 9, 10, MIN_STEP_ROWS]);
  assertEquals(c.attnMeta, [9, 41]);
  assertEquals(d.s.sampleRows.length, MIN_STEP_ROWS);
  // Enough rows and a longer query: nothing padded but the sampled rows, exact bounds.
  const s = step([31, 5], [0, 62], 1);
  const e = exactStep(s, RESERVED, MIN_STEP_ROWS, 2, BLOCK);
  assertEquals(e.s.inputIds, s.inputIds);
  assertEquals(e.s.cuSeqlens, s.cuSeqlens);
  assertEquals(e.attnMeta, [31, 67]);
  assertEquals(e.s.sampleRows.length, MIN_STEP_ROWS);
  // Decode-only with enough rows still gets a 2-token item.
  const w = exactStep(step(Array(20).fill(1), Array(20).fill(9)), RESERVED, MIN_STEP_ROWS, 2, BLOCK);
  assertEquals(w.s.inputIds.length, 22);
  assertEquals(w.attnMeta, [2, 10]);
});

Deno.test("long-query mode: a step whose queries are all short gets a 32-token item in the reserved block", () => {
  const L = LONG_QUERY_TOKENS;
  // Decodes of one-block sequences: the table widens to the padding item's two blocks, both reserved.
  const d = exactStep(step([1, 1, 1], [4, 7, 9]), RESERVED, MIN_STEP_ROWS, L, BLOCK);
  assertEquals(d.s.maxBlocks, 2);
  assertEquals(d.s.inputIds.length, 3 + L);
  assertEquals([...d.s.cuSeqlens], [0, 1, 2, 3, 3 + L]);
  assertEquals([...d.s.pastSeqlens], [4, 7, 9, 0]);
  assertEquals([...d.s.blockTable.subarray(3 * 2, 4 * 2)], [RESERVED, RESERVED]);
  // The real items keep their blocks; the new column past them is never read.
  assertEquals([d.s.blockTable[0], d.s.blockTable[2], d.s.blockTable[4]], [1, 101, 201]);
  assertEquals(d.attnMeta, [L, L]);
  // A prompt chunk of 32 or more tokens needs no padding item; a shorter one beside decodes does.
  const long = step([40, 1], [0, 300], 2);
  const e = exactStep(long, RESERVED, MIN_STEP_ROWS, L, BLOCK);
  assertEquals(e.s.cuSeqlens, long.cuSeqlens);
  assertEquals(e.attnMeta, [40, 301]);
  const short = exactStep(step([20, 1], [64, 300], 2), RESERVED, MIN_STEP_ROWS, L, BLOCK);
  assertEquals([...short.s.cuSeqlens], [0, 20, 21, 21 + L]);
  assertEquals(short.attnMeta, [L, 301]);
});

Deno.test("a bucketed long-query step keeps its real rows, has a 32-token item and few shapes", () => {
  const L = LONG_QUERY_TOKENS;
  const seen = [new Set<number>(), new Set<number>(), new Set<number>()];
  const cases: [number[], number[]][] = [[[1], [900]], [[5, 20], [0, 64]], [[100, 40, 7], [0, 16, 300]], [[
    513,
  ], [0]]];
  for (let i = 0; i < 200; i++) cases.push([[33 + ((i * 37) % 700), 1 + (i % 31)], [(i * 16) % 400, 0]]);
  for (const [qs, pasts] of cases) {
    const s = step(qs, pasts);
    const { s: p, attnMeta } = bucketStep(s, RESERVED, BLOCK, MAX_POS, MIN_STEP_ROWS, L);
    const T = s.inputIds.length, B = qs.length, Bp = p.pastSeqlens.length;
    const what = `queries ${qs}`;
    assertEquals([...p.inputIds.subarray(0, T)], [...s.inputIds], what);
    assertEquals([...p.cuSeqlens.subarray(0, B + 1)], [...s.cuSeqlens], what);
    assertEquals([...p.pastSeqlens.subarray(0, B)], [...s.pastSeqlens], what);
    const padQ = Array.from({ length: Bp - B }, (_, j) => p.cuSeqlens[B + j + 1] - p.cuSeqlens[B + j]);
    // Some item has 32+ tokens: a real one, or the first padding item (its blocks all reserved).
    if (Math.max(...qs) < L) {
      assertEquals(padQ[0], L, what);
      assertEquals([...p.blockTable.subarray(B * p.maxBlocks, B * p.maxBlocks + L / BLOCK)], [
        RESERVED,
        RESERVED,
      ]);
    }
    assert(
      attnMeta[0] >= Math.max(L, ...qs) && attnMeta[0] === bucketUp(attnMeta[0], L),
      `${what}: ${attnMeta}`,
    );
    [p.inputIds.length, Bp, attnMeta[0]].forEach((v, d) => seen[d].add(v));
  }
  seen.forEach((set, d) => assert(set.size <= 24, `dimension ${d}: ${set.size} sizes`));
});

Deno.test("bucketing follows RAGTIME_STEP_BUCKETS, else is off until Dawn is selected", () => {
  const saved = Deno.env.get("RAGTIME_STEP_BUCKETS");
  try {
    Deno.env.delete("RAGTIME_STEP_BUCKETS");
    assertEquals(stepBucketsOn(), false); // no selectWebGpu in this process: Deno's WebGPU
    Deno.env.set("RAGTIME_STEP_BUCKETS", "on");
    assertEquals(stepBucketsOn(), true);
    Deno.env.set("RAGTIME_STEP_BUCKETS", "off");
    assertEquals(stepBucketsOn(), false);
  } finally {
    if (saved === undefined) Deno.env.delete("RAGTIME_STEP_BUCKETS");
    else Deno.env.set("RAGTIME_STEP_BUCKETS", saved);
  }
});

Deno.test("splitDecodes: the leading sampled one-token items apart from the rest, sampled rows in order", () => {
  const s = step([1, 1, 1, 31, 5], [40, 7, 300, 0, 20]);
  const { decode, rest } = splitDecodes(s, 2)!;
  const M = s.maxBlocks;
  assertEquals([...decode.cuSeqlens], [0, 1, 2, 3]);
  assertEquals([...decode.pastSeqlens], [40, 7, 300]);
  assertEquals([...decode.inputIds], [...s.inputIds.subarray(0, 3)]);
  assertEquals([...decode.idSrc], [...s.idSrc.subarray(0, 3)]);
  assertEquals([...decode.blockTable], [...s.blockTable.subarray(0, 3 * M)]);
  assertEquals([...decode.sampleRows], [0, 1, 2]);
  assertEquals([...rest.cuSeqlens], [0, 31, 36]);
  assertEquals([...rest.pastSeqlens], [0, 20]);
  assertEquals([...rest.inputIds], [...s.inputIds.subarray(3)]);
  assertEquals([...rest.idSrc], [...s.idSrc.subarray(3)]);
  assertEquals([...rest.blockTable], [...s.blockTable.subarray(3 * M)]);
  assertEquals([...rest.sampleU, ...rest.invTemp], [0.25, 0.25, 2, 2]);
  // The decodes' ids, then the rest's, are the whole step's sampled rows in order.
  assertEquals([...decode.sampleRows, ...[...rest.sampleRows].map((r) => r + 3)], [...s.sampleRows]);
});

Deno.test("splitDecodes: no split for too few decodes, decodes alone or CPU logits; a rest sampling nothing gets a row", () => {
  assertEquals(splitDecodes(step([1, 31], [5, 0]), 2), null);
  assertEquals(splitDecodes(step([1, 1], [5, 6]), 1), null);
  assertEquals(splitDecodes({ ...step([1, 1, 9], [5, 6, 0]), wantLogits: true }, 1), null);
  // Only the first item is sampled: the next one-token item is a prompt chunk, which ends the decodes.
  const { decode, rest } = splitDecodes(step([1, 1, 4], [5, 6, 0], 1), 1)!;
  assertEquals([...decode.pastSeqlens], [5]);
  assertEquals([...rest.cuSeqlens], [0, 1, 5]);
  assertEquals([...rest.sampleRows, ...rest.sampleU], [0, -1]);
});
