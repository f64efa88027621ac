// CPU sampler and counter-based RNG: exact semantics on small rows, statistics over many draws.

import { neutralSamplingParams } from "../../engine/protocol.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import type { SamplingParams } from "../../engine/protocol.ts";
import { editsLogits, LogitEdits } from "../../engine/logit_edits.ts";
import {
  isGreedy,
  MIN_SAMPLING_TEMPERATURE,
  needsCpuLogits,
  processLogits,
  type SampleContext,
  sampleToken,
} from "../../engine/sampler.ts";
import { philox4x32, randomSeed, seedWords, uniform } from "../../engine/rng.ts";

/** Sampling tests start from plain temperature-1 sampling. */
function params(over: Partial<SamplingParams> = {}): SamplingParams {
  return neutralSamplingParams({ temperature: 1, ...over });
}

function ctx(seed: number, k = 0, promptIds: number[] = [], outputIds?: number[]): SampleContext {
  return { promptIds, outputIds: outputIds ?? new Array(k).fill(0), seed };
}

const row = (xs: number[]) => Float32Array.from(xs);
const logRow = (probs: number[]) => Float32Array.from(probs.map(Math.log));

function assertClose(actual: number, expected: number, tol = 1e-5, msg = "") {
  assert(Math.abs(actual - expected) <= tol, `${msg} expected ${expected}, got ${actual}`);
}

function assertRowClose(actual: Float32Array, expected: number[], msg = "") {
  assertEquals(actual.length, expected.length, msg);
  for (let i = 0; i < expected.length; i++) assertClose(actual[i], expected[i], 1e-5, `${msg}[${i}]`);
}

/** Inverse CDF by hand: first index whose cumulative probability is > u. */
function handInverseCdf(probs: number[], u: number): number {
  let cum = 0;
  for (let i = 0; i < probs.length; i++) {
    cum += probs[i];
    if (cum > u) return i;
  }
  return probs.length - 1;
}

function softmax(xs: number[], temperature = 1): number[] {
  const max = Math.max(...xs);
  const e = xs.map((x) => Math.exp((x - max) / temperature));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** Token counts over `draws` samples, varying both seed and k. */
function histogram(logits: Float32Array, p: SamplingParams, draws: number): number[] {
  const counts = new Array(logits.length).fill(0);
  for (let d = 0; d < draws; d++) {
    const seed = 1000 + Math.floor(d / 50);
    counts[sampleToken(logits, p, ctx(seed, d % 50)).tokenId]++;
  }
  return counts;
}

function support(logits: Float32Array, p: SamplingParams, draws = 3000): number[] {
  return histogram(logits, p, draws).flatMap((c, i) => (c > 0 ? [i] : []));
}

/** Pearson chi-square of counts against probabilities (zero-probability cells must be empty). */
function chiSquare(counts: number[], probs: number[]): number {
  const n = counts.reduce((a, b) => a + b, 0);
  let chi = 0;
  for (let i = 0; i < counts.length; i++) {
    if (probs[i] === 0) {
      assertEquals(counts[i], 0, `count of zero-probability token ${i}`);
      continue;
    }
    const e = n * probs[i];
    chi += (counts[i] - e) ** 2 / e;
  }
  return chi;
}

// 99.9th percentiles of chi-square: a fixed-seed test should sit far below these.
const CHI2_999 = [0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88];

// ---------------------------------------------------------------------------------------------------
// RNG

Deno.test("philox4x32-10 matches the Random123 known-answer vectors", () => {
  const hex = (w: number[]) => w.map((x) => x.toString(16).padStart(8, "0")).join(" ");
  assertEquals(hex(philox4x32([0, 0, 0, 0], [0, 0])), "6627e8d5 e169c58d bc57ac4c 9b00dbd8");
  assertEquals(
    hex(philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff])),
    "408f276d 41c83b0e a20bc7c6 6d5451fd",
  );
  assertEquals(
    hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0])),
    "d16cfe09 94fdcceb 5001e420 24126ea1",
  );
});

Deno.test("uniform depends only on (seed, k), lies in [0, 1) and is f32-exact", () => {
  assertEquals(uniform(42, 7), uniform(42, 7));
  assert(uniform(42, 7) !== uniform(42, 8));
  assert(uniform(42, 7) !== uniform(43, 7));
  // Defined from Philox output word 0 of counter [k, 0, 0, 0], key seedWords(seed).
  assertEquals(uniform(0, 0), (0x6627e8d5 >>> 8) / 2 ** 24);
  let sum = 0;
  for (let k = 0; k < 10000; k++) {
    const u = uniform(12345, k);
    assert(u >= 0 && u < 1);
    assertEquals(Math.fround(u), u);
    sum += u;
  }
  assertClose(sum / 10000, 0.5, 0.02, "mean");
});

Deno.test("seedWords is 64-bit two's complement; randomSeed is a safe integer", () => {
  assertEquals(seedWords(5), [5, 0]);
  assertEquals(seedWords(-1), [0xffffffff, 0xffffffff]);
  assertEquals(seedWords(2 ** 32 + 3), [3, 1]);
  assertEquals(seedWords(-(2 ** 32)), [0, 0xffffffff]);
  assertEquals(seedWords(7.9), [7, 0]);
  const s = randomSeed();
  assert(Number.isSafeInteger(s) && s >= 0);
});

// ---------------------------------------------------------------------------------------------------
// Greedy and temperature

Deno.test("greedy picks the argmax, ties to the lowest id", () => {
  const p = params({ temperature: 0 });
  assertEquals(sampleToken(row([0.1, 3, -2, 2.9]), p, ctx(1)).tokenId, 1);
  assertEquals(sampleToken(row([1, 5, 2, 5, 5]), p, ctx(1)).tokenId, 1);
  assertEquals(sampleToken(row([-Infinity, -Infinity, -1]), p, ctx(1)).tokenId, 2);
  // Filters never remove the argmax, so they do not change greedy.
  assertEquals(
    sampleToken(row([0.1, 3, -2, 2.9]), params({ temperature: 0, topK: 1, topP: 0.1 }), ctx(1)).tokenId,
    1,
  );
});

Deno.test("a temperature below MIN_SAMPLING_TEMPERATURE is greedy, whatever the filters", () => {
  // 1 / 5e-324 is Infinity and 1 / 3e-38 overflows f32: without the floor these rows gave NaN weights
  // or a draw among the tied maxima.
  const tied = row([1, 5, 2, 5, 5]);
  for (const temperature of [3e-38, 5e-324, 1e-6, MIN_SAMPLING_TEMPERATURE / 2, NaN]) {
    assert(isGreedy({ temperature }), `${temperature}`);
    for (const over of [{}, { topK: 3 }, { topP: 0.9 }, { minP: 0.1 }, { topK: 3, topP: 0.5 }]) {
      for (let k = 0; k < 20; k++) {
        const got = sampleToken(tied, params({ temperature, ...over }), ctx(9, k)).tokenId;
        assertEquals(got, 1, `T=${temperature} ${JSON.stringify(over)} k=${k}`);
      }
    }
  }
  assert(!isGreedy({ temperature: MIN_SAMPLING_TEMPERATURE }));
  // The floor is sharp enough to be argmax on distinct logits, and draws still vary above it.
  const seen = new Set<number>();
  for (let k = 0; k < 50; k++) seen.add(sampleToken(tied, params({ temperature: 1e-4 }), ctx(9, k)).tokenId);
  assertEquals([...seen].sort(), [1, 3, 4]);
});

Deno.test("seeded temperature sampling is reproducible and is the inverse CDF over ascending ids", () => {
  const probs = [0.1, 0.2, 0.3, 0.4];
  const logits = logRow(probs);
  const p = params({ temperature: 1 });
  const seen = new Set<number>();
  for (let k = 0; k < 200; k++) {
    const a = sampleToken(logits, p, ctx(77, k)).tokenId;
    assertEquals(sampleToken(logits, p, ctx(77, k)).tokenId, a);
    assertEquals(a, handInverseCdf(probs, uniform(77, k)), `k=${k}`);
    seen.add(a);
  }
  assertEquals(seen.size, 4);
  // Temperature 2 flattens: p^(1/2), renormalised.
  const hot = softmax(Array.from(logits), 2);
  for (let k = 0; k < 200; k++) {
    const a = sampleToken(logits, params({ temperature: 2 }), ctx(5, k)).tokenId;
    assertEquals(a, handInverseCdf(hot, uniform(5, k)), `T=2 k=${k}`);
  }
  // The input row is not modified.
  assertRowClose(logits, probs.map(Math.log));
});

Deno.test("samples follow the softmax (chi-square over seeds and k)", () => {
  const logits = row([1.5, 0.2, -0.7, 2.1, 0.9]);
  for (const temperature of [1, 0.5, 1.7]) {
    const counts = histogram(logits, params({ temperature }), 20000);
    const chi = chiSquare(counts, softmax(Array.from(logits), temperature));
    assert(chi < CHI2_999[4], `T=${temperature}: chi-square ${chi.toFixed(2)} (counts ${counts})`);
  }
  // Across seeds at a fixed k too (the first token of many requests).
  const counts = new Array(5).fill(0);
  for (let seed = 0; seed < 20000; seed++) counts[sampleToken(logits, params(), ctx(seed, 0)).tokenId]++;
  const chi = chiSquare(counts, softmax(Array.from(logits)));
  assert(chi < CHI2_999[4], `k=0 over seeds: chi-square ${chi.toFixed(2)}`);
});

// ---------------------------------------------------------------------------------------------------
// Filters

Deno.test("top_k keeps the k largest and every token tied with the k-th, and renormalises", () => {
  assertEquals(support(row([1, 5, 3, 5, 2]), params({ topK: 2 })), [1, 3]);
  assertEquals(support(row([1, 5, 3, 4, 2]), params({ topK: 2 })), [1, 3]);
  assertEquals(support(row([4, 4, 4, 1]), params({ topK: 2 })), [0, 1, 2]);
  assertEquals(support(row([1, 5, 3, 5, 2]), params({ topK: 1 })), [1, 3]);
  assertEquals(support(row([1, 5, 3, 4, 2]), params({ topK: 1 })), [1]);
  assertEquals(support(row([1, 2, 3]), params({ topK: -1 })), [0, 1, 2]);
  assertEquals(support(row([1, 2, 3]), params({ topK: 10 })), [0, 1, 2]);
  const probs = [0.1, 0.2, 0.3, 0.4];
  const counts = histogram(logRow(probs), params({ topK: 2 }), 20000);
  const chi = chiSquare(counts, [0, 0, 3 / 7, 4 / 7]);
  assert(chi < CHI2_999[1], `top_k renormalisation: chi-square ${chi.toFixed(2)}`);
});

Deno.test("top_p keeps the smallest most-likely set reaching top_p", () => {
  const logits = logRow([0.1, 0.2, 0.3, 0.4]);
  assertEquals(support(logits, params({ topP: 0.39 })), [3]);
  assertEquals(support(logits, params({ topP: 0.41 })), [2, 3]);
  assertEquals(support(logits, params({ topP: 0.69 })), [2, 3]);
  assertEquals(support(logits, params({ topP: 0.71 })), [1, 2, 3]);
  assertEquals(support(logits, params({ topP: 0.95 })), [0, 1, 2, 3]);
  // After top_k the mass is renormalised over the kept set: {3: 4/7, 2: 3/7}.
  assertEquals(support(logits, params({ topK: 2, topP: 0.55 })), [3]);
  assertEquals(support(logits, params({ topK: 2, topP: 0.6 })), [2, 3]);
  // Temperature applies before top_p: at T=0.5 the probabilities are 1:4:9:16 / 30.
  assertEquals(support(logits, params({ temperature: 0.5, topP: 0.8 })), [2, 3]);
  assertEquals(support(logits, params({ temperature: 0.5, topP: 0.85 })), [1, 2, 3]);
  const counts = histogram(logits, params({ topP: 0.5 }), 20000);
  const chi = chiSquare(counts, [0, 0, 3 / 7, 4 / 7]);
  assert(chi < CHI2_999[1], `top_p renormalisation: chi-square ${chi.toFixed(2)}`);
  // Tokens tied with the set's last stay with it: 0.3 + 0.3 reaches 0.5, and the third 0.3 ties.
  const tied = logRow([0.1, 0.3, 0.3, 0.3]);
  assertEquals(support(tied, params({ topP: 0.5 })), [1, 2, 3]);
  assertEquals(support(tied, params({ topK: 3, topP: 0.5 })), [1, 2, 3]);
  assertEquals(support(tied, params({ topP: 0.2 })), [1, 2, 3]);
});

Deno.test("min_p drops tokens below min_p * max probability", () => {
  const logits = logRow([0.1, 0.2, 0.3, 0.4]);
  assertEquals(support(logits, params({ minP: 0.6 })), [2, 3]); // threshold 0.24
  assertEquals(support(logits, params({ minP: 0.45 })), [1, 2, 3]); // threshold 0.18
  assertEquals(support(logits, params({ minP: 0.2 })), [0, 1, 2, 3]);
  assertEquals(support(logits, params({ minP: 0.99 })), [3]);
  // Combined with top_k and top_p paths.
  assertEquals(support(logits, params({ topK: 3, minP: 0.6 })), [2, 3]);
  assertEquals(support(logits, params({ topP: 0.95, minP: 0.45 })), [1, 2, 3]);
  const counts = histogram(logits, params({ minP: 0.6 }), 20000);
  const chi = chiSquare(counts, [0, 0, 3 / 7, 4 / 7]);
  assert(chi < CHI2_999[1], `min_p renormalisation: chi-square ${chi.toFixed(2)}`);
});

/** Straightforward full-sort reference of temperature + top_k + top_p + min_p + inverse CDF. */
function referenceSample(logits: Float32Array, p: SamplingParams, u: number): number {
  const n = logits.length;
  const ids = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const max = logits[ids[0]];
  const w = Array.from(logits, (x) => Math.exp((x - max) / p.temperature));
  // Ties with a filter's boundary stay.
  let kept = p.topK > 0 && p.topK < n ? ids.filter((i) => logits[i] >= logits[ids[p.topK - 1]]) : ids;
  if (p.topP < 1) {
    const total = kept.reduce((s, i) => s + w[i], 0);
    let cum = 0;
    const j = kept.findIndex((i) => (cum += w[i]) >= p.topP * total);
    kept = kept.filter((i) => logits[i] >= logits[kept[j]]);
  }
  kept = kept.filter((i, j) => j === 0 || w[i] >= p.minP);
  kept.sort((a, b) => a - b);
  const sum = kept.reduce((s, i) => s + w[i], 0);
  let cum = 0;
  for (const i of kept) if ((cum += w[i]) > u * sum) return i;
  return kept[kept.length - 1];
}

Deno.test("filters on a 3000-token vocab, with and without ties, agree with a full-sort reference", () => {
  let state = 99;
  const rand = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const smooth = Float32Array.from({ length: 3000 }, () => (rand() - 0.5) * 12);
  // Logits on a grid of quarters: ties at every filter's boundary.
  const tied = smooth.map((x) => Math.round(x * 4) / 4);
  const cases: Partial<SamplingParams>[] = [
    { topK: 40 },
    { topP: 0.9 },
    { topP: 0.3, temperature: 0.7 },
    { topK: 200, topP: 0.8 },
    { minP: 0.05 },
    { topP: 0.95, minP: 0.1, temperature: 1.3 },
    { topK: 100, minP: 0.2 },
  ];
  for (const logits of [smooth, tied]) {
    for (const over of cases) {
      const p = params(over);
      for (let k = 0; k < 60; k++) {
        const u = uniform(3, k);
        assertEquals(
          sampleToken(logits, p, ctx(3, k)).tokenId,
          referenceSample(logits, p, u),
          JSON.stringify(over),
        );
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------------
// Bias and penalties

const base = [2, -2, 1, 0.5, -1];
const prompt = [0];
const output = [1, 2, 2];
const pctx = (): SampleContext => ({ promptIds: prompt, outputIds: output, seed: 0 });

Deno.test("repetition penalty divides positive and multiplies negative logits of prompt and output tokens", () => {
  const out = processLogits(row(base), params({ repetitionPenalty: 2 }), pctx());
  assertRowClose(out, [1, -4, 0.5, 0.5, -1]);
  // Applied once per distinct token, however often it occurs.
  const twice = processLogits(row(base), params({ repetitionPenalty: 2 }), {
    promptIds: [2, 2],
    outputIds: [2],
    seed: 0,
  });
  assertRowClose(twice, [2, -2, 0.5, 0.5, -1]);
});

Deno.test("frequency penalty scales with output count; presence is flat; prompt tokens untouched", () => {
  assertRowClose(processLogits(row(base), params({ frequencyPenalty: 0.5 }), pctx()), [2, -2.5, 0, 0.5, -1]);
  assertRowClose(processLogits(row(base), params({ presencePenalty: 0.5 }), pctx()), [2, -2.5, 0.5, 0.5, -1]);
  // Negative penalties encourage repetition.
  assertRowClose(processLogits(row(base), params({ frequencyPenalty: -1 }), pctx()), [2, -1, 3, 0.5, -1]);
});

Deno.test("logit_bias is added first, then repetition, frequency and presence in that order", () => {
  const p = params({
    logitBias: { 2: 3, 4: -100, 99: 5 },
    repetitionPenalty: 2,
    frequencyPenalty: 0.25,
    presencePenalty: 1,
  });
  // token 2: (1 + 3) / 2 - 2 * 0.25 - 1 = 0.5; token 1: -2 * 2 - 0.25 - 1 = -5.25.
  assertRowClose(processLogits(row(base), p, pctx()), [1, -5.25, 0.5, 0.5, -101]);
  assertEquals(sampleToken(row(base), params({ temperature: 0, logitBias: { 3: 100 } }), ctx(0)).tokenId, 3);
  assertEquals(sampleToken(row(base), params({ temperature: 0, logitBias: { 0: -100 } }), ctx(0)).tokenId, 2);
  // Greedy takes the processed row: [1, -4, 0.5, 0.5, -1] under 2, [0.4, -10, 0.2, 0.5, -1] under 5.
  assertEquals(sampleToken(row(base), params({ temperature: 0, repetitionPenalty: 2 }), pctx()).tokenId, 0);
  assertEquals(sampleToken(row(base), params({ temperature: 0, repetitionPenalty: 5 }), pctx()).tokenId, 3);
});

Deno.test("a request's kept logit edits sample as fresh ones, token after token, reading the prompt once", () => {
  const V = 50;
  let s = 7;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const ids = Array.from({ length: 40 }, () => Math.floor(rand() * V));
  // The prompt, counting how often its length is taken (once a pass over it).
  let asked = 0;
  const prompt = new Proxy(ids, {
    get(t, k, r) {
      if (k === "length") asked++;
      return Reflect.get(t, k, r);
    },
  });
  const p = params({
    temperature: 0.9,
    seed: 3,
    repetitionPenalty: 1.4,
    frequencyPenalty: 0.3,
    presencePenalty: 0.2,
    logitBias: { 5: 2 },
    logprobs: 2,
  });
  const kept = new LogitEdits(p, prompt, V);
  const out: number[] = [];
  for (let k = 0; k < 30; k++) {
    const logits = Float32Array.from({ length: V }, () => (rand() - 0.5) * 6);
    const fresh = sampleToken(logits, p, { promptIds: ids, outputIds: out, seed: 3 });
    const reused = sampleToken(logits, p, { promptIds: prompt, outputIds: out, seed: 3, edits: kept });
    assertEquals(reused, fresh, `token ${k}`);
    out.push(fresh.tokenId);
  }
  assertEquals(asked, 1, "the prompt is read once");
});

Deno.test("EOS is never suppressed, with or without ignore_eos", () => {
  const logits = row([0, 5, 0]);
  for (const ignoreEos of [false, true]) {
    const r = sampleToken(logits, params({ temperature: 0, ignoreEos }), { ...ctx(0), eosTokenIds: [1] });
    assertEquals(r.tokenId, 1);
  }
});

// ---------------------------------------------------------------------------------------------------
// Logprobs

Deno.test("logprobs are the raw log-softmax, top-n sorted, whatever the processing", () => {
  const logits = row([0.5, 2, 2, -1, 1]);
  const lse = Math.log(Array.from(logits).reduce((s, x) => s + Math.exp(x), 0));
  const p = params({
    temperature: 0.3,
    topK: 2,
    repetitionPenalty: 1.5,
    presencePenalty: 2,
    logitBias: { 3: 50 },
    logprobs: 3,
  });
  const r = sampleToken(logits, p, { promptIds: [1], outputIds: [2], seed: 9 });
  assertEquals(r.tokenId, 3); // the bias wins the sample...
  assertClose(r.logprob!, -1 - lse); // ...but its logprob is the raw one
  assertEquals(r.top.map((t) => t.tokenId), [1, 2, 4]); // ties to the lower id
  assertClose(r.top[0].logprob, 2 - lse);
  assertClose(r.top[1].logprob, 2 - lse);
  assertClose(r.top[2].logprob, 1 - lse);

  const zero = sampleToken(logits, params({ temperature: 0, logprobs: 0 }), ctx(0));
  assertEquals(zero.top, []);
  assertClose(zero.logprob!, 2 - lse);
  const none = sampleToken(logits, params({ temperature: 0 }), ctx(0));
  assertEquals(none.logprob, null);
  assertEquals(none.top, []);
  const all = sampleToken(logits, params({ temperature: 0, logprobs: 5 }), ctx(0));
  assertEquals(all.top.map((t) => t.tokenId), [1, 2, 4, 0, 3]);
  assertClose(all.top.reduce((s, t) => s + Math.exp(t.logprob), 0), 1);
});

// ---------------------------------------------------------------------------------------------------
// CPU or GPU

Deno.test("needsCpuLogits: only logprobs and a JSON schema read logits back", () => {
  assertEquals(needsCpuLogits(params({ temperature: 0 })), false);
  assertEquals(needsCpuLogits(params({ temperature: 0.8, seed: 3 })), false);
  assertEquals(needsCpuLogits(params({ topK: -1 })), false);
  assertEquals(needsCpuLogits(params({ topK: 40 })), false);
  assertEquals(needsCpuLogits(params({ topP: 0.9 })), false);
  assertEquals(needsCpuLogits(params({ minP: 0.05 })), false);
  assertEquals(needsCpuLogits(params({ temperature: 0, topK: 40, topP: 0.9, minP: 0.1 })), false);
  assertEquals(needsCpuLogits(params({ temperature: 0, repetitionPenalty: 1.1 })), false);
  assertEquals(needsCpuLogits(params({ logitBias: { 5: 1 } })), false);
  assertEquals(needsCpuLogits(params({ topP: 0.9, logprobs: 2 })), true);
  assertEquals(needsCpuLogits(params({ temperature: 0, logprobs: 0 })), true);
  assertEquals(needsCpuLogits(params({ grammar: { kind: "json_object" } as never })), true);
  assertEquals(editsLogits(params({ logitBias: { 5: 1 } })), true);
  assertEquals(editsLogits(params({ repetitionPenalty: 1.1 })), true);
  assertEquals(editsLogits(params({ topP: 0.5 })), false);
});
