// Built step graphs on disk, keyed by what shapes the graph, so a later start with the same model
// shape and settings skips the build. The model's weights are graph inputs (uploaded from the model
// file by the runner), so an entry holds no weight values and its key none of them: config, dtype,
// context length, the weight inputs' names, types and shapes, and GRAPH_VERSION. Checkpoints that
// differ only in their values (or in their stored dtype) share an entry, and the model file is never
// hashed. Each entry is three files: the graph (<key>.onnx), the external data of its own constants
// (<key>.onnx.data, e.g. the greedy ramp over the vocabulary) and its metadata (<key>.onnx.json: the
// rest of BuiltGraph, and the size and SHA-256 of the other two).
//
// Every file is written under a name of its own and renamed into place, metadata last, so a reader
// never sees a file being written and two servers building one entry never write into the same file.
// What the renames cannot promise (a crash before the data reached the disk, a mixture of two writers'
// files, a truncated or altered file) the load catches by checking sizes and hashes: a bad entry is
// logged and rebuilt over, never fatal.

import { createHash } from "node:crypto";
import { buildGraph, type BuiltGraph, type GraphOptions, stepWeightTensors } from "./model/graph.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";

export interface GraphCacheOptions extends GraphOptions {
  /** Folder of the cache; null builds every time. */
  cacheDir: string | null;
  progress?: LoadProgress;
  log: (msg: string) => void;
}

/** Size and SHA-256 (hex) of one file of an entry. */
export interface FileCheck {
  size: number;
  sha256: string;
}

/** BuiltGraph's fields other than the two files' bytes: they travel in the metadata. */
export type GraphInfo = Omit<BuiltGraph, "bytes" | "data">;

/** The contents of <key>.onnx.json. */
export interface EntryMeta {
  info: GraphInfo;
  graph: FileCheck;
  data: FileCheck;
  /** SHA-256 of [info, graph, data] as JSON: the metadata is checked like the files. */
  sha256: string;
}

/**
 * The step graph for these options: from the cache when it holds a sound entry, else built (and
 * stored). A graph with its weights inline (weightsAsInputs off, a probe's setting) holds their
 * values, which the key does not cover: it is never cached.
 */
export async function loadOrBuildGraph(model: LoadedModel, opts: GraphCacheOptions): Promise<BuiltGraph> {
  const cacheable = opts.cacheDir !== null && (opts.weightsAsInputs ?? false);
  const path = cacheable ? `${opts.cacheDir}/${await graphKey(model, opts)}.onnx` : null;
  if (path) {
    opts.progress?.({ phase: "graph cache" });
    const t0 = performance.now();
    const cached = await readCached(path);
    if (cached.graph) {
      opts.log(`graph: cached ${path} (read and verified in ${seconds(t0)} s)`);
      return cached.graph;
    }
    if (cached.problem) opts.log(`graph: cache entry ${path} unusable (${cached.problem}), rebuilding`);
  }
  opts.progress?.({ phase: "graph" });
  const t0 = performance.now();
  const built = buildGraph(model, {
    dtype: opts.dtype,
    maxPositions: opts.maxPositions,
    externalMinBytes: opts.externalMinBytes,
    weightsAsInputs: opts.weightsAsInputs,
    splitK: opts.splitK,
    plainWideMatmuls: opts.plainWideMatmuls,
  });
  opts.log(
    `graph: built in ${seconds(t0)} s, ${built.nodesPerLayer} nodes per layer, ` +
      `${built.totalNodes} nodes in all, ${
        ((built.bytes.length + built.data.length) / 2 ** 20).toFixed(1)
      } MiB`,
  );
  if (path) await writeCached(opts.cacheDir!, path, built, opts.log);
  else if (opts.cacheDir) opts.log("graph: not cached (weights inline)");
  return built;
}

function seconds(t0: number): string {
  return ((performance.now() - t0) / 1000).toFixed(2);
}

/** SHA-256 in hex. node:crypto's hash takes ~7x less CPU than crypto.subtle.digest in Deno 2.9. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * The entry at `path` if its metadata is whole and both files match it. No `problem` means nothing
 * is there (a plain miss); otherwise it says what is wrong, for the log.
 */
export async function readCached(path: string): Promise<{ graph?: BuiltGraph; problem?: string }> {
  let metaText: string;
  try {
    metaText = await Deno.readTextFile(`${path}.json`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) return { problem: `metadata: ${(e as Error).message}` };
    // Files without metadata are a partial entry (a writer that stopped, or a removed file).
    const others = await Promise.all([path, `${path}.data`].map(exists));
    return others.some((x) => x) ? { problem: "metadata missing" } : {};
  }
  const meta = parseMeta(metaText);
  if (!meta) return { problem: "metadata malformed, altered or from an older version" };
  const data = await readVerified(`${path}.data`, meta.data);
  if (typeof data === "string") return { problem: `data ${data}` };
  const bytes = await readVerified(path, meta.graph);
  if (typeof bytes === "string") return { problem: `graph ${bytes}` };
  return { graph: { ...meta.info, bytes, data } };
}

function metaHash(m: Omit<EntryMeta, "sha256">): string {
  return sha256Hex(new TextEncoder().encode(JSON.stringify([m.info, m.graph, m.data])));
}

function parseMeta(text: string): EntryMeta | null {
  let m: EntryMeta;
  try {
    m = JSON.parse(text);
    // Parsing keeps the written key order, so the hash covers exactly what was written.
    if (metaHash(m) !== m.sha256) return null;
  } catch {
    return null;
  }
  const count = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!count(m.info?.nodesPerLayer) || !count(m.info?.totalNodes) || !Array.isArray(m.info?.weights)) {
    return null;
  }
  if (!count(m.graph?.size) || !count(m.data?.size)) return null;
  return m;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

// Hashing chunk by chunk as they arrive keeps each chunk in cache for the hash.
const READ_CHUNK = 8 * 2 ** 20;

/** The file's bytes if their size and SHA-256 are `want`'s, else what differs. */
async function readVerified(path: string, want: FileCheck): Promise<Uint8Array | string> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    return e instanceof Deno.errors.NotFound ? "missing" : `unreadable: ${(e as Error).message}`;
  }
  try {
    // The size first: a truncated file costs no read.
    const { size } = await file.stat();
    if (size !== want.size) return `size ${size} bytes, metadata says ${want.size}`;
    const out = new Uint8Array(size);
    const hash = createHash("sha256");
    let off = 0;
    while (off < size) {
      const n = await file.read(out.subarray(off, Math.min(size, off + READ_CHUNK)));
      if (n === null) return `ended at ${off} of ${size} bytes`;
      hash.update(out.subarray(off, off + n));
      off += n;
    }
    const sha256 = hash.digest("hex");
    if (sha256 !== want.sha256) {
      return `SHA-256 ${sha256.slice(0, 12)}…, metadata says ${want.sha256.slice(0, 12)}…`;
    }
    return out;
  } catch (e) {
    return `unreadable: ${(e as Error).message}`;
  } finally {
    file.close();
  }
}

/** Stores an entry; a failure (read-only disk, full disk) is logged and only costs the next start a build. */
export async function writeCached(dir: string, path: string, g: BuiltGraph, log: (msg: string) => void) {
  try {
    await Deno.mkdir(dir, { recursive: true });
    const { bytes, data, ...info } = g;
    const checks = {
      info,
      graph: { size: bytes.length, sha256: sha256Hex(bytes) },
      data: { size: data.length, sha256: sha256Hex(data) },
    };
    const meta: EntryMeta = { ...checks, sha256: metaHash(checks) };
    await writeAtomically(`${path}.data`, data);
    await writeAtomically(path, bytes);
    // Last: metadata in place means both files were, though maybe since replaced (the hashes tell).
    await writeAtomically(`${path}.json`, new TextEncoder().encode(JSON.stringify(meta)));
    await removeStaleTemps(dir, path.slice(path.lastIndexOf("/") + 1), log);
  } catch (e) {
    log(`graph: not cached (${(e as Error).message})`);
  }
}

/** A temporary file this old was left by a writer that died (a store takes seconds). */
export const STALE_TEMP_MS = 60 * 60 * 1000;

/** Removes this entry's temporary files left by writers that died mid-store (each may be gigabytes). */
async function removeStaleTemps(dir: string, name: string, log: (msg: string) => void) {
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.startsWith(`${name}.`) || !e.name.endsWith(".tmp")) continue;
    try {
      const { mtime } = await Deno.lstat(`${dir}/${e.name}`);
      if (mtime && Date.now() - mtime.getTime() > STALE_TEMP_MS) {
        await Deno.remove(`${dir}/${e.name}`);
        log(`graph: removed ${e.name}, left by an interrupted store`);
      }
    } catch {
      // Renamed or removed meanwhile by its writer or another server: nothing to clean.
    }
  }
}

/** Writes under a name no other writer uses, then renames over `path`. */
async function writeAtomically(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${Deno.pid}-${crypto.randomUUID()}.tmp`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** The key of a graph whose weights are inputs: everything its bytes depend on, no weight values. */
async function graphKey(model: LoadedModel, opts: GraphOptions): Promise<string> {
  // Bump GRAPH_VERSION whenever buildGraph's output changes for the same inputs.
  // 7: weights no longer in the entry, and no longer in the key. 8: two-stage greedy argmax.
  const GRAPH_VERSION = 8;
  const text = JSON.stringify({
    v: GRAPH_VERSION,
    dtype: opts.dtype,
    maxPositions: opts.maxPositions,
    ext: opts.externalMinBytes ?? "default",
    sk: opts.splitK ?? 1,
    ...(opts.plainWideMatmuls ? { pw: true } : {}),
    cfg: model.config,
    inputs: stepWeightTensors(model, opts).map((t) => [t.name, t.type, t.dims]),
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}
