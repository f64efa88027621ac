// The prompt parts' graph (--prompt-matmul auto, long-query mode "prompts"): split layers whose K is at
// most their N run as one MatMul over the same weight inputs, the rest (a long K, the LM head's few
// rows) stay split; prompt logits stay near the decodes' graph's, and a prompt token's bits stay
// independent of its batch, captured or not, cached or not. (stories260K is too small to split.)

import { assert, assertEquals } from "../../helpers/assert.ts";
import { buildGraph, plainWideLayers } from "../../../engine/model/graph.ts";
import { ModelRunner } from "../../../engine/model_runner.ts";
import type { PromptMatmul } from "../../../engine/protocol.ts";
import { maxAbsDiff, PROMPT, promptLogits, SPLIT_SHAPE } from "../../helpers/split_model.ts";
import { randomModel } from "../../helpers/random_model.ts";
import { loadModel } from "../../../engine/model/load.ts";
import { referenceLogits } from "../../helpers/reference.ts";
import { type Outcome, outcomeOf, params, runAlone, startEngine } from "../../helpers/engine.ts";
import type { StepStats } from "../../../engine/llm_engine.ts";

const BIG = SPLIT_SHAPE;
const V = BIG.vocabSize;

Deno.test("prompt graph: qkv, o and gate/up as one MatMul over the split weight inputs; down and LM head split", () => {
  const model = randomModel("llama", 2, BIG);
  const opts = { dtype: "f32" as const, maxPositions: 64, weightsAsInputs: true, splitK: 8 };
  const split = buildGraph(model, opts), plain = buildGraph(model, { ...opts, plainWideMatmuls: true });
  // Fed the same buffers: the same weight inputs, names, types and dims.
  assertEquals(plain.weights, split.weights);
  assertEquals(plainWideLayers(model, opts), 3 * model.config.numLayers);
  // Each of the three: Reshape (of the weight) + MatMul instead of Reshape + Transpose (of the
  // activation) + MatMul + ReduceSum.
  assertEquals(plain.nodesPerLayer, split.nodesPerLayer - 3 * 2);
  assertEquals(plain.totalNodes, split.totalNodes - 3 * 2 * model.config.numLayers);
  // Nothing split, nothing to change: the prompt graph would be the same graph.
  assertEquals(plainWideLayers(model, { ...opts, splitK: 1 }), 0);
  assertEquals(plainWideLayers(randomModel("llama", 2), opts), 0, "K too short to split");
});

// Relative to the largest logit; split_k_test.ts measured split-K against plain at 2.6e-2 in f16, and
// plain MatMul 2.1e-2 from the float64 reference there (onnxruntime's f16 MatMul sums in f16 along all
// of K, split-K in K/8-long runs).
for (const [dtype, tol] of [["f32", 1e-2], ["f16", 5e-2]] as const) {
  Deno.test(`prompt graph ${dtype}: prompt logits near the decodes' graph's, bits independent of the batch`, async () => {
    const model = randomModel("llama", 4, BIG);
    const make = (promptMatmul: PromptMatmul) =>
      ModelRunner.create(model, {
        dtype,
        blockSize: 16,
        kvCacheMb: 4,
        cacheDir: null,
        splitK: 8,
        longQueries: "prompts",
        promptMatmul,
      });
    const split = await make("split"), plain = await make("auto");
    try {
      const a = await promptLogits(split, 0, true), b = await promptLogits(plain, 0, true);
      const scale = Math.max(...a.map(Math.abs));
      const diff = maxAbsDiff(b, a) / scale;
      console.log(`${dtype}: prompt graph vs split graph ${diff.toExponential(2)} of max |logit| ${scale}`);
      assert(diff < tol, `prompt graph vs split graph ${diff}`);
      const ref = referenceLogits(model, PROMPT);
      const vsRef = Math.max(...ref.map((r, t) => maxAbsDiff(b, r, t * V))) / scale;
      console.log(`${dtype}: prompt graph vs reference ${vsRef.toExponential(2)}`);
      assert(vsRef < tol, `prompt graph vs reference ${vsRef}`);
      // Another summation order: the prompt parts did run on the other graph.
      assert(diff > 0, "the prompt graph gave the split graph's bits");
      // Alone (padded to 16 rows), beside one companion (51 rows) and beside four (144 rows).
      for (const companions of [1, 4]) {
        assertEquals(maxAbsDiff(await promptLogits(plain, companions, true), b), 0, `beside ${companions}`);
      }
    } finally {
      await split.close();
      await plain.close();
    }
  });
}

// RAGTIME_TEST_SPLIT_MODEL=DIR runs the engine test on that model instead (e.g. the 1B shape on the GPU
// host: its K = 2048 layers, f16 with RAGTIME_TEST_DTYPE).
const SPLIT_MODEL = Deno.env.get("RAGTIME_TEST_SPLIT_MODEL");

Deno.test("prompt graph engine: requests at once (captured prompt and decode steps), then their next turns on cached prefixes, give their tokens alone", async () => {
  const model = SPLIT_MODEL ? await loadModel(SPLIT_MODEL) : randomModel("llama", 6, BIG);
  const vocab = model.config.vocabSize;
  const tok = (t: number, i: number) => 3 + ((t * 31 + i * 17) % (vocab - 3));
  const reqs = Array.from({ length: 6 }, (_, i) => ({
    id: `r${i}`,
    promptIds: Array.from({ length: 20 + i * 9 }, (_, t) => tok(t, i)),
    params: params({
      maxTokens: 8 + i,
      ignoreEos: true,
      ...(i % 2 ? { temperature: 0.9, seed: 40 + i } : {}),
    }),
  }));
  /** Each request's next turn: its prompt, its answer and a few new tokens (a chat's resend). */
  const turns = (answers: Outcome[]) =>
    reqs.map((r, i) => ({
      ...r,
      id: `${r.id}-turn`,
      promptIds: [...r.promptIds, ...answers[i].ids, ...Array.from({ length: 5 }, (_, t) => tok(t + 7, i))],
    }));
  const settings = {
    model,
    matmulSplitK: 8,
    longQueries: "prompts" as const,
    ...(SPLIT_MODEL ? { kvCacheMb: 256, maxModelLen: 1024 } : {}),
  };
  const together = await startEngine({ ...settings, graphCaptureEager: false });
  const steps: StepStats[] = [];
  together.engine.onStep = (s) => steps.push(s);
  const atOnce = async (batch: typeof reqs) =>
    (await Promise.all(batch.map((r) => together.generate(r.id, r.promptIds, r.params)))).map(outcomeOf);
  let first: Outcome[], second: Outcome[];
  try {
    first = await atOnce(reqs);
    second = await atOnce(turns(first));
    assert((together.engine.stats().prefixCacheHitsTotal ?? 0) > 0, "no turn reused a cached prefix");
  } finally {
    await together.close();
  }
  assert(steps.some((s) => s.path !== "uncaptured" && s.prefillTokens > 0), "no prompt part replayed");
  const alone = await startEngine({ ...settings, graphCapture: false, prefixCaching: false });
  try {
    for (const [batch, outs] of [[reqs, first], [turns(first), second]] as const) {
      const one = await runAlone(alone, batch);
      for (const [i, r] of batch.entries()) {
        assertEquals(one.get(r.id), outs[i], r.id);
        assertEquals(outs[i].ids.length, r.params.maxTokens, r.id);
      }
    }
  } finally {
    await alone.close();
  }
});
