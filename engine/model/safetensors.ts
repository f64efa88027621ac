// Reader (and a small writer) for the .safetensors format:
// 8-byte little-endian header length, a JSON header, then the raw tensor bytes.

import { type LoadProgress, ModelLoadError, type WeightDType, type WeightTensor } from "./types.ts";

const DTYPE_MAP: Record<string, { dtype: WeightDType; size: number }> = {
  F32: { dtype: "f32", size: 4 },
  F16: { dtype: "f16", size: 2 },
  BF16: { dtype: "bf16", size: 2 },
};

/** Sizes of dtypes we can describe in errors and the writer but do not load. */
const OTHER_DTYPE_SIZES: Record<string, number> = {
  F64: 8,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

// Headers are small; anything larger means a corrupt or non-safetensors file.
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
// Tensors are grouped into buffers of about this size so no single allocation gets huge.
const SEGMENT_BYTES = 256 * 1024 * 1024;
const READ_CHUNK = 16 * 1024 * 1024;

export interface SafetensorsHeaderEntry {
  name: string;
  /** The file's own spelling, e.g. "BF16". */
  dtype: string;
  shape: number[];
  /** Offsets relative to the start of the data region. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  /** Absolute offset of the data region (8 + header length). */
  dataStart: number;
  metadata: Record<string, string>;
  entries: SafetensorsHeaderEntry[];
}

export interface SafetensorsFile {
  file: string;
  metadata: Record<string, string>;
  tensors: Map<string, WeightTensor>;
}

export interface ReadOptions {
  progress?: LoadProgress;
}

function fail(file: string, message: string, tensor?: string): never {
  const where = tensor ? `${file}: tensor ${tensor}` : file;
  throw new ModelLoadError(`${where}: ${message}`, file, tensor);
}

async function readExactly(f: Deno.FsFile, buf: Uint8Array, file: string, what: string): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await f.read(buf.subarray(off));
    if (n === null) fail(file, `file is truncated while reading ${what}`);
    off += n;
  }
}

/** Parses and validates a header given its JSON bytes; exported for tests and tools. */
export function parseSafetensorsHeader(file: string, json: Uint8Array, fileSize: number): SafetensorsHeader {
  const dataStart = 8 + json.length;
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(json));
  } catch (e) {
    fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    fail(file, "header is not a JSON object");
  }
  const metadata: Record<string, string> = {};
  const entries: SafetensorsHeaderEntry[] = [];
  const dataSize = fileSize - dataStart;
  for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (value && typeof value === "object") {
        for (const [k, v] of Object.entries(value as Record<string, unknown>)) metadata[k] = String(v);
      }
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!v || typeof v !== "object" || typeof v.dtype !== "string" || !Array.isArray(v.shape)) {
      fail(file, "malformed header entry (needs dtype, shape, data_offsets)", name);
    }
    const shape = v.shape as unknown[];
    if (!shape.every((d) => Number.isInteger(d) && (d as number) >= 0)) fail(file, "malformed shape", name);
    const offs = v.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 || !Number.isInteger(offs[0]) || !Number.isInteger(offs[1])
    ) {
      fail(file, "malformed data_offsets", name);
    }
    const [begin, end] = offs as [number, number];
    const known = DTYPE_MAP[v.dtype];
    if (!known) {
      fail(file, `unsupported dtype ${v.dtype} (supported: F32, F16, BF16)`, name);
    }
    if (begin < 0 || end < begin) fail(file, `invalid data_offsets [${begin}, ${end}]`, name);
    if (end > dataSize) {
      fail(
        file,
        `data_offsets [${begin}, ${end}] run past the end of the file (data region is ${dataSize} bytes); ` +
          `the file is truncated or corrupt`,
        name,
      );
    }
    const elems = (shape as number[]).reduce((a, b) => a * b, 1);
    if (elems * known.size !== end - begin) {
      fail(
        file,
        `byte length ${end - begin} does not match shape [${shape.join(", ")}] of ${v.dtype} ` +
          `(${elems * known.size} bytes)`,
        name,
      );
    }
    entries.push({ name, dtype: v.dtype, shape: shape as number[], begin, end });
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < entries.length; i++) {
    if (entries[i].begin < entries[i - 1].end) {
      fail(file, `data_offsets overlap tensor ${entries[i - 1].name}`, entries[i].name);
    }
  }
  return { file, fileSize, dataStart, metadata, entries };
}

/** Reads only the header of one file. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const f = await openFile(file);
  try {
    const size = (await f.stat()).size;
    return await readHeaderFrom(f, file, size);
  } finally {
    f.close();
  }
}

async function openFile(file: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(file, { read: true });
  } catch (e) {
    fail(file, `cannot open (${(e as Error).message})`);
  }
}

async function readHeaderFrom(f: Deno.FsFile, file: string, size: number): Promise<SafetensorsHeader> {
  if (size < 8) fail(file, `file is too small (${size} bytes) to be a safetensors file`);
  const lenBytes = new Uint8Array(8);
  await readExactly(f, lenBytes, file, "the header length");
  const len = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (len > BigInt(MAX_HEADER_BYTES) || Number(len) > size - 8) {
    fail(file, `header length ${len} is implausible for a ${size}-byte file; not a safetensors file?`);
  }
  const json = new Uint8Array(Number(len));
  await readExactly(f, json, file, "the header");
  return parseSafetensorsHeader(file, json, size);
}

/**
 * Reads several safetensors files (e.g. the shards of one model) with progress summed over all of them.
 * Tensors are views into a few large buffers per file.
 */
export async function readSafetensorsFiles(
  files: string[],
  opts: ReadOptions = {},
): Promise<SafetensorsFile[]> {
  const sizes: number[] = [];
  for (const file of files) {
    try {
      sizes.push((await Deno.stat(file)).size);
    } catch (e) {
      fail(file, `cannot read (${(e as Error).message})`);
    }
  }
  const total = sizes.reduce((a, b) => a + b, 0);
  let done = 0;
  const report = (n: number) => {
    done += n;
    opts.progress?.({ phase: "read", done, total });
  };
  opts.progress?.({ phase: "read", done: 0, total });
  const out: SafetensorsFile[] = [];
  for (let i = 0; i < files.length; i++) {
    out.push(await readOne(files[i], sizes[i], report));
  }
  return out;
}

export async function readSafetensors(file: string, opts: ReadOptions = {}): Promise<SafetensorsFile> {
  return (await readSafetensorsFiles([file], opts))[0];
}

async function readOne(file: string, size: number, report: (n: number) => void): Promise<SafetensorsFile> {
  const f = await openFile(file);
  try {
    const header = await readHeaderFrom(f, file, size);
    report(header.dataStart);
    const tensors = new Map<string, WeightTensor>();
    // Group tensors (sorted by offset) into segments; each segment is one buffer read in chunks.
    let pos = 0; // current offset within the data region (file position = dataStart + pos)
    let i = 0;
    const entries = header.entries;
    while (i < entries.length) {
      const segStart = entries[i].begin;
      let j = i;
      let segEnd = entries[i].end;
      while (j + 1 < entries.length && entries[j + 1].end - segStart <= SEGMENT_BYTES) {
        j++;
        segEnd = Math.max(segEnd, entries[j].end);
      }
      if (segStart > pos) {
        // Skip a gap (not written by well-formed files, but harmless).
        await f.seek(header.dataStart + segStart, Deno.SeekMode.Start);
        report(segStart - pos);
      }
      const buf = new Uint8Array(segEnd - segStart);
      await readRange(f, file, buf, entries[i].name, report);
      for (let k = i; k <= j; k++) {
        const e = entries[k];
        tensors.set(e.name, {
          name: e.name,
          shape: e.shape,
          dtype: DTYPE_MAP[e.dtype].dtype,
          // Keep views 8-byte aligned so callers can wrap them in Float32Array etc.; copy the rare odd one.
          bytes: (e.begin - segStart) % 8 === 0
            ? buf.subarray(e.begin - segStart, e.end - segStart)
            : buf.slice(e.begin - segStart, e.end - segStart),
          file,
        });
      }
      pos = segEnd;
      i = j + 1;
    }
    // Trailing bytes past the last tensor (padding) are not read; they count towards progress.
    const rest = size - header.dataStart - pos;
    if (rest > 0) report(rest);
    return { file, metadata: header.metadata, tensors };
  } finally {
    f.close();
  }
}

/** Fills `into` from the file's current position, in chunks (progress after each). */
async function readRange(
  f: Deno.FsFile,
  file: string,
  into: Uint8Array,
  tensor: string,
  report: (n: number) => void,
): Promise<void> {
  let off = 0;
  while (off < into.length) {
    const want = Math.min(READ_CHUNK, into.length - off);
    const target = into.subarray(off, off + want);
    let got = 0;
    while (got < want) {
      const n = await f.read(target.subarray(got));
      if (n === null) fail(file, "file is truncated (ends inside the tensor data)", tensor);
      got += n;
    }
    off += want;
    report(want);
  }
}

// ---------------------------------------------------------------------------------------------
// Writer (used by tools/make_model.ts and tests)

export interface TensorToWrite {
  name: string;
  /** Safetensors dtype spelling ("F32", "F16", "BF16"; others allowed for tests). */
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

export function dtypeByteSize(dtype: string): number {
  const size = DTYPE_MAP[dtype]?.size ?? OTHER_DTYPE_SIZES[dtype];
  if (size === undefined) throw new Error(`unknown safetensors dtype ${dtype}`);
  return size;
}

/** Builds the 8-byte length + JSON header (space-padded to 8 bytes, as the reference writer does). */
export function encodeSafetensorsHeader(
  tensors: { name: string; dtype: string; shape: number[]; byteLength: number }[],
  metadata: Record<string, string> = { format: "pt" },
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.byteLength] };
    off += t.byteLength;
  }
  let json = JSON.stringify(header);
  const pad = (8 - ((new TextEncoder().encode(json).length) % 8)) % 8;
  json += " ".repeat(pad);
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + jsonBytes.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(jsonBytes.length), true);
  out.set(jsonBytes, 8);
  return out;
}

/** Writes tensors in the given order, contiguous after the header. */
export async function writeSafetensors(
  file: string,
  tensors: TensorToWrite[],
  metadata: Record<string, string> = { format: "pt" },
): Promise<void> {
  const header = encodeSafetensorsHeader(
    tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.data.length })),
    metadata,
  );
  const f = await Deno.open(file, { write: true, create: true, truncate: true });
  try {
    await writeAll(f, header);
    for (const t of tensors) await writeAll(f, t.data);
  } finally {
    f.close();
  }
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await f.write(data.subarray(off));
}
