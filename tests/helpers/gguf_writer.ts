// Writes small synthetic GGUF files for loader tests (layout per the GGUF spec, little-endian).

export const VT = {
  U8: 0,
  I8: 1,
  U16: 2,
  I16: 3,
  U32: 4,
  I32: 5,
  F32: 6,
  BOOL: 7,
  STR: 8,
  ARR: 9,
  U64: 10,
  I64: 11,
  F64: 12,
} as const;

export const GT = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q4_K: 12, Q6_K: 14, IQ2_XXS: 16, BF16: 30 } as const;

class Sink {
  private parts: number[] = [];
  u8(v: number) {
    this.parts.push(v & 0xff);
  }
  raw(b: ArrayLike<number>) {
    for (let i = 0; i < b.length; i++) this.parts.push(b[i]);
  }
  private view(n: number, f: (dv: DataView) => void) {
    const b = new Uint8Array(n);
    f(new DataView(b.buffer));
    this.raw(b);
  }
  u32(v: number) {
    this.view(4, (d) => d.setUint32(0, v, true));
  }
  u64(v: number | bigint) {
    this.view(8, (d) => d.setBigUint64(0, BigInt(v), true));
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.raw(b);
  }
  get length() {
    return this.parts.length;
  }
  bytes() {
    return Uint8Array.from(this.parts);
  }
}

/** A metadata value with its GGUF type; arrays carry their element type. */
type Scalar = number | bigint | boolean | string;
export type MetaValue =
  | { t: number; v: Scalar }
  | { t: typeof VT.ARR; elem: number; v: Scalar[] | MetaValue[] };

function writeScalar(s: Sink, t: number, v: unknown) {
  switch (t) {
    case VT.U8:
    case VT.I8:
      s.u8(Number(v));
      break;
    case VT.U16:
    case VT.I16:
      s.raw([Number(v) & 0xff, (Number(v) >> 8) & 0xff]);
      break;
    case VT.U32:
    case VT.I32:
      s.u32(Number(v) >>> 0);
      break;
    case VT.F32: {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setFloat32(0, Number(v), true);
      s.raw(b);
      break;
    }
    case VT.F64: {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setFloat64(0, Number(v), true);
      s.raw(b);
      break;
    }
    case VT.BOOL:
      s.u8(v ? 1 : 0);
      break;
    case VT.STR:
      s.str(String(v));
      break;
    case VT.U64:
    case VT.I64:
      s.u64(BigInt.asUintN(64, BigInt(v as number | bigint)));
      break;
    default:
      throw new Error(`writer: bad type ${t}`);
  }
}

function writeValue(s: Sink, mv: MetaValue) {
  if (mv.t === VT.ARR) {
    const arr = mv as { elem: number; v: unknown[] };
    s.u32(arr.elem);
    s.u64(arr.v.length);
    for (const x of arr.v) {
      if (arr.elem === VT.ARR) writeValue(s, x as MetaValue);
      else writeScalar(s, arr.elem, x);
    }
  } else {
    writeScalar(s, mv.t, mv.v);
  }
}

export const meta = {
  u32: (v: number): MetaValue => ({ t: VT.U32, v }),
  i32: (v: number): MetaValue => ({ t: VT.I32, v }),
  f32: (v: number): MetaValue => ({ t: VT.F32, v }),
  u64: (v: number | bigint): MetaValue => ({ t: VT.U64, v }),
  bool: (v: boolean): MetaValue => ({ t: VT.BOOL, v }),
  str: (v: string): MetaValue => ({ t: VT.STR, v }),
  strs: (v: string[]): MetaValue => ({ t: VT.ARR, elem: VT.STR, v }),
  f32s: (v: number[]): MetaValue => ({ t: VT.ARR, elem: VT.F32, v }),
  i32s: (v: number[]): MetaValue => ({ t: VT.ARR, elem: VT.I32, v }),
  arrays: (v: MetaValue[]): MetaValue => ({ t: VT.ARR, elem: VT.ARR, v }),
};

export interface TensorSpec {
  name: string;
  /** GGUF order, innermost first. */
  dims: number[];
  type: number;
  data: Uint8Array;
}

export function writeGguf(
  kv: [string, MetaValue][],
  tensors: TensorSpec[],
  opts: { version?: number; alignment?: number; magic?: string } = {},
): Uint8Array {
  const align = opts.alignment ?? 32;
  const s = new Sink();
  s.raw(new TextEncoder().encode(opts.magic ?? "GGUF"));
  s.u32(opts.version ?? 3);
  s.u64(tensors.length);
  s.u64(kv.length);
  for (const [k, v] of kv) {
    s.str(k);
    s.u32(v.t);
    writeValue(s, v);
  }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    s.str(t.name);
    s.u32(t.dims.length);
    for (const d of t.dims) s.u64(d);
    s.u32(t.type);
    s.u64(offset);
    offsets.push(offset);
    offset = Math.ceil((offset + t.data.length) / align) * align;
  }
  while (s.length % align) s.u8(0);
  const start = s.length;
  tensors.forEach((t, i) => {
    while (s.length < start + offsets[i]) s.u8(0);
    s.raw(t.data);
  });
  return s.bytes();
}

export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** Row-major matrix [rows][cols] (HF order) with a recognisable value per element. */
export function rowValues(rows: number, cols: number, f: (r: number, c: number) => number): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out.push(f(r, c));
  return out;
}

export interface TinyLlamaOptions {
  arch?: string;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  ffn?: number;
  layers?: number;
  omit?: string[];
  /** Replace a tensor's dims/type/data (dims in GGUF order). */
  override?: Record<string, Partial<Omit<TensorSpec, "name">>>;
  extraTensors?: TensorSpec[];
  extraMeta?: [string, MetaValue][];
  untied?: boolean;
}

export const TINY_TOKENS = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"];

/**
 * A small llama GGUF with F32 weights whose element (r, c) in HF order is r * 1000 + c, so tests can see
 * which row ended up where.
 */
export function tinyLlamaGguf(o: TinyLlamaOptions = {}): Uint8Array {
  const hidden = o.hidden ?? 32, heads = o.heads ?? 4, kvHeads = o.kvHeads ?? 2;
  const ffn = o.ffn ?? 64, layers = o.layers ?? 1;
  const headDim = hidden / heads;
  const vocab = TINY_TOKENS.length;
  const arch = o.arch ?? "llama";
  const kv: [string, MetaValue][] = [
    ["general.architecture", meta.str(arch)],
    ["general.name", meta.str("tiny")],
    [`${arch}.context_length`, meta.u32(128)],
    [`${arch}.embedding_length`, meta.u32(hidden)],
    [`${arch}.feed_forward_length`, meta.u32(ffn)],
    [`${arch}.block_count`, meta.u32(layers)],
    [`${arch}.attention.head_count`, meta.u32(heads)],
    [`${arch}.attention.head_count_kv`, meta.u32(kvHeads)],
    [`${arch}.attention.layer_norm_rms_epsilon`, meta.f32(1e-6)],
    [`${arch}.rope.freq_base`, meta.f32(500000)],
    ["tokenizer.ggml.model", meta.str("llama")],
    ["tokenizer.ggml.tokens", meta.strs(TINY_TOKENS)],
    ["tokenizer.ggml.scores", meta.f32s([0, 0, 0, -1, -2, -2, -3, -4])],
    ["tokenizer.ggml.token_type", meta.i32s([2, 3, 3, 1, 1, 1, 1, 1])],
    ["tokenizer.ggml.bos_token_id", meta.u32(1)],
    ["tokenizer.ggml.eos_token_id", meta.u32(2)],
    ["tokenizer.ggml.unknown_token_id", meta.u32(0)],
    ...(o.extraMeta ?? []),
  ];
  const mat = (rows: number, cols: number) => f32Bytes(rowValues(rows, cols, (r, c) => r * 1000 + c));
  const tensors: TensorSpec[] = [];
  const add = (name: string, hfShape: number[]) => {
    const rows = hfShape.length === 2 ? hfShape[0] : 1;
    const cols = hfShape[hfShape.length - 1];
    tensors.push({ name, dims: [...hfShape].reverse(), type: GT.F32, data: mat(rows, cols) });
  };
  add("token_embd.weight", [vocab, hidden]);
  for (let i = 0; i < layers; i++) {
    add(`blk.${i}.attn_norm.weight`, [hidden]);
    add(`blk.${i}.attn_q.weight`, [heads * headDim, hidden]);
    add(`blk.${i}.attn_k.weight`, [kvHeads * headDim, hidden]);
    add(`blk.${i}.attn_v.weight`, [kvHeads * headDim, hidden]);
    add(`blk.${i}.attn_output.weight`, [hidden, heads * headDim]);
    add(`blk.${i}.ffn_norm.weight`, [hidden]);
    add(`blk.${i}.ffn_gate.weight`, [ffn, hidden]);
    add(`blk.${i}.ffn_up.weight`, [ffn, hidden]);
    add(`blk.${i}.ffn_down.weight`, [hidden, ffn]);
  }
  add("output_norm.weight", [hidden]);
  if (o.untied) {
    tensors.push({
      name: "output.weight",
      dims: [hidden, vocab],
      type: GT.F32,
      data: f32Bytes(rowValues(vocab, hidden, (r, c) => -(r * 1000 + c))),
    });
  }
  const final = tensors
    .filter((t) => !(o.omit ?? []).includes(t.name))
    .map((t) => ({ ...t, ...(o.override?.[t.name] ?? {}) }));
  return writeGguf(kv, [...final, ...(o.extraTensors ?? [])]);
}
