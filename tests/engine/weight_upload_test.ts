// The GPU weight layout (weight_upload.ts) gives the bytes of the CPU conversion (Initializer.raw),
// bit for bit: f32, bf16 and f16 checkpoints into f16 and f32 graphs, packed (q/k/v, gate/up) and
// non-square tensors, values that test the rounding (ties, subnormals, overflow, infinities, NaNs),
// and dispatches split over small staging and output bindings.

import { assert, assertEquals } from "../helpers/assert.ts";
import { randomModel } from "../helpers/random_model.ts";
import { readBufferU16 } from "../helpers/gpu_read.ts";
import { stepWeightTensors } from "../../engine/model/graph.ts";
import type { LoadedModel, ModelConfig, WeightDType, WeightTensor } from "../../engine/model/types.ts";
import { f32ToBf16Bits } from "../../engine/model/weights.ts";
import { WeightUploader } from "../../engine/weight_upload.ts";

const adapter = await navigator.gpu.requestAdapter();
const device = adapter ? await adapter.requestDevice() : null;

/**
 * Bit patterns that f32 -> f16 must round as Float16Array does (nearest even, subnormals kept).
 * No signaling NaN: V8's JS copies of one quiet it in some tiers and not in others.
 */
function specialF32(): Float32Array {
  const bits = [
    [0x00000000, 0x80000000, 0x00000001, 0x807fffff], // zeros, f32 subnormals
    [0x33000000, 0x33000001, 0xb3000000, 0x33400000], // 2^-25 (ties to 0), just above, 1.5 * 2^-25
    [0x33800000, 0x33c00000, 0x34200000, 0x387fc000], // 2^-24, ties between subnormals, largest subnormal
    [0x387fe000, 0x38800000, 0x3f801000, 0x3f803000], // up to the smallest normal, ties to even
    [0x3f801001, 0x477fe000, 0x477fefff, 0x477ff000], // above a tie, 65504, below 65520, 65520 (inf)
    [0x7f7fffff, 0xff800000, 0x7f800000, 0x7fc00000], // f32 max, -inf, inf, NaN
    [0xffc12345, 0x7fc00001, 0x3eaaaaab, 0xbd4ccccd], // NaNs with payloads, 1/3, -0.05
  ].flat();
  return new Float32Array(Uint32Array.from(bits).buffer);
}

/** The model with every tensor stored as `dtype`; the special values lead gate_proj of layer 0. */
function asDtype(model: LoadedModel, dtype: WeightDType): LoadedModel {
  const special = specialF32();
  const convert = (t: WeightTensor): WeightTensor => {
    const f = new Float32Array(t.bytes.slice().buffer);
    if (t.name === "model.layers.0.mlp.gate_proj.weight") f.set(special);
    const bytes = dtype === "f32"
      ? new Uint8Array(f.buffer)
      : dtype === "f16"
      ? new Uint8Array(Float16Array.from(f).buffer)
      : new Uint8Array(Uint16Array.from(f, f32ToBf16Bits).buffer);
    return { ...t, dtype, bytes };
  };
  const cache = new Map<string, WeightTensor>();
  const get = (n: string) => {
    if (!cache.has(n)) cache.set(n, convert(model.weights.get(n)));
    return cache.get(n)!;
  };
  return { ...model, weights: { ...model.weights, get } };
}

// Head size 16 (no padding): q/k/v and o take the GPU path; hidden 48 and intermediate 40 make
// every linear non-square, and the vocabulary (102) the LM head's rows.
const UNPADDED: Partial<ModelConfig> = {
  hiddenSize: 48,
  intermediateSize: 40,
  numHeads: 3,
  numKvHeads: 1,
  headDim: 16,
  vocabSize: 102,
};

async function compare(
  model: LoadedModel,
  act: "f16" | "f32",
  opts: ConstructorParameters<typeof WeightUploader>[1] = {},
  splitK = 1,
): Promise<{ gpu: number; cpu: number }> {
  const uploader = new WeightUploader(device!, opts);
  try {
    for (const t of stepWeightTensors(model, { dtype: act, maxPositions: 32, splitK })) {
      const buf = await uploader.upload(t);
      const got = new Uint8Array((await readBufferU16(device!, buf)).buffer);
      buf.destroy();
      const want = t.raw();
      assertEquals(got.length, Math.max(4, Math.ceil(want.length / 4) * 4), `${t.name} size`);
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== (want[i] ?? 0)) {
          throw new Error(`${t.name} (${act}): byte ${i} is ${got[i]}, the CPU conversion's ${want[i] ?? 0}`);
        }
      }
    }
  } finally {
    uploader.destroy();
  }
  return uploader.counts;
}

for (const src of ["f32", "bf16", "f16"] as const) {
  for (const act of ["f16", "f32"] as const) {
    Deno.test({
      name: `weight upload: ${src} checkpoint into an ${act} graph matches the CPU conversion`,
      ignore: !device,
      async fn() {
        const model = asDtype(randomModel("qwen2", 5, UNPADDED), src);
        const counts = await compare(model, act);
        // Embedding, per layer q/k/v, o, gate/up and down, and the LM head.
        assertEquals(counts.gpu, 2 + 4 * model.config.numLayers);
        // Small dispatches: 1 KiB staging (a few rows each) and output rows bound in ranges.
        const split = await compare(model, act, { stagingBytes: 1024, maxBindingBytes: 4096 });
        assert(split.gpu > 0, "no weight went through the split dispatches");
      },
    });
  }
}

Deno.test({
  name: "weight upload: padded heads stay on the CPU path, the rest on the GPU, same bytes",
  ignore: !device,
  async fn() {
    // Head size 8 pads to 16: q/k/v and o keep the CPU conversion.
    const model = asDtype(randomModel("llama", 7), "bf16");
    const counts = await compare(model, "f16");
    assertEquals(counts.gpu, 2 + 2 * model.config.numLayers);
    assert(counts.cpu > 2 * model.config.numLayers, "padded projections went through the GPU path");
  },
});

Deno.test({
  name: "weight upload: odd fp16 packings fall back to the CPU path",
  ignore: !device,
  async fn() {
    // 51 rows of intermediate: gate/up and down cannot be written a word per invocation.
    const model = asDtype(randomModel("mistral", 9, { ...UNPADDED, intermediateSize: 51 }), "f32");
    const counts = await compare(model, "f16");
    assert(counts.cpu >= 2 * model.config.numLayers, "odd packings went through the GPU path");
    assert(counts.gpu > 0, "nothing went through the GPU path");
  },
});

Deno.test({
  name: "weight upload: split-K weights ([S, K/S, N], the same bytes) are laid out on the GPU too",
  ignore: !device,
  async fn() {
    const model = asDtype(
      randomModel("llama", 11, { ...UNPADDED, hiddenSize: 64, intermediateSize: 64 }),
      "bf16",
    );
    const plain = await compare(model, "f16");
    const split = await compare(model, "f16", {}, 2);
    assertEquals(split, plain, "a split weight left the GPU path");
    assertEquals(split.gpu, 2 + 4 * model.config.numLayers);
  },
});
