// Each supported Hugging Face architecture against transformers' own logits for the same weights.
// Fixtures: tools/hf_reference.py on the GPU host (float32, CPU, eager attention) over
// make-model's tiny presets (seed 0). The engine runs them through the real WebGPU graph, all
// prompts in ONE ragged step, in both precisions.
// Tolerance: f32 activations 2e-2 absolute (attention runs in fp16 either way); f16 everything
// 6e-2 (measured on llvmpipe: llama 4.1e-2, mistral 3.7e-2, qwen3 3.3e-2, qwen2 2.6e-2; transformers'
// own f16 run lands 1e-2 from its f32 one). Argmax must agree at every position;
// only a reference top-2 margin below the measured error (a genuine near-tie) would excuse a swap.

import { assert } from "../../helpers/assert.ts";
import { loadModel } from "../../../engine/model/load.ts";
import { ModelRunner } from "../../../engine/model_runner.ts";
import { makeModel, type PresetName } from "../../../tools/make_model.ts";

interface Fixture {
  preset: string;
  seed: number;
  prompts: number[][];
  positions: number[][];
  logits_f32: number[][][];
}

const dir = await Deno.makeTempDir({ prefix: "ragtime-hf-" });

for (const preset of ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"] as PresetName[]) {
  for (const dtype of ["f32", "f16"] as const) {
    Deno.test(`${preset} logits match transformers (${dtype} activations)`, async () => {
      const fx: Fixture = JSON.parse(
        await Deno.readTextFile(new URL(`../../fixtures/hf_ref/${preset}.json`, import.meta.url)),
      );
      const out = `${dir}/${preset}`;
      await makeModel({ preset, out, seed: fx.seed, dtype: "f32" });
      const model = await loadModel(out);
      const runner = await ModelRunner.create(model, { dtype, blockSize: 16, kvCacheMb: 4, cacheDir: null });
      try {
        const ids = fx.prompts.flat();
        const cu = [0];
        for (const p of fx.prompts) cu.push(cu[cu.length - 1] + p.length);
        const rows = fx.positions.flatMap((ps, i) => ps.map((p) => cu[i] + p));
        const r = await runner.read(
          await runner.run({
            inputIds: Int32Array.from(ids),
            idSrc: new Int32Array(ids.length).fill(-1),
            cuSeqlens: Int32Array.from(cu),
            pastSeqlens: new Int32Array(fx.prompts.length),
            // Two blocks of 16 per prompt (prompts are at most 17 tokens), disjoint across prompts.
            blockTable: Int32Array.from(fx.prompts.flatMap((_, i) => [2 * i, 2 * i + 1])),
            maxBlocks: 2,
            sampleRows: Int32Array.from(rows),
            sampleU: new Float32Array(rows.length).fill(-1),
            invTemp: new Float32Array(rows.length).fill(1),
            sampleFilters: new Float32Array(3 * rows.length).map((_, i) => (i % 3 === 1 ? 1 : 0)),
            sampleEdits: new Float32Array(0),
            wantLogits: true,
          }),
        );
        const tol = dtype === "f32" ? 2e-2 : 6e-2;
        const V = model.config.vocabSize;
        let row = 0, worst = 0;
        const argmaxes: { got: number; want: number; margin: number; at: string }[] = [];
        fx.logits_f32.forEach((perPos, i) =>
          perPos.forEach((want, j) => {
            const got = r.logits!.subarray(row * V, (row + 1) * V);
            row++;
            for (let k = 0; k < V; k++) worst = Math.max(worst, Math.abs(got[k] - want[k]));
            const sorted = [...want].sort((a, b) => b - a);
            argmaxes.push({
              got: got.indexOf(Math.max(...got)),
              want: want.indexOf(sorted[0]),
              margin: sorted[0] - sorted[1],
              at: `prompt ${i} position ${fx.positions[i][j]}`,
            });
          })
        );
        assert(worst < tol, `max |logit diff| ${worst} >= ${tol}`);
        for (const a of argmaxes) {
          assert(
            a.got === a.want || a.margin < 2 * worst,
            `${a.at}: argmax ${a.got} != ${a.want} (margin ${a.margin})`,
          );
        }
      } finally {
        await runner.close();
      }
    });
  }
}
