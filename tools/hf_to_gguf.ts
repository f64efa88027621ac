// Writes a Hugging Face model folder (safetensors, byte-level BPE tokenizer.json) as a GGUF F16 file that
// llama.cpp and ragtime's GGUF loader both read: 2-D weights as F16, norms and biases as F32, q/k rows
// permuted for llama (llama.cpp rotates adjacent pairs; HF rotates halves), Llama 3 RoPE scaling as the
// tensor rope_freqs.weight, tied embeddings as no output.weight. Architectures: llama, mistral (as
// llama), qwen2. Tensors are streamed one at a time, so a 2.5 GB model needs about one tensor of memory.
//
//   deno run -A tools/hf_to_gguf.ts --model DIR --out FILE.gguf [--pre NAME]
//
// --pre sets tokenizer.ggml.pre (llama.cpp's pre-tokenizer name). Without it only a plain byte-level
// pre-tokenizer (GPT-2's regex, as make-model's synthetic tokenizers have) is accepted, written "default".

import { join } from "node:path";
import { type Json, readJsonFile } from "../engine/model/json_file.ts";
import { parseHfConfig } from "../engine/model/hf.ts";
import { expectedTensors, type TensorSpec } from "../engine/model/manifest.ts";
import { readSafetensorsHeader, type SafetensorsHeaderEntry } from "../engine/model/safetensors.ts";
import { GGML_TYPE, GgufValueType as VT } from "../engine/model/gguf_file.ts";
import { toF32 } from "../engine/model/weights.ts";
import type { ModelConfig, WeightDType } from "../engine/model/types.ts";

const ALIGN = 32;
const FILE_TYPE_MOSTLY_F16 = 1;
/** llama.cpp's token types. */
const TOKEN = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

// ---------------------------------------------------------------------------------------------
// GGUF encoding

/** Little-endian byte buffer that grows as needed. */
class ByteSink {
  #buf = new Uint8Array(1 << 20);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  #reserve(n: number) {
    if (this.length + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buf.subarray(0, this.length));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }
  u8(v: number) {
    this.#reserve(1);
    this.#buf[this.length++] = v;
  }
  u32(v: number) {
    this.#reserve(4);
    this.#view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number) {
    this.#reserve(4);
    this.#view.setInt32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number) {
    this.#reserve(8);
    this.#view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  f32(v: number) {
    this.#reserve(4);
    this.#view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.#reserve(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }
  pad(align: number) {
    while (this.length % align !== 0) this.u8(0);
  }
  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

type Meta =
  | { type: "u32"; v: number }
  | { type: "f32"; v: number }
  | { type: "bool"; v: boolean }
  | { type: "str"; v: string }
  | { type: "strs"; v: string[] }
  | { type: "i32s"; v: number[] };

function writeMeta(s: ByteSink, key: string, m: Meta) {
  s.str(key);
  switch (m.type) {
    case "u32":
      s.u32(VT.UINT32);
      s.u32(m.v);
      break;
    case "f32":
      s.u32(VT.FLOAT32);
      s.f32(m.v);
      break;
    case "bool":
      s.u32(VT.BOOL);
      s.u8(m.v ? 1 : 0);
      break;
    case "str":
      s.u32(VT.STRING);
      s.str(m.v);
      break;
    case "strs":
      s.u32(VT.ARRAY);
      s.u32(VT.STRING);
      s.u64(m.v.length);
      for (const x of m.v) s.str(x);
      break;
    case "i32s":
      s.u32(VT.ARRAY);
      s.u32(VT.INT32);
      s.u64(m.v.length);
      for (const x of m.v) s.i32(x);
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

export interface GgufVocab {
  tokens: string[];
  types: number[];
  merges: string[];
  pre: string;
  addBos: boolean;
}

/** The vocabulary of tokenizer.json padded to `vocabSize` ids, as llama.cpp's converter lays it out. */
export function ggufVocab(tok: Json, tokConfig: Json, vocabSize: number, preOverride?: string): GgufVocab {
  const model = tok.model as Json | undefined;
  if (!model || model.type !== "BPE") throw new Error(`tokenizer.json: only BPE models are supported`);
  const tokens: (string | undefined)[] = new Array(vocabSize);
  const types: number[] = new Array(vocabSize).fill(TOKEN.UNUSED);
  const put = (id: number, text: string, type: number) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new Error(`tokenizer.json: token id ${id} ("${text}") is outside vocab_size ${vocabSize}`);
    }
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(model.vocab as Record<string, number>)) put(id, text, TOKEN.NORMAL);
  for (const a of (tok.added_tokens ?? []) as Json[]) {
    put(a.id as number, a.content as string, a.special ? TOKEN.CONTROL : TOKEN.USER_DEFINED);
  }
  const merges = ((model.merges ?? []) as (string | string[])[]).map((m) =>
    typeof m === "string" ? m : m.join(" ")
  );

  let pre = preOverride;
  if (pre === undefined) {
    const p = tok.pre_tokenizer as Json | null;
    if (p?.type !== "ByteLevel" || p.use_regex === false) {
      throw new Error(
        `tokenizer.json: pre-tokenizer ${JSON.stringify(p?.type ?? null)} is not plain ByteLevel; ` +
          `name llama.cpp's equivalent with --pre`,
      );
    }
    pre = "default";
  }
  const post = tok.post_processor as Json | null;
  const addBos = typeof tokConfig.add_bos_token === "boolean"
    ? tokConfig.add_bos_token
    : post?.type === "TemplateProcessing";
  return {
    tokens: Array.from(tokens, (t, i) => t ?? `[PAD${i}]`),
    types,
    merges,
    pre,
    addBos,
  };
}

// ---------------------------------------------------------------------------------------------
// Tensors

interface SourceTensor {
  file: string;
  dataStart: number;
  entry: SafetensorsHeaderEntry;
}

interface OutTensor {
  name: string;
  /** GGUF order, innermost first. */
  dims: number[];
  type: number;
  byteLength: number;
  /** Produces the tensor's bytes. */
  data: () => Promise<Uint8Array>;
}

async function sourceTensors(dir: string): Promise<Map<string, SourceTensor>> {
  const index = await readJsonFile(join(dir, "model.safetensors.index.json"), false);
  const files = index
    ? [...new Set(Object.values(index.json.weight_map as Record<string, string>))].map((f) => join(dir, f))
    : [join(dir, "model.safetensors")];
  const out = new Map<string, SourceTensor>();
  for (const file of files) {
    const h = await readSafetensorsHeader(file);
    for (const entry of h.entries) out.set(entry.name, { file, dataStart: h.dataStart, entry });
  }
  return out;
}

async function readRange(file: string, start: number, length: number): Promise<Uint8Array> {
  const f = await Deno.open(file, { read: true });
  try {
    await f.seek(start, Deno.SeekMode.Start);
    const buf = new Uint8Array(length);
    let off = 0;
    while (off < length) {
      const n = await f.read(buf.subarray(off));
      if (n === null) throw new Error(`${file}: truncated`);
      off += n;
    }
    return buf;
  } finally {
    f.close();
  }
}

const ST_DTYPES: Record<string, WeightDType> = { F32: "f32", F16: "f16", BF16: "bf16" };

function decode(raw: Uint8Array, entry: SafetensorsHeaderEntry, file: string): Float32Array {
  const dtype = ST_DTYPES[entry.dtype];
  if (!dtype) throw new Error(`${file}: tensor ${entry.name} has dtype ${entry.dtype} (F32, F16, BF16 only)`);
  return toF32({ name: entry.name, shape: entry.shape, dtype, bytes: raw, file });
}

/** HF rotate-half row order to llama.cpp's interleaved one: GGUF row (2*j + t) = HF row (t*d/2 + j). */
export function permuteRows(src: Uint8Array, rows: number, heads: number, rowBytes: number): Uint8Array {
  const out = new Uint8Array(src.length);
  const d = rows / heads;
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < 2; t++) {
      for (let j = 0; j < half; j++) {
        const from = (h * d + t * half + j) * rowBytes;
        const to = (h * d + 2 * j + t) * rowBytes;
        out.set(src.subarray(from, from + rowBytes), to);
      }
    }
  }
  return out;
}

function outTensor(spec: TensorSpec, src: SourceTensor, permute: boolean): OutTensor {
  const { shape } = spec;
  const elements = shape.reduce((a, b) => a * b, 1);
  const f32 = shape.length === 1;
  return {
    name: spec.gguf,
    dims: [...shape].reverse(),
    type: f32 ? GGML_TYPE.F32 : GGML_TYPE.F16,
    byteLength: elements * (f32 ? 4 : 2),
    data: async () => {
      const { entry } = src;
      const raw = await readRange(src.file, src.dataStart + entry.begin, entry.end - entry.begin);
      if (f32) return new Uint8Array(decode(raw, entry, src.file).slice().buffer);
      const bytes = entry.dtype === "F16"
        ? raw
        : new Uint8Array(Float16Array.from(decode(raw, entry, src.file)).buffer);
      return permute && spec.ropeHeads
        ? permuteRows(bytes, shape[0], spec.ropeHeads, (bytes.length / shape[0]) | 0)
        : bytes;
    },
  };
}

// ---------------------------------------------------------------------------------------------

export interface ExportOptions {
  /** tokenizer.ggml.pre, for tokenizers whose pre-tokenizer is not plain ByteLevel. */
  pre?: string;
  log?: (msg: string) => void;
}

const GGUF_ARCH: Partial<Record<ModelConfig["architecture"], string>> = {
  llama: "llama",
  mistral: "llama",
  qwen2: "qwen2",
};

/** Converts the HF folder `dir` into the GGUF file `out`. */
export async function hfToGguf(dir: string, out: string, opts: ExportOptions = {}): Promise<void> {
  const log = opts.log ?? (() => {});
  const t0 = performance.now();
  const raw = (await readJsonFile(join(dir, "config.json"), true)).json;
  const gen = (await readJsonFile(join(dir, "generation_config.json"), false))?.json ?? null;
  const config = parseHfConfig(raw, gen, join(dir, "config.json"));
  const arch = GGUF_ARCH[config.architecture];
  if (!arch) throw new Error(`${dir}: architecture ${config.architecture} has no GGUF export here`);
  const tok = (await readJsonFile(join(dir, "tokenizer.json"), true)).json;
  const tokConfig = (await readJsonFile(join(dir, "tokenizer_config.json"), false))?.json ?? {};
  const vocab = ggufVocab(tok, tokConfig, config.vocabSize, opts.pre);

  const sources = await sourceTensors(dir);
  const tensors: OutTensor[] = [];
  if (config.ropeFreqFactors) {
    const factors = Float32Array.from(config.ropeFreqFactors);
    tensors.push({
      name: "rope_freqs.weight",
      dims: [factors.length],
      type: GGML_TYPE.F32,
      byteLength: factors.byteLength,
      data: () => Promise.resolve(new Uint8Array(factors.buffer)),
    });
  }
  for (const spec of expectedTensors(config)) {
    const src = sources.get(spec.name);
    if (!src) throw new Error(`${dir}: missing tensor ${spec.name}`);
    const got = src.entry.shape;
    if (got.length !== spec.shape.length || got.some((d, i) => d !== spec.shape[i])) {
      throw new Error(`${dir}: tensor ${spec.name} has shape [${got}], expected [${spec.shape}]`);
    }
    tensors.push(outTensor(spec, src, arch === "llama"));
  }

  const p = `${arch}.`;
  const meta: [string, Meta][] = [
    ["general.architecture", { type: "str", v: arch }],
    ["general.name", { type: "str", v: dir.replace(/[/\\]+$/, "").split(/[/\\]/).pop() ?? "model" }],
    ["general.file_type", { type: "u32", v: FILE_TYPE_MOSTLY_F16 }],
    [p + "vocab_size", { type: "u32", v: config.vocabSize }],
    [p + "context_length", { type: "u32", v: config.maxContext }],
    [p + "embedding_length", { type: "u32", v: config.hiddenSize }],
    [p + "block_count", { type: "u32", v: config.numLayers }],
    [p + "feed_forward_length", { type: "u32", v: config.intermediateSize }],
    [p + "rope.dimension_count", { type: "u32", v: config.headDim }],
    [p + "attention.head_count", { type: "u32", v: config.numHeads }],
    [p + "attention.head_count_kv", { type: "u32", v: config.numKvHeads }],
    [p + "attention.key_length", { type: "u32", v: config.headDim }],
    [p + "attention.value_length", { type: "u32", v: config.headDim }],
    [p + "attention.layer_norm_rms_epsilon", { type: "f32", v: config.rmsNormEps }],
    [p + "rope.freq_base", { type: "f32", v: config.ropeTheta }],
    ["tokenizer.ggml.model", { type: "str", v: "gpt2" }],
    ["tokenizer.ggml.pre", { type: "str", v: vocab.pre }],
    ["tokenizer.ggml.tokens", { type: "strs", v: vocab.tokens }],
    ["tokenizer.ggml.token_type", { type: "i32s", v: vocab.types }],
    ["tokenizer.ggml.merges", { type: "strs", v: vocab.merges }],
    ["tokenizer.ggml.add_bos_token", { type: "bool", v: vocab.addBos }],
  ];
  if (config.bosTokenId !== null) {
    meta.push(["tokenizer.ggml.bos_token_id", { type: "u32", v: config.bosTokenId }]);
  }
  const [eos, eot] = config.eosTokenIds;
  if (eos !== undefined) meta.push(["tokenizer.ggml.eos_token_id", { type: "u32", v: eos }]);
  if (eot !== undefined) meta.push(["tokenizer.ggml.eot_token_id", { type: "u32", v: eot }]);
  if (typeof tokConfig.chat_template === "string") {
    meta.push(["tokenizer.chat_template", { type: "str", v: tokConfig.chat_template }]);
  }

  const head = new ByteSink();
  for (const c of "GGUF") head.u8(c.charCodeAt(0));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const [k, m] of meta) writeMeta(head, k, m);
  let offset = 0;
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offset += Math.ceil(t.byteLength / ALIGN) * ALIGN;
  }
  head.pad(ALIGN);

  const f = await Deno.open(out, { write: true, create: true, truncate: true });
  try {
    await writeAll(f, head.bytes());
    for (const t of tensors) {
      const data = await t.data();
      if (data.length !== t.byteLength) {
        throw new Error(`${t.name}: ${data.length} bytes, ${t.byteLength} planned`);
      }
      await writeAll(f, data);
      const pad = Math.ceil(t.byteLength / ALIGN) * ALIGN - t.byteLength;
      if (pad) await writeAll(f, new Uint8Array(pad));
    }
  } finally {
    f.close();
  }
  log(
    `wrote ${out}: ${arch}, ${tensors.length} tensors, ${vocab.tokens.length} tokens, ` +
      `${((head.length + offset) / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await f.write(data.subarray(off));
}

if (import.meta.main) {
  const args: Record<string, string> = {};
  for (let i = 0; i < Deno.args.length; i += 2) args[Deno.args[i].replace(/^--/, "")] = Deno.args[i + 1];
  if (!args.model || !args.out) {
    console.error("usage: deno run -A tools/hf_to_gguf.ts --model DIR --out FILE.gguf [--pre NAME]");
    Deno.exit(2);
  }
  await hfToGguf(args.model, args.out, { pre: args.pre, log: console.log });
}
