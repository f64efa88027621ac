// GGUF checkpoint loader (llama.cpp's single-file format, v2 and v3, little-endian).
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
import { DEQUANTIZABLE, dequantizeF16, GGML_TYPES } from "./ggml_quants.ts";
import { chatTemplateFrom } from "./chat_template.ts";
import { LlamaSpmTokenizer } from "../tokenizer/llama_spm.ts";
import { Gpt2BpeTokenizer, gpt2PreTokenizerSupported } from "../tokenizer/gpt2_bpe.ts";

// ---------------------------------------------------------------------------------------------------
// Low-level parsing

export type GgufNumericArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array;

/**
 * A metadata value. 64-bit integers are numbers when they fit in 2^53, else bigints. Numeric arrays
 * come back as typed arrays (copies, so they are aligned); string/bool/nested arrays as JS arrays.
 */
export type GgufValue = number | bigint | boolean | string | GgufNumericArray | GgufValue[];

export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

export const GGML_TYPE = { F32: 0, F16: 1, Q8_0: 8, BF16: 30 } as const;

export function ggmlTypeName(type: number): string {
  return GGML_TYPES[type]?.name ?? `unknown type ${type}`;
}

export interface GgufTensorInfo {
  name: string;
  /** GGUF order: innermost (contiguous) dimension first, i.e. the reverse of HF/numpy shape. */
  dims: number[];
  type: number;
  typeName: string;
  /** Absolute byte offset of the data in the file. */
  offset: number;
  /** Byte size, or null for types whose block layout is unknown. */
  byteLength: number | null;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset of the tensor data section. */
  dataOffset: number;
}

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const GGML_MAX_DIMS = 4;
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

class Reader {
  pos = 0;
  what = "header";
  readonly dv: DataView;

  constructor(readonly bytes: Uint8Array, readonly file: string) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(message: string, tensor?: string): never {
    throw new ModelLoadError(`${this.file}: ${message}`, this.file, tensor);
  }

  need(n: number) {
    if (n > this.bytes.length - this.pos) {
      this.fail(
        `truncated GGUF file: reading ${this.what} needs ${n} bytes at offset ${this.pos} ` +
          `but the file has only ${this.bytes.length} bytes`,
      );
    }
  }

  u8(): number {
    this.need(1);
    return this.dv.getUint8(this.pos++);
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** u64 as a number; larger than 2^53 means a corrupt file for every count/offset we read. */
  u64(): number {
    this.need(8);
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`implausible 64-bit value ${v} in ${this.what}`);
    return Number(v);
  }
  str(): string {
    const len = this.u64();
    this.need(len);
    const s = utf8.decode(this.bytes.subarray(this.pos, this.pos + len));
    this.pos += len;
    return s;
  }

  scalar(type: number): GgufValue {
    const dv = this.dv;
    const at = (n: number) => {
      this.need(n);
      const p = this.pos;
      this.pos += n;
      return p;
    };
    switch (type) {
      case GgufValueType.UINT8:
        return dv.getUint8(at(1));
      case GgufValueType.INT8:
        return dv.getInt8(at(1));
      case GgufValueType.UINT16:
        return dv.getUint16(at(2), true);
      case GgufValueType.INT16:
        return dv.getInt16(at(2), true);
      case GgufValueType.UINT32:
        return dv.getUint32(at(4), true);
      case GgufValueType.INT32:
        return dv.getInt32(at(4), true);
      case GgufValueType.FLOAT32:
        return shortestF32(dv.getFloat32(at(4), true));
      case GgufValueType.BOOL: {
        const b = dv.getUint8(at(1));
        if (b > 1) this.fail(`invalid bool value ${b} in ${this.what}`);
        return b === 1;
      }
      case GgufValueType.STRING:
        return this.str();
      case GgufValueType.UINT64:
        return safeBig(dv.getBigUint64(at(8), true));
      case GgufValueType.INT64:
        return safeBig(dv.getBigInt64(at(8), true));
      case GgufValueType.FLOAT64:
        return dv.getFloat64(at(8), true);
      case GgufValueType.ARRAY:
        return this.array();
      default:
        return this.fail(`unknown metadata value type ${type} in ${this.what}`);
    }
  }

  array(): GgufValue {
    const elemType = this.u32();
    const count = this.u64();
    const fixed = NUMERIC_ARRAYS[elemType];
    if (fixed) {
      const n = count * fixed.size;
      this.need(n);
      // slice() copies into a fresh, aligned buffer; assumes a little-endian host like the rest of the engine.
      const copy = this.bytes.slice(this.pos, this.pos + n);
      this.pos += n;
      return fixed.make(copy.buffer);
    }
    // Every remaining element type takes at least one byte, which bounds the allocation on corrupt counts.
    this.need(count);
    const out: GgufValue[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.scalar(elemType);
    return out;
  }
}

const NUMERIC_ARRAYS: Record<number, { size: number; make: (b: ArrayBuffer) => GgufNumericArray }> = {
  [GgufValueType.UINT8]: { size: 1, make: (b) => new Uint8Array(b) },
  [GgufValueType.INT8]: { size: 1, make: (b) => new Int8Array(b) },
  [GgufValueType.UINT16]: { size: 2, make: (b) => new Uint16Array(b) },
  [GgufValueType.INT16]: { size: 2, make: (b) => new Int16Array(b) },
  [GgufValueType.UINT32]: { size: 4, make: (b) => new Uint32Array(b) },
  [GgufValueType.INT32]: { size: 4, make: (b) => new Int32Array(b) },
  [GgufValueType.FLOAT32]: { size: 4, make: (b) => new Float32Array(b) },
  [GgufValueType.FLOAT64]: { size: 8, make: (b) => new Float64Array(b) },
  [GgufValueType.UINT64]: { size: 8, make: (b) => new BigUint64Array(b) },
  [GgufValueType.INT64]: { size: 8, make: (b) => new BigInt64Array(b) },
};

/** The shortest decimal that rounds to the same f32, so an epsilon of 1e-5 reads as 1e-5, not 9.99e-6. */
function shortestF32(v: number): number {
  if (!Number.isFinite(v)) return v;
  for (let p = 1; p < 9; p++) {
    const d = Number(v.toPrecision(p));
    if (Math.fround(d) === v) return d;
  }
  return v;
}

function safeBig(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
}

/**
 * Parses the header, metadata and tensor infos of a GGUF file held in memory, and checks that every
 * tensor's data lies inside the file. Does not look at the architecture or tensor types.
 */
export function parseGguf(bytes: Uint8Array, file: string, fileSize = bytes.length): GgufFile {
  const r: Reader = new Reader(bytes, file);
  if (bytes.length < 4 || r.dv.getUint32(0, true) !== GGUF_MAGIC) {
    r.fail('not a GGUF file (the first bytes are not the magic "GGUF")');
  }
  r.pos = 4;
  const version = r.u32();
  if (version === 0x03000000 || version === 0x02000000) {
    r.fail("big-endian GGUF files are not supported");
  }
  if (version !== 2 && version !== 3) {
    r.fail(`unsupported GGUF version ${version} (supported: 2, 3)`);
  }
  const tensorCount = r.u64();
  const kvCount = r.u64();
  // A key/value takes at least 12 bytes and a tensor info at least 24: cheap sanity check on the counts.
  if (kvCount * 12 + tensorCount * 24 > fileSize) {
    r.fail(`truncated or corrupt GGUF header (${tensorCount} tensors, ${kvCount} metadata keys)`);
  }

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    r.what = `metadata key #${i}`;
    const key = r.str();
    r.what = `metadata value "${key}"`;
    const type = r.u32();
    const value = r.scalar(type);
    if (metadata.has(key)) r.fail(`duplicate metadata key "${key}"`);
    metadata.set(key, value);
  }

  let alignment = 32;
  const alignValue = metadata.get("general.alignment");
  if (alignValue !== undefined) {
    if (typeof alignValue !== "number" || alignValue <= 0 || (alignValue & (alignValue - 1)) !== 0) {
      r.fail(`invalid general.alignment ${String(alignValue)} (must be a power of two)`);
    }
    alignment = alignValue;
  }

  const raw: { name: string; dims: number[]; type: number; rel: number }[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    r.what = `tensor info #${i}`;
    const name = r.str();
    r.what = `tensor info "${name}"`;
    const nDims = r.u32();
    if (nDims > GGML_MAX_DIMS) {
      r.fail(`tensor "${name}" has ${nDims} dimensions (max ${GGML_MAX_DIMS})`, name);
    }
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(r.u64());
    const type = r.u32();
    const rel = r.u64();
    if (seen.has(name)) r.fail(`duplicate tensor "${name}"`, name);
    seen.add(name);
    raw.push({ name, dims, type, rel });
  }
  const dataOffset = Math.ceil(r.pos / alignment) * alignment;

  const tensors: GgufTensorInfo[] = raw.map(({ name, dims, type, rel }) => {
    const info = GGML_TYPES[type];
    const typeName = ggmlTypeName(type);
    let byteLength: number | null = null;
    if (info?.blockSize !== undefined && info.typeSize !== undefined) {
      const elements = dims.reduce((a, b) => a * b, 1);
      if ((dims[0] ?? 1) % info.blockSize !== 0) {
        r.fail(
          `tensor "${name}" of type ${typeName} has an inner dimension ${dims[0]} that is not a multiple ` +
            `of the block size ${info.blockSize}`,
          name,
        );
      }
      byteLength = (elements / info.blockSize) * info.typeSize;
    }
    if (rel % alignment !== 0) {
      r.fail(`tensor "${name}" data offset ${rel} is not aligned to ${alignment}`, name);
    }
    const offset = dataOffset + rel;
    if (offset > fileSize || (byteLength !== null && offset + byteLength > fileSize)) {
      r.fail(
        `tensor "${name}" (${byteLength ?? "?"} bytes at offset ${offset}) lies past the end of the file ` +
          `(${fileSize} bytes): the file is truncated or corrupt`,
        name,
      );
    }
    return { name, dims, type, typeName, offset, byteLength };
  });

  return { version, metadata, tensors, alignment, dataOffset };
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

// ---------------------------------------------------------------------------------------------------
// Model loading

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
  return await ggufModelFromBytes(bytes, path, opts);
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
        return await ggufModelFromBytes(bytes.subarray(0, done), path, opts, size);
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

/** Same as loadGguf for a file already in memory; `file` is used for the name and in errors. */
export async function ggufModelFromBytes(
  bytes: Uint8Array,
  file: string,
  opts: GgufLoadOptions = {},
  fileSize = bytes.length,
): Promise<LoadedModel> {
  const gguf = parseGguf(bytes, file, fileSize);
  const meta = new MetaReader(gguf.metadata, file);
  const fail: (message: string, tensor?: string) => never = (message, tensor) => {
    throw new ModelLoadError(`${file}: ${message}`, file, tensor);
  };

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
    if (id !== null && (id < 0 || id >= tokens.length)) {
      fail(`special token id ${id} is outside the vocabulary`);
    }
  }

  const byName = new Map(gguf.tensors.map((t) => [t.name, t]));
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
    tieEmbeddings: !byName.has("output.weight") ||
      (!opts.skipWeights && sameData(bytes, byName.get("output.weight")!, byName.get("token_embd.weight"))),
    attentionBias: arch === "qwen2",
    qkNorm: false,
    bosTokenId,
    eosTokenIds,
  };
  // Llama 3.1+ stores its frequency-dependent RoPE scaling as divisors of the inverse frequencies.
  const freqs = byName.get("rope_freqs.weight");
  if (freqs && !opts.skipWeights) {
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
    config.ropeFreqFactors = factors;
  }

  const weights = new Map<string, WeightTensor>();
  const take = (gg: string, hf: string, shape: number[], permuteHeads?: number) => {
    const info = byName.get(gg);
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
    let dtype: WeightDType;
    let data: Uint8Array;
    switch (info.type) {
      case GGML_TYPE.F32:
        [dtype, data] = ["f32", raw];
        break;
      case GGML_TYPE.F16:
        [dtype, data] = ["f16", raw];
        break;
      case GGML_TYPE.BF16:
        [dtype, data] = ["bf16", raw];
        break;
      default:
        if (!DEQUANTIZABLE.includes(info.typeName)) {
          return fail(
            `tensor "${gg}" has unsupported type ${info.typeName} (supported: F32, F16, BF16, ` +
              `${DEQUANTIZABLE.join(", ")})`,
            gg,
          );
        }
        [dtype, data] = ["f16", dequantizeF16(info.type, raw, elements)];
    }
    if (permuteHeads !== undefined) {
      data = unpermuteRows(data, shape[0], permuteHeads, (data.length / shape[0]) | 0);
    }
    weights.set(hf, { name: hf, shape, dtype, bytes: data, file });
  };

  const { vocabSize, intermediateSize: ffn } = config;
  const qDim = numHeads * headDim;
  const kvDim = numKvHeads * headDim;
  const loadWeights = !opts.skipWeights;
  if (loadWeights) take("token_embd.weight", "model.embed_tokens.weight", [vocabSize, hidden]);
  for (let i = 0; loadWeights && i < config.numLayers; i++) {
    const b = `blk.${i}.`;
    const m = `model.layers.${i}.`;
    take(b + "attn_norm.weight", m + "input_layernorm.weight", [hidden]);
    // llama.cpp rotates adjacent pairs for "llama" (its converter permuted q/k) but halves, as HF
    // does, for "qwen2": only llama's rows need un-permuting.
    const permuted = arch === "llama";
    take(b + "attn_q.weight", m + "self_attn.q_proj.weight", [qDim, hidden], permuted ? numHeads : undefined);
    take(
      b + "attn_k.weight",
      m + "self_attn.k_proj.weight",
      [kvDim, hidden],
      permuted ? numKvHeads : undefined,
    );
    take(b + "attn_v.weight", m + "self_attn.v_proj.weight", [kvDim, hidden]);
    if (config.attentionBias) {
      take(b + "attn_q.bias", m + "self_attn.q_proj.bias", [qDim]);
      take(b + "attn_k.bias", m + "self_attn.k_proj.bias", [kvDim]);
      take(b + "attn_v.bias", m + "self_attn.v_proj.bias", [kvDim]);
    }
    take(b + "attn_output.weight", m + "self_attn.o_proj.weight", [hidden, qDim]);
    take(b + "ffn_norm.weight", m + "post_attention_layernorm.weight", [hidden]);
    take(b + "ffn_gate.weight", m + "mlp.gate_proj.weight", [ffn, hidden]);
    take(b + "ffn_up.weight", m + "mlp.up_proj.weight", [ffn, hidden]);
    take(b + "ffn_down.weight", m + "mlp.down_proj.weight", [hidden, ffn]);
  }
  if (loadWeights) take("output_norm.weight", "model.norm.weight", [hidden]);
  if (loadWeights && !config.tieEmbeddings) take("output.weight", "lm_head.weight", [vocabSize, hidden]);

  const digest = loadWeights ? await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>) : null;
  const hash = digest
    ? Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")
    : "";
  const source: WeightSource = {
    hash,
    get(name) {
      const w = weights.get(name);
      if (!w) throw new ModelLoadError(`${file}: no tensor "${name}" in this model`, file, name);
      return w;
    },
    has: (name) => weights.has(name),
    names: () => [...weights.keys()],
  };

  const tokenizer = tokenizerFromMeta(meta, tokens, bosTokenId, eosTokenIds, fail);
  let chatTemplate: ChatTemplate;
  try {
    chatTemplate = chatTemplateFrom(meta.str("tokenizer.chat_template") ?? null, {
      bosToken: bosTokenId === null ? "" : tokens[bosTokenId],
      eosToken: eosTokenIds.length ? tokens[eosTokenIds[0]] : "",
    });
  } catch (e) {
    return fail(`tokenizer.chat_template: ${(e as Error).message}`);
  }

  const base = file.split(/[\\/]/).pop() ?? file;
  return {
    name: base.replace(/\.gguf$/i, ""),
    path: file,
    config,
    weights: source,
    tokenizer,
    chatTemplate,
    generation: {},
  };
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

/** Typed access to metadata with errors that name the file and key. */
class MetaReader {
  constructor(private readonly m: Map<string, GgufValue>, private readonly file: string) {}

  private fail(key: string, what: string): never {
    throw new ModelLoadError(`${this.file}: metadata ${key} ${what}`, this.file);
  }

  int(key: string, required: true): number;
  int(key: string, required?: false): number | undefined;
  int(key: string, required = false): number | undefined {
    const v = this.m.get(key);
    if (v === undefined) return required ? this.fail(key, "is missing") : undefined;
    if (typeof v !== "number" || !Number.isInteger(v)) {
      this.fail(key, `should be an integer, got ${describe(v)}`);
    }
    return v;
  }

  float(key: string, required: true): number;
  float(key: string, required?: false): number | undefined;
  float(key: string, required = false): number | undefined {
    const v = this.m.get(key);
    if (v === undefined) return required ? this.fail(key, "is missing") : undefined;
    if (typeof v !== "number") this.fail(key, `should be a number, got ${describe(v)}`);
    return v;
  }

  str(key: string): string | undefined {
    const v = this.m.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "string") this.fail(key, `should be a string, got ${describe(v)}`);
    return v;
  }

  bool(key: string): boolean | undefined {
    const v = this.m.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") this.fail(key, `should be a bool, got ${describe(v)}`);
    return v;
  }

  strings(key: string): string[] | undefined {
    const v = this.m.get(key);
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) {
      this.fail(key, `should be an array of strings, got ${describe(v)}`);
    }
    return v as string[];
  }

  numbers(key: string): ArrayLike<number> | undefined {
    const v = this.m.get(key);
    if (v === undefined) return undefined;
    if (ArrayBuffer.isView(v) && !(v instanceof BigInt64Array || v instanceof BigUint64Array)) return v;
    return this.fail(key, `should be a numeric array, got ${describe(v)}`);
  }
}

function describe(v: GgufValue): string {
  if (Array.isArray(v)) return "an array";
  if (ArrayBuffer.isView(v)) return "a numeric array";
  return `${typeof v} ${String(v)}`;
}
