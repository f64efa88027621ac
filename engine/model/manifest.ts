// The tensors a model's graph reads, listed once for every loader: Hugging Face name (what the graph and
// WeightSource use), GGUF name (llama.cpp's) and shape in HF order ([out, in] for Linear weights).

import type { ModelConfig } from "./types.ts";

export interface TensorSpec {
  /** Hugging Face name. */
  name: string;
  /** llama.cpp's name for the same tensor in a GGUF file. */
  gguf: string;
  /** HF order, outermost first. */
  shape: number[];
  /** q/k projections: the heads their rows hold, for loaders that reorder rotary rows (GGUF llama). */
  ropeHeads?: number;
}

interface Sizes {
  hidden: number;
  ffn: number;
  vocab: number;
  headDim: number;
  q: number;
  kv: number;
}

interface Entry {
  hf: string;
  gguf: string;
  shape: (s: Sizes) => number[];
  when?: (c: ModelConfig) => boolean;
  ropeHeads?: (c: ModelConfig) => number;
}

const bias = (c: ModelConfig) => c.attentionBias;
const qkNorm = (c: ModelConfig) => c.qkNorm;

/** Before the layers. */
const HEAD: Entry[] = [
  { hf: "model.embed_tokens.weight", gguf: "token_embd.weight", shape: (s) => [s.vocab, s.hidden] },
];

/** Per layer, after "model.layers.N." and "blk.N.". */
const LAYER: Entry[] = [
  { hf: "input_layernorm.weight", gguf: "attn_norm.weight", shape: (s) => [s.hidden] },
  {
    hf: "self_attn.q_proj.weight",
    gguf: "attn_q.weight",
    shape: (s) => [s.q, s.hidden],
    ropeHeads: (c) => c.numHeads,
  },
  {
    hf: "self_attn.k_proj.weight",
    gguf: "attn_k.weight",
    shape: (s) => [s.kv, s.hidden],
    ropeHeads: (c) => c.numKvHeads,
  },
  { hf: "self_attn.v_proj.weight", gguf: "attn_v.weight", shape: (s) => [s.kv, s.hidden] },
  { hf: "self_attn.q_proj.bias", gguf: "attn_q.bias", shape: (s) => [s.q], when: bias },
  { hf: "self_attn.k_proj.bias", gguf: "attn_k.bias", shape: (s) => [s.kv], when: bias },
  { hf: "self_attn.v_proj.bias", gguf: "attn_v.bias", shape: (s) => [s.kv], when: bias },
  { hf: "self_attn.q_norm.weight", gguf: "attn_q_norm.weight", shape: (s) => [s.headDim], when: qkNorm },
  { hf: "self_attn.k_norm.weight", gguf: "attn_k_norm.weight", shape: (s) => [s.headDim], when: qkNorm },
  { hf: "self_attn.o_proj.weight", gguf: "attn_output.weight", shape: (s) => [s.hidden, s.q] },
  { hf: "post_attention_layernorm.weight", gguf: "ffn_norm.weight", shape: (s) => [s.hidden] },
  { hf: "mlp.gate_proj.weight", gguf: "ffn_gate.weight", shape: (s) => [s.ffn, s.hidden] },
  { hf: "mlp.up_proj.weight", gguf: "ffn_up.weight", shape: (s) => [s.ffn, s.hidden] },
  { hf: "mlp.down_proj.weight", gguf: "ffn_down.weight", shape: (s) => [s.hidden, s.ffn] },
];

/** After the layers. */
const TAIL: Entry[] = [
  { hf: "model.norm.weight", gguf: "output_norm.weight", shape: (s) => [s.hidden] },
  {
    hf: "lm_head.weight",
    gguf: "output.weight",
    shape: (s) => [s.vocab, s.hidden],
    when: (c) => !c.tieEmbeddings,
  },
];

/** Every tensor the graph needs for this config, in file order (embeddings, layers, final norm, head). */
export function expectedTensors(c: ModelConfig): TensorSpec[] {
  const sizes: Sizes = {
    hidden: c.hiddenSize,
    ffn: c.intermediateSize,
    vocab: c.vocabSize,
    headDim: c.headDim,
    q: c.numHeads * c.headDim,
    kv: c.numKvHeads * c.headDim,
  };
  const out: TensorSpec[] = [];
  const add = (entries: Entry[], hfPrefix: string, ggufPrefix: string) => {
    for (const e of entries) {
      if (e.when && !e.when(c)) continue;
      const spec: TensorSpec = { name: hfPrefix + e.hf, gguf: ggufPrefix + e.gguf, shape: e.shape(sizes) };
      if (e.ropeHeads) spec.ropeHeads = e.ropeHeads(c);
      out.push(spec);
    }
  };
  add(HEAD, "", "");
  for (let i = 0; i < c.numLayers; i++) add(LAYER, `model.layers.${i}.`, `blk.${i}.`);
  add(TAIL, "", "");
  return out;
}
