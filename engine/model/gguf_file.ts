// GGUF container parser (llama.cpp's single-file format, v2 and v3, little-endian): header, metadata and
// tensor infos of a file held in memory, with typed metadata access. Knows nothing about models; gguf.ts
// maps a parsed file onto a LoadedModel.

import { ModelLoadError } from "./types.ts";
import { GGML_TYPES } from "./ggml_quants.ts";

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

/** Whether the bytes start with GGUF's magic (how files without the .gguf extension are recognised). */
export function hasGgufMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 4 &&
    new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true) === GGUF_MAGIC;
}

/**
 * Parses the header, metadata and tensor infos of a GGUF file held in memory, and checks that every
 * tensor's data lies inside the file. Does not look at the architecture or tensor types.
 */
export function parseGguf(bytes: Uint8Array, file: string, fileSize = bytes.length): GgufFile {
  const r: Reader = new Reader(bytes, file);
  const { version, tensorCount, kvCount } = readHeader(r, fileSize);
  const metadata = readMetadata(r, kvCount);
  const alignment = alignmentOf(r, metadata);
  const infos = readTensorInfos(r, tensorCount);
  const dataOffset = Math.ceil(r.pos / alignment) * alignment;
  const tensors = infos.map((info) => placeTensor(r, info, alignment, dataOffset, fileSize));
  return { version, metadata, tensors, alignment, dataOffset };
}

function readHeader(r: Reader, fileSize: number) {
  if (!hasGgufMagic(r.bytes)) {
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
  return { version, tensorCount, kvCount };
}

function readMetadata(r: Reader, kvCount: number): Map<string, GgufValue> {
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
  return metadata;
}

function alignmentOf(r: Reader, metadata: Map<string, GgufValue>): number {
  const alignValue = metadata.get("general.alignment");
  if (alignValue === undefined) return 32;
  if (typeof alignValue !== "number" || alignValue <= 0 || (alignValue & (alignValue - 1)) !== 0) {
    r.fail(`invalid general.alignment ${String(alignValue)} (must be a power of two)`);
  }
  return alignValue;
}

/** A tensor info as stored: `rel` is its data offset relative to the data section. */
interface RawTensorInfo {
  name: string;
  dims: number[];
  type: number;
  rel: number;
}

function readTensorInfos(r: Reader, tensorCount: number): RawTensorInfo[] {
  const infos: RawTensorInfo[] = [];
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
    infos.push({ name, dims, type, rel });
  }
  return infos;
}

/** Absolute offset and byte size of a tensor's data, checked against the block size and the file's end. */
function placeTensor(
  r: Reader,
  { name, dims, type, rel }: RawTensorInfo,
  alignment: number,
  dataOffset: number,
  fileSize: number,
): GgufTensorInfo {
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
}

/** Typed access to metadata with errors that name the file and key. */
export class MetaReader {
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
