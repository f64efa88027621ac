// Uncaptured steps in a finite set of shapes, so that onnxruntime's WebGPU buffer cache can hand every
// step the buffers an earlier step of its shape released.
//
// sessions.ts runs ORT's storage buffers in its "simple" cache: a released buffer is kept by its exact
// size and reused by a later request of that size. ORT's default "bucket" cache keeps at most a few
// buffers per size class and none over 160 MB, so a long prefill step created, and WebGPU zero-filled,
// its large intermediates (split-K partial products) in every step: measured on the H200, an 8184-token
// step spent 220 ms (SmolLM2-135M shape) and 0.97 s (Llama-3.2-1B shape) of CPU in 37 and 87
// createBuffer calls. Exact-size reuse needs few distinct sizes, so an uncaptured step's dimensions are
// rounded up here: token rows, attention items, sampled rows and the block table's width to one of four
// sizes per octave, and PagedAttention's bounds to the item limit and a multiple of KV_BOUND_STEP.
//
// Padding never changes a real row: padded tokens are items of at most a block in the reserved block
// (their KV lands there and nothing reads it), padded sampled rows repeat row 0, padded table columns
// are never reached (each item reads only its own past), and the bounds are upper bounds that select the
// same kernel (every item is under 32 tokens, or on the long-query kernel one is 32 or more).
//
// Worth it where a long step's CPU dispatch outlasts its GPU work: on Dawn (H200, docs/BENCHMARKS.md
// session 9: Llama-3.2-1B shape 1.5x the throughput, TTFT 11.3 -> 4.0 s). On Deno's WebGPU its kernels
// are slow enough that dispatch already overlapped them and the padding cost more than it saved
// (session 6), and on a software adapter padded rows are pure arithmetic: off there.

import { NO_FILTERS, type StepInputs } from "./step_inputs.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, type LongQueries } from "./protocol.ts";
import { webGpuInUse } from "./webgpu_backend.ts";

/** Bucketed steps and the exact-size buffer cache: on with Dawn; RAGTIME_STEP_BUCKETS=on|off overrides. */
export function stepBucketsOn(): boolean {
  return onWithDawn("RAGTIME_STEP_BUCKETS");
}

/**
 * Mixed steps split into a captured replay of their decodes and an uncaptured rest (ModelRunner.run):
 * on with Dawn, where the padded decodes' attention is the larger cost; on a software adapter the
 * second step costs more than it saves. RAGTIME_SPLIT_DECODES=on|off overrides.
 */
export function splitDecodesOn(): boolean {
  return onWithDawn("RAGTIME_SPLIT_DECODES");
}

/**
 * Long-query mode (LongQueries) for probes that build a runner without the engine's settings (the
 * engine's comes from --long-queries, whose env twin is the same RAGTIME_LONG_QUERIES).
 */
export function longQueriesEnv(name = "RAGTIME_LONG_QUERIES"): LongQueries {
  const v = Deno.env.get(name);
  return v === "on" || v === "prompts" ? v : "off";
}

function onWithDawn(env: string): boolean {
  const v = Deno.env.get(env);
  if (v === "on" || v === "off") return v === "on";
  return webGpuInUse() === "dawn";
}

/**
 * Query bound of a short-kernel step whose queries are all 1-2 tokens (decodes; the 2-token padding
 * item). PagedAttention lays every item out up to the step's query bound and computes each of those
 * rows over the item's context, so decodes under a bound of 31 cost 31 rows each: H100, Llama-3.2-1B
 * shape, 128 decodes at 700 tokens of context, 740 ms uncaptured against 50 ms captured (bound 2).
 * The kernel gives a row the same bits under either bound (captured and uncaptured steps agree).
 */
export const DECODE_QUERY_BOUND = 2;

/** Attention's context bound is rounded up to a multiple of this many positions. */
export const KV_BOUND_STEP = 256;

/** n rounded up to one of four sizes per octave (..., 40, 48, 56, 64, 80, ...), at least `min`. */
export function bucketUp(n: number, min: number): number {
  if (n <= min) return min;
  const step = 2 ** Math.max(0, Math.ceil(Math.log2(n)) - 3);
  return Math.ceil(n / step) * step;
}

export interface BucketedStep {
  s: StepInputs;
  /** PagedAttention's host-side [maxQ, maxKv] bounds for the padded step. */
  attnMeta: [number, number];
}

/**
 * The step padded to bucketed shapes. `reservedBlock` is the KV block no sequence owns, `blockSize`
 * its capacity (the most tokens a padding item holds), `maxPositions` the rotary tables' length (the
 * context bound may not exceed it), `minRows` the fewest token and sampled rows of any step.
 * `longQuery` (LONG_QUERY_TOKENS, for a step on the long-query kernel): a step whose queries are all
 * shorter first gets a padding item that long, and the query bound is bucketed too; the kernel gives a
 * token the same bits whatever the step's other items and bounds (kv_probe --long).
 */
export function bucketStep(
  s: StepInputs,
  reservedBlock: number,
  blockSize: number,
  maxPositions: number,
  minRows: number,
  longQuery = 0,
): BucketedStep {
  let [maxQ, maxKv] = attentionBounds(s);
  if (maxQ < longQuery) {
    s = padItems(s, reservedBlock, longQuery, 1, Math.ceil(longQuery / blockSize));
    maxQ = longQuery;
    maxKv = Math.max(maxKv, longQuery);
  }
  const T = s.inputIds.length, B = s.pastSeqlens.length;
  // A step of one-token queries gets a 2-token item, as ModelRunner.run explains; padding items hold
  // 1..cap tokens (a block, and fewer than 32 so that the kernel stays the same). A step of decodes
  // keeps a query bound of 2, as a captured one has, and so padding items of at most 2 tokens:
  // PagedAttention computes every item's queries up to the bound (see DECODE_QUERY_BOUND).
  const decodes = !longQuery && maxQ <= DECODE_QUERY_BOUND;
  const two = maxQ < 2 ? 1 : 0;
  const cap = decodes ? DECODE_QUERY_BOUND : Math.min(blockSize, BATCH_INVARIANT_ITEM_TOKENS);
  let rows = bucketUp(T + 2 * two, minRows), items = bucketUp(B + two, 1);
  for (let guard = 0; guard < 64; guard++) {
    const pad = rows - T, extra = items - B;
    if (pad > extra * cap) items = bucketUp(B + Math.ceil(pad / cap), 1);
    else if (pad < extra + two) rows = bucketUp(T + extra + two, minRows);
    else break;
  }
  if (rows - T > (items - B) * cap || rows - T < items - B + two) {
    throw new Error(`no bucketed shape for ${T} rows in ${B} items`);
  }
  const padded = padItems(s, reservedBlock, rows - T, items - B);
  const width = bucketUp(s.maxBlocks, 1);
  return {
    s: padSampled(widenTable(padded, width), bucketUp(s.sampleRows.length, minRows)),
    attnMeta: [
      longQuery
        ? bucketUp(maxQ, longQuery)
        : decodes
        ? DECODE_QUERY_BOUND
        : Math.max(maxQ, BATCH_INVARIANT_ITEM_TOKENS),
      Math.min(maxPositions, Math.ceil(Math.max(maxKv, cap) / KV_BOUND_STEP) * KV_BOUND_STEP),
    ],
  };
}

/**
 * The step at its own shape, padded only as every uncaptured step must be: at least `minRows` token and
 * sampled rows, and an item of `minQuery` tokens (2, or LONG_QUERY_TOKENS in long-query mode) when every
 * query is shorter (one item in `reservedBlock`, `blockSize` positions, repeated in its table row). A
 * step of decodes pads its rows in items of at most 2 tokens, keeping its query bound at 2.
 */
export function exactStep(
  s: StepInputs,
  reservedBlock: number,
  minRows: number,
  minQuery: number,
  blockSize: number,
): BucketedStep {
  let [maxQ, maxKv] = attentionBounds(s);
  const pad = Math.max(maxQ < minQuery ? minQuery : 0, minRows - s.inputIds.length);
  if (pad > 0) {
    const each = minQuery === DECODE_QUERY_BOUND && maxQ <= DECODE_QUERY_BOUND
      ? Math.min(pad, DECODE_QUERY_BOUND)
      : pad;
    s = padItems(s, reservedBlock, pad, Math.ceil(pad / each), Math.ceil(each / blockSize));
    maxQ = Math.max(maxQ, each);
    maxKv = Math.max(maxKv, each);
  }
  return { s: padSampled(s, minRows), attnMeta: [maxQ, maxKv] };
}

/** PagedAttention's [longest query, longest context] over the step's items. */
export function attentionBounds(s: StepInputs): [number, number] {
  let maxQ = 0, maxKv = 0;
  for (let b = 0; b < s.pastSeqlens.length; b++) {
    const q = s.cuSeqlens[b + 1] - s.cuSeqlens[b];
    maxQ = Math.max(maxQ, q);
    maxKv = Math.max(maxKv, s.pastSeqlens[b] + q);
  }
  return [maxQ, maxKv];
}

/**
 * Appends `n` items holding `tokens` tokens in all (spread evenly), each at past 0 in `block`, whose
 * KV lands there: padding rows, and the 2- or 32-token item a step of shorter queries needs (`columns`
 * table columns, all `block`).
 */
function padItems(s: StepInputs, block: number, tokens: number, n: number, columns = 1): StepInputs {
  if (n === 0) return s;
  if (columns > s.maxBlocks) s = widenTable(s, columns);
  const T = s.inputIds.length, B = s.pastSeqlens.length, M = s.maxBlocks;
  const cu = new Int32Array(B + n + 1);
  cu.set(s.cuSeqlens);
  for (let i = 0; i < n; i++) cu[B + i + 1] = cu[B + i] + Math.floor(tokens / n) + (i < tokens % n ? 1 : 0);
  const table = new Int32Array((B + n) * M);
  table.set(s.blockTable);
  // An item longer than a block maps each of its blocks to the reserved one: padding KV is never read.
  for (let i = 0; i < n; i++) table.fill(block, (B + i) * M, (B + i) * M + columns);
  const ids = new Int32Array(T + tokens);
  ids.set(s.inputIds);
  const src = new Int32Array(T + tokens).fill(-1);
  src.set(s.idSrc);
  return {
    ...s,
    inputIds: ids,
    idSrc: src,
    cuSeqlens: cu,
    pastSeqlens: Int32Array.from([...s.pastSeqlens, ...new Array(n).fill(0)]),
    blockTable: table,
  };
}

/** The block table with `width` columns (the new ones 0: past every item's blocks, never read). */
function widenTable(s: StepInputs, width: number): StepInputs {
  const M = s.maxBlocks, B = s.pastSeqlens.length;
  if (width === M) return s;
  const table = new Int32Array(B * width);
  for (let b = 0; b < B; b++) table.set(s.blockTable.subarray(b * M, (b + 1) * M), b * width);
  return { ...s, blockTable: table, maxBlocks: width };
}

/** Repeats sampled row 0 up to `min` sampled rows (their ids are never read). */
function padSampled(s: StepInputs, min: number): StepInputs {
  const S = s.sampleRows.length;
  if (S >= min) return s;
  const rows = new Int32Array(min).fill(s.sampleRows[0]);
  rows.set(s.sampleRows);
  const u = new Float32Array(min).fill(-1);
  u.set(s.sampleU);
  const t = new Float32Array(min).fill(1);
  t.set(s.invTemp);
  const f = new Float32Array(3 * min);
  for (let r = S; r < min; r++) f.set(NO_FILTERS, 3 * r);
  f.set(s.sampleFilters);
  return { ...s, sampleRows: rows, sampleU: u, invTemp: t, sampleFilters: f };
}
