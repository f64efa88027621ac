// The step graph against the float64 reference, on the real WebGPU code path (software adapter in CI).

import { assert, assertEquals } from "../../helpers/assert.ts";
import { ModelRunner } from "../../../engine/model_runner.ts";
import { stepInputs } from "../../helpers/step_inputs.ts";
import { randomModel } from "../../helpers/random_model.ts";
import { referenceLogits } from "../../helpers/reference.ts";
import type { Architecture, LoadedModel } from "../../../engine/model/types.ts";

function maxDiff(a: Float32Array, off: number, b: Float64Array) {
  let m = 0;
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(a[off + i] - b[i]));
  return m;
}

async function checkRagged(model: LoadedModel, dtype: "f32" | "f16", tol: number, externalMinBytes?: number) {
  const runner = await ModelRunner.create(model, {
    dtype,
    blockSize: 16,
    kvCacheMb: 1,
    cacheDir: null,
    externalMinBytes,
  });
  const V = model.config.vocabSize;
  // Long enough to cross block boundaries (block size 16) at step edges.
  const a = Array.from({ length: 37 }, (_, i) => (i * 7 + 1) % V), b = [1, 60, 61, 2, 33];
  const split = 20;
  const refA = referenceLogits(model, a), refB = referenceLogits(model, b);
  try {
    // Step 1: A's first tokens alone. Step 2: A's rest and all of B, in one ragged batch.
    let h = await runner.run(stepInputs([{ ids: a.slice(0, split), past: 0, blocks: [3, 7] }], 4));
    let r = await runner.read(h);
    for (let t = 0; t < split; t++) assert(maxDiff(r.logits!, t * V, refA[t]) < tol, `A step1 pos ${t}`);
    h = await runner.run(stepInputs([
      { ids: b, past: 0, blocks: [0] },
      { ids: a.slice(split), past: split, blocks: [3, 7, 1] },
    ], 4));
    r = await runner.read(h);
    for (let t = 0; t < b.length; t++) assert(maxDiff(r.logits!, t * V, refB[t]) < tol, `B pos ${t}`);
    for (let t = split; t < a.length; t++) {
      const d = maxDiff(r.logits!, (b.length + t - split) * V, refA[t]);
      assert(d < tol, `A pos ${t}: ${d}`);
    }
    // next_ids are the argmax of each sampled row.
    for (let i = 0; i < r.nextIds.length; i++) {
      const row = r.logits!.subarray(i * V, (i + 1) * V);
      assertEquals(r.nextIds[i], row.indexOf(Math.max(...row)));
    }
  } finally {
    await runner.close();
  }
}

for (const arch of ["llama", "mistral", "qwen2", "qwen3"] as Architecture[]) {
  Deno.test(`graph ${arch} f32 activations matches the reference on a ragged batch`, async () => {
    await checkRagged(randomModel(arch, 7), "f32", 2e-2);
  });
}

Deno.test("graph applies Llama 3.1 RoPE frequency divisors as the reference does", async () => {
  // Head dim 8: four frequencies, the last two stretched 8x, one interpolated (2.5x).
  await checkRagged(randomModel("llama", 5, { ropeFreqFactors: [1, 2.5, 8, 8] }), "f32", 2e-2);
});

Deno.test("weights as ONNX external data (all but shapes, or those of 1 KiB and more) give the same logits", async () => {
  // The step graph keeps weights of 64 KiB and more outside the model proto (a proto cannot exceed 2 GiB).
  await checkRagged(randomModel("qwen2", 7), "f32", 2e-2, 0);
  await checkRagged(randomModel("llama", 3), "f16", 8e-2, 1024);
});

Deno.test("graph f16 matches the reference within fp16 tolerance", async () => {
  await checkRagged(randomModel("llama", 3), "f16", 8e-2);
});

Deno.test("GPU sampling head: argmax and inverse-CDF draws follow the CPU rule row by row", async () => {
  // vocab 700 is not a multiple of the 256-id chunk: exercises the padded tail too.
  const model = randomModel("llama", 11, { vocabSize: 700 });
  const runner = await ModelRunner.create(model, {
    dtype: "f32",
    blockSize: 16,
    kvCacheMb: 1,
    cacheDir: null,
  });
  try {
    const ids = Array.from({ length: 40 }, (_, i) => (i * 13 + 5) % 700);
    // Two sequences of 20 (chunks stay under the 32-token kernel switch).
    const inp = stepInputs([{ ids: ids.slice(0, 20), past: 0, blocks: [0, 1] }, {
      ids: ids.slice(20),
      past: 0,
      blocks: [2, 3],
    }], 2);
    const n = ids.length;
    inp.sampleU = Float32Array.from({ length: n }, (_, i) => (i % 5 === 0 ? -1 : ((i * 0.6180339) % 1)));
    inp.invTemp = Float32Array.from({ length: n }, (_, i) => 0.5 + (i % 3) * 0.4);
    const r = await runner.read(await runner.run(inp));
    const V = 700;
    for (let i = 0; i < n; i++) {
      const row = r.logits!.subarray(i * V, (i + 1) * V);
      const u = inp.sampleU[i];
      if (u < 0) {
        assertEquals(r.nextIds[i], row.indexOf(Math.max(...row)), `row ${i} argmax`);
        continue;
      }
      const m = Math.max(...row);
      const e = Array.from(row, (x) => Math.exp((x - m) * inp.invTemp[i]));
      const z = e.reduce((a, b) => a + b, 0);
      let acc = 0, want = V - 1;
      for (let j = 0; j < V; j++) {
        acc += e[j] / z;
        if (acc > u) {
          want = j;
          break;
        }
      }
      assertEquals(r.nextIds[i], want, `row ${i} u=${u}`);
    }
  } finally {
    await runner.close();
  }
});
