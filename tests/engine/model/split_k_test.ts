// Split-K linear layers (engine/model/step_blocks.ts linear): which weights split, that split and
// plain matmuls give the same logits within rounding, and that a split graph keeps a token's bits
// independent of what shares its step, captured or not. (stories260K, the engine tests' model, is
// too small to split at the default 8.)

import { assert, assertEquals } from "../../helpers/assert.ts";
import { buildGraph, stepWeightTensors } from "../../../engine/model/graph.ts";
import { splitFactor } from "../../../engine/model/step_weights.ts";
import { ModelRunner } from "../../../engine/model_runner.ts";
import { maxAbsDiff, PROMPT, promptLogits, SPLIT_SHAPE } from "../../helpers/split_model.ts";
import { randomModel } from "../../helpers/random_model.ts";
import { referenceLogits } from "../../helpers/reference.ts";
import { type Outcome, outcomeOf, params, runAlone, startEngine } from "../../helpers/engine.ts";
import type { StepStats } from "../../../engine/llm_engine.ts";

const BIG = SPLIT_SHAPE;

Deno.test("splitFactor: S only where K splits into slices of at least 32", () => {
  assertEquals(splitFactor(2048, 8), 8);
  assertEquals(splitFactor(256, 8), 8);
  assertEquals(splitFactor(248, 8), 1, "31-row slices");
  assertEquals(splitFactor(172, 2), 2);
  assertEquals(splitFactor(172, 8), 1, "not divisible");
  assertEquals(splitFactor(64, 8), 1, "stories260K's hidden size stays plain");
  assertEquals(splitFactor(2048, 1), 1);
});

Deno.test("split-K graph: linear weights declared [S, K/S, N] over the same bytes, one Transpose per activation", () => {
  const model = randomModel("llama", 2, BIG);
  const opts = { dtype: "f32" as const, maxPositions: 64, weightsAsInputs: true };
  const plain = buildGraph(model, opts), split = buildGraph(model, { ...opts, splitK: 8 });
  const dims = (g: typeof plain) => new Map(g.weights.map((w) => [w.name, w.dims]));
  const d1 = dims(plain), d8 = dims(split);
  for (
    const name of [
      "model.layers.0.qkv",
      "model.layers.0.o",
      "model.layers.1.gate_up",
      "model.layers.1.down",
      "lm_head_t",
    ]
  ) {
    const [K, N] = d1.get(name)!;
    assertEquals(d8.get(name), [8, K / 8, N], name);
  }
  assertEquals(
    d8.get("model.embed_tokens.weight"),
    d1.get("model.embed_tokens.weight"),
    "a Gather table stays",
  );
  // The tensors uploaded for each graph: the same bytes, declared with each graph's dims.
  const plainT = stepWeightTensors(model, opts), splitT = stepWeightTensors(model, { ...opts, splitK: 8 });
  for (const w of splitT) assertEquals(w.dims, d8.get(w.name), w.name);
  for (const w of plainT) {
    assertEquals(splitT.find((x) => x.name === w.name)!.raw(), w.raw(), w.name);
  }
  // Four linear layers per layer, each one Reshape + Transpose + ReduceSum more than a MatMul.
  assertEquals(split.nodesPerLayer, plain.nodesPerLayer + 4 * 3);
  assertEquals(split.totalNodes, plain.totalNodes + 4 * 3 * model.config.numLayers + 3);
  // A model whose K are all too short keeps the plain graph.
  const tiny = randomModel("llama", 2);
  assertEquals(
    buildGraph(tiny, { ...opts, splitK: 8 }).totalNodes,
    buildGraph(tiny, opts).totalNodes,
  );
});

const V = BIG.vocabSize;

// Tolerances relative to the largest reference logit (~35 here: random weights over K = 256 make
// large activations). Measured on llvmpipe: f32 split-K and plain both 2.7e-3 from the reference
// (fp16 attention and KV either way), f16 split-K 1.0e-2, plain 2.1e-2, split-K vs plain 2.6e-2.
for (const [dtype, tol] of [["f32", 1e-2], ["f16", 5e-2]] as const) {
  Deno.test(`split-K ${dtype}: logits near the plain graph's and the reference's, bits independent of the batch`, async () => {
    const model = randomModel("llama", 4, BIG);
    const make = (splitK: number) =>
      ModelRunner.create(model, { dtype, blockSize: 16, kvCacheMb: 4, cacheDir: null, splitK });
    const plain = await make(1), split = await make(8);
    try {
      const a = await promptLogits(plain, 0), b = await promptLogits(split, 0);
      const ref = referenceLogits(model, PROMPT);
      const scale = Math.max(...ref.map((r) => Math.max(...r.map(Math.abs))));
      let vsRef = 0, plainVsRef = 0;
      for (let t = 0; t < PROMPT.length; t++) {
        vsRef = Math.max(vsRef, maxAbsDiff(b, ref[t], t * V) / scale);
        plainVsRef = Math.max(plainVsRef, maxAbsDiff(a, ref[t], t * V) / scale);
      }
      const vsPlain = maxAbsDiff(b, a) / scale;
      console.log(
        `${dtype}, relative to max |logit| ${scale.toFixed(1)}: split-K vs reference ${
          vsRef.toExponential(2)
        }, ` +
          `plain vs reference ${plainVsRef.toExponential(2)}, split-K vs plain ${vsPlain.toExponential(2)}`,
      );
      assert(vsRef < tol, `split-K vs reference ${vsRef}`);
      assert(vsPlain < tol, `split-K vs plain ${vsPlain}`);
      // Split-K sums in another order, never much further from the exact product than MatMul.
      assert(vsRef < 1.5 * plainVsRef, `split-K ${vsRef} vs plain ${plainVsRef} from the reference`);
      // Batch invariance: the prompt's logits alone (padded to 16 rows), beside one 31-token companion
      // (51 rows) and beside four (144 rows) are the same bits.
      for (const companions of [1, 4]) {
        const c = await promptLogits(split, companions);
        assertEquals(maxAbsDiff(c, b), 0, `beside ${companions} companion(s)`);
      }
    } finally {
      await plain.close();
      await split.close();
    }
  });
}

for (const dtype of ["f32", "f16"] as const) {
  Deno.test(`split-K engine ${dtype}: requests at once (captured decode steps) give each request's tokens alone (uncaptured)`, async () => {
    const model = randomModel("llama", 6, BIG);
    const reqs = Array.from({ length: 6 }, (_, i) => ({
      id: `r${i}`,
      promptIds: Array.from({ length: 3 + i * 9 }, (_, t) => 3 + ((t * 31 + i * 17) % (V - 3))),
      params: params({
        maxTokens: 8 + i,
        ignoreEos: true,
        ...(i % 2 ? { temperature: 0.9, seed: 40 + i } : {}),
      }),
    }));
    const together = await startEngine({ model, dtype, matmulSplitK: 8, graphCaptureEager: false });
    const steps: StepStats[] = [];
    together.engine.onStep = (s) => steps.push(s);
    let all: Outcome[];
    try {
      all = (await Promise.all(reqs.map((r) => together.generate(r.id, r.promptIds, r.params)))).map(
        outcomeOf,
      );
    } finally {
      await together.close();
    }
    assert(steps.some((s) => s.path === "captured"), "no captured step");
    const alone = await startEngine({ model, dtype, matmulSplitK: 8, graphCapture: false });
    try {
      const one = await runAlone(alone, reqs);
      for (const [i, r] of reqs.entries()) {
        assertEquals(one.get(r.id), all[i], r.id);
        assertEquals(all[i].ids.length, r.params.maxTokens, r.id);
      }
    } finally {
      await alone.close();
    }
  });
}
