// In-memory random-weight Llama-family models for graph tests (no files, no tokenizer needed).

import type { Architecture, LoadedModel, ModelConfig, WeightTensor } from "../../engine/model/types.ts";

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomModel(
  arch: Architecture = "llama",
  seed = 1,
  over: Partial<ModelConfig> = {},
): LoadedModel {
  const config: ModelConfig = {
    architecture: arch,
    vocabSize: 96,
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxContext: 256,
    tieEmbeddings: arch !== "mistral",
    attentionBias: arch === "qwen2",
    qkNorm: arch === "qwen3",
    bosTokenId: 1,
    eosTokenIds: [2],
    ...over,
  };
  const r = rng(seed);
  const tensors = new Map<string, WeightTensor>();
  const add = (name: string, shape: number[], scale: number, center = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = center + (r() * 2 - 1) * scale;
    tensors.set(name, { name, shape, dtype: "f32", bytes: new Uint8Array(a.buffer), file: "memory" });
  };
  const { hiddenSize: H, headDim: D, numHeads: NH, numKvHeads: NKV, intermediateSize: I, vocabSize: V } =
    config;
  add("model.embed_tokens.weight", [V, H], 1);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    add(p + "input_layernorm.weight", [H], 0.2, 1);
    add(p + "post_attention_layernorm.weight", [H], 0.2, 1);
    add(p + "self_attn.q_proj.weight", [NH * D, H], 0.3);
    add(p + "self_attn.k_proj.weight", [NKV * D, H], 0.3);
    add(p + "self_attn.v_proj.weight", [NKV * D, H], 0.3);
    add(p + "self_attn.o_proj.weight", [H, NH * D], 0.3);
    if (config.attentionBias) {
      add(p + "self_attn.q_proj.bias", [NH * D], 0.2);
      add(p + "self_attn.k_proj.bias", [NKV * D], 0.2);
      add(p + "self_attn.v_proj.bias", [NKV * D], 0.2);
    }
    if (config.qkNorm) {
      add(p + "self_attn.q_norm.weight", [D], 0.2, 1);
      add(p + "self_attn.k_norm.weight", [D], 0.2, 1);
    }
    add(p + "mlp.gate_proj.weight", [I, H], 0.3);
    add(p + "mlp.up_proj.weight", [I, H], 0.3);
    add(p + "mlp.down_proj.weight", [H, I], 0.3);
  }
  add("model.norm.weight", [H], 0.2, 1);
  if (!config.tieEmbeddings) add("lm_head.weight", [V, H], 0.3);
  const get = (n: string) => {
    const t = tensors.get(n);
    if (!t) throw new Error(`missing tensor ${n}`);
    return t;
  };
  return {
    name: `random-${arch}`,
    path: "memory",
    config,
    weights: {
      get,
      has: (n) => tensors.has(n),
      names: () => [...tensors.keys()],
    },
    tokenizer: {
      vocabSize: V,
      bosTokenId: 1,
      eosTokenIds: [2],
      encode: () => [],
      decode: () => "",
      tokenText: (id) => `<${id}>`,
    },
    chatTemplate: { render: () => "" },
    generation: {},
  };
}
