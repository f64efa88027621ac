// Decode steps, and in long-query mode "prompts" small prompt parts, replayed from captured sessions
// (onnxruntime-web graph capture), so that a step costs one replay instead of hundreds of WebGPU
// dispatches recorded anew by the CPU.
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
//
// A prompt shape ("prompt") serves the long-query kernel's part of a step (LongQueries "prompts"):
// `rows` token rows in `items` attention items of at most `query` tokens (attn_meta [query, kvCap]),
// each chunk cut into items of that length (that kernel gives a token the same bits however its
// prompt is cut: kv_probe --long), the rows left over spread over padding items in the reserved
// block. An uncaptured long part costs ~50-100 ms of CPU dispatch on the H200 whatever its size
// (SmolLM2-135M shape): a chat turn's few new tokens after a cached prefix paid that in full.

import * as ort from "onnxruntime-web/webgpu";
import type { BuiltGraph } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import type { StepInputs } from "./step_inputs.ts";
import { MIN_STEP_ROWS } from "./protocol.ts";
import { attentionBounds } from "./step_buckets.ts";
import { ReplayRecord } from "./replay_record.ts";
import { createStepSession, type Feeds, pinGpuBuffer, runBound, type Session } from "./sessions.ts";

export interface CaptureShape {
  kind: "decode" | "prompt";
  /** decode: real rows at most (the padding item comes on top). prompt: attention items, padding included. */
  batch: number;
  /** attn_meta's bound on the longest context in a step, in tokens. */
  kvCap: number;
  /** prompt: token rows, padding included. */
  rows?: number;
  /** prompt: the longest item (attn_meta's query bound). */
  query?: number;
}

/** Token rows, items and sampled rows of a shape's step, and attn_meta's query bound. */
function dimsOf(shape: CaptureShape, padTokens: number) {
  if (shape.kind === "decode") {
    return { T: shape.batch + padTokens, B: shape.batch + 1, S: shape.batch, query: padTokens };
  }
  return { T: shape.rows!, B: shape.batch, S: Math.max(MIN_STEP_ROWS, shape.batch), query: shape.query! };
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
  /** Replays issued by the engine from a record of onnxruntime's (replay_record.ts), where one can be made. */
  issueRecorded: boolean;
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

export class CapturedStep {
  private readonly host: Record<IntInput, Int32Array>;
  private readonly buffers: GPUBuffer[] = [];
  /** Whether the first run bound the inputs (later runs need not pass them: see runBound). */
  private bound = false;
  /** onnxruntime's replay as recorded at capture, issued in its place; null: onnxruntime replays. */
  private record: ReplayRecord | null = null;

  private constructor(
    readonly shape: CaptureShape,
    private readonly session: Session,
    private readonly shared: SharedFeeds,
    private readonly inputs: Record<IntInput, GPUBuffer>,
    private readonly feeds: Feeds,
    private readonly fetches: Feeds,
  ) {
    const { T, B, S } = dimsOf(shape, shared.padTokens), M = shared.tableWidth;
    this.host = {
      inputIds: new Int32Array(T),
      idSrc: new Int32Array(T),
      cuSeqlens: new Int32Array(B + 1),
      pastSeqlens: new Int32Array(B),
      blockTable: new Int32Array(B * M),
      sampleRows: new Int32Array(S),
    };
    this.buffers.push(...Object.values(inputs), fetches[IO.logits].gpuBuffer, fetches[IO.nextIds].gpuBuffer);
  }

  /** A session for this shape with its buffers; not captured until its first run (see capture). */
  static async create(graph: BuiltGraph, shape: CaptureShape, shared: SharedFeeds): Promise<CapturedStep> {
    const { T, B, S, query } = dimsOf(shape, shared.padTokens);
    const session = await createStepSession(graph, [query, shape.kvCap], { enableGraphCapture: true });
    const M = shared.tableWidth, dev = shared.device;
    const buffer = (elems: number) =>
      pinGpuBuffer(dev.createBuffer({ size: Math.max(16, 4 * elems), usage: IO_USAGE }));
    const dims: Record<IntInput, number[]> = {
      inputIds: [T],
      idSrc: [T],
      cuSeqlens: [B + 1],
      pastSeqlens: [B],
      blockTable: [B, M],
      sampleRows: [S],
    };
    const inputs = {} as Record<IntInput, GPUBuffer>;
    const feeds: Feeds = { ...shared.feeds };
    for (const k of Object.keys(dims) as IntInput[]) {
      inputs[k] = buffer(dims[k].reduce((a, b) => a * b, 1));
      feeds[INPUT_NAMES[k]] = ort.Tensor.fromGpuBuffer(inputs[k], { dataType: "int32", dims: dims[k] });
    }
    const fetches: Feeds = {
      [IO.logits]: ort.Tensor.fromGpuBuffer(buffer(S * shared.vocab), {
        dataType: "float32",
        dims: [S, shared.vocab],
      }),
      [IO.nextIds]: ort.Tensor.fromGpuBuffer(buffer(S), { dataType: "int32", dims: [S] }),
    };
    return new CapturedStep(shape, session, shared, inputs, feeds, fetches);
  }

  /** Sampled rows of every replay (the step's own first, then dummies). */
  get sampleRows(): number {
    return this.host.sampleRows.length;
  }

  /** [sampleRows, vocab] logits of the last replay (rows past the step's sampled rows are dummies). */
  get logits(): ort.Tensor {
    return this.fetches[IO.logits];
  }

  /** [sampleRows] greedy ids of the last replay; the next replay overwrites them. */
  get nextIds(): ort.Tensor {
    return this.fetches[IO.nextIds];
  }

  /**
   * The first run: onnxruntime runs the graph, records its dispatches and replays them once. Then,
   * with issueRecorded, one more replay is recorded call by call for the engine to issue from now on.
   * All-dummy steps (every row in the reserved block) leave the pool's real blocks untouched.
   */
  async capture(): Promise<void> {
    await this.run(null);
    if (!this.shared.issueRecorded) return;
    this.write(null);
    this.record = await ReplayRecord.record(this.shared.device, () => this.replay());
  }

  /** Dispatches of the recorded replay the engine issues; null where onnxruntime replays. */
  get recordedDispatches(): number | null {
    return this.record?.dispatches ?? null;
  }

  /**
   * Writes a step that fits the shape (pickCaptured, pickCapturedPrompt; unpadded) into the bound
   * inputs and replays. Sampled row order is kept, so next_ids row r is the step's sampled row r.
   * `refeed` passes every input again as the first run did (for probes measuring what that costs).
   */
  async run(s: StepInputs | null, refeed = false): Promise<void> {
    this.write(s);
    if (this.record && !refeed) this.record.issue(this.shared.device);
    else await this.replay(refeed);
  }

  /** The step's inputs into the bound input buffers. */
  private write(s: StepInputs | null) {
    if (this.shape.kind === "decode") this.fill(s);
    else this.fillPrompt(s);
    const q = this.shared.device.queue;
    for (const k of Object.keys(this.host) as IntInput[]) q.writeBuffer(this.inputs[k], 0, this.host[k]);
  }

  /** onnxruntime's run (the first captures) over the inputs as written. */
  private async replay(refeed = false): Promise<void> {
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

  /**
   * A prompt part: its chunks cut into items of at most the shape's query bound, then padding items
   * (each at least a token and at most that bound, in the reserved block through every table column).
   */
  private fillPrompt(s: StepInputs | null) {
    const { inputIds, idSrc, cuSeqlens, pastSeqlens, blockTable, sampleRows } = this.host;
    const T = inputIds.length, B = pastSeqlens.length, M = this.shared.tableWidth;
    const items = s ? cutItems(s, this.shape.query!) : [];
    const real = s ? s.inputIds.length : 0;
    inputIds.fill(0);
    idSrc.fill(-1);
    sampleRows.fill(0);
    blockTable.fill(this.shared.padBlock);
    if (s) {
      inputIds.set(s.inputIds);
      idSrc.set(s.idSrc);
      sampleRows.set(s.sampleRows);
    }
    cuSeqlens[0] = 0;
    items.forEach(([b, past, n], i) => {
      cuSeqlens[i + 1] = cuSeqlens[i] + n;
      pastSeqlens[i] = past;
      blockTable.set(s!.blockTable.subarray(b * s!.maxBlocks, (b + 1) * s!.maxBlocks), i * M);
      blockTable.fill(0, i * M + s!.maxBlocks, (i + 1) * M);
    });
    const padItems = B - items.length, pad = T - real;
    for (let i = 0; i < padItems; i++) {
      const at = items.length + i;
      cuSeqlens[at + 1] = cuSeqlens[at] + Math.floor(pad / padItems) + (i < pad % padItems ? 1 : 0);
      pastSeqlens[at] = 0;
    }
  }

  async release(): Promise<void> {
    this.record = null;
    await this.session.release();
    for (const b of this.buffers) b.destroy();
  }
}

/** A step's items cut to at most `query` tokens each, as [item, past, tokens], in order. */
function cutItems(s: StepInputs, query: number): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let b = 0; b < s.pastSeqlens.length; b++) {
    const n = s.cuSeqlens[b + 1] - s.cuSeqlens[b];
    for (let d = 0; d < n; d += query) out.push([b, s.pastSeqlens[b] + d, Math.min(query, n - d)]);
  }
  return out;
}

/**
 * Whether a long-query part of a step (LongQueries "prompts") can replay a captured prompt session:
 * no CPU logits, its items cut to the shape's query bound plus at least one padding token per spare
 * item within its items and rows, and its contexts within its bound; among the `usable` shapes.
 * Returns its shape's index or -1.
 */
export function pickCapturedPrompt(
  shapes: CaptureShape[],
  s: StepInputs,
  tableWidth: number,
  usable: (c: CaptureShape) => boolean = () => true,
): number {
  if (s.wantLogits || s.maxBlocks > tableWidth) return -1;
  const T = s.inputIds.length, S = s.sampleRows.length, [, maxKv] = attentionBounds(s);
  // Items once cut, by query bound (the shapes share one): counted, not built, on this per-step path.
  const cut = new Map<number, number>();
  const itemsAt = (q: number) => {
    let n = cut.get(q);
    if (n === undefined) {
      n = 0;
      for (let b = 0; b < s.pastSeqlens.length; b++) {
        n += Math.ceil((s.cuSeqlens[b + 1] - s.cuSeqlens[b]) / q);
      }
      cut.set(q, n);
    }
    return n;
  };
  return shapes.findIndex((c) => {
    if (c.kind !== "prompt" || c.kvCap < maxKv || S > Math.max(MIN_STEP_ROWS, c.batch) || !usable(c)) {
      return false;
    }
    const spare = c.batch - itemsAt(c.query!), pad = c.rows! - T;
    return spare >= 0 && pad >= spare && pad <= spare * c.query!;
  });
}

/**
 * Whether a step can replay a captured session: decode only (every row one token), no CPU logits,
 * rows within the largest batch, context within the largest cap, among the `usable` shapes. Returns its
 * shape's index or -1.
 */
export function pickCaptured(
  shapes: CaptureShape[],
  s: StepInputs,
  tableWidth: number,
  usable: (c: CaptureShape) => boolean = () => true,
): number {
  if (shapes.length === 0 || s.wantLogits || s.maxBlocks > tableWidth) return -1;
  const B = s.pastSeqlens.length;
  let maxKv = 0;
  for (let b = 0; b < B; b++) {
    if (s.cuSeqlens[b + 1] - s.cuSeqlens[b] !== 1) return -1;
    maxKv = Math.max(maxKv, s.pastSeqlens[b] + 1);
  }
  // Shapes are sorted by batch, then kvCap: the first that fits is the smallest.
  return shapes.findIndex((c) => c.kind === "decode" && c.batch >= B && c.kvCap >= maxKv && usable(c));
}
