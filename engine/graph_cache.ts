// Built step graphs on disk, keyed by the weights and everything else that shapes the graph, so a
// later start with the same model and settings skips the build. Each entry is three files: the graph
// (<key>.onnx), its external weights (<key>.onnx.data) and its node counts (<key>.onnx.json).

import { buildGraph, type BuiltGraph, type GraphOptions } from "./model/graph.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";

export interface GraphCacheOptions extends GraphOptions {
  /** Folder of the cache; null builds every time. */
  cacheDir: string | null;
  progress?: LoadProgress;
  log: (msg: string) => void;
}

/** The step graph for these options: from the cache when it holds it, else built (and stored). */
export async function loadOrBuildGraph(model: LoadedModel, opts: GraphCacheOptions): Promise<BuiltGraph> {
  const key = await graphKey(model, opts);
  const path = opts.cacheDir ? `${opts.cacheDir}/${key}.onnx` : null;
  const cached = path ? await readCached(path) : null;
  if (cached) {
    opts.log(`graph: cached ${path}`);
    return cached;
  }
  opts.progress?.({ phase: "graph" });
  const t0 = performance.now();
  const built = buildGraph(model, {
    dtype: opts.dtype,
    maxPositions: opts.maxPositions,
    externalMinBytes: opts.externalMinBytes,
    weightsAsInputs: opts.weightsAsInputs,
  });
  opts.log(
    `graph: built in ${
      ((performance.now() - t0) / 1000).toFixed(2)
    } s, ${built.nodesPerLayer} nodes per layer, ` +
      `${built.totalNodes} nodes in all, ${
        ((built.bytes.length + built.data.length) / 2 ** 20).toFixed(1)
      } MiB`,
  );
  if (path) await writeCached(opts.cacheDir!, path, built, opts.log);
  return built;
}

async function readCached(path: string): Promise<BuiltGraph | null> {
  try {
    // The weights file first: the graph is renamed into place last, so its presence means both are whole.
    const data = await Deno.readFile(`${path}.data`);
    const bytes = await Deno.readFile(path);
    const meta = JSON.parse(await Deno.readTextFile(`${path}.json`));
    const { nodesPerLayer, totalNodes, weights } = meta;
    return { bytes, data, weights, nodesPerLayer, totalNodes };
  } catch {
    return null;
  }
}

async function writeCached(dir: string, path: string, g: BuiltGraph, log: (msg: string) => void) {
  try {
    await Deno.mkdir(dir, { recursive: true });
    // Write then rename so a crash never leaves a half-written graph behind.
    await Deno.writeFile(`${path}.data`, g.data);
    await Deno.writeFile(`${path}.tmp`, g.bytes);
    const { nodesPerLayer, totalNodes, weights } = g;
    await Deno.writeTextFile(`${path}.json`, JSON.stringify({ nodesPerLayer, totalNodes, weights }));
    await Deno.rename(`${path}.tmp`, path);
  } catch (e) {
    // A read-only disk only costs the next start a rebuild.
    log(`graph: not cached (${(e as Error).message})`);
  }
}

async function graphKey(model: LoadedModel, opts: GraphOptions): Promise<string> {
  // Bump GRAPH_VERSION whenever buildGraph's output changes for the same weights.
  const GRAPH_VERSION = 6;
  const text = JSON.stringify({
    v: GRAPH_VERSION,
    w: model.weights.hash,
    dtype: opts.dtype,
    maxPositions: opts.maxPositions,
    ext: opts.externalMinBytes ?? "default",
    wi: opts.weightsAsInputs ?? false,
    cfg: model.config,
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}
