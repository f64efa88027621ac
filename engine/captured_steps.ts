// Decode steps replayed from captured sessions (onnxruntime-web graph capture), so that a step
// costs one replay instead of hundreds of WebGPU dispatches recorded anew by the CPU.
//
// A captured session replays the dispatches of its first run: its shapes, its bound buffers and
// every host-side value a kernel read are frozen. So each session serves one shape, the way vLLM
// captures CUDA graphs: a decode step (every row one token) of up to `batch` rows, padded with
// dummy rows, plus the padding item every uncaptured decode step carries (2 tokens, or 32 in
// long-query mode: the same PagedAttention kernel either way, see ModelRunner.run), over a block table
// of the context limit's width; attn_meta is a constant [pad, kvCap] (upper bounds; the exact lengths come from
// the GPU inputs). The inputs are GPU buffers bound on the first run and rewritten in place before
// each replay; the weights, the KV pool and prev_ids are the runner's buffers, shared by every
// session. Dummy rows and the padding item write their KV into the pool's reserved block.

import * as ort from "onnxruntime-web/webgpu";
import type { BuiltGraph } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import type { StepInputs } from "./step_inputs.ts";
import { createStepSession, type Feeds, pinGpuBuffer, runBound, type Session } from "./sessions.ts";

export interface CaptureShape {
  /** Real rows at most (the padding item comes on top). */
  batch: number;
  /** attn_meta's bound on the longest context in a step, in tokens. */
  kvCap: number;
}

/** What every captured session shares with the runner. */
export interface SharedFeeds {
  device: GPUDevice;
  /** Weights, KV pool and prev_ids, by input name. */
  feeds: Feeds;
  vocab: number;
  /** The pool's reserved block (ModelRunner.numBlocks). */
  padBlock: number;
  /** Block table width: blocks per sequence at the context limit. */
  tableWidth: number;
  /** Tokens of the padding item: 2, or LONG_QUERY_TOKENS in long-query mode (see ModelRunner.run). */
  padTokens: number;
  /** Positions of a KV block (a padding item longer than one maps each of its blocks to padBlock). */
  blockSize: number;
}

type IntInput = "inputIds" | "idSrc" | "cuSeqlens" | "pastSeqlens" | "blockTable" | "sampleRows";

const INPUT_NAMES: Record<IntInput, string> = {
  inputIds: IO.inputIds,
  idSrc: IO.idSrc,
  cuSeqlens: IO.cuSeqlens,
  pastSeqlens: IO.pastSeqlens,
  blockTable: IO.blockTable,
  sampleRows: IO.sampleRows,
};

const IO_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

export class CapturedDecode {
  private readonly host: Record<IntInput, Int32Array>;
  private readonly buffers: GPUBuffer[] = [];
  /** Whether the first run bound the inputs (later runs need not pass them: see runBound). */
  private bound = false;

  private constructor(
    readonly shape: CaptureShape,
    private readonly session: Session,
    private readonly shared: SharedFeeds,
    private readonly inputs: Record<IntInput, GPUBuffer>,
    private readonly feeds: Feeds,
    private readonly fetches: Feeds,
  ) {
    const B = shape.batch, M = shared.tableWidth, P = shared.padTokens;
    this.host = {
      inputIds: new Int32Array(B + P),
      idSrc: new Int32Array(B + P),
      cuSeqlens: new Int32Array(B + 2),
      pastSeqlens: new Int32Array(B + 1),
      blockTable: new Int32Array((B + 1) * M),
      sampleRows: new Int32Array(B),
    };
    this.buffers.push(...Object.values(inputs), fetches[IO.logits].gpuBuffer, fetches[IO.nextIds].gpuBuffer);
  }

  /** A session for this shape with its buffers; not captured until its first run (see capture). */
  static async create(graph: BuiltGraph, shape: CaptureShape, shared: SharedFeeds): Promise<CapturedDecode> {
    const P = shared.padTokens;
    const session = await createStepSession(graph, [P, shape.kvCap], { enableGraphCapture: true });
    const B = shape.batch, M = shared.tableWidth, dev = shared.device;
    const buffer = (elems: number) =>
      pinGpuBuffer(dev.createBuffer({ size: Math.max(16, 4 * elems), usage: IO_USAGE }));
    const dims: Record<IntInput, number[]> = {
      inputIds: [B + P],
      idSrc: [B + P],
      cuSeqlens: [B + 2],
      pastSeqlens: [B + 1],
      blockTable: [B + 1, M],
      sampleRows: [B],
    };
    const inputs = {} as Record<IntInput, GPUBuffer>;
    const feeds: Feeds = { ...shared.feeds };
    for (const k of Object.keys(dims) as IntInput[]) {
      inputs[k] = buffer(dims[k].reduce((a, b) => a * b, 1));
      feeds[INPUT_NAMES[k]] = ort.Tensor.fromGpuBuffer(inputs[k], { dataType: "int32", dims: dims[k] });
    }
    const fetches: Feeds = {
      [IO.logits]: ort.Tensor.fromGpuBuffer(buffer(B * shared.vocab), {
        dataType: "float32",
        dims: [B, shared.vocab],
      }),
      [IO.nextIds]: ort.Tensor.fromGpuBuffer(buffer(B), { dataType: "int32", dims: [B] }),
    };
    return new CapturedDecode(shape, session, shared, inputs, feeds, fetches);
  }

  /** [batch, vocab] logits of the last replay (rows past the step's sampled rows are dummies). */
  get logits(): ort.Tensor {
    return this.fetches[IO.logits];
  }

  /** [batch] greedy ids of the last replay; the next replay overwrites them. */
  get nextIds(): ort.Tensor {
    return this.fetches[IO.nextIds];
  }

  /**
   * The first run: onnxruntime runs the graph, records its dispatches and replays them once. An
   * all-dummy step (every row in the reserved block) leaves the pool's real blocks untouched.
   */
  async capture(): Promise<void> {
    await this.run(null);
  }

  /**
   * Writes a decode step (each of its B <= batch rows one token, unpadded) into the bound inputs and
   * replays. Row order is kept, so next_ids row r is the step's sampled row r. `refeed` passes every
   * input again as the first run did (for probes measuring what that costs).
   */
  async run(s: StepInputs | null, refeed = false): Promise<void> {
    this.fill(s);
    const q = this.shared.device.queue;
    for (const k of Object.keys(this.host) as IntInput[]) q.writeBuffer(this.inputs[k], 0, this.host[k]);
    const replay = this.bound && !refeed ? runBound(this.session, this.fetches) : null;
    const out = await (replay ?? this.session.run(this.feeds, this.fetches));
    this.bound = true;
    // From the second run on, onnxruntime returns the bound outputs as new tensor objects.
    for (const [name, t] of Object.entries(out)) if (t !== this.fetches[name]) t.dispose();
  }

  private fill(s: StepInputs | null) {
    const { inputIds, idSrc, cuSeqlens, pastSeqlens, blockTable, sampleRows } = this.host;
    const B = this.shape.batch, M = this.shared.tableWidth;
    const real = s ? s.pastSeqlens.length : 0;
    inputIds.fill(0);
    idSrc.fill(-1);
    pastSeqlens.fill(0);
    blockTable.fill(0);
    sampleRows.fill(0);
    for (let i = 0; i <= B; i++) cuSeqlens[i] = i;
    cuSeqlens[B + 1] = B + this.shared.padTokens;
    for (let b = real; b < B; b++) blockTable[b * M] = this.shared.padBlock;
    const padColumns = Math.ceil(this.shared.padTokens / this.shared.blockSize);
    blockTable.fill(this.shared.padBlock, B * M, B * M + padColumns);
    if (!s) return;
    inputIds.set(s.inputIds);
    idSrc.set(s.idSrc);
    pastSeqlens.set(s.pastSeqlens);
    for (let b = 0; b < real; b++) {
      blockTable.set(s.blockTable.subarray(b * s.maxBlocks, (b + 1) * s.maxBlocks), b * M);
    }
    sampleRows.set(s.sampleRows);
  }

  async release(): Promise<void> {
    await this.session.release();
    for (const b of this.buffers) b.destroy();
  }
}

/**
 * Whether a step can replay a captured session: decode only (every row one token), no CPU logits,
 * rows within the largest batch, context within the largest cap. Returns its shape's index or -1.
 */
export function pickCaptured(shapes: CaptureShape[], s: StepInputs, tableWidth: number): number {
  if (shapes.length === 0 || s.wantLogits || s.maxBlocks > tableWidth) return -1;
  const B = s.pastSeqlens.length;
  let maxKv = 0;
  for (let b = 0; b < B; b++) {
    if (s.cuSeqlens[b + 1] - s.cuSeqlens[b] !== 1) return -1;
    maxKv = Math.max(maxKv, s.pastSeqlens[b] + 1);
  }
  // Shapes are sorted by batch, then kvCap: the first that fits is the smallest.
  return shapes.findIndex((c) => c.batch >= B && c.kvCap >= maxKv);
}
