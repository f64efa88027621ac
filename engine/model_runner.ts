// Runs one engine step on the GPU: owns the ORT session, the built graph and the paged KV pool.
//
// run() only dispatches: its outputs stay on the GPU, so the next step can be dispatched before
// this one's tokens are read back (a readback costs ~11 ms in Deno whatever its size).

import * as ort from "onnxruntime-web/webgpu";
import { buildGraph } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import { buildSamplerGraph } from "./model/sampler_graph.ts";
import { EXTERNAL_DATA_NAME } from "./onnx/builder.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";
import type { ActDType } from "./model/weights.ts";

export interface RunnerOptions {
  dtype: ActDType;
  blockSize: number;
  /** KV pool size; clamped to what the adapter can bind per buffer. */
  kvCacheMb: number;
  /** Folder for built graphs keyed by weights hash and options; null disables the cache. */
  cacheDir: string | null;
  /** Weights of at least this many bytes travel as ONNX external data (default: graph.ts's). */
  externalMinBytes?: number;
  progress?: LoadProgress;
  log?: (msg: string) => void;
}

/** Flat inputs of one ragged step, built by the engine from the scheduler's plan. */
export interface StepInputs {
  /** [T] token ids known on the CPU (0 where idSrc >= 0). */
  inputIds: Int32Array;
  /** [T] -1, or the row of the previous step's next_ids that holds this token. */
  idSrc: Int32Array;
  /** [B+1] cumulative new-token counts. */
  cuSeqlens: Int32Array;
  /** [B] tokens already in the cache per sequence. */
  pastSeqlens: Int32Array;
  /** [B, maxBlocks] block ids, padded with 0. */
  blockTable: Int32Array;
  maxBlocks: number;
  /** [S] flat token rows whose logits are sampled. */
  sampleRows: Int32Array;
  /** [S] per-row uniform for GPU sampling; negative means greedy. */
  sampleU: Float32Array;
  /** [S] 1 / temperature (1 for greedy rows). */
  invTemp: Float32Array;
  /** Read back full logits (CPU sampling, logprobs). */
  wantLogits: boolean;
}

export interface StepHandle {
  nextIds: ort.Tensor;
  logits: ort.Tensor | null;
  numRows: number;
  /** The readback, once started (see ModelRunner.startRead). */
  pending: Promise<StepResult> | null;
  /** GPU outputs of the step that nobody reads (greedy ids and logits feeding the sampler). */
  scratch: ort.Tensor[];
}

export interface StepResult {
  nextIds: Int32Array;
  logits: Float32Array | null;
}

export class ModelRunner {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly maxPositions: number;
  readonly nodesPerLayer: number;
  readonly totalNodes: number;
  readonly adapterName: string;
  private prev: ort.Tensor | null = null;
  private releaseLater: ort.Tensor[] = [];
  private readonly placeholderPrev = new ort.Tensor("int32", new Int32Array(1), [1]);

  private constructor(
    private session: ort.InferenceSession,
    private sampler: ort.InferenceSession,
    private caches: ort.Tensor[],
    /** Only the layer count: the runner must not keep the weights alive once they are on the GPU. */
    private numLayers: number,
    info: {
      numBlocks: number;
      blockSize: number;
      maxPositions: number;
      nodesPerLayer: number;
      totalNodes: number;
      adapterName: string;
    },
  ) {
    this.numBlocks = info.numBlocks;
    this.blockSize = info.blockSize;
    this.maxPositions = info.maxPositions;
    this.nodesPerLayer = info.nodesPerLayer;
    this.totalNodes = info.totalNodes;
    this.adapterName = info.adapterName;
  }

  static async create(model: LoadedModel, opts: RunnerOptions): Promise<ModelRunner> {
    const cfg = model.config;
    const log = opts.log ?? (() => {});
    ort.env.wasm.numThreads = 1;
    ort.env.logLevel = "error";
    const maxPositions = cfg.maxContext;
    const key = await graphKey(model, opts.dtype, maxPositions, opts.externalMinBytes);
    let bytes: Uint8Array | null = null;
    let data: Uint8Array = new Uint8Array(0);
    let nodesPerLayer = 0, totalNodes = 0;
    const cachePath = opts.cacheDir ? `${opts.cacheDir}/${key}.onnx` : null;
    if (cachePath) {
      try {
        // The weights file first: the graph is renamed into place last, so its presence means both are whole.
        data = await Deno.readFile(`${cachePath}.data`);
        bytes = await Deno.readFile(cachePath);
        const meta = JSON.parse(await Deno.readTextFile(`${cachePath}.json`));
        nodesPerLayer = meta.nodesPerLayer;
        totalNodes = meta.totalNodes;
        log(`graph: cached ${cachePath}`);
      } catch {
        bytes = null;
      }
    }
    if (!bytes) {
      opts.progress?.({ phase: "graph" });
      const t0 = performance.now();
      const built = buildGraph(model, {
        dtype: opts.dtype,
        maxPositions,
        externalMinBytes: opts.externalMinBytes,
      });
      bytes = built.bytes;
      data = built.data;
      nodesPerLayer = built.nodesPerLayer;
      totalNodes = built.totalNodes;
      log(
        `graph: built in ${
          ((performance.now() - t0) / 1000).toFixed(2)
        } s, ${nodesPerLayer} nodes per layer, ` +
          `${totalNodes} nodes in all, ${((bytes.length + data.length) / 2 ** 20).toFixed(1)} MiB`,
      );
      if (cachePath) {
        try {
          await Deno.mkdir(opts.cacheDir!, { recursive: true });
          // Write then rename so a crash never leaves a half-written graph behind.
          await Deno.writeFile(`${cachePath}.data`, data);
          await Deno.writeFile(`${cachePath}.tmp`, bytes);
          await Deno.writeTextFile(`${cachePath}.json`, JSON.stringify({ nodesPerLayer, totalNodes }));
          await Deno.rename(`${cachePath}.tmp`, cachePath);
        } catch (e) {
          // A read-only disk only costs the next start a rebuild.
          log(`graph: not cached (${(e as Error).message})`);
        }
      }
    }

    opts.progress?.({ phase: "session" });
    const sessionOptions = (outputs: string[]): ort.InferenceSession.SessionOptions => ({
      executionProviders: [{ name: "webgpu", ...DEFAULT_EP_OPTIONS, ...envEpOptions() }],
      // RAGTIME_ORT_LOG=1 logs every WebGPU program ORT starts (what a step dispatches).
      logSeverityLevel: Number(Deno.env.get("RAGTIME_ORT_LOG") ?? 3) as 0 | 1 | 2 | 3 | 4,
      preferredOutputLocation: Object.fromEntries(outputs.map((o) => [o, "gpu-buffer"])),
    });
    const session = await ort.InferenceSession.create(bytes, {
      ...sessionOptions([IO.logits, IO.nextIds]),
      externalData: [{ path: EXTERNAL_DATA_NAME, data }],
    });
    const sampler = await ort.InferenceSession.create(
      buildSamplerGraph(cfg.vocabSize),
      sessionOptions([IO.sampledIds]),
    );
    const device = await ort.env.webgpu.device;
    const adapterInfo = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo ??
      (ort.env.webgpu.adapter as GPUAdapter | undefined)?.info;
    const adapterName = adapterInfo
      ? `${adapterInfo.description || adapterInfo.vendor}${
        adapterInfo.isFallbackAdapter ? " (software fallback)" : ""
      }`
      : "unknown";

    // Each layer's K and V pool is one buffer: [numBlocks, blockSize, kvHeads, headDim] fp16.
    const paddedHead = Math.ceil(cfg.headDim / 16) * 16; // see padHeadRows in graph.ts
    const bytesPerBlock = opts.blockSize * cfg.numKvHeads * paddedHead * 2;
    const perBuffer = Math.floor((opts.kvCacheMb * 2 ** 20) / (2 * cfg.numLayers));
    const bindLimit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    // One block more than the pool hands out: the padding item's (see run()).
    const numBlocks = Math.max(1, Math.floor(Math.min(perBuffer, bindLimit) / bytesPerBlock) - 1);
    const caches: ort.Tensor[] = [];
    for (let i = 0; i < 2 * cfg.numLayers; i++) {
      const buffer = device.createBuffer({
        size: (numBlocks + 1) * bytesPerBlock,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      caches.push(ort.Tensor.fromGpuBuffer(buffer, {
        dataType: "float16",
        dims: [numBlocks + 1, opts.blockSize, cfg.numKvHeads, paddedHead],
      }));
    }
    log(
      `kv cache: ${numBlocks} blocks of ${opts.blockSize} tokens ` +
        `(${((2 * cfg.numLayers * numBlocks * bytesPerBlock) / 2 ** 20).toFixed(1)} MiB) on ${adapterName}`,
    );
    return new ModelRunner(session, sampler, caches, cfg.numLayers, {
      numBlocks,
      blockSize: opts.blockSize,
      maxPositions,
      nodesPerLayer,
      totalNodes,
      adapterName,
    });
  }

  /**
   * Dispatches one step. The previous step's next_ids feed this step's idSrc rows.
   *
   * PagedAttention on WebGPU picks its kernel from the step's longest query: 1 token, 2-31, or 32
   * and more, and the kernels round differently in fp16, so a sequence's logits would depend on
   * what shares its step. By default the engine keeps chunks under 32 tokens
   * (BATCH_INVARIANT_CHUNK_TOKENS) and a step of decodes alone gets a 2-token padding item in the
   * reserved block: every step uses one kernel. Longer chunks (--max-chunk-tokens) give that up.
   */
  async run(s: StepInputs): Promise<StepHandle> {
    let B = s.pastSeqlens.length;
    let maxQ = 0, maxKv = 0;
    for (let b = 0; b < B; b++) {
      const q = s.cuSeqlens[b + 1] - s.cuSeqlens[b];
      maxQ = Math.max(maxQ, q);
      maxKv = Math.max(maxKv, s.pastSeqlens[b] + q);
    }
    if (maxQ < 2) {
      s = padStep(s, this.numBlocks);
      B++;
      maxQ = 2;
      maxKv = Math.max(maxKv, 2);
    }
    const T = s.inputIds.length, S = s.sampleRows.length;
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor("int32", s.inputIds, [T]),
      [IO.prevIds]: this.prev ?? this.placeholderPrev,
      [IO.idSrc]: new ort.Tensor("int32", s.idSrc, [T]),
      [IO.cuSeqlens]: new ort.Tensor("int32", s.cuSeqlens, [B + 1]),
      [IO.pastSeqlens]: new ort.Tensor("int32", s.pastSeqlens, [B]),
      [IO.blockTable]: new ort.Tensor("int32", s.blockTable, [B, s.maxBlocks]),
      // Host-side bounds spare PagedAttention a metadata readback in every layer.
      [IO.attnMeta]: new ort.Tensor("int32", Int32Array.of(maxQ, maxKv), [2]),
      [IO.sampleRows]: new ort.Tensor("int32", s.sampleRows, [S]),
    };
    for (let i = 0; i < this.numLayers; i++) {
      feeds[IO.keyCache(i)] = this.caches[2 * i];
      feeds[IO.valueCache(i)] = this.caches[2 * i + 1];
    }
    const sampling = s.sampleU.some((u) => u >= 0);
    const out = await this.session.run(
      feeds,
      sampling || s.wantLogits ? [IO.nextIds, IO.logits] : [IO.nextIds],
    );
    let nextIds = out[IO.nextIds];
    const logits = out[IO.logits] ?? null;
    const scratch: ort.Tensor[] = [];
    if (sampling) {
      // Only steps with a sampling row pay for the sampling head (see buildSamplerGraph).
      const sampled = await this.sampler.run({
        [IO.logits]: logits!,
        [IO.nextIds]: nextIds,
        [IO.sampleU]: new ort.Tensor("float32", s.sampleU, [S]),
        [IO.invTemp]: new ort.Tensor("float32", s.invTemp, [S]),
      });
      scratch.push(nextIds);
      nextIds = sampled[IO.sampledIds];
    }
    if (logits && !s.wantLogits) scratch.push(logits);
    this.prev = nextIds;
    return { nextIds, logits: s.wantLogits ? logits : null, numRows: S, pending: null, scratch };
  }

  /**
   * Compiles the step's shaders before the first request pays for it: one-token steps into the
   * reserved block, greedy and sampled.
   */
  async warmup(): Promise<void> {
    for (const u of [-1, 0.5]) {
      await this.read(
        await this.run({
          inputIds: Int32Array.of(0),
          idSrc: Int32Array.of(-1),
          cuSeqlens: Int32Array.of(0, 1),
          pastSeqlens: Int32Array.of(0),
          blockTable: Int32Array.of(this.numBlocks),
          maxBlocks: 1,
          sampleRows: Int32Array.of(0),
          sampleU: Float32Array.of(u),
          invTemp: Float32Array.of(1),
          wantLogits: u >= 0,
        }),
      );
    }
  }

  /**
   * Requests a dispatched step's readback without waiting for it. Deno settles a buffer map on a
   * ~10 ms poll, and the map request itself waits for the GPU to finish that step: request it once
   * the step after it is dispatched, await it after one more dispatch, and the wait is hidden.
   */
  startRead(h: StepHandle): void {
    if (h.pending) return;
    h.pending = download(h.nextIds, h.logits);
    h.pending.catch(() => {}); // a step abandoned at shutdown is not an unhandled rejection
  }

  /** Reads a dispatched step's results back to the CPU. */
  async read(h: StepHandle): Promise<StepResult> {
    this.startRead(h);
    const result = await h.pending!;
    // A step's GPU outputs may still be bound by the step dispatched after it, which has surely
    // finished once this (later) step's data is back: release the older handle only now.
    this.releaseLater.forEach((t) => t !== this.prev && t.dispose());
    this.releaseLater = [h.nextIds, ...(h.logits ? [h.logits] : []), ...h.scratch];
    return result;
  }

  async close() {
    this.releaseLater.forEach((t) => t.dispose());
    this.prev = null;
    for (const c of this.caches) c.dispose();
    await this.session.release();
    await this.sampler.release();
  }
}

async function download(nextIds: ort.Tensor, logits: ort.Tensor | null): Promise<StepResult> {
  const [ids, l] = await Promise.all([nextIds.getData(), logits?.getData() ?? null]);
  return { nextIds: ids as Int32Array, logits: l as Float32Array | null };
}

/** Appends a 2-token item (past 0) whose KV lands in the reserved block `block`. */
function padStep(s: StepInputs, block: number): StepInputs {
  const T = s.inputIds.length, B = s.pastSeqlens.length, M = s.maxBlocks;
  const bt = new Int32Array((B + 1) * M);
  bt.set(s.blockTable);
  bt[B * M] = block;
  const grow = (a: Int32Array, ...v: number[]) => Int32Array.from([...a, ...v]);
  return {
    ...s,
    inputIds: grow(s.inputIds, 0, 0),
    idSrc: grow(s.idSrc, -1, -1),
    cuSeqlens: grow(s.cuSeqlens, T + 2),
    pastSeqlens: grow(s.pastSeqlens, 0),
    blockTable: bt,
  };
}

/**
 * WebGPU EP options. They must go in the execution provider entry: onnxruntime-web hands session
 * `extra` entries to ORT only after the EP (and its process-wide WebGPU context) exists.
 * RAGTIME_ORT_EP (JSON) overrides them for experiments.
 */
const DEFAULT_EP_OPTIONS: Record<string, string> = {
  // ORT's own checks on every dispatch cost CPU, the bound of a step; the graph is fixed and tested.
  validationMode: "disabled",
};

function envEpOptions(): Record<string, string> {
  const raw = Deno.env.get("RAGTIME_ORT_EP");
  return raw ? JSON.parse(raw) : {};
}

async function graphKey(
  model: LoadedModel,
  dtype: ActDType,
  maxPositions: number,
  externalMinBytes: number | undefined,
): Promise<string> {
  // Bump GRAPH_VERSION whenever buildGraph's output changes for the same weights.
  const GRAPH_VERSION = 5;
  const text = JSON.stringify({
    v: GRAPH_VERSION,
    w: model.weights.hash,
    dtype,
    maxPositions,
    ext: externalMinBytes ?? "default",
    cfg: model.config,
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).slice(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}
