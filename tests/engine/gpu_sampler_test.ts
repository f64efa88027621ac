// The GPU sampling kernel (engine/gpu_sampler.ts) on crafted rows against a plain reference of its
// rule: ties at a filter's boundary, NaN, a large vocabulary, greedy rows, filters combined.

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { editChunks, GpuSampler, samplerParams } from "../../engine/gpu_sampler.ts";
import { processLogits, sampleToken } from "../../engine/sampler.ts";
import { applyEdits, concatEdits, EDIT_FLOATS, EDIT_HEADER, logitEdits } from "../../engine/logit_edits.ts";
import type { SamplingParams } from "../../engine/protocol.ts";
import { uniform } from "../../engine/rng.ts";
import { neutralSamplingParams as requestParams } from "../../engine/protocol.ts";

const adapter = await navigator.gpu.requestAdapter();
const device = await adapter!.requestDevice({
  requiredLimits: {
    maxStorageBufferBindingSize: adapter!.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter!.limits.maxBufferSize,
    maxComputeInvocationsPerWorkgroup: adapter!.limits.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: adapter!.limits.maxComputeWorkgroupSizeX,
  },
});

interface Row {
  logits: Float32Array;
  u: number;
  invTemp: number;
  topK?: number;
  topP?: number;
  minP?: number;
  greedy?: number;
}

const LOWEST = -3.4028234e38;

/**
 * The rule in plain terms: filters keep every token whose logit reaches a threshold (top_k: the k-th
 * largest logit; top_p: the logit of the least likely token of the smallest most-likely-first set
 * reaching top_p of the kept mass; min_p: weight at least min_p of the best), then the first id, in
 * ascending order, whose cumulative weight exceeds u times the kept total. `near`: how close the
 * draw or the top_p cut came to a rounding-sensitive boundary (relative), so callers skip such rows.
 */
function reference(r: Row): { id: number; near: number } {
  const V = r.logits.length;
  const x = Array.from(r.logits, (v) => (Number.isNaN(v) ? LOWEST : v));
  let mx = LOWEST;
  for (const v of x) mx = Math.max(mx, v);
  const w = x.map((v) => Math.exp((v - mx) * r.invTemp));
  const desc = [...x.keys()].sort((a, b) => x[b] - x[a] || a - b);
  const topK = r.topK ?? 0, topP = r.topP ?? 1, minP = r.minP ?? 0;
  const kth = topK > 0 && topK < V ? x[desc[topK - 1]] : -Infinity;
  let near = Infinity;
  let pth = -Infinity;
  if (topP < 1) {
    const kept = desc.filter((i) => x[i] >= kth);
    const total = kept.reduce((s, i) => s + w[i], 0);
    let cum = 0;
    for (const i of kept) {
      cum += w[i];
      near = Math.min(near, Math.abs(cum - topP * total) / total);
      if (cum >= topP * total) {
        pth = x[i];
        break;
      }
    }
  }
  const th = Math.min(Math.max(kth, pth), mx);
  const keep = (i: number) => x[i] >= th && w[i] >= minP && w[i] > 0;
  let sum = 0;
  for (let i = 0; i < V; i++) if (keep(i)) sum += w[i];
  let cum = 0, id = -1;
  for (let i = 0; i < V; i++) {
    if (!keep(i)) continue;
    cum += w[i];
    near = Math.min(near, Math.abs(cum - r.u * sum) / sum);
    id = i;
    if (cum > r.u * sum) break;
  }
  return { id, near };
}

async function sample(rows: Row[], workgroup?: number, edits?: Float32Array): Promise<number[]> {
  const V = rows[0].logits.length;
  const sampler = await GpuSampler.create(device, V, workgroup);
  const logits = device.createBuffer({
    size: rows.length * V * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  rows.forEach((r, i) => device.queue.writeBuffer(logits, i * V * 4, r.logits));
  const greedy = device.createBuffer({
    size: rows.length * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(greedy, 0, Int32Array.from(rows, (r) => r.greedy ?? 7));
  const filters = Float32Array.from(rows.flatMap((r) => [r.topK ?? 0, r.topP ?? 1, r.minP ?? 0]));
  const params = samplerParams(
    Float32Array.from(rows, (r) => r.u),
    Float32Array.from(rows, (r) => r.invTemp),
    filters,
    rows.length,
  );
  const out = sampler.sample(logits, greedy, rows.length, params, edits);
  const read = device.createBuffer({
    size: rows.length * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(out, 0, read, 0, rows.length * 4);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const ids = [...new Int32Array(read.getMappedRange().slice(0))];
  for (const b of [logits, greedy, out, read]) b.destroy();
  sampler.destroy();
  return ids;
}

/** `rows`' logits after the edit kernel, with `prevIds` as the previous step's ids. */
async function edited(
  rows: Float32Array[],
  edits: Float32Array,
  prevIds: Int32Array,
  edit?: { groupsX?: number; bindBytes?: number; bufferBytes?: number },
): Promise<Float32Array[]> {
  const V = rows[0].length, bytes = rows.length * V * 4;
  const sampler = await GpuSampler.create(device, V, undefined, edit);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const logits = device.createBuffer({ size: bytes, usage });
  rows.forEach((r, i) => device.queue.writeBuffer(logits, i * V * 4, r));
  const greedy = device.createBuffer({ size: rows.length * 4, usage });
  const prev = device.createBuffer({ size: prevIds.byteLength, usage });
  device.queue.writeBuffer(prev, 0, prevIds);
  const none = new Float32Array(rows.length);
  const params = samplerParams(
    none.fill(-1),
    none.map(() => 1),
    new Float32Array(3 * rows.length),
    rows.length,
  );
  const out = sampler.sample(logits, greedy, rows.length, params, edits, prev);
  const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(logits, 0, read, 0, bytes);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const all = new Float32Array(read.getMappedRange().slice(0));
  for (const b of [logits, greedy, prev, out, read]) b.destroy();
  sampler.destroy();
  return rows.map((_, i) => all.slice(i * V, (i + 1) * V));
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function randomRow(V: number, rand: () => number, spread: number): Float32Array {
  return Float32Array.from({ length: V }, () => (rand() - 0.5) * spread);
}

Deno.test("GPU sampling kernel: random rows with every filter follow the reference rule", async () => {
  const rand = lcg(5);
  const settings: Partial<Row>[] = [
    {},
    { topK: 1 },
    { topK: 5 },
    { topK: 40, topP: 0.5 },
    { topP: 0.9 },
    { topP: 0.3 },
    { topP: 1e-6 },
    { minP: 0.5 },
    { topK: 20, topP: 0.8, minP: 0.3 },
    { topK: 700 },
    { topK: 100000 },
    { topP: 0.95, minP: 0.05 },
  ];
  const rows: Row[] = [];
  for (let i = 0; i < 96; i++) {
    rows.push({
      logits: randomRow(700, rand, i % 2 ? 4 : 20),
      u: rand(),
      invTemp: [1, 1 / 0.7, 1 / 1.5][i % 3],
      ...settings[i % settings.length],
    });
  }
  // The largest workgroup the device allows (the engine's choice) and the smallest it may get.
  for (const workgroup of [undefined, 64]) {
    const got = await sample(rows, workgroup);
    let checked = 0;
    rows.forEach((r, i) => {
      const want = reference(r);
      if (want.near < 1e-4) return; // within rounding of a boundary: either side is the rule
      checked++;
      assertEquals(
        got[i],
        want.id,
        `workgroup ${workgroup}, row ${i} (${JSON.stringify({ ...r, logits: undefined })})`,
      );
    });
    assert(checked >= 90, `only ${checked} of ${rows.length} rows were far enough from a boundary`);
  }
});

Deno.test("GPU sampling kernel: ties at the top_k and top_p boundaries are kept together", async () => {
  // Ids 10, 20 and 30 tie for the best logit: top_k 1 keeps all three, and top_p 0.1 too (the
  // smallest set reaching it is one of them; its equals stay). Draws then spread over the three.
  const V = 300;
  const base = new Float32Array(V).fill(-5);
  base[10] = base[20] = base[30] = 2;
  const rows: Row[] = [];
  for (let i = 0; i < 30; i++) {
    rows.push({ logits: base, u: (i + 0.5) / 30, invTemp: 1, ...(i % 2 ? { topK: 1 } : { topP: 0.1 }) });
  }
  const got = await sample(rows);
  assertEquals(new Set(got), new Set([10, 20, 30]));
  // u below 1/3 draws the lowest id of the three, above 2/3 the highest.
  assertEquals(got[0], 10);
  assertEquals(got[29], 30);
  rows.forEach((r, i) => assertEquals(got[i], reference(r).id, `row ${i}`));
});

Deno.test("GPU sampling kernel: greedy rows, NaN, non-finite rows and a 128k vocabulary", async () => {
  const V = 128256;
  const rand = lcg(9);
  const flat = randomRow(V, rand, 2);
  const withNan = randomRow(V, rand, 2);
  withNan[5] = NaN;
  withNan[77] = 50; // near-certain after softmax: any u draws it
  const allNan = new Float32Array(V).fill(NaN);
  const rows: Row[] = [
    { logits: flat, u: -1, invTemp: 1, greedy: 1234 },
    { logits: withNan, u: 0.5, invTemp: 1, topP: 0.9 },
    { logits: allNan, u: 0.5, invTemp: 1, greedy: 42 },
    { logits: flat, u: 0.25, invTemp: 1, topP: 0.95 },
    { logits: flat, u: 0.75, invTemp: 1 / 0.7, topK: 50, topP: 0.9 },
    { logits: flat, u: 0.999, invTemp: 1, minP: 0.9 },
  ];
  const got = await sample(rows);
  assertEquals(got[0], 1234, "a greedy row keeps the step's argmax");
  assertEquals(got[1], 77, "NaN is never drawn and the peak is");
  assertEquals(got[2], 42, "a row with no finite logit falls back to the argmax");
  for (const i of [3, 4, 5]) {
    const want = reference(rows[i]);
    if (want.near >= 1e-4) assertEquals(got[i], want.id, `row ${i}`);
  }
});

Deno.test("GPU sampling kernel: logit_bias and the penalties edit the logits as the CPU sampler does", async () => {
  const V = 500;
  const rand = lcg(21);
  const prompt = Array.from({ length: 40 }, () => Math.floor(rand() * 60));
  const output = Array.from({ length: 25 }, () => Math.floor(rand() * 60));
  const over = [
    { repetitionPenalty: 1.3 },
    { frequencyPenalty: 0.7, presencePenalty: 0.4 },
    { logitBias: { 3: 5, 9: -100, 499: 2.5 }, repetitionPenalty: 0.8, frequencyPenalty: -0.2 },
    { presencePenalty: 1.5 },
  ];
  const rows: Row[] = [], edits: Float32Array[] = [], processed: Float32Array[] = [];
  for (let i = 0; i < 40; i++) {
    // Logits near the edited ids' range, so the edits decide draws and argmaxes.
    const logits = randomRow(V, rand, 6);
    for (let j = 0; j < 60; j++) logits[j] += 3;
    const p = requestParams({ temperature: i % 4 === 0 ? 0 : 0.8, ...over[i % over.length] });
    edits.push(logitEdits(i, p, prompt, output, V));
    processed.push(processLogits(logits, p, { promptIds: prompt, outputIds: output, seed: 0 }));
    // Greedy over edited logits goes as top_k 1 with u 0, as the engine sends it.
    rows.push(
      p.temperature === 0 ? { logits, u: 0, invTemp: 1, topK: 1 } : { logits, u: rand(), invTemp: 1 / 0.8 },
    );
  }
  const got = await sample(rows, undefined, concatEdits(edits));
  let checked = 0;
  rows.forEach((r, i) => {
    const want = reference({ ...r, logits: processed[i] });
    if (want.near < 1e-4) return;
    checked++;
    assertEquals(got[i], want.id, `row ${i} (${JSON.stringify(over[i % over.length])}, u ${r.u})`);
    if (r.u === 0) {
      // The argmax of the CPU's processed row, ties to the lower id.
      assertEquals(got[i], processed[i].indexOf(Math.max(...processed[i])), `row ${i}: greedy`);
    }
  });
  assert(checked >= 36, `only ${checked} of ${rows.length} rows were far enough from a boundary`);
  // The edits change draws: without them most rows pick differently.
  const plain = await sample(rows);
  assert(plain.filter((id, i) => id !== got[i]).length >= 10, "the edits changed too few draws");
});

Deno.test("GPU sampling kernel and the CPU sampler pick the same tokens, ties included", async () => {
  const rand = lcg(33);
  const settings = [{}, { topK: 3 }, { topK: 30, topP: 0.7 }, { topP: 0.5 }, { topP: 0.9, minP: 0.1 }];
  const rows: Row[] = [], cpu: number[] = [];
  for (let i = 0; i < 60; i++) {
    const smooth = randomRow(800, rand, 10);
    // Every other row on a grid of halves: ties at the filters' boundaries.
    const logits = i % 2 ? smooth.map((x) => Math.round(x * 2) / 2) : smooth;
    const over = { temperature: [1, 0.6, 1.4][i % 3], seed: 7, ...settings[i % settings.length] };
    const p = requestParams(over);
    const u = uniform(7, i);
    cpu.push(sampleToken(logits, p, { promptIds: [], outputIds: new Array(i).fill(0), seed: 7 }).tokenId);
    rows.push({ logits, u, invTemp: 1 / p.temperature, topK: p.topK, topP: p.topP, minP: p.minP });
  }
  const got = await sample(rows);
  let checked = 0;
  rows.forEach((r, i) => {
    if (reference(r).near < 1e-4) return;
    checked++;
    assertEquals(got[i], cpu[i], `row ${i}`);
  });
  assert(checked >= 54, `only ${checked} of ${rows.length} rows were far enough from a boundary`);
});

Deno.test("GPU edit kernel: a token still pending on the GPU edits the logits as the same token known", async () => {
  const V = 300;
  const rand = lcg(5);
  const promptIds = Array.from({ length: 30 }, () => Math.floor(rand() * 40));
  const output = Array.from({ length: 12 }, () => Math.floor(rand() * 40));
  const settings: Partial<SamplingParams>[] = [
    { repetitionPenalty: 1.3, frequencyPenalty: 0.5, presencePenalty: 0.25, logitBias: { 7: 2, 250: -1 } },
    { repetitionPenalty: 0.8 },
    { frequencyPenalty: -0.7 },
    { presencePenalty: 1.1, logitBias: { 3: -1 } },
  ];
  // Last tokens: in the prompt, in the output, biased, in none of them.
  const lasts = [promptIds[0], output[0], 7, 3, 250, 299];
  const logits: Float32Array[] = [], known: Float32Array[] = [], pending: Float32Array[] = [];
  const cpu: Float32Array[] = [];
  const prevIds = new Int32Array(64).fill(-1);
  let row = 0;
  for (const over of settings) {
    for (const last of lasts) {
      const p = requestParams(over);
      const l = randomRow(V, rand, 4);
      logits.push(l);
      known.push(logitEdits(row, p, promptIds, [...output, last], V));
      // The pending token sits at some row of the previous step's ids.
      const src = 63 - row;
      prevIds[src] = last;
      pending.push(logitEdits(row, p, promptIds, output, V, src));
      const c = l.slice();
      applyEdits(c, logitEdits(0, p, promptIds, [...output, last], V));
      cpu.push(c);
      row++;
    }
  }
  const a = await edited(logits, concatEdits(known), prevIds);
  const b = await edited(logits, concatEdits(pending), prevIds);
  a.forEach((r, i) => {
    assertEquals([...b[i]], [...r], `row ${i}: pending against known`);
    // Within an ulp of the CPU's rule: a driver may fuse n * frequency into the subtraction (the H100's
    // does), which rounds once instead of twice; both paths on one GPU run the same instructions.
    r.forEach((x, j) => {
      const ulp = Math.max(Math.abs(cpu[i][j]), 1e-30) * 2 ** -23;
      assert(
        Math.abs(x - cpu[i][j]) <= ulp,
        `row ${i}, token ${j}: ${x} on the GPU, ${cpu[i][j]} by applyEdits`,
      );
    });
  });
  // Dispatched as rows of one workgroup each (as past 65535 workgroups), the same bits.
  const rowsOfOne = await edited(logits, concatEdits(known), prevIds, { groupsX: 1 });
  rowsOfOne.forEach((r, i) => assertEquals([...r], [...a[i]], `row ${i}: workgroups in rows`));
  // Past the binding limit (here ~3 rows' entries), several dispatches of whole rows: the same bits.
  for (const list of [known, pending]) {
    const all = concatEdits(list);
    const bindBytes = 4 * EDIT_FLOATS * Math.ceil((3 * all.length) / EDIT_FLOATS / list.length);
    assert(editChunks(all, bindBytes / (4 * EDIT_FLOATS), 8).length > 4, "not split into dispatches");
    const chunked = await edited(logits, all, prevIds, { bindBytes });
    chunked.forEach((r, i) => assertEquals([...r], [...a[i]], `row ${i}: edits in several dispatches`));
    // Past the largest buffer too: a buffer per dispatch, the same bits.
    assert(all.byteLength > bindBytes);
    const spilled = await edited(logits, all, prevIds, { bindBytes, bufferBytes: bindBytes });
    spilled.forEach((r, i) => assertEquals([...r], [...a[i]], `row ${i}: edits in several buffers`));
  }
  // The edits did change the rows.
  assert(a.every((r, i) => r.some((x, j) => x !== logits[i][j])));
});

Deno.test("editChunks: whole rows per dispatch, bound from aligned offsets, every entry once", () => {
  // Rows of 1 (header only) to 23 entries: the header, then tokens pointing back to it.
  const lengths = [5, 1, 23, 9, 2, 17, 8, 8, 3, 11];
  const rows = lengths.map((len, r) => {
    const row = new Float32Array(len * EDIT_FLOATS);
    row.set([r, EDIT_HEADER], 0);
    for (let k = 1; k < len; k++) row.set([0, k, 0, 1, 0, k], k * EDIT_FLOATS);
    return row;
  });
  const all = concatEdits(rows);
  const n = all.length / EDIT_FLOATS;
  assertEquals(editChunks(all, n, 8), [{ offset: 0, first: 0, count: n }], "under the limit: one");
  for (const max of [30, 31, 40, 64]) {
    const chunks = editChunks(all, max, 8);
    assert(chunks.length > 1, `max ${max}`);
    let next = 0;
    for (const c of chunks) {
      assertEquals(c.offset % 8, 0, `max ${max}: aligned`);
      assertEquals(c.offset + c.first, next, `max ${max}: contiguous`);
      assertEquals(all[(c.offset + c.first) * EDIT_FLOATS + 1], EDIT_HEADER, `max ${max}: starts at a row`);
      assert(c.first + c.count <= max, `max ${max}: within the binding`);
      next += c.count;
    }
    assertEquals(next, n, `max ${max}: every entry`);
  }
  // A row that cannot fit one binding (23 entries, up to 7 before it for alignment).
  assertThrows(() => editChunks(all, 22, 8), /one sequence's logit edits/);
});
