// Runs one engine step on the GPU: owns the ORT sessions, the weights, the paged KV pool and the
// captured sessions (captured_steps.ts).
//
// run() only dispatches: its outputs stay on the GPU, so the next step can be dispatched before
// this one's tokens are read back (a readback costs ~11 ms on Deno's WebGPU whatever its size, ~0.1
// ms on Dawn). Each step's sampled ids are copied, right after its dispatch, into prev_ids (a fixed
// buffer every session reads the previous step's ids from) and into a staging buffer of its own that
// read() maps: a captured session's bound outputs are overwritten by its next replay, maybe before the
// read.

import * as ort from "onnxruntime-web/webgpu";
import { type BuiltGraph, type GraphOptions, plainWideLayers, stepWeightTensors } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";
import type { ActDType } from "./model/weights.ts";
import { singleSequenceStep, sliceItems, splitDecodes, type StepInputs } from "./step_inputs.ts";
export type { StepInputs };
import {
  CapturedStep,
  type CaptureShape,
  pickCaptured,
  pickCapturedPrompt,
  type SharedFeeds,
} from "./captured_steps.ts";
import { loadOrBuildGraph } from "./graph_cache.ts";
import { attentionFits, type AttentionLimits } from "./attention_limits.ts";
import { allocateKvPool, type KvPool } from "./kv_pool.ts";
import { SubmitBatch } from "./submit_batch.ts";
import {
  BATCH_INVARIANT_ITEM_TOKENS,
  ENGINE_DEFAULTS,
  LONG_QUERY_TOKENS,
  type LongQueries,
  MIN_STEP_ROWS,
  type PromptMatmul,
  resolveLongQueries,
} from "./protocol.ts";
import { bucketStep, exactStep, longQueriesEnv, splitDecodesOn, stepBucketsOn } from "./step_buckets.ts";
import { createStepSession, type Feeds, pinGpuBuffer, sessionDevice, uploadWeights } from "./sessions.ts";
import { GpuSampler, samplerParams } from "./gpu_sampler.ts";

export interface RunnerOptions {
  dtype: ActDType;
  blockSize: number;
  /** KV pool size; clamped to what the adapter can bind per buffer. */
  kvCacheMb: number;
  /** Folder for built graphs keyed by what shapes them (graph_cache.ts); null disables the cache. */
  cacheDir: string | null;
  /** Weights of at least this many bytes travel as ONNX external data (default: buildGraph's). */
  externalMinBytes?: number;
  /**
   * Weights as graph inputs fed from one set of GPU buffers (default), or as initializers that each
   * session uploads for itself (only for measuring what feeding them costs: bench/gpu/capture_probe.ts).
   */
  weightsAsInputs?: boolean;
  /** Split-K factor of the linear layers (GraphOptions.splitK); default ENGINE_DEFAULTS.matmulSplitK. */
  splitK?: number;
  /** Matmuls of prompt parts in long-query mode "prompts" (PromptMatmul); default "auto". */
  promptMatmul?: PromptMatmul;
  /** Long-query mode (ModelRunner.longQueries); default: RAGTIME_LONG_QUERIES (probes). */
  longQueries?: LongQueries | "auto";
  /** Most sampled rows a step feeds the next (the engine's max-seqs); default 256. */
  maxSeqs?: number;
  /**
   * Decode steps replayed from captured sessions (captured_steps.ts), captured by warmup(); null or
   * absent: every step runs uncaptured.
   */
  capture?: CaptureSettings | null;
  progress?: LoadProgress;
  log?: (msg: string) => void;
}

export interface CaptureSettings {
  /** Real rows of the captured decode steps (a step is padded up to the next size). */
  batchSizes: number[];
  /**
   * Bounds on the longest context of a step (tokens) below the context limit, which is always one:
   * a captured step keeps attn_meta's bound, and PagedAttention sizes its dispatches by it.
   */
  kvCaps: number[];
  /**
   * Token rows of captured prompt steps (long-query mode "prompts": a step's part on the long-query
   * kernel, up to that many rows, replayed); empty: those parts always run uncaptured.
   */
  promptRows: number[];
  /**
   * Capture every session in warmup() (the server), or each on the first step that needs it: a
   * capture costs seconds on a software adapter, where tests start many engines.
   */
  eager: boolean;
}

/**
 * Which sessions ran a step: one captured replay, one uncaptured run, or several parts (a mixed step's
 * leading decodes replayed and the rest run uncaptured, or in mode "prompts" the short kernel's items
 * and the long one's, each replayed where a captured shape fits, or a step past what one attention
 * call holds; see ModelRunner.run).
 */
export type StepPath = "captured" | "uncaptured" | "split";

/**
 * Fewest leading decodes for which a mixed step is split (see ModelRunner.run). On the H200 a decode
 * row in a mixed step costs ~1.2 ms more attention at a 300-token context than replayed (SmolLM2-135M
 * shape), and a replay of 16 rows ~6 ms.
 */
const SPLIT_MIN_DECODES = 8;

/** A part of a step as planned: a replay of `cap`, or an uncaptured run shaped with bounds `meta`. */
interface Piece {
  s: StepInputs;
  cap: CapturedStep | null;
  /** An uncaptured part of prompt tokens in long-query mode "prompts": run on the prompt graph. */
  prompt?: boolean;
  meta: [number, number] | null;
  /** Its real sampled rows (the rest are padding). */
  sampled: number;
}

/** One session's run within a step. */
interface StepPart {
  nextIds: ort.Tensor;
  /** [rows padded, vocab]: the part's sampled rows' logits come first. */
  logits: ort.Tensor | null;
  /** Sampled rows of the part (its ids' rows in the step come after the earlier parts'). */
  rows: number;
  scratch: ort.Tensor[];
}

export interface StepHandle {
  /** The step's sampled ids, copied out of the session's outputs (see ModelRunner.run). */
  ids: Staging;
  /** Wanted logits, each part's first `rows` rows in the step's order (see finish). */
  logits: { tensor: ort.Tensor; rows: number }[] | null;
  numRows: number;
  path: StepPath;
  /** The readback, once started (see ModelRunner.startRead). */
  pending: Promise<StepResult> | null;
  /** GPU outputs of the step that nobody reads (greedy ids and logits feeding the sampler). */
  scratch: ort.Tensor[];
}

/** A mappable buffer that receives one step's ids. */
interface Staging {
  buffer: GPUBuffer;
  rows: number;
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
  /**
   * A software adapter (llvmpipe): the device's work runs on the same cores as the engine, so a step
   * queued behind another overlaps nothing (LLMEngine.depth). Tests set it to exercise the GPU's rule.
   */
  softwareAdapter: boolean;
  /** Block table width of captured steps: blocks per sequence at the context limit. */
  readonly tableWidth: number;
  /** Off: every step runs uncaptured (probes compare both paths on one runner). */
  useCaptured = true;
  /** Fewest rows of an uncaptured step (MIN_STEP_ROWS; probes lower it to show why). */
  minRows = MIN_STEP_ROWS;
  /** Uncaptured steps padded to bucketed shapes, for ORT's exact-size buffer cache (step_buckets.ts). */
  bucketShapes = stepBucketsOn();
  /** A mixed step's leading decodes replayed from a captured session, apart from the rest (see run). */
  splitDecodes = splitDecodesOn();
  /**
   * Long-query mode (LongQueries): a prompt chunk goes as one attention item, and a step's part on the
   * long-query kernel has a query of at least 32 tokens ("on": every step). Read once: captured
   * sessions are built for it.
   */
  readonly longQueries: LongQueries;
  /**
   * What one PagedAttention call may hold (attention_limits.ts): steps past it run as several calls,
   * shapes past it are never captured. Tests lower it.
   */
  attnLimits: AttentionLimits;
  /** Parts of steps run as several calls because one would pass attnLimits (since start). */
  attentionSplits = 0;
  /** Off: a captured step submits as onnxruntime does, ~35 times (for probes; see submit_batch.ts). */
  batchSubmits = true;
  /** On: a captured replay is passed every input again (for probes; see sessions.ts runBound). */
  refeedCaptured = false;
  /**
   * Captured sessions from now on replay as the engine's own record of onnxruntime's replay
   * (replay_record.ts); RAGTIME_REPLAY=onnxruntime keeps onnxruntime's (for A/B runs and probes).
   */
  issueRecorded = Deno.env.get("RAGTIME_REPLAY") !== "onnxruntime";
  private readonly batch: SubmitBatch;
  private releaseLater: ort.Tensor[] = [];
  /** Free staging buffers for step ids. */
  private staging: Staging[] = [];
  private allStaging: GPUBuffer[] = [];
  /**
   * Shapes of the captured sessions: decode ones by batch then context bound (see pickCaptured), then
   * in mode "prompts" prompt ones by rows then context bound (pickCapturedPrompt).
   */
  private readonly shapes: CaptureShape[];
  /** Each shape's session once captured. */
  private captured: (CapturedStep | null)[];
  /** The graph (its weights are inputs: no weight bytes), for the captured sessions. */
  private readonly graph: BuiltGraph;
  /**
   * Prompt parts' graph and uncaptured session in long-query mode "prompts" (PromptMatmul), fed the
   * same weights; the decodes' own where they would be the same graph.
   */
  private readonly prompt: { graph: BuiltGraph; session: ort.InferenceSession };

  private constructor(
    private readonly session: ort.InferenceSession,
    private sampler: GpuSampler,
    private device: GPUDevice,
    /** Weights, KV pool and prev_ids: the inputs every step session is fed. */
    private shared: Feeds,
    /** prev_ids: the previous step's sampled ids, [maxSeqs]. */
    private prev: GPUBuffer,
    private owned: GPUBuffer[],
    private vocab: number,
    private capture: CaptureSettings | null,
    graph: BuiltGraph,
    prompt: { graph: BuiltGraph; session: ort.InferenceSession } | null,
    private log: (msg: string) => void,
    info: {
      numBlocks: number;
      blockSize: number;
      maxPositions: number;
      nodesPerLayer: number;
      totalNodes: number;
      adapterName: string;
      softwareAdapter: boolean;
      longQueries: LongQueries;
      attnLimits: AttentionLimits;
    },
  ) {
    this.attnLimits = info.attnLimits;
    this.numBlocks = info.numBlocks;
    this.blockSize = info.blockSize;
    this.maxPositions = info.maxPositions;
    this.nodesPerLayer = info.nodesPerLayer;
    this.totalNodes = info.totalNodes;
    this.adapterName = info.adapterName;
    this.softwareAdapter = info.softwareAdapter;
    this.longQueries = info.longQueries;
    this.tableWidth = Math.ceil(info.maxPositions / info.blockSize);
    this.graph = graph;
    this.prompt = prompt ?? { graph, session };
    this.shapes = capture
      ? captureShapes(capture, this.tableWidth * info.blockSize, info.longQueries === "prompts")
      : [];
    this.batch = SubmitBatch.of(device.queue);
    this.captured = this.shapes.map(() => null);
  }

  /** Graph (cached or built), sessions over it, then the KV pool on the sessions' device. */
  static async create(model: LoadedModel, opts: RunnerOptions): Promise<ModelRunner> {
    const cfg = model.config;
    const log = opts.log ?? (() => {});
    const maxPositions = cfg.maxContext;
    const graphOpts: GraphOptions = {
      dtype: opts.dtype,
      maxPositions,
      externalMinBytes: opts.externalMinBytes,
      // One copy of the weights on the GPU, fed to every session (captured ones included).
      weightsAsInputs: opts.weightsAsInputs ?? true,
      splitK: opts.splitK ?? ENGINE_DEFAULTS.matmulSplitK,
    };
    const graph = await loadOrBuildGraph(model, {
      ...graphOpts,
      cacheDir: opts.cacheDir,
      progress: opts.progress,
      log,
    });
    opts.progress?.({ phase: "session" });
    const step = await createStepSession(graph, null);
    const { device, adapterName, vendor, software } = await sessionDevice();
    const longQueries = resolveLongQueries(opts.longQueries ?? longQueriesEnv(), software);
    // Prompt parts on a graph of their own (PromptMatmul), where it differs from the decodes'.
    const promptOpts = { ...graphOpts, plainWideMatmuls: true };
    const plainLayers = longQueries === "prompts" && (opts.promptMatmul ?? "auto") === "auto" &&
        vendor.toLowerCase() !== "intel"
      ? plainWideLayers(model, promptOpts)
      : 0;
    let prompt: { graph: BuiltGraph; session: ort.InferenceSession } | null = null;
    if (plainLayers > 0) {
      const g = await loadOrBuildGraph(model, { ...promptOpts, cacheDir: opts.cacheDir, log });
      prompt = { graph: g, session: await createStepSession(g, null) };
      log(`prompt graph: ${plainLayers} linear layers as one MatMul for prompt parts (--prompt-matmul)`);
    }
    const sampler = await GpuSampler.create(device, cfg.vocabSize);
    opts.progress?.({ phase: "upload" });
    const t0 = performance.now();
    const weights = await uploadWeights(
      device,
      graph,
      graph.weights.length ? stepWeightTensors(model, graphOpts) : [],
      log,
    );
    if (graph.weights.length) {
      await device.queue.onSubmittedWorkDone();
      const mib = weights.buffers.reduce((n, b) => n + b.size, 0) / 2 ** 20;
      log(
        `weights: ${graph.weights.length} tensors (${mib.toFixed(1)} MiB; ${weights.counts.gpu} laid out ` +
          `on the GPU, ${weights.counts.cpu} on the CPU) uploaded in ${
            ((performance.now() - t0) / 1000).toFixed(2)
          } s`,
      );
    }
    const pool = allocateKvPool(device, cfg, opts.blockSize, opts.kvCacheMb);
    pool.buffers.forEach(pinGpuBuffer);
    const mib = ((pool.buffers.length * pool.numBlocks * pool.bytesPerBlock) / 2 ** 20).toFixed(1);
    log(`kv cache: ${pool.numBlocks} blocks of ${opts.blockSize} tokens (${mib} MiB) on ${adapterName}`);
    const maxSeqs = Math.max(opts.maxSeqs ?? 256, ...(opts.capture?.batchSizes ?? []));
    const prev = pinGpuBuffer(device.createBuffer({
      size: 4 * maxSeqs,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    }));
    const shared: Feeds = {
      ...weights.feeds,
      [IO.prevIds]: ort.Tensor.fromGpuBuffer(prev, { dataType: "int32", dims: [maxSeqs] }),
    };
    kvTensors(pool).forEach((t, i) => {
      shared[i % 2 === 0 ? IO.keyCache(i >> 1) : IO.valueCache(i >> 1)] = t;
    });
    const owned = [...weights.buffers, ...pool.buffers, prev];
    return new ModelRunner(
      step,
      sampler,
      device,
      shared,
      prev,
      owned,
      cfg.vocabSize,
      opts.capture ?? null,
      graph,
      prompt,
      log,
      {
        numBlocks: pool.numBlocks,
        blockSize: opts.blockSize,
        maxPositions,
        nodesPerLayer: graph.nodesPerLayer,
        totalNodes: graph.totalNodes,
        adapterName,
        softwareAdapter: software,
        longQueries,
        attnLimits: {
          numHeads: cfg.numHeads,
          kvHeads: cfg.numKvHeads,
          headSize: pool.dims[3],
          bindLimit: Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize),
          maxStorageBuffers: device.limits.maxStorageBuffersPerShaderStage,
        },
      },
    );
  }

  /**
   * Dispatches one step. The previous step's next_ids feed this step's idSrc rows.
   *
   * PagedAttention on WebGPU picks its kernel from the step's longest query: 1 token, 2-31, or 32
   * and more, and the kernels round differently in fp16, so a sequence's logits would depend on
   * what shares its step. The engine cuts prefill chunks into items of at most 31 tokens
   * (BATCH_INVARIANT_ITEM_TOKENS) and a step of decodes alone gets a 2-token padding item in the
   * reserved block: every step uses one kernel. Long-query mode (LongQueries) moves prompt chunks,
   * or every item, to the 32+ kernel, padding a part whose queries are all shorter to 32 instead.
   *
   * The matmuls round differently on few rows too (see MIN_STEP_ROWS): every step computes at least
   * that many token rows and sampled rows, padded as above and with repeats of sampled row 0.
   */
  async run(s: StepInputs): Promise<StepHandle> {
    const B = s.pastSeqlens.length, longFrom = s.longFrom ?? B;
    const prompts = longFrom < B;
    let pieces: Piece[];
    if (prompts) {
      // Long-query mode "prompts": the short kernel's items (decodes first), then the prompt chunks on
      // the long one. No sequence has items in both, so the order between the parts is free.
      const short = longFrom > 0 ? sliceItems(s, 0, longFrom) : null;
      const long = sliceItems(s, longFrom, B);
      pieces = [
        ...(short ? await this.plan(short.part, false, short.sampled) : []),
        ...await this.plan(long.part, true, long.sampled),
      ];
    } else {
      // A mixed step's decodes in PagedAttention's padded layout cost as many query rows as its
      // longest item (31), each over its whole context: replayed apart, they cost one row.
      // In long-query mode "on" a decode padded to a prefill item's length (up to a whole prompt) costs
      // that many rows: split at any decode, on any GPU. (Mode "prompts" always splits, above.)
      const allLong = this.longQueries === "on";
      const c = this.useCaptured ? pickCaptured(this.shapes, s, this.tableWidth, this.fits) : -1;
      const split = c < 0 && this.useCaptured && (this.splitDecodes || (allLong && !this.softwareAdapter))
        ? splitDecodes(s, allLong ? 1 : SPLIT_MIN_DECODES)
        : null;
      const dc = split ? pickCaptured(this.shapes, split.decode, this.tableWidth, this.fits) : -1;
      if (c >= 0) {
        pieces = [{ s, cap: await this.capturedSession(c), meta: null, sampled: s.sampleRows.length }];
      } else if (split && dc >= 0) {
        const decode = { s: split.decode, sampled: split.decode.sampleRows.length };
        pieces = [
          { ...decode, cap: await this.capturedSession(dc), meta: null },
          ...await this.plan(split.rest, allLong, split.rest.sampleRows.length),
        ];
      } else {
        pieces = await this.plan(s, allLong, s.sampleRows.length);
      }
    }
    const path: StepPath = pieces.length > 1 ? "split" : pieces[0].cap ? "captured" : "uncaptured";
    const dispatch = async () => {
      // Every part reads prev_ids before finish() overwrites it with this step's ids.
      const parts: StepPart[] = [];
      for (const p of pieces) parts.push(await this.runPart(p));
      return this.finish(parts, s.wantLogits, path);
    };
    return prompts || pieces.some((p) => p.cap) ? await this.batched(dispatch) : await dispatch();
  }

  /**
   * How a part of a step runs: one replay of a captured session that fits it, else one uncaptured
   * run, or, past what one PagedAttention call holds (attention_limits.ts), several over its items
   * in order, each planned the same way. `long`: on the long-query kernel (with mode "on", any part).
   */
  private async plan(s: StepInputs, long: boolean, sampled: number): Promise<Piece[]> {
    const c = !this.useCaptured
      ? -1
      : long && this.longQueries === "prompts"
      ? pickCapturedPrompt(this.shapes, s, this.tableWidth, this.fits)
      : pickCaptured(this.shapes, s, this.tableWidth, this.fits);
    if (c >= 0) return [{ s, cap: await this.capturedSession(c), meta: null, sampled }];
    const longQuery = long || this.longQueries === "on" ? LONG_QUERY_TOKENS : 0;
    const shaped = this.bucketShapes
      ? bucketStep(s, this.numBlocks, this.blockSize, this.maxPositions, this.minRows, longQuery)
      : exactStep(s, this.numBlocks, this.minRows, longQuery || 2, this.blockSize);
    const B = s.pastSeqlens.length;
    if (
      B < 2 || attentionFits(this.attnLimits, shaped.s.pastSeqlens.length, shaped.attnMeta, longQuery > 0)
    ) {
      const prompt = long && this.longQueries === "prompts";
      return [{ s: shaped.s, cap: null, meta: shaped.attnMeta, sampled, prompt }];
    }
    this.attentionSplits++;
    // A part that samples nothing carries one dummy row (sliceItems), which stays a dummy.
    const a = sliceItems(s, 0, B >> 1), b = sliceItems(s, B >> 1, B);
    return [
      ...await this.plan(a.part, long, sampled && a.sampled),
      ...await this.plan(b.part, long, sampled && b.sampled),
    ];
  }

  /** Whether a captured shape's calls stay within attention's limits (else it is never captured). */
  private readonly fits = (c: CaptureShape): boolean => {
    if (c.kind === "prompt") return attentionFits(this.attnLimits, c.batch, [c.query!, c.kvCap], true);
    return attentionFits(
      this.attnLimits,
      c.batch + 1,
      [this.padTokens, c.kvCap],
      this.longQueries === "on",
    );
  };

  /**
   * Longest attention item the engine may send for a span of prompt tokens or of others (decodes, a
   * preempted sequence's recomputed outputs); LLMEngine.buildInputs cuts spans to it.
   */
  itemTokens(prompt: boolean): number {
    return this.longKernel(prompt) ? Infinity : BATCH_INVARIANT_ITEM_TOKENS;
  }

  /** Whether such a span runs on the long-query kernel. */
  longKernel(prompt: boolean): boolean {
    return this.longQueries === "on" || (prompt && this.longQueries === "prompts");
  }

  /** Tokens of the padding item of a (captured) step whose queries are all shorter (see run). */
  private get padTokens(): number {
    return this.longQueries === "on" ? LONG_QUERY_TOKENS : 2;
  }

  /** The session of shapes[i], captured now if this is its first use. */
  private async capturedSession(i: number): Promise<CapturedStep> {
    return this.captured[i] ?? await this.captureSession(i);
  }

  /** A captured step's ~35 submits (the replay's, then the copies after it) go to the queue as one. */
  private batched(f: () => Promise<StepHandle>): Promise<StepHandle> {
    return this.batchSubmits ? this.batch.run(f) : f();
  }

  /** Runs one planned piece; its `sampled` rows' ids stay on the GPU until finish() copies them. */
  private async runPart({ s, cap, meta, sampled, prompt }: Piece): Promise<StepPart> {
    let nextIds: ort.Tensor, logits: ort.Tensor | null;
    const scratch: ort.Tensor[] = [];
    let rows: number;
    if (cap) {
      await cap.run(s, this.refeedCaptured);
      // The bound outputs belong to the session: never disposed, overwritten by its next replay.
      nextIds = cap.nextIds;
      logits = cap.logits;
      rows = cap.sampleRows;
    } else {
      rows = s.sampleRows.length;
      const session = prompt ? this.prompt.session : this.session;
      ({ nextIds, logits } = await this.runUncaptured(session, s, meta!));
      scratch.push(nextIds);
      if (logits && !s.wantLogits) scratch.push(logits);
    }
    if (s.sampleU.some((u) => u >= 0)) {
      // Only steps with a sampling row pay for the sampling kernel (gpu_sampler.ts).
      const ids = this.sampler.sample(
        logits!.gpuBuffer,
        nextIds.gpuBuffer,
        rows,
        samplerParams(s.sampleU, s.invTemp, s.sampleFilters, rows),
        s.sampleEdits,
        this.prev,
      );
      nextIds = ort.Tensor.fromGpuBuffer(ids, {
        dataType: "int32",
        dims: [rows],
        dispose: () => ids.destroy(),
      });
      scratch.push(nextIds);
    }
    return { nextIds, logits, rows: sampled, scratch };
  }

  /** The step's ids, its parts' in order, into prev_ids (the next step's inputs) and a staging buffer. */
  private finish(parts: StepPart[], wantLogits: boolean, path: StepPath): StepHandle {
    const S = parts.reduce((n, p) => n + p.rows, 0);
    const ids = this.takeStaging(Math.max(1, S));
    const enc = this.device.createCommandEncoder();
    const prevRows = this.prev.size / 4;
    let at = 0;
    for (const p of parts) {
      if (p.rows === 0) continue;
      const fed = Math.min(p.rows, prevRows - at);
      if (fed > 0) enc.copyBufferToBuffer(p.nextIds.gpuBuffer, 0, this.prev, 4 * at, 4 * fed);
      enc.copyBufferToBuffer(p.nextIds.gpuBuffer, 0, ids.buffer, 4 * at, 4 * p.rows);
      at += p.rows;
    }
    this.device.queue.submit([enc.finish()]);
    return {
      ids,
      logits: wantLogits
        ? parts.flatMap((p) => (p.rows > 0 && p.logits ? [{ tensor: p.logits, rows: p.rows }] : []))
        : null,
      numRows: S,
      path,
      pending: null,
      scratch: parts.flatMap((p) => p.scratch),
    };
  }

  /** An uncaptured step, shaped by bucketStep or exactStep; `meta`: PagedAttention's bounds for it. */
  private async runUncaptured(
    session: ort.InferenceSession,
    s: StepInputs,
    meta: [number, number],
  ): Promise<{ nextIds: ort.Tensor; logits: ort.Tensor | null }> {
    const T = s.inputIds.length, B = s.pastSeqlens.length, S = s.sampleRows.length;
    const feeds: Record<string, ort.Tensor> = {
      ...this.shared,
      [IO.inputIds]: new ort.Tensor("int32", s.inputIds, [T]),
      [IO.idSrc]: new ort.Tensor("int32", s.idSrc, [T]),
      [IO.cuSeqlens]: new ort.Tensor("int32", s.cuSeqlens, [B + 1]),
      [IO.pastSeqlens]: new ort.Tensor("int32", s.pastSeqlens, [B]),
      [IO.blockTable]: new ort.Tensor("int32", s.blockTable, [B, s.maxBlocks]),
      // Host-side bounds spare PagedAttention a metadata readback in every layer.
      [IO.attnMeta]: new ort.Tensor("int32", Int32Array.from(meta), [2]),
      [IO.sampleRows]: new ort.Tensor("int32", s.sampleRows, [S]),
    };
    const sampling = s.sampleU.some((u) => u >= 0);
    const out = await session.run(
      feeds,
      sampling || s.wantLogits ? [IO.nextIds, IO.logits] : [IO.nextIds],
    );
    return { nextIds: out[IO.nextIds], logits: out[IO.logits] ?? null };
  }

  /** A free staging buffer for `rows` ids (returned by read()). */
  private takeStaging(rows: number): Staging {
    const i = this.staging.findIndex((st) => st.buffer.size >= 4 * rows);
    if (i >= 0) return { buffer: this.staging.splice(i, 1)[0].buffer, rows };
    const buffer = this.device.createBuffer({
      size: 4 * Math.max(rows, this.prev.size / 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.allStaging.push(buffer);
    return { buffer, rows };
  }

  /**
   * Compiles the step's shaders before the first request pays for it: one-token steps into the
   * reserved block, greedy and sampled. Then, with eager capture, captures every decode session.
   */
  async warmup(): Promise<void> {
    // These compile the uncaptured step's shaders: a captured session replays its own.
    const useCaptured = this.useCaptured;
    this.useCaptured = false;
    for (const u of [-1, 0.5]) {
      await this.read(
        await this.run({
          ...singleSequenceStep(Int32Array.of(0), 0, Int32Array.of(this.numBlocks)),
          sampleU: Float32Array.of(u),
          wantLogits: u >= 0,
        }),
      );
    }
    if (this.longQueries !== "off" && !this.softwareAdapter) {
      // A prompt of a few hundred tokens on the long-query kernel, into the reserved block: its shaders
      // (and the matmuls' for many rows) compile here, not in the first long prompt's step, which took
      // ~0.4 s longer on the H200 once small prompts replayed captured sessions (docs/BENCHMARKS.md).
      // On a software adapter compiling costs little and the step itself seconds.
      const n = Math.min(WARMUP_PROMPT_TOKENS, this.maxPositions), cols = Math.ceil(n / this.blockSize);
      await this.read(
        await this.run(
          singleSequenceStep(new Int32Array(n), 0, new Int32Array(cols).fill(this.numBlocks), 0),
        ),
      );
    }
    this.useCaptured = useCaptured;
    if (this.capture?.eager) {
      const t0 = performance.now();
      const usable = this.shapes.filter(this.fits), left = this.shapes.filter((x) => !this.fits(x));
      for (let i = 0; i < this.shapes.length; i++) {
        if (!this.captured[i] && usable.includes(this.shapes[i])) await this.captureSession(i, false);
      }
      // Wait for the captures so that the time logged is theirs.
      await this.device.queue.onSubmittedWorkDone();
      const of = (kind: CaptureShape["kind"], k: "batch" | "rows") => [
        ...new Set(usable.filter((x) => x.kind === kind).map((x) => x[k])),
      ];
      const caps = [...new Set(usable.map((x) => x.kvCap))];
      const prompts = of("prompt", "rows");
      // Rows without the largest bound (MID_PROMPT_MAX_BOUND): the log says so.
      const top = Math.max(...caps);
      const cut = prompts.filter((r) => !this.shapes.some((x) => x.rows === r && x.kvCap === top));
      this.log(
        `graph capture: ${usable.length} sessions (decode batch ${of("decode", "batch").join(",")}` +
          `${prompts.length ? `, prompt rows ${prompts.join(",")}` : ""} × context bound ${caps.join(",")}` +
          `${cut.length ? `; prompt rows ${cut.join(",")} up to bound ${MID_PROMPT_MAX_BOUND}` : ""}) ` +
          `captured in ${((performance.now() - t0) / 1000).toFixed(2)} s` +
          this.replayNote(this.captured.filter((c) => c !== null)),
      );
      if (left.length) {
        this.log(
          `graph capture: ${left.length} sessions past what one attention call holds left out (${
            left.map((x) => `${x.kind} ${x.kind === "decode" ? x.batch : x.rows} × ${x.kvCap}`).join(", ")
          }); steps of their size run uncaptured, in several calls where needed`,
        );
      }
    }
  }

  /**
   * Creates and captures the session of shapes[i]. Its capture run writes only the reserved block,
   * so it may run between steps in flight.
   */
  private async captureSession(i: number, log = true): Promise<CapturedStep> {
    const t0 = performance.now();
    const shared: SharedFeeds = {
      device: this.device,
      feeds: this.shared,
      vocab: this.vocab,
      padBlock: this.numBlocks,
      tableWidth: this.tableWidth,
      padTokens: this.padTokens,
      blockSize: this.blockSize,
      issueRecorded: this.issueRecorded,
    };
    const shape = this.shapes[i];
    const c = await CapturedStep.create(
      shape.kind === "prompt" ? this.prompt.graph : this.graph,
      shape,
      shared,
    );
    await c.capture();
    this.captured[i] = c;
    if (log) {
      const what = c.shape.kind === "decode"
        ? `decode session batch ${c.shape.batch}`
        : `prompt session rows ${c.shape.rows}`;
      this.log(
        `graph capture: ${what} × context bound ${c.shape.kvCap} captured ` +
          `in ${((performance.now() - t0) / 1000).toFixed(2)} s${this.replayNote([c])}`,
      );
    }
    return c;
  }

  /** Log text: which replays onnxruntime issues, where the engine was to issue its records. */
  private replayNote(caps: CapturedStep[]): string {
    if (!this.issueRecorded) return "; replayed by onnxruntime";
    const left = caps.filter((c) => c.recordedDispatches === null).length;
    return left ? `; ${left} replayed by onnxruntime (no record)` : "";
  }

  /**
   * Requests a dispatched step's readback without waiting for it. Deno settles a buffer map on a
   * ~10 ms poll, and the map request itself waits for the GPU to finish that step: request it once
   * the step after it is dispatched, await it after one more dispatch, and the wait is hidden.
   */
  startRead(h: StepHandle): void {
    if (h.pending) return;
    h.pending = download(h.ids, h.logits);
    h.pending.catch(() => {}); // a step abandoned at shutdown is not an unhandled rejection
  }

  /** Reads a dispatched step's results back to the CPU. */
  async read(h: StepHandle): Promise<StepResult> {
    this.startRead(h);
    const result = await h.pending!;
    this.staging.push(h.ids);
    // A step's GPU outputs may still be read by the step dispatched after it, which has surely
    // finished once this (later) step's data is back: release the older tensors only now.
    this.releaseLater.forEach((t) => t.dispose());
    this.releaseLater = [...(h.logits ?? []).map((l) => l.tensor), ...h.scratch];
    return result;
  }

  /** The KV pool's buffers, layer i's K at 2i and V at 2i + 1 (for tests and tools that inspect the cache). */
  kvBuffers(): GPUBuffer[] {
    const out: GPUBuffer[] = [];
    for (let i = 0; this.shared[IO.keyCache(i)]; i++) {
      out.push(this.shared[IO.keyCache(i)].gpuBuffer, this.shared[IO.valueCache(i)].gpuBuffer);
    }
    return out;
  }

  /**
   * Most tokens a step's long-query part may hold and replay a captured prompt session of at most
   * PROMPT_CUT_ROWS rows: that shape's rows less one per item, as every item the part leaves spare
   * needs a padding token (pickCapturedPrompt). The scheduler cuts a short prefill backlog to this.
   * 0: none, or a software adapter, where a replay's padding rows cost as much compute as real ones
   * on the engine's own cores (bench/gpu/prompt_probe.ts).
   */
  get capturedPromptTokens(): number {
    return this.promptTokens(PROMPT_CUT_ROWS);
  }

  /** The same for the largest captured prompt shape: the first prefill step of a burst (Scheduler). */
  get burstPromptTokens(): number {
    return this.promptTokens(Infinity);
  }

  private promptTokens(maxRows: number): number {
    if (this.softwareAdapter) return 0;
    return Math.max(
      0,
      ...this.shapes.map((c) => (c.kind === "prompt" && c.rows! <= maxRows ? c.rows! - c.batch : 0)),
    );
  }

  /** Shapes of the sessions captured so far. */
  get capturedShapes(): CaptureShape[] {
    return this.captured.flatMap((c) => (c ? [c.shape] : []));
  }

  async close() {
    this.releaseLater.forEach((t) => t.dispose());
    for (const c of this.captured) await c?.release();
    this.captured = this.shapes.map(() => null);
    await this.session.release();
    if (this.prompt.session !== this.session) await this.prompt.session.release();
    this.sampler.destroy();
    for (const b of [...this.owned, ...this.allStaging]) b.destroy();
  }
}

/**
 * Every (batch, context bound) pair, by batch then bound; the context limit is always a bound. With
 * `prompts` (long-query mode "prompts"), then every (prompt rows, bound) pair, by rows then bound,
 * rows between the smallest and PROMPT_CUT_ROWS only up to MID_PROMPT_MAX_BOUND.
 */
export function captureShapes(c: CaptureSettings, limit: number, prompts: boolean): CaptureShape[] {
  const caps = [...new Set([...c.kvCaps.filter((k) => k > 0 && k < limit), limit])].sort((a, b) => a - b);
  // A captured step samples `batch` rows: at least MIN_STEP_ROWS, like every step.
  const batches = [...new Set(c.batchSizes.map((b) => Math.max(b, MIN_STEP_ROWS)))].sort((a, b) => a - b);
  const decode = batches.flatMap((batch) =>
    caps.map((kvCap): CaptureShape => ({ kind: "decode", batch, kvCap }))
  );
  if (!prompts) return decode;
  const rows = [...new Set(c.promptRows.filter((r) => r >= PROMPT_QUERY))].sort((a, b) => a - b);
  const boundsOf = (r: number) =>
    caps.filter((k) => k <= MID_PROMPT_MAX_BOUND || r === rows[0] || r >= PROMPT_CUT_ROWS);
  // Items of at most PROMPT_QUERY tokens, twice as many as the rows need: room for padding items.
  return [
    ...decode,
    ...rows.flatMap((r) =>
      boundsOf(r).map((kvCap): CaptureShape => ({
        kind: "prompt",
        rows: r,
        query: PROMPT_QUERY,
        batch: Math.max(2, Math.ceil((2 * r) / PROMPT_QUERY)),
        kvCap,
      }))
    ),
  ];
}

/**
 * Longest attention item of a captured prompt step: PagedAttention sizes its padded query buffers
 * and dispatches by items x this bound, so a chunk is cut into items of this many tokens.
 */
const PROMPT_QUERY = 64;

/**
 * Largest context bound captured for prompt rows between the smallest and PROMPT_CUT_ROWS: a prompt
 * session's attention scratch grows with rows x bound (1B: 256 and 384 rows at the 32752 bound held
 * ~1.5 GiB), and past it such steps take the next larger shape, as they did before those rows were
 * captured (docs/BENCHMARKS.md, session 28).
 */
const MID_PROMPT_MAX_BOUND = 4096;

/**
 * Rows of the largest captured prompt shape a short prefill backlog is cut to: chat bursts cut to
 * the 2048-row shape were slower than in 496-token steps (its replays compute their padding rows;
 * docs/BENCHMARKS.md, session 15), so larger shapes serve only a burst's first step.
 */
const PROMPT_CUT_ROWS = 512;

/** Tokens of the uncaptured long-kernel step warmup() runs (more than a captured prompt step holds). */
const WARMUP_PROMPT_TOKENS = 640;

/** The pool's buffers as the step's cache inputs. */
function kvTensors(pool: KvPool): ort.Tensor[] {
  return pool.buffers.map((b) => ort.Tensor.fromGpuBuffer(b, { dataType: "float16", dims: pool.dims }));
}

async function download(ids: Staging, logits: StepHandle["logits"]): Promise<StepResult> {
  const readIds = async () => {
    await ids.buffer.mapAsync(GPUMapMode.READ, 0, 4 * ids.rows);
    const out = new Int32Array(ids.buffer.getMappedRange(0, 4 * ids.rows).slice(0));
    ids.buffer.unmap();
    return out;
  };
  // A step's parts each have their logits: their sampled rows, concatenated in the step's order.
  const readLogits = async () => {
    if (!logits) return null;
    const data = await Promise.all(logits.map((l) => l.tensor.getData() as Promise<Float32Array>));
    if (data.length === 1) return data[0];
    const V = data[0].length / logits[0].tensor.dims[0];
    const out = new Float32Array(V * logits.reduce((n, l) => n + l.rows, 0));
    let at = 0;
    data.forEach((d, i) => {
      out.set(d.subarray(0, logits[i].rows * V), at);
      at += logits[i].rows * V;
    });
    return out;
  };
  const [nextIds, l] = await Promise.all([readIds(), readLogits()]);
  return { nextIds, logits: l };
}
