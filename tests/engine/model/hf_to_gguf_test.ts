// tools/hf_to_gguf.ts: a generated HF folder written as GGUF loads through ragtime's GGUF loader with the
// same config, the same weights (q/k rows back in HF order, norms and biases as F32) and a tokenizer that
// encodes and decodes like the folder's.

import { assert, assertEquals } from "../../helpers/assert.ts";
import { join } from "node:path";
import { loadHfFolder } from "../../../engine/model/hf.ts";
import { loadGguf } from "../../../engine/model/gguf.ts";
import { expectedTensors } from "../../../engine/model/manifest.ts";
import { toF32 } from "../../../engine/model/weights.ts";
import type { LoadedModel } from "../../../engine/model/types.ts";
import { makeModel, type PresetName } from "../../../tools/make_model.ts";
import { ggufVocab, hfToGguf, permuteRows } from "../../../tools/hf_to_gguf.ts";
import { unpermuteRows } from "../../../engine/model/gguf.ts";

const root = await Deno.makeTempDir({ prefix: "ragtime_gguf_export_test_" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(root, { recursive: true });
  } catch {
    // already gone
  }
});

const TEXTS = ["Hello world, the model is here!", "  spaces\tand\nnewlines 123 4567", "ünïcödé ✓ 日本"];

async function exported(preset: PresetName, edit?: (config: Record<string, unknown>) => void) {
  const dir = join(root, preset + (edit ? "-edited" : ""));
  await makeModel({ preset, out: dir, dtype: "f16", seed: 3 });
  if (edit) {
    const path = join(dir, "config.json");
    const config = JSON.parse(await Deno.readTextFile(path));
    edit(config);
    await Deno.writeTextFile(path, JSON.stringify(config));
  }
  const file = join(root, `${preset}${edit ? "-edited" : ""}.gguf`);
  await hfToGguf(dir, file);
  return { hf: await loadHfFolder(dir), gguf: await loadGguf(file) };
}

function assertSameModel(hf: LoadedModel, gguf: LoadedModel) {
  const a = hf.config, b = gguf.config;
  const arch = a.architecture === "mistral" ? "llama" : a.architecture;
  assertEquals(b.architecture, arch);
  for (
    const k of [
      "vocabSize",
      "hiddenSize",
      "intermediateSize",
      "numLayers",
      "numHeads",
      "numKvHeads",
      "headDim",
      "ropeTheta",
      "maxContext",
      "tieEmbeddings",
      "attentionBias",
      "bosTokenId",
      "eosTokenIds",
    ] as const
  ) {
    assertEquals(b[k], a[k], k);
  }
  // Stored as f32.
  assert(Math.abs(b.rmsNormEps / a.rmsNormEps - 1) < 1e-6, `rmsNormEps ${b.rmsNormEps} vs ${a.rmsNormEps}`);
  for (const spec of expectedTensors(a)) {
    const x = hf.weights.get(spec.name), y = gguf.weights.get(spec.name);
    assertEquals(y.shape, x.shape, spec.name);
    if (spec.shape.length === 1) {
      assertEquals(y.dtype, "f32", spec.name);
      assertEquals(toF32(y), toF32(x), spec.name);
    } else {
      assertEquals(y.dtype, "f16", spec.name);
      assert(y.bytes.every((v, i) => v === x.bytes[i]), `${spec.name}: bytes differ`);
    }
  }
  for (const text of TEXTS) {
    for (const addSpecial of [false, true]) {
      const ids = hf.tokenizer.encode(text, addSpecial);
      assertEquals(gguf.tokenizer.encode(text, addSpecial), ids, text);
      assertEquals(gguf.tokenizer.decode(ids), hf.tokenizer.decode(ids), text);
    }
  }
}

Deno.test("GGUF export: tiny-llama (untied head, q/k rows permuted for llama.cpp)", async () => {
  const { hf, gguf } = await exported("tiny-llama");
  assertSameModel(hf, gguf);
});

Deno.test("GGUF export: tiny-mistral becomes llama", async () => {
  const { hf, gguf } = await exported("tiny-mistral");
  assertSameModel(hf, gguf);
});

Deno.test("GGUF export: tiny-qwen2 (q/k/v biases, tied embeddings, two eos ids)", async () => {
  const { hf, gguf } = await exported("tiny-qwen2");
  assertSameModel(hf, gguf);
  assert(!hf.weights.has("lm_head.weight") && !gguf.weights.has("lm_head.weight"));
});

Deno.test("GGUF export: Llama 3 RoPE scaling becomes rope_freqs.weight", async () => {
  const { hf, gguf } = await exported("tiny-llama", (c) => {
    c.rope_scaling = {
      rope_type: "llama3",
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    };
  });
  assertSameModel(hf, gguf);
  const want = hf.config.ropeFreqFactors!;
  assert(want.some((f) => f !== 1), "the scaling should change some frequencies");
  assertEquals(gguf.config.ropeFreqFactors, want.map(Math.fround));
});

Deno.test("GGUF export: ids without a token become unused [PAD] tokens; added tokens keep their type", () => {
  const v = ggufVocab(
    {
      model: { type: "BPE", vocab: { a: 0, b: 1, ab: 2 }, merges: [["a", "b"]] },
      added_tokens: [{ id: 4, content: "<s>", special: true }, { id: 3, content: "<x>", special: false }],
      pre_tokenizer: { type: "ByteLevel", use_regex: true },
      post_processor: { type: "TemplateProcessing" },
    },
    {},
    6,
  );
  assertEquals(v.tokens, ["a", "b", "ab", "<x>", "<s>", "[PAD5]"]);
  assertEquals(v.types, [1, 1, 1, 4, 3, 5]);
  assertEquals(v.merges, ["a b"]);
  assertEquals(v.pre, "default");
  assertEquals(v.addBos, true);
});

Deno.test("GGUF export: q/k row permutation is the inverse of the loader's", () => {
  const rows = 12, heads = 3, rowBytes = 4;
  const src = Uint8Array.from({ length: rows * rowBytes }, (_, i) => i);
  const p = permuteRows(src, rows, heads, rowBytes);
  assert(!p.every((v, i) => v === src[i]));
  assertEquals(unpermuteRows(p, rows, heads, rowBytes), src);
});
