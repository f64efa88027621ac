// Writes a Hugging Face model folder with seeded random weights, for tests and benchmarks.
//
//   deno task make-model --preset tiny-llama --out /tmp/m/tiny-llama [--seed 0] [--dtype f32] [--shards 2]
//
// Presets: smollm2-135m (the real SmolLM2-135M shape, default dtype bf16); llama3.2-1b and qwen2.5-0.5b
// (the real shapes, vocabularies, special-token ids and RoPE settings of Llama-3.2-1B and Qwen2.5-0.5B,
// default dtype f16); tiny-llama, tiny-mistral, tiny-qwen2, tiny-qwen3 (2 layers, hidden 64, GQA;
// default dtype f32). The tokenizer is synthetic: a byte-level BPE whose vocab has exactly vocab_size
// entries: the special tokens (first, or last at the real models' ids), the 256 byte symbols, then merges
// built from a fixed word list and extended letter by letter; both tokenizers.js and Python `tokenizers`
// load it. Same preset, seed and dtype give byte-identical files.
//
// --gguf FILE also writes the model as a GGUF F16 file (tools/hf_to_gguf.ts), e.g. for llama.cpp.
// --set KEY=VALUE (repeatable) overrides a config.json field with a JSON value, for a variant of a preset's
// shape, e.g. --set num_hidden_layers=1 --set max_position_embeddings=131072.

import { f32ToBf16Bits } from "../engine/model/weights.ts";
import { join } from "node:path";
import { parseHfConfig } from "../engine/model/hf.ts";
import { expectedTensors } from "../engine/model/manifest.ts";
import { encodeSafetensorsHeader } from "../engine/model/safetensors.ts";
import { hfToGguf } from "./hf_to_gguf.ts";

export type PresetName =
  | "smollm2-135m"
  | "llama3.2-1b"
  | "qwen2.5-0.5b"
  | "tiny-llama"
  | "tiny-mistral"
  | "tiny-qwen2"
  | "tiny-qwen3";
export type MakeDType = "f32" | "f16" | "bf16";

interface Preset {
  config: Record<string, unknown>;
  /** Special tokens in id order: ids 0.., or the last ids of the vocab with `specialsLast`. */
  specials: string[];
  /** The specials take the vocab's last ids (Llama 3 from 128000, Qwen2 from 151643). */
  specialsLast?: boolean;
  bos: string | null;
  eos: string;
  /** "template": the post-processor prepends BOS (llama style); "bytelevel": it adds nothing. */
  postProcessor: "template" | "bytelevel";
  chatTemplate: string;
  /** Extra tokenizer_config.json fields. */
  tokenizerConfig: Record<string, unknown>;
  generationConfig: Record<string, unknown>;
  defaultDtype: MakeDType;
  /**
   * Std of the random weights. Tiny models use a larger one than the usual 0.02: with hidden 64 that
   * would leave attention almost uniform and hide RoPE/mask bugs.
   */
  std: number;
  /**
   * Weights drawn from a 65,536-entry table of normal draws indexed by a hash stream instead of one
   * Box-Muller draw each: ~10x faster, so a 1.2B model is written in seconds. Off for the presets
   * whose values tests pin.
   */
  tableWeights?: boolean;
}

const CHATML = "{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const SMOL_TEMPLATE = "{% for message in messages %}" +
  "{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}" +
  "{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Zephyr/TinyLlama-chat style; uses bos_token and eos_token so the loader's token strings are exercised.
const ZEPHYR_TEMPLATE = "{{ bos_token }}{% for message in messages %}" +
  "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

// Mistral-instruct style, including its raise_exception on unknown roles.
const MISTRAL_TEMPLATE = "{{ bos_token }}{% for message in messages %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}" +
  "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}" +
  "{% endfor %}";

const TINY = {
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
  max_position_embeddings: 1024,
  hidden_act: "silu",
  initializer_range: 0.02,
  attention_dropout: 0.0,
  use_cache: true,
};

/** The tokenizer side of both tiny Qwen presets: ChatML, no BOS, byte-level BPE. */
const QWEN_TOKENIZER: Pick<
  Preset,
  "specials" | "bos" | "eos" | "postProcessor" | "chatTemplate" | "tokenizerConfig"
> = {
  specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
  bos: null,
  eos: "<|im_end|>",
  postProcessor: "bytelevel",
  chatTemplate: CHATML,
  tokenizerConfig: { pad_token: "<|endoftext|>", unk_token: null },
};

// Llama 3's 256 special tokens (ids 128000-128255), as its tokenizer names them.
const LLAMA3_SPECIALS = (() => {
  const named: Record<number, string> = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
  };
  let reserved = 0;
  return Array.from({ length: 256 }, (_, i) => named[i] ?? `<|reserved_special_token_${reserved++}|>`);
})();

// Llama 3 instruct's header format, without its tool and date preamble.
const LLAMA3_TEMPLATE = "{{ bos_token }}{% for message in messages %}" +
  "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

// Qwen2.5's 22 special tokens (ids 151643-151664); its embedding has 151936 rows, so the synthetic
// vocab fills ids 151665-151935 with padding tokens named as llama.cpp's converter names them.
const QWEN25_SPECIALS = [
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|object_ref_start|>",
  "<|object_ref_end|>",
  "<|box_start|>",
  "<|box_end|>",
  "<|quad_start|>",
  "<|quad_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|vision_pad|>",
  "<|image_pad|>",
  "<|video_pad|>",
  "<tool_call>",
  "</tool_call>",
  "<|fim_prefix|>",
  "<|fim_middle|>",
  "<|fim_suffix|>",
  "<|fim_pad|>",
  "<|repo_name|>",
  "<|file_sep|>",
  ...Array.from({ length: 151936 - 151665 }, (_, i) => `[PAD${151665 + i}]`),
];

export const PRESETS: Record<PresetName, Preset> = {
  "smollm2-135m": {
    config: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: "silu",
      hidden_size: 576,
      initializer_range: 0.041666666666666664,
      intermediate_size: 1536,
      max_position_embeddings: 8192,
      mlp_bias: false,
      num_attention_heads: 9,
      num_hidden_layers: 30,
      num_key_value_heads: 3,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      rope_theta: 100000,
      tie_word_embeddings: true,
      use_cache: true,
      vocab_size: 49152,
    },
    specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    bos: "<|im_start|>",
    eos: "<|im_end|>",
    postProcessor: "bytelevel",
    chatTemplate: SMOL_TEMPLATE,
    tokenizerConfig: { pad_token: "<|im_end|>", unk_token: "<|endoftext|>" },
    generationConfig: { bos_token_id: 1, eos_token_id: 2 },
    defaultDtype: "bf16",
    std: 0.02,
  },
  "llama3.2-1b": {
    config: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 128000,
      eos_token_id: [128001, 128009],
      head_dim: 64,
      hidden_act: "silu",
      hidden_size: 2048,
      initializer_range: 0.02,
      intermediate_size: 8192,
      max_position_embeddings: 131072,
      mlp_bias: false,
      num_attention_heads: 32,
      num_hidden_layers: 16,
      num_key_value_heads: 8,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: {
        factor: 32.0,
        high_freq_factor: 4.0,
        low_freq_factor: 1.0,
        original_max_position_embeddings: 8192,
        rope_type: "llama3",
      },
      rope_theta: 500000.0,
      tie_word_embeddings: true,
      use_cache: true,
      vocab_size: 128256,
    },
    specials: LLAMA3_SPECIALS,
    specialsLast: true,
    bos: "<|begin_of_text|>",
    eos: "<|eot_id|>",
    postProcessor: "template",
    chatTemplate: LLAMA3_TEMPLATE,
    tokenizerConfig: {},
    generationConfig: { bos_token_id: 128000, eos_token_id: [128001, 128009] },
    defaultDtype: "f16",
    std: 0.02,
    tableWeights: true,
  },
  "qwen2.5-0.5b": {
    config: {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      hidden_act: "silu",
      hidden_size: 896,
      initializer_range: 0.02,
      intermediate_size: 4864,
      max_position_embeddings: 32768,
      max_window_layers: 21,
      num_attention_heads: 14,
      num_hidden_layers: 24,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 32768,
      tie_word_embeddings: true,
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 151936,
    },
    specials: QWEN25_SPECIALS,
    specialsLast: true,
    bos: null,
    eos: "<|im_end|>",
    postProcessor: "bytelevel",
    chatTemplate: CHATML,
    tokenizerConfig: { pad_token: "<|endoftext|>", unk_token: null },
    generationConfig: {
      bos_token_id: 151643,
      eos_token_id: [151645, 151643],
      do_sample: true,
      temperature: 0.7,
      top_p: 0.8,
      top_k: 20,
      repetition_penalty: 1.05,
    },
    defaultDtype: "f16",
    std: 0.02,
    tableWeights: true,
  },
  "tiny-llama": {
    config: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      ...TINY,
      attention_bias: false,
      mlp_bias: false,
      bos_token_id: 1,
      eos_token_id: 2,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      rope_theta: 10000,
      tie_word_embeddings: false,
    },
    specials: ["<unk>", "<s>", "</s>"],
    bos: "<s>",
    eos: "</s>",
    postProcessor: "template",
    chatTemplate: ZEPHYR_TEMPLATE,
    tokenizerConfig: { add_bos_token: true, add_eos_token: false, unk_token: "<unk>" },
    generationConfig: { bos_token_id: 1, eos_token_id: 2, max_length: 1024 },
    defaultDtype: "f32",
    std: 0.15,
  },
  "tiny-mistral": {
    config: {
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      ...TINY,
      head_dim: 16,
      bos_token_id: 1,
      eos_token_id: 2,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000.0,
      sliding_window: null,
      tie_word_embeddings: false,
    },
    specials: ["<unk>", "<s>", "</s>"],
    bos: "<s>",
    eos: "</s>",
    postProcessor: "template",
    chatTemplate: MISTRAL_TEMPLATE,
    // The older AddedToken-object spelling of special tokens, which loaders must also accept.
    tokenizerConfig: {
      add_bos_token: true,
      add_eos_token: false,
      bos_token: { __type: "AddedToken", content: "<s>", lstrip: false, normalized: false, rstrip: false },
      eos_token: { __type: "AddedToken", content: "</s>", lstrip: false, normalized: false, rstrip: false },
      unk_token: { __type: "AddedToken", content: "<unk>", lstrip: false, normalized: false, rstrip: false },
    },
    generationConfig: { bos_token_id: 1, eos_token_id: 2 },
    defaultDtype: "f32",
    std: 0.15,
  },
  "tiny-qwen2": {
    config: {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      ...TINY,
      bos_token_id: 0,
      eos_token_id: 2,
      max_window_layers: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 1024,
      use_sliding_window: false,
      tie_word_embeddings: true,
    },
    ...QWEN_TOKENIZER,
    // Qwen2.5-instruct style: two stop tokens and sampling defaults.
    generationConfig: {
      bos_token_id: 0,
      eos_token_id: [2, 0],
      do_sample: true,
      temperature: 0.7,
      top_p: 0.8,
      top_k: 20,
      repetition_penalty: 1.05,
    },
    defaultDtype: "f32",
    std: 0.15,
  },
  "tiny-qwen3": {
    config: {
      architectures: ["Qwen3ForCausalLM"],
      model_type: "qwen3",
      ...TINY,
      // Explicit head_dim unequal to hidden/heads (16), as in real Qwen3 checkpoints.
      head_dim: 32,
      attention_bias: false,
      bos_token_id: 0,
      eos_token_id: 2,
      max_window_layers: 2,
      rms_norm_eps: 1e-6,
      rope_scaling: null,
      rope_theta: 1000000,
      sliding_window: null,
      use_sliding_window: false,
      tie_word_embeddings: false,
    },
    ...QWEN_TOKENIZER,
    generationConfig: {
      bos_token_id: 0,
      eos_token_id: [2, 0],
      do_sample: true,
      temperature: 0.6,
      top_p: 0.95,
    },
    defaultDtype: "f32",
    std: 0.15,
  },
};

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers

/** 32-bit FNV-1a, to derive a per-tensor stream from (seed, name). */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** LCG state advanced per draw, output scrambled with a murmur-style finaliser. */
class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  nextU32(): number {
    this.#state = (Math.imul(this.#state, 1664525) + 1013904223) >>> 0;
    let h = this.#state;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h >>> 0;
  }
  /**
   * out[i] = table[16 random bits], two entries per nextU32 draw. The draw is inlined on a local copy of
   * the state: a method call per element is several times slower.
   */
  fillFromTable(out: Uint16Array | Uint32Array, n: number, table: Uint16Array | Uint32Array): void {
    let s = this.#state;
    for (let i = 0; i < n; i += 2) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      let h = s;
      h ^= h >>> 16;
      h = Math.imul(h, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
      out[i] = table[h & 0xffff];
      if (i + 1 < n) out[i + 1] = table[h >>> 16];
    }
    this.#state = s;
  }
  /** Uniform in (0, 1]. */
  uniform(): number {
    return (this.nextU32() + 1) / 4294967296;
  }
  /** Fills with standard normals (Box-Muller, both outputs used). */
  fillNormal(out: Float32Array): void {
    for (let i = 0; i < out.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log(this.uniform()));
      const t = 2 * Math.PI * this.uniform();
      out[i] = r * Math.cos(t);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(t);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Float encoding (round to nearest even)

export function encodeFloats(values: Float32Array, dtype: MakeDType): Uint8Array {
  if (dtype === "f32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (dtype === "f16") return new Uint8Array(Float16Array.from(values).buffer);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i]);
  return new Uint8Array(out.buffer);
}

const ST_DTYPE: Record<MakeDType, string> = { f32: "F32", f16: "F16", bf16: "BF16" };
const TORCH_DTYPE: Record<MakeDType, string> = { f32: "float32", f16: "float16", bf16: "bfloat16" };

// ---------------------------------------------------------------------------------------------
// Tokenizer

/** GPT-2's byte <-> printable-character table, so every byte has a visible one-char symbol. */
export function byteSymbols(): string[] {
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCharCode(printable(b) ? b : 256 + extra++));
  return out;
}

const WORDS = (
  "the hello world of and to in is that for it as was with be by on not he this are or his from at which but have an " +
  "they you were her she there been one all we their has would when if so no will more can what about " +
  "model token text time people new some could them other than then now only its over also " +
  "after use two how our work first well way even because any these give day most us assistant user system " +
  "ing ed er es re en th ll"
).split(" ");

const LETTERS = "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ";

/**
 * Vocab (exactly vocabSize entries) and merges, deterministic for a preset. The specials take ids 0.. or,
 * with `specialsLast`, the last ids.
 */
export function buildBpe(
  vocabSize: number,
  specials: string[],
  specialsLast = false,
): { vocab: string[]; merges: [string, string][] } {
  const bytes = byteSymbols();
  const space = bytes[0x20];
  const regularSize = vocabSize - specials.length;
  if (regularSize < bytes.length) {
    throw new Error(`vocab_size ${vocabSize} is below ${specials.length + bytes.length}`);
  }
  const regular = [...bytes];
  const have = new Set([...specials, ...bytes]);
  const merges: [string, string][] = [];
  const add = (a: string, b: string): boolean => {
    if (regular.length >= regularSize) return false;
    const t = a + b;
    if (have.has(t) || !have.has(a) || !have.has(b)) return true;
    have.add(t);
    regular.push(t);
    merges.push([a, b]);
    return true;
  };
  // Common words with and without a leading space, built left to right so every prefix is a token.
  outer: for (const w of WORDS) {
    for (const form of [space + w, w]) {
      const chars = [...form];
      let cur = chars[0];
      for (let i = 1; i < chars.length; i++) {
        if (!add(cur, chars[i])) break outer;
        cur += chars[i];
      }
    }
  }
  // Then grow existing letter tokens by one letter per round until the vocab is full.
  const letterish = new RegExp(`^${space}?[A-Za-z]+$`);
  while (regular.length < regularSize) {
    const before = regular.length;
    for (const t of regular.slice()) {
      if (!letterish.test(t) || t.length > 8) continue;
      for (const c of LETTERS) if (!add(t, c)) break;
      if (regular.length >= regularSize) break;
    }
    if (regular.length === before) {
      // Nothing left to grow (tiny alphabets); fall back to arbitrary byte pairs.
      for (const a of bytes) for (const b of bytes) if (!add(a, b)) break;
      if (regular.length === before) throw new Error("cannot fill the vocab");
    }
  }
  return { vocab: specialsLast ? [...regular, ...specials] : [...specials, ...regular], merges };
}

/** Id of special token `i` of the preset. */
function specialId(preset: Preset, i: number): number {
  return preset.specialsLast ? (preset.config.vocab_size as number) - preset.specials.length + i : i;
}

export function tokenizerJson(preset: Preset): Record<string, unknown> {
  const vocabSize = preset.config.vocab_size as number;
  const { vocab, merges } = buildBpe(vocabSize, preset.specials, preset.specialsLast);
  const vocabObj: Record<string, number> = {};
  vocab.forEach((t, i) => (vocabObj[t] = i));
  const bosId = preset.bos === null ? null : specialId(preset, preset.specials.indexOf(preset.bos));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  const post = preset.postProcessor === "template" && bosId !== null
    ? {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: preset.bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: preset.bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: preset.bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [preset.bos!]: { id: preset.bos, ids: [bosId], tokens: [preset.bos] } },
    }
    : { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: preset.specials.map((content, i) => ({
      id: specialId(preset, i),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: post,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab: vocabObj,
      // "a b" strings: accepted by every tokenizers version (byte symbols never contain a space).
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

function tokenizerConfigJson(preset: Preset): Record<string, unknown> {
  const addedTokensDecoder: Record<string, unknown> = {};
  preset.specials.forEach((content, i) => {
    addedTokensDecoder[String(specialId(preset, i))] = {
      content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  });
  return {
    added_tokens_decoder: addedTokensDecoder,
    bos_token: preset.bos,
    eos_token: preset.eos,
    chat_template: preset.chatTemplate,
    clean_up_tokenization_spaces: false,
    model_max_length: preset.config.max_position_embeddings,
    tokenizer_class: "PreTrainedTokenizerFast",
    ...preset.tokenizerConfig,
  };
}

// ---------------------------------------------------------------------------------------------
// Weights

interface PlannedTensor {
  name: string;
  shape: number[];
  byteLength: number;
}

function tensorValues(name: string, shape: number[], seed: number, std: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  new Rng(hashString(`${seed}:${name}`)).fillNormal(v);
  // Norm weights near 1 with visible noise, so a skipped or misplaced norm changes the output.
  const isNorm = name.endsWith("norm.weight");
  const scale = isNorm ? 0.1 : std;
  for (let i = 0; i < n; i++) v[i] = (isNorm ? 1 : 0) + scale * v[i];
  return v;
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await f.write(data.subarray(off));
}

const TABLE_SIZE = 65536;
const TABLE_CHUNK = 1 << 22;

/** The encoded words of TABLE_SIZE draws of one weight kind (norm weights or the rest). */
function valueTable(seed: number, std: number, dtype: MakeDType, norm: boolean): Uint16Array | Uint32Array {
  const v = tensorValues(norm ? "table.norm.weight" : "table.weight", [TABLE_SIZE], seed, std);
  const bytes = encodeFloats(v, dtype);
  return dtype === "f32" ? new Uint32Array(bytes.slice().buffer) : new Uint16Array(bytes.slice().buffer);
}

/** Writes a tensor as table entries picked by its own hash stream, a chunk at a time. */
async function writeTableTensor(
  f: Deno.FsFile,
  name: string,
  elements: number,
  seed: number,
  table: Uint16Array | Uint32Array,
): Promise<void> {
  const rng = new Rng(hashString(`${seed}:${name}`));
  const out = table instanceof Uint32Array ? new Uint32Array(TABLE_CHUNK) : new Uint16Array(TABLE_CHUNK);
  for (let done = 0; done < elements; done += TABLE_CHUNK) {
    const n = Math.min(TABLE_CHUNK, elements - done);
    rng.fillFromTable(out, n, table);
    await writeAll(f, new Uint8Array(out.buffer, 0, n * out.BYTES_PER_ELEMENT));
  }
}

async function writeShard(
  path: string,
  tensors: PlannedTensor[],
  dtype: MakeDType,
  seed: number,
  std: number,
  tableWeights: boolean,
): Promise<void> {
  const header = encodeSafetensorsHeader(
    tensors.map((t) => ({ ...t, dtype: ST_DTYPE[dtype] })),
    { format: "pt" },
  );
  const tables = tableWeights
    ? { norm: valueTable(seed, std, dtype, true), other: valueTable(seed, std, dtype, false) }
    : null;
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAll(f, header);
    for (const t of tensors) {
      if (tables) {
        const table = t.name.endsWith("norm.weight") ? tables.norm : tables.other;
        await writeTableTensor(f, t.name, t.shape.reduce((a, b) => a * b, 1), seed, table);
      } else {
        await writeAll(f, encodeFloats(tensorValues(t.name, t.shape, seed, std), dtype));
      }
    }
  } finally {
    f.close();
  }
}

export interface MakeModelOptions {
  preset: PresetName;
  out: string;
  seed?: number;
  dtype?: MakeDType;
  /** Split the weights over this many files with a model.safetensors.index.json. */
  shards?: number;
  /** Override the preset's weight std. */
  std?: number;
  /** Also write the model as this GGUF F16 file (tools/hf_to_gguf.ts). */
  gguf?: string;
  /** config.json fields over the preset's (a variant of its shape: layers, heads, context). */
  set?: Record<string, unknown>;
}

function json(v: unknown): string {
  return JSON.stringify(v, null, 2) + "\n";
}

export async function makeModel(opts: MakeModelOptions): Promise<void> {
  const preset = PRESETS[opts.preset];
  if (!preset) throw new Error(`unknown preset ${opts.preset} (have: ${Object.keys(PRESETS).join(", ")})`);
  const seed = opts.seed ?? 0;
  const dtype = opts.dtype ?? preset.defaultDtype;
  const std = opts.std ?? preset.std;
  const shards = Math.max(1, Math.floor(opts.shards ?? 1));
  const tableWeights = preset.tableWeights ?? false;
  await Deno.mkdir(opts.out, { recursive: true });

  const config = { ...preset.config, ...opts.set, torch_dtype: TORCH_DTYPE[dtype] };
  const parsed = parseHfConfig(config);
  const bytesPer = dtype === "f32" ? 4 : 2;
  const planned: PlannedTensor[] = expectedTensors(parsed).map(({ name, shape }) => ({
    name,
    shape,
    byteLength: shape.reduce((a, b) => a * b, 1) * bytesPer,
  }));

  await Deno.writeTextFile(join(opts.out, "config.json"), json(config));
  await Deno.writeTextFile(join(opts.out, "generation_config.json"), json(preset.generationConfig));
  await Deno.writeTextFile(join(opts.out, "tokenizer.json"), json(tokenizerJson(preset)));
  await Deno.writeTextFile(join(opts.out, "tokenizer_config.json"), json(tokenizerConfigJson(preset)));
  await Deno.writeTextFile(
    join(opts.out, "make_model.json"),
    json({ preset: opts.preset, seed, dtype, std, shards, ...(opts.set ? { set: opts.set } : {}) }),
  );

  if (shards === 1) {
    await writeShard(join(opts.out, "model.safetensors"), planned, dtype, seed, std, tableWeights);
  } else {
    await writeShards(opts.out, planned, shards, dtype, seed, std, tableWeights);
  }
  if (opts.gguf) await hfToGguf(opts.out, opts.gguf);
}

async function writeShards(
  out: string,
  planned: PlannedTensor[],
  shards: number,
  dtype: MakeDType,
  seed: number,
  std: number,
  tableWeights: boolean,
): Promise<void> {
  // Contiguous groups of about equal bytes, named like transformers' save_pretrained does.
  const total = planned.reduce((a, t) => a + t.byteLength, 0);
  const groups: PlannedTensor[][] = Array.from({ length: shards }, () => []);
  let acc = 0;
  for (const t of planned) {
    const g = Math.min(shards - 1, Math.floor((acc * shards) / total));
    groups[g].push(t);
    acc += t.byteLength;
  }
  const pad = (n: number) => String(n).padStart(5, "0");
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards; i++) {
    const file = `model-${pad(i + 1)}-of-${pad(shards)}.safetensors`;
    for (const t of groups[i]) weightMap[t.name] = file;
    await writeShard(join(out, file), groups[i], dtype, seed, std, tableWeights);
  }
  await Deno.writeTextFile(
    join(out, "model.safetensors.index.json"),
    json({ metadata: { total_size: total }, weight_map: weightMap }),
  );
}

function usage(): never {
  console.error(
    "usage: deno task make-model --preset " + Object.keys(PRESETS).join("|") +
      " --out DIR [--seed N] [--dtype f16|f32|bf16] [--shards N] [--std X] [--gguf FILE]" +
      " [--set CONFIG_KEY=JSON_VALUE ...]",
  );
  Deno.exit(2);
}

if (import.meta.main) {
  const args: Record<string, string> = {};
  const set: Record<string, unknown> = {};
  for (let i = 0; i < Deno.args.length; i++) {
    const a = Deno.args[i];
    if (!a.startsWith("--") || i + 1 >= Deno.args.length) usage();
    const v = Deno.args[++i];
    if (a !== "--set") {
      args[a.slice(2)] = v;
      continue;
    }
    const eq = v.indexOf("=");
    if (eq < 1) usage();
    try {
      set[v.slice(0, eq)] = JSON.parse(v.slice(eq + 1));
    } catch {
      usage();
    }
  }
  const preset = args.preset as PresetName;
  if (!preset || !(preset in PRESETS) || !args.out) usage();
  const dtype = args.dtype as MakeDType | undefined;
  if (dtype !== undefined && !["f32", "f16", "bf16"].includes(dtype)) usage();
  const num = (k: string) => (args[k] === undefined ? undefined : Number(args[k]));
  for (const k of ["seed", "shards", "std"]) if (args[k] !== undefined && !Number.isFinite(num(k))) usage();
  await makeModel({
    preset,
    out: args.out,
    seed: num("seed"),
    dtype,
    shards: num("shards"),
    std: num("std"),
    gguf: args.gguf,
    set: Object.keys(set).length ? set : undefined,
  });
  console.log(`wrote ${preset} to ${args.out}${args.gguf ? ` and ${args.gguf}` : ""}`);
}
