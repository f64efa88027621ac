// Does a token's KV depend on how its prompt was cut into steps? Prefix caching and batch
// invariance both need it not to: a cached block must hold the bits a recompute would write.
// Prefills one prompt of stories260K under several schemes (chunk sizes, offsets, one-token steps
// as decodes run, a companion sequence in the same step to change the step's row count), each into
// blocks of its own, then compares every scheme's K and V and last logits with 31-token chunks from
// position 0, bit for bit.
//
//   deno run -A bench/gpu/kv_probe.ts [--dtype f32|f16] [--tokens 480] [--sweep] [--long] [--min-rows N]
//     [--split N] [--model stories|smollm2|PATH] [--kv-cache-mb MB]
//
// --long: instead, schemes whose every step has a query of 32 or more tokens (the other kernel: the
// prompt cut into long items, short chunks beside a 32-token companion), each against the whole prompt
// as one item: is that kernel, alone, invariant to how a prompt is cut and what shares its step?
//
// Schemes "... in 1 step" / "... a step" put several chunks of the prompt into one step as items of
// their own (how the engine prefills a long prompt in one step).
//
// --split: the matmul split-K factor (the engine's --matmul-split-k, default its default). stories260K's
// matmuls are too short to split at 8 (K = 64: only --split 2 splits them); --model smollm2 (random
// weights in SmolLM2-135M's shape, K >= 576) or a model folder (make-model's llama3.2-1b) splits at 8.
// --sweep adds schemes whose steps have 9 to 31 rows in all (one-token or 7-token chunks beside
// a companion), to find the row count below which results change. Measured 2026-12-02: on llvmpipe
// every scheme within the 31-token kernel is identical in f32 and f16, the multi-item ones included
// (bench/results/cpu-2026-12-02-prefill); on the H200 too in f32, but in f16 steps of 8 rows or fewer
// (7-token chunks, one- and two-token steps) change the KV from position 0 on, and 40-token chunks
// (the other attention kernel) change it in both dtypes. That H200 run had an 8 MiB pool (about 400
// blocks; a scheme takes 30): schemes past the 13th, most --sweep ones among them, wrote past the
// pool and are no measurement. The pool is now sized for every scheme, and a shortfall throws.

import { parseArgs } from "node:util";
import * as ort from "onnxruntime-web/webgpu";
import { createEngine } from "../../engine/local_engine.ts";
import type { ModelRunner, StepInputs } from "../../engine/model_runner.ts";
import { loadModel } from "../../engine/model/load.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, ENGINE_DEFAULTS } from "../../engine/protocol.ts";
import { STORY_TEXT } from "../../tests/helpers/engine.ts";
import { STORIES260K } from "../../tests/helpers/fixtures.ts";
import { readBufferU16 } from "../../tests/helpers/gpu_read.ts";
import { smollm2ShapedModel } from "./probe_model.ts";

const { values: args } = parseArgs({
  options: {
    dtype: { type: "string", default: "f32" },
    tokens: { type: "string", default: "480" },
    sweep: { type: "boolean", default: false },
    long: { type: "boolean", default: false },
    "min-rows": { type: "string" },
    split: { type: "string", default: String(ENGINE_DEFAULTS.matmulSplitK) },
    model: { type: "string", default: "stories" },
    "kv-cache-mb": { type: "string" },
  },
});
const dtype = args.dtype as "f32" | "f16";
const stories = args.model === "stories";
const model = stories
  ? await loadModel(STORIES260K)
  : args.model === "smollm2"
  ? smollm2ShapedModel()
  : await loadModel(args.model!);
const { runner, config } = await createEngine(model, {
  dtype,
  // Every scheme prefills into blocks of its own (newTable throws when they run out).
  kvCacheMb: Number(args["kv-cache-mb"] ?? (stories ? 32 : 512)),
  graphCache: null,
  maxModelLen: 512,
  graphCaptureEager: false,
  matmulSplitK: Number(args.split),
  // --long: every step padded to a long query, so the --sweep schemes run on the long kernel too.
  longQueries: args.long ? "on" : "off",
});
if (args["min-rows"] !== undefined) runner.minRows = Number(args["min-rows"]);
// The story's tokens where the model has a tokenizer, else fixed ids below the vocab's specials.
const V = model.config.vocabSize;
const encoded = [1, ...model.tokenizer.encode(STORY_TEXT, false)];
const prompt =
  (encoded.length > 1 ? encoded : Array.from({ length: 512 }, (_, i) => 3 + ((i * 7919) % (V - 3))))
    .slice(0, Number(args.tokens));
const L = prompt.length, bs = runner.blockSize;

interface Scheme {
  /** Chunk boundaries from 0 to L. */
  bounds: number[];
  /**
   * Chunks per step, each its own item (a row of cu_seqlens / past_seqlens / block_table with the
   * prompt's block table); default 1. Infinity: the whole prompt in one step.
   */
  perStep?: number;
  /** Tokens of a second sequence (its own blocks, rewritten every step) beside each step's chunks. */
  companion?: number;
  /** How many such companions (default 1), each its own item: large steps of short items. */
  companions?: number;
}

function chunks(size: number, first: number[] = []): number[] {
  const b = [0, ...first];
  while (b[b.length - 1] < L) b.push(Math.min(L, b[b.length - 1] + size));
  return b;
}

const C = BATCH_INVARIANT_ITEM_TOKENS;
// An array, not an object: "16" and its kind would be sorted ahead of the reference as integer keys.
const schemes: [string, Scheme][] = [
  [`${C} from 0`, { bounds: chunks(C) }],
  [`16, then ${C}`, { bounds: chunks(C, [16]) }],
  [`3 x 16, then ${C}`, { bounds: chunks(C, [16, 32, 48]) }],
  ...[16, 15, 12, 8, 7, 2].map((n): [string, Scheme] => [`chunks of ${n}`, { bounds: chunks(n) }]),
  ["1 (decode steps)", { bounds: chunks(1) }],
  ["40 (the other kernel)", { bounds: chunks(40) }],
  // Several chunks of the prompt as items of one step: each must see the K/V the items before it
  // write in the same step (PagedAttention scatters all new K/V before it attends).
  [`all ${C}-chunks in 1 step`, { bounds: chunks(C), perStep: Infinity }],
  [`4 ${C}-chunks a step`, { bounds: chunks(C), perStep: 4 }],
  [`4 ${C}-chunks + companion 7`, { bounds: chunks(C), perStep: 4, companion: 7 }],
  [`16, ${C}s, all in 1 step`, { bounds: chunks(C, [16]), perStep: Infinity }],
  [`all 8-chunks in 1 step`, { bounds: chunks(8), perStep: Infinity }],
];
if (args.long) {
  // Every step keeps a query of at least 32 tokens: a chunk that long, or a 32-token companion.
  schemes.length = 0;
  schemes.push(
    [`${L} in 1 item`, { bounds: [0, L] }],
    ["chunks of 40", { bounds: chunks(40) }],
    ["chunks of 64", { bounds: chunks(64) }],
    ["chunks of 100 (+ companion 32)", { bounds: chunks(100), companion: 32 }],
    ["chunks of 333 (+ companion 32)", { bounds: chunks(333), companion: 32 }],
    ["32, then 64s", { bounds: chunks(64, [32]) }],
    ["all 64-chunks in 1 step", { bounds: chunks(64), perStep: Infinity }],
    ["4 40-chunks a step + companion 200", { bounds: chunks(40), perStep: 4, companion: 200 }],
    ["chunks of 48 beside companion 300", { bounds: chunks(48), companion: 300 }],
    ["chunks of 48 beside 8 x 33", { bounds: chunks(48), companion: 33, companions: 8 }],
    ["chunks of 16 beside companion 32", { bounds: chunks(16), companion: 32 }],
    ["chunks of 1 beside companion 32", { bounds: chunks(1), companion: 32 }],
  );
}
if (args.sweep) {
  for (
    const [m, c] of [[1, 8], [1, 9], [1, 10], [1, 11], [1, 15], [1, 20], [7, 2], [7, 3], [7, 5], [7, 9], [
      7,
      24,
    ]]
  ) {
    schemes.push([`${m} beside ${c} (${m + c} rows)`, { bounds: chunks(m), companion: c }]);
  }
  for (const [m, c, k] of [[1, 31, 8], [7, 31, 16], [31, 16, 16]]) {
    schemes.push([`${m} beside ${k}x${c} (${m + c * k} rows)`, {
      bounds: chunks(m),
      companion: c,
      companions: k,
    }]);
  }
}

/** `sampleItem`: the item whose last token's logits the step returns. */
function stepInputs(
  items: { start: number; n: number; table: number[] }[],
  wantLogits: boolean,
  sampleItem = 0,
): StepInputs {
  const T = items.reduce((a, it) => a + it.n, 0), B = items.length;
  const maxBlocks = Math.max(...items.map((i) => i.table.length));
  const s: StepInputs = {
    inputIds: new Int32Array(T),
    idSrc: new Int32Array(T).fill(-1),
    cuSeqlens: new Int32Array(B + 1),
    pastSeqlens: new Int32Array(B),
    blockTable: new Int32Array(B * maxBlocks),
    maxBlocks,
    sampleRows: Int32Array.of(items.slice(0, sampleItem + 1).reduce((a, it) => a + it.n, 0) - 1),
    sampleU: Float32Array.of(-1),
    invTemp: Float32Array.of(1),
    sampleFilters: Float32Array.of(0, 1, 0),
    sampleEdits: new Float32Array(0),
    wantLogits,
  };
  let t = 0;
  items.forEach((it, b) => {
    for (let p = it.start; p < it.start + it.n; p++) s.inputIds[t++] = prompt[p];
    s.cuSeqlens[b + 1] = t;
    s.pastSeqlens[b] = it.start;
    s.blockTable.set(it.table, b * maxBlocks);
  });
  return s;
}

let nextBlock = 0;
const newTable = (n: number) => {
  // A block id past the pool would be written nowhere and read back as nothing: a silent pass.
  if (nextBlock + n > runner.numBlocks) {
    throw new Error(`the schemes need more than ${runner.numBlocks} KV blocks`);
  }
  return Array.from({ length: n }, () => nextBlock++);
};

async function run(r: ModelRunner, scheme: Scheme): Promise<{ table: number[]; logits: Float32Array }> {
  const table = newTable(Math.ceil(L / bs));
  const others = Array.from(
    { length: scheme.companion ? scheme.companions ?? 1 : 0 },
    () => newTable(Math.ceil(scheme.companion! / bs)),
  );
  let logits = new Float32Array(0);
  const b = scheme.bounds, per = scheme.perStep ?? 1;
  for (let i = 0; i + 1 < b.length; i += per) {
    const items = [];
    for (let j = i; j < Math.min(i + per, b.length - 1); j++) {
      items.push({ start: b[j], n: b[j + 1] - b[j], table });
    }
    const mine = items.length;
    for (const other of others) items.push({ start: 0, n: scheme.companion!, table: other });
    const last = i + per >= b.length - 1;
    const out = await r.read(await r.run(stepInputs(items, last, mine - 1)));
    if (last) logits = out.logits!.slice(0, V);
  }
  return { table, logits };
}

const device = await ort.env.webgpu.device as GPUDevice;

const results: [string, { table: number[]; logits: Float32Array }][] = [];
for (const [name, scheme] of schemes) results.push([name, await run(runner, scheme)]);
const buffers = await Promise.all(runner.kvBuffers().map((b) => readBufferU16(device, b)));
const rowLen = buffers[0].length / ((runner.numBlocks + 1) * bs);
const kvAt = (table: number[], buf: Uint16Array, p: number) => {
  const at = (table[Math.floor(p / bs)] * bs + (p % bs)) * rowLen;
  return buf.subarray(at, at + rowLen);
};

const [, ref] = results[0];
console.log(
  `${model.name} ${dtype}, matmul split-K ${config.matmulSplitK}, ${L} tokens, on ${runner.adapterName}; ` +
    `each scheme against ${results[0][0]}:`,
);
for (const [name, r] of results) {
  let values = 0, first = -1;
  for (const buf of buffers) {
    for (let p = 0; p < L; p++) {
      const a = kvAt(r.table, buf, p), b = kvAt(ref.table, buf, p);
      const d = a.reduce((n, x, j) => n + (x !== b[j] ? 1 : 0), 0);
      if (d > 0 && (first < 0 || p < first)) first = p;
      values += d;
    }
  }
  const logits = r.logits.reduce((n, x, j) => n + (Object.is(x, ref.logits[j]) ? 0 : 1), 0);
  const maxDiff = r.logits.reduce((m, x, j) => Math.max(m, Math.abs(x - ref.logits[j])), 0);
  const where = first >= 0 ? `, first at position ${first}` : "";
  console.log(
    `  ${name.padEnd(30)} KV values differing: ${values}${where}; last logits differing: ${logits}` +
      (logits > 0 ? ` (max ${maxDiff.toExponential(2)})` : ""),
  );
}

// The LM head on more or fewer sampled rows: row 0's logits of one 31-token chunk, sampled alone and
// among k repeats of itself, against k = 1.
const sampledLogits: [number, Float32Array][] = [];
const lmN = Math.min(C, L);
for (const k of [1, 2, 8, 9, 16, 64, 256]) {
  const s = stepInputs([{ start: 0, n: lmN, table: newTable(Math.ceil(lmN / bs)) }], true);
  s.sampleRows = new Int32Array(k).fill(lmN - 1);
  s.sampleU = new Float32Array(k).fill(-1);
  s.sampleFilters = new Float32Array(3 * k).map((_, i) => (i % 3 === 1 ? 1 : 0));
  s.invTemp = new Float32Array(k).fill(1);
  sampledLogits.push([k, (await runner.read(await runner.run(s))).logits!.slice(0, V)]);
}
console.log(`LM head, row 0's logits with k sampled rows against k = 1 (min rows ${runner.minRows}):`);
for (const [k, l] of sampledLogits) {
  const d = l.reduce((n, x, j) => n + (Object.is(x, sampledLogits[0][1][j]) ? 0 : 1), 0);
  console.log(`  k = ${String(k).padEnd(4)} logits differing: ${d}`);
}
await runner.close();
