// Runs one engine step on the GPU: owns the ORT sessions and the paged KV pool.
//
// run() only dispatches: its outputs stay on the GPU, so the next step can be dispatched before
// this one's tokens are read back (a readback costs ~11 ms in Deno whatever its size).

import * as ort from "onnxruntime-web/webgpu";
import { IO } from "./model/graph_io.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";
import type { ActDType } from "./model/weights.ts";
import { loadOrBuildGraph } from "./graph_cache.ts";
import { allocateKvPool, type KvPool } from "./kv_pool.ts";
import { createSessions, sessionDevice } from "./sessions.ts";

export interface RunnerOptions {
  dtype: ActDType;
  blockSize: number;
  /** KV pool size; clamped to what the adapter can bind per buffer. */
  kvCacheMb: number;
  /** Folder for built graphs keyed by weights hash and options; null disables the cache. */
  cacheDir: string | null;
  /** Weights of at least this many bytes travel as ONNX external data (default: buildGraph's). */
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

  /** Graph (cached or built), sessions over it, then the KV pool on the sessions' device. */
  static async create(model: LoadedModel, opts: RunnerOptions): Promise<ModelRunner> {
    const cfg = model.config;
    const log = opts.log ?? (() => {});
    const maxPositions = cfg.maxContext;
    const graph = await loadOrBuildGraph(model, {
      dtype: opts.dtype,
      maxPositions,
      externalMinBytes: opts.externalMinBytes,
      cacheDir: opts.cacheDir,
      progress: opts.progress,
      log,
    });
    opts.progress?.({ phase: "session" });
    const { step, sampler } = await createSessions(graph, cfg.vocabSize);
    const { device, adapterName } = await sessionDevice();
    const pool = allocateKvPool(device, cfg, opts.blockSize, opts.kvCacheMb);
    const mib = ((pool.buffers.length * pool.numBlocks * pool.bytesPerBlock) / 2 ** 20).toFixed(1);
    log(`kv cache: ${pool.numBlocks} blocks of ${opts.blockSize} tokens (${mib} MiB) on ${adapterName}`);
    return new ModelRunner(step, sampler, kvTensors(pool), cfg.numLayers, {
      numBlocks: pool.numBlocks,
      blockSize: opts.blockSize,
      maxPositions,
      nodesPerLayer: graph.nodesPerLayer,
      totalNodes: graph.totalNodes,
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
      // Only steps with a sampling row pay for the sampling head (see sampler_graph.ts).
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

/** The pool's buffers as the step's cache inputs. */
function kvTensors(pool: KvPool): ort.Tensor[] {
  return pool.buffers.map((b) => ort.Tensor.fromGpuBuffer(b, { dataType: "float16", dims: pool.dims }));
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
