// GGUF checkpoint loader: maps a parsed GGUF file (gguf_file.ts) onto a LoadedModel.
//
// Architectures "llama" and "qwen2". Produces a LoadedModel in Hugging Face terms: tensor names,
// [out, in] layouts and the rotate-half row order of q/k that the graph builder expects. Supported
// tensor types: F32, F16 and BF16 (passed through as views into the file) and the block-quantized
// types of ggml_quants.ts (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K, IQ4_NL, IQ4_XS: what llama.cpp's
// common Q*_0, Q*_K_S/M and IQ4 files hold), dequantized at load to F16: simpler kernels at the cost
// of memory (2 bytes per weight instead of ~0.3-1.1). Anything else is refused with an error naming
// the tensor and its type.

import {
  type ChatTemplate,
  type LoadedModel,
  type LoadProgress,
  type ModelConfig,
  ModelLoadError,
  type Tokenizer,
  type WeightDType,
  type WeightSource,
  type WeightTensor,
} from "./types.ts";
import { DEQUANTIZABLE, dequantizeF16 } from "./ggml_quants.ts";
import { expectedTensors, type TensorSpec } from "./manifest.ts";
import { GGML_TYPE, type GgufTensorInfo, MetaReader, parseGguf } from "./gguf_file.ts";
import { chatTemplateFrom } from "./chat_template.ts";
import { LlamaSpmTokenizer } from "../tokenizer/llama_spm.ts";
import { Gpt2BpeTokenizer, gpt2PreTokenizerSupported } from "../tokenizer/gpt2_bpe.ts";

export interface GgufLoadOptions {
  progress?: LoadProgress;
  /** Overrides the context length stored in the file (some converters write a default there). */
  maxContext?: number;
  /** Header only: config, tokenizer and chat template, no weights (the HTTP thread's view). */
  skipWeights?: boolean;
}

const READ_CHUNK = 16 * 1024 * 1024;

async function readWholeFile(path: string, progress?: LoadProgress): Promise<Uint8Array> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelLoadError(`${path}: file not found`, path);
    throw new ModelLoadError(`${path}: cannot open: ${(e as Error).message}`, path);
  }
  try {
    const { size } = await file.stat();
    const bytes = new Uint8Array(size);
    let done = 0;
    progress?.({ phase: "read", done, total: size });
    while (done < size) {
      const n = await file.read(bytes.subarray(done, Math.min(size, done + READ_CHUNK)));
      if (n === null) throw new ModelLoadError(`${path}: file shrank while being read`, path);
      done += n;
      progress?.({ phase: "read", done, total: size });
    }
    return bytes;
  } finally {
    file.close();
  }
}

/** Loads a llama-architecture GGUF file: config, weights (HF names/layouts), tokenizer, chat template. */
export async function loadGguf(path: string, opts: GgufLoadOptions = {}): Promise<LoadedModel> {
  if (opts.skipWeights) return await loadGgufHeader(path, opts);
  const bytes = await readWholeFile(path, opts.progress);
  opts.progress?.({ phase: "parse" });
  return ggufModelFromBytes(bytes, path, opts);
}

/**
 * Config, tokenizer and chat template from the file's header only (the HTTP thread's view): reads a
 * growing prefix until the header parses, so a multi-GB file is not read twice.
 */
async function loadGgufHeader(path: string, opts: GgufLoadOptions): Promise<LoadedModel> {
  const size = (await Deno.stat(path)).size;
  const file = await Deno.open(path, { read: true });
  try {
    for (let want = Math.min(size, 1 << 20);; want = Math.min(size, want * 4)) {
      const bytes = new Uint8Array(want);
      await file.seek(0, Deno.SeekMode.Start);
      let done = 0;
      while (done < want) {
        const n = await file.read(bytes.subarray(done));
        if (n === null) break;
        done += n;
      }
      try {
        return ggufModelFromBytes(bytes.subarray(0, done), path, opts, size);
      } catch (e) {
        // Past the prefix, the parser reports the header as cut short: read more (errors on the whole
        // file are the real ones).
        if (done >= size) throw e;
      }
    }
  } finally {
    file.close();
  }
}

type Fail = (message: string, tensor?: string) => never;

/** Same as loadGguf for a file already in memory; `file` is used for the name and in errors. */
export function ggufModelFromBytes(
  bytes: Uint8Array,
  file: string,
  opts: GgufLoadOptions = {},
  fileSize = bytes.length,
): LoadedModel {
  const gguf = parseGguf(bytes, file, fileSize);
  const meta = new MetaReader(gguf.metadata, file);
  const fail: Fail = (message, tensor) => {
    throw new ModelLoadError(`${file}: ${message}`, file, tensor);
  };
  const tensors = new Map(gguf.tensors.map((t) => [t.name, t]));
  const { config, tokens } = ggufConfig(meta, tensors, bytes, opts, fail);
  const weights = opts.skipWeights
    ? weightSource(new Map(), file)
    : weightSource(ggufWeights(bytes, file, tensors, config, fail), file);
  const { tokenizer, chatTemplate } = ggufTokenizer(meta, tokens, config, fail);
  const base = file.split(/[\\/]/).pop() ?? file;
  return {
    name: base.replace(/\.gguf$/i, ""),
    path: file,
    config,
    weights,
    tokenizer,
    chatTemplate,
    generation: {},
  };
}

// ---------------------------------------------------------------------------------------------------
// Config

/** Hyper-parameters and special tokens from the metadata, in HF terms; `tokens` is the vocabulary. */
function ggufConfig(
  meta: MetaReader,
  tensors: Map<string, GgufTensorInfo>,
  bytes: Uint8Array,
  opts: GgufLoadOptions,
  fail: Fail,
): { config: ModelConfig; tokens: string[] } {
  const arch = meta.str("general.architecture");
  if (arch === undefined) fail("no general.architecture in the metadata");
  if (arch !== "llama" && arch !== "qwen2") {
    fail(`unsupported architecture "${arch}" (supported GGUF architectures: llama, qwen2)`);
  }
  const p = `${arch}.`;
  const scaling = meta.str(p + "rope.scaling.type");
  if (scaling !== undefined && scaling !== "none") fail(`unsupported RoPE scaling "${scaling}"`);
  const tokens = meta.strings("tokenizer.ggml.tokens");
  if (tokens === undefined) fail("no tokenizer.ggml.tokens in the metadata (the tokenizer is required)");

  const { hidden, numHeads, numKvHeads, headDim } = attentionShape(meta, p, fail);
  const { bosTokenId, eosTokenIds } = specialTokens(meta, tokens.length, fail);
  const config: ModelConfig = {
    architecture: arch,
    vocabSize: tokens.length,
    hiddenSize: hidden,
    intermediateSize: meta.int(p + "feed_forward_length", true),
    numLayers: meta.int(p + "block_count", true),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: meta.float(p + "attention.layer_norm_rms_epsilon", true),
    ropeTheta: meta.float(p + "rope.freq_base") ?? 10000,
    maxContext: opts.maxContext ?? meta.int(p + "context_length", true),
    // Header-only loads cannot compare the bytes of a copied output.weight (nor need to: no weights).
    tieEmbeddings: !tensors.has("output.weight") ||
      (!opts.skipWeights && sameData(bytes, tensors.get("output.weight")!, tensors.get("token_embd.weight"))),
    attentionBias: arch === "qwen2",
    qkNorm: false,
    bosTokenId,
    eosTokenIds,
  };
  const freqs = tensors.get("rope_freqs.weight");
  if (freqs && !opts.skipWeights) config.ropeFreqFactors = ropeFreqFactors(bytes, freqs, headDim, fail);
  return { config, tokens };
}

function attentionShape(meta: MetaReader, p: string, fail: Fail) {
  const hidden = meta.int(p + "embedding_length", true);
  const numHeads = meta.int(p + "attention.head_count", true);
  const numKvHeads = meta.int(p + "attention.head_count_kv") ?? numHeads;
  const headDim = meta.int(p + "attention.key_length") ?? hidden / numHeads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    fail(
      `head dimension ${headDim} (embedding_length ${hidden} / head_count ${numHeads}) must be an even integer`,
    );
  }
  const valueLength = meta.int(p + "attention.value_length");
  if (valueLength !== undefined && valueLength !== headDim) {
    fail(`attention.value_length ${valueLength} differs from key_length ${headDim} (not supported)`);
  }
  const ropeDims = meta.int(p + "rope.dimension_count");
  if (ropeDims !== undefined && ropeDims !== headDim) {
    fail(
      `partial rotary embeddings (rope.dimension_count ${ropeDims}, head dim ${headDim}) are not supported`,
    );
  }
  if (numHeads % numKvHeads !== 0) {
    fail(`head_count ${numHeads} is not a multiple of head_count_kv ${numKvHeads}`);
  }
  return { hidden, numHeads, numKvHeads, headDim };
}

function specialTokens(meta: MetaReader, vocabSize: number, fail: Fail) {
  // Converters write -1 (or its u32 form) for "no such token".
  const tokenId = (key: string) => {
    const id = meta.int(key);
    return id === undefined || id === -1 || id === 0xffffffff ? null : id;
  };
  const bosTokenId = tokenId("tokenizer.ggml.bos_token_id");
  const eosTokenIds: number[] = [];
  for (const key of ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]) {
    const id = tokenId(key);
    if (id !== null && !eosTokenIds.includes(id)) eosTokenIds.push(id);
  }
  for (const id of [bosTokenId, ...eosTokenIds]) {
    if (id !== null && (id < 0 || id >= vocabSize)) {
      fail(`special token id ${id} is outside the vocabulary`);
    }
  }
  return { bosTokenId, eosTokenIds };
}

/** Some converters (llama2.c's) write a tied lm_head out as a copy; treat a byte-identical copy as tied. */
function sameData(bytes: Uint8Array, a: GgufTensorInfo, b: GgufTensorInfo | undefined): boolean {
  if (!b || a.type !== b.type || a.byteLength === null || a.byteLength !== b.byteLength) return false;
  if (a.dims.length !== b.dims.length || a.dims.some((d, i) => d !== b.dims[i])) return false;
  const x = bytes.subarray(a.offset, a.offset + a.byteLength);
  const y = bytes.subarray(b.offset, b.offset + a.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Llama 3.1+ stores its frequency-dependent RoPE scaling as divisors of the inverse frequencies. */
function ropeFreqFactors(bytes: Uint8Array, freqs: GgufTensorInfo, headDim: number, fail: Fail): number[] {
  if (freqs.type !== GGML_TYPE.F32 || freqs.dims.length !== 1 || freqs.dims[0] !== headDim / 2) {
    fail(
      `tensor "rope_freqs.weight" should be F32 [${headDim / 2}], is ${freqs.typeName} [${freqs.dims}]`,
      "rope_freqs.weight",
    );
  }
  const raw = bytes.slice(freqs.offset, freqs.offset + freqs.byteLength!);
  const factors = Array.from(new Float32Array(raw.buffer));
  if (factors.some((f) => !(f > 0) || !Number.isFinite(f))) {
    fail(`tensor "rope_freqs.weight" holds a factor that is not a positive number`, "rope_freqs.weight");
  }
  return factors;
}

// ---------------------------------------------------------------------------------------------------
// Weights

/** Every tensor of the manifest, in HF names and layouts. */
function ggufWeights(
  bytes: Uint8Array,
  file: string,
  tensors: Map<string, GgufTensorInfo>,
  config: ModelConfig,
  fail: Fail,
): Map<string, WeightTensor> {
  // llama.cpp rotates adjacent pairs for "llama" (its converter permuted q/k) but halves, as HF
  // does, for "qwen2": only llama's rows need un-permuting.
  const permuted = config.architecture === "llama";
  const weights = new Map<string, WeightTensor>();
  for (const spec of expectedTensors(config)) {
    const permuteHeads = permuted ? spec.ropeHeads : undefined;
    weights.set(spec.name, ggufWeight(bytes, file, tensors.get(spec.gguf), spec, permuteHeads, fail));
  }
  return weights;
}

function ggufWeight(
  bytes: Uint8Array,
  file: string,
  info: GgufTensorInfo | undefined,
  { name: hf, gguf: gg, shape }: TensorSpec,
  permuteHeads: number | undefined,
  fail: Fail,
): WeightTensor {
  if (!info) fail(`missing tensor "${gg}" (${hf})`, gg);
  const actual = [...info.dims].reverse();
  if (actual.length !== shape.length || actual.some((v, i) => v !== shape[i])) {
    fail(
      `tensor "${gg}" (${hf}) has shape [${actual.join(", ")}] but [${shape.join(", ")}] was expected ` +
        `(HF order, outermost first)`,
      gg,
    );
  }
  const elements = shape.reduce((a, b) => a * b, 1);
  const raw = bytes.subarray(info.offset, info.offset + (info.byteLength ?? 0));
  let { dtype, data } = tensorData(info, raw, elements, fail);
  if (permuteHeads !== undefined) {
    data = unpermuteRows(data, shape[0], permuteHeads, (data.length / shape[0]) | 0);
  }
  return { name: hf, shape, dtype, bytes: data, file };
}

/** F32, F16 and BF16 as views into the file; block-quantized types dequantized to F16. */
function tensorData(
  info: GgufTensorInfo,
  raw: Uint8Array,
  elements: number,
  fail: Fail,
): { dtype: WeightDType; data: Uint8Array } {
  switch (info.type) {
    case GGML_TYPE.F32:
      return { dtype: "f32", data: raw };
    case GGML_TYPE.F16:
      return { dtype: "f16", data: raw };
    case GGML_TYPE.BF16:
      return { dtype: "bf16", data: raw };
  }
  if (!DEQUANTIZABLE.includes(info.typeName)) {
    fail(
      `tensor "${info.name}" has unsupported type ${info.typeName} (supported: F32, F16, BF16, ` +
        `${DEQUANTIZABLE.join(", ")})`,
      info.name,
    );
  }
  return { dtype: "f16", data: dequantizeF16(info.type, raw, elements) };
}

/**
 * llama.cpp's converter permutes q/k rows so RoPE can rotate adjacent pairs; HF rotates the two halves
 * of each head. Within a head of size d: HF row (t*d/2 + j) = GGUF row (2*j + t).
 */
export function unpermuteRows(src: Uint8Array, rows: number, heads: number, rowBytes: number): Uint8Array {
  const out = new Uint8Array(src.length);
  const d = rows / heads;
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < 2; t++) {
      for (let j = 0; j < half; j++) {
        const from = (h * d + 2 * j + t) * rowBytes;
        const to = (h * d + t * half + j) * rowBytes;
        out.set(src.subarray(from, from + rowBytes), to);
      }
    }
  }
  return out;
}

/** Lookups by HF name; header-only loads pass no tensors. */
function weightSource(weights: Map<string, WeightTensor>, file: string): WeightSource {
  return {
    get(name) {
      const w = weights.get(name);
      if (!w) throw new ModelLoadError(`${file}: no tensor "${name}" in this model`, file, name);
      return w;
    },
    has: (name) => weights.has(name),
    names: () => [...weights.keys()],
  };
}

// ---------------------------------------------------------------------------------------------------
// Tokenizer and chat template

function ggufTokenizer(
  meta: MetaReader,
  tokens: string[],
  config: ModelConfig,
  fail: Fail,
): { tokenizer: Tokenizer; chatTemplate: ChatTemplate } {
  const { bosTokenId, eosTokenIds } = config;
  const tokenizer = tokenizerFromMeta(meta, tokens, bosTokenId, eosTokenIds, fail);
  try {
    const chatTemplate = chatTemplateFrom(meta.str("tokenizer.chat_template") ?? null, {
      bosToken: bosTokenId === null ? "" : tokens[bosTokenId],
      eosToken: eosTokenIds.length ? tokens[eosTokenIds[0]] : "",
    });
    return { tokenizer, chatTemplate };
  } catch (e) {
    return fail(`tokenizer.chat_template: ${(e as Error).message}`);
  }
}

function tokenizerFromMeta(
  meta: MetaReader,
  tokens: string[],
  bosTokenId: number | null,
  eosTokenIds: number[],
  fail: (message: string) => never,
): Tokenizer {
  const model = meta.str("tokenizer.ggml.model");
  const tokenTypes = meta.numbers("tokenizer.ggml.token_type");
  if (tokenTypes !== undefined && tokenTypes.length !== tokens.length) {
    fail(`tokenizer.ggml.token_type has ${tokenTypes.length} entries for ${tokens.length} tokens`);
  }
  if (model === "llama") {
    const scores = meta.numbers("tokenizer.ggml.scores");
    if (scores !== undefined && scores.length !== tokens.length) {
      fail(`tokenizer.ggml.scores has ${scores.length} entries for ${tokens.length} tokens`);
    }
    const unk = meta.int("tokenizer.ggml.unknown_token_id");
    if (unk !== undefined && (unk < 0 || unk >= tokens.length) && unk !== 0xffffffff) {
      fail(`tokenizer.ggml.unknown_token_id ${unk} is outside the vocabulary`);
    }
    return new LlamaSpmTokenizer({
      tokens,
      scores,
      tokenTypes,
      bosTokenId,
      eosTokenIds,
      unkTokenId: unk === undefined || unk === 0xffffffff ? null : unk,
      addBos: meta.bool("tokenizer.ggml.add_bos_token") ?? true,
      addEos: meta.bool("tokenizer.ggml.add_eos_token") ?? false,
      addSpacePrefix: meta.bool("tokenizer.ggml.add_space_prefix") ?? true,
    });
  }
  if (model === "gpt2") {
    const merges = meta.strings("tokenizer.ggml.merges");
    if (merges === undefined) fail("gpt2 tokenizer without tokenizer.ggml.merges");
    const pre = meta.str("tokenizer.ggml.pre") ?? "default";
    if (!gpt2PreTokenizerSupported(pre)) fail(`unsupported BPE pre-tokenizer "${pre}" (tokenizer.ggml.pre)`);
    return new Gpt2BpeTokenizer({
      tokens,
      merges,
      tokenTypes,
      bosTokenId,
      eosTokenIds,
      addBos: meta.bool("tokenizer.ggml.add_bos_token") ?? false,
      addEos: meta.bool("tokenizer.ggml.add_eos_token") ?? false,
      pre,
    });
  }
  return fail(`unsupported tokenizer model "${model ?? "(none)"}" (supported: llama, gpt2)`);
}
