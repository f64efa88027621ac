// The engine's configuration: the user's settings resolved against the loaded model, once, here.
// The Worker and the in-process engine both start from resolveEngineConfig (see local_engine.ts).

import type { LoadedModel } from "./model/types.ts";
import type { ActDType } from "./model/weights.ts";
import {
  type AnswerCache,
  ENGINE_DEFAULTS,
  type EngineSettings,
  type LongQueries,
  MAX_MATMUL_SPLIT_K,
  MIN_STEP_ROWS,
  type PrefillOrder,
  type PromptMatmul,
} from "./protocol.ts";
import type { SchedulerPolicy } from "./scheduler.ts";
import { kvPoolBlocks } from "./kv_pool.ts";
import { paddedHeadDim } from "./model/step_weights.ts";

export interface EngineConfig {
  dtype: ActDType;
  /** Tokens per KV block. */
  blockSize: number;
  /** KV pool size asked of the runner (which clamps it to what the adapter can bind). */
  kvCacheMb: number;
  maxBatchTokens: number;
  maxSeqs: number;
  /** Most prompt tokens one sequence prefills in a step. */
  maxChunkTokens: number;
  /** Positions a sequence may reach, prompt and output together; the step graph covers as many. */
  maxContext: number;
  policy: SchedulerPolicy;
  prefillOrder: PrefillOrder;
  decodePauseSteps: number;
  answerCache: AnswerCache;
  debugSteps: boolean;
  graphCache: string | null;
  /** Captured sessions (ModelRunner's CaptureSettings); null: every step runs uncaptured. */
  graphCapture: { batchSizes: number[]; kvCaps: number[]; promptRows: number[]; eager: boolean } | null;
  /** Full KV blocks cached by content and reused by later prompts with the same prefix. */
  prefixCaching: boolean;
  /** Split factor of the matmuls' K (EngineSettings.matmulSplitK). */
  matmulSplitK: number;
  /** The matmuls of prompt parts (EngineSettings.promptMatmul). */
  promptMatmul: PromptMatmul;
  /** Steps in flight at most, or "auto" (EngineSettings.pipelineDepth). */
  pipelineDepth: "auto" | 1 | 2 | 3;
  /** Which tokens run on PagedAttention's long-query kernel (EngineSettings.longQueries). */
  longQueries: LongQueries | "auto";
}

/** A setting that cannot work with this model; the message names the setting and the limit. */
export class EngineConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineConfigError";
  }
}

const BLOCK_SIZE = 16;
/** Largest captured decode batch: a step of more rows costs little CPU per row even uncaptured. */
const MAX_CAPTURED_BATCH = 512;
/**
 * Captured context bounds below the limit when none are given. PagedAttention's dispatch in a
 * captured step covers its bound, not the step's real contexts: with only the limit, a short chat
 * pays for the whole window in every step (H200, SmolLM2-135M shape, batch 1: 23 ms a pipelined step
 * bounded at 1024 against 17 ms at 256, docs/BENCHMARKS.md). Each bound is one more session per
 * batch size, captured at startup (~0.2 s each there). 4096: at the 1B shape's default context
 * (32752), one stream at 1500 and 4000 tokens of context decoded 27% and 48% slower replaying the
 * limit's sessions than a 4096 bound's (H100, BENCHMARKS session 23).
 */
const DEFAULT_CAPTURE_KV = [256, 1024, 4096];
/**
 * Token rows of the captured prompt steps (long-query mode "prompts", ModelRunner's CaptureSettings):
 * a chat turn after a cached prefix, or a short prompt, then costs a replay instead of ~50-100 ms of
 * CPU dispatch (H200, SmolLM2-135M shape); longer prompt parts run uncaptured, their GPU time
 * covering the dispatch. A replay costs its rows, not its tokens, so sizes in between (256, 384) cut
 * 1B chat turns by ~10% for +0.6 GiB at context 2048 (H100, BENCHMARKS s28; ModelRunner captures them
 * up to a bound of 4096 only). A shape past 512 rows (e.g. 2048) serves only the first prefill step of a
 * burst (Scheduler's burstPrefillTokens): on the H100 it gained 1-8% (throughput, TTFT, chat turns) in
 * most runs, within the spread, and its GPU memory is unmeasured, so it stays opt-in (BENCHMARKS s22).
 */
const DEFAULT_CAPTURE_PROMPT_ROWS = [128, 256, 384, 512];
/** Default KV pool ceiling: a fraction of any real GPU, and enough for small models at full load. */
const DEFAULT_KV_CAP_MB = 1024;

/**
 * The one place engine defaults and limits are decided.
 *
 * Context: the model's own (`config.maxContext`: the trained context, or Mistral's sliding window,
 * beyond which full attention would be wrong), lowered to what the KV pool holds unless `maxModelLen`
 * is given. `maxModelLen` may lower it; above it is refused for every model format, as vLLM does,
 * since the model has not seen those positions.
 */
export function resolveEngineConfig(
  s: EngineSettings,
  model: Pick<LoadedModel, "config" | "weights">,
): EngineConfig {
  const c = model.config;
  if (s.maxModelLen !== undefined && s.maxModelLen > c.maxContext) {
    throw new EngineConfigError(
      `max model length ${s.maxModelLen} exceeds the model's context length ${c.maxContext} ` +
        `(longer contexts are refused: the model was not trained for them)`,
    );
  }
  const maxSeqs = s.maxSeqs ?? ENGINE_DEFAULTS.maxSeqs;
  const maxBatchTokens = s.maxBatchTokens ?? ENGINE_DEFAULTS.maxBatchTokens;
  const kvCacheMb = s.kvCacheMb ?? defaultKvCacheMb(c, maxSeqs, s.maxModelLen ?? c.maxContext);
  // Unasked, the context is what the pool holds: a sequence longer than the pool could never run, and
  // steps captured for such contexts would cost startup time and GPU memory for nothing.
  const maxContext = s.maxModelLen ??
    Math.min(c.maxContext, kvPoolBlocks(c, BLOCK_SIZE, kvCacheMb) * BLOCK_SIZE);
  return {
    dtype: resolveDtype(s.dtype ?? ENGINE_DEFAULTS.dtype, model),
    blockSize: BLOCK_SIZE,
    kvCacheMb,
    maxBatchTokens,
    maxSeqs,
    maxChunkTokens: s.maxChunkTokens ?? maxBatchTokens,
    maxContext,
    policy: s.policy ?? ENGINE_DEFAULTS.policy,
    prefillOrder: s.prefillOrder ?? ENGINE_DEFAULTS.prefillOrder,
    decodePauseSteps: s.decodePauseSteps ?? ENGINE_DEFAULTS.decodePauseSteps,
    answerCache: s.answerCache ?? ENGINE_DEFAULTS.answerCache,
    debugSteps: s.debugSteps ?? false,
    graphCache: s.graphCache ?? null,
    graphCapture: (s.graphCapture ?? ENGINE_DEFAULTS.graphCapture)
      ? {
        batchSizes: captureBatchSizes(Math.min(maxSeqs, maxBatchTokens)),
        kvCaps: [...new Set(s.graphCaptureKv ?? DEFAULT_CAPTURE_KV)].filter((k) => k < maxContext)
          .sort((a, b) => a - b),
        promptRows: [...new Set(s.graphCapturePromptRows ?? DEFAULT_CAPTURE_PROMPT_ROWS)]
          .filter((r) => r <= maxBatchTokens).sort((a, b) => a - b),
        eager: s.graphCaptureEager ?? true,
      }
      : null,
    prefixCaching: s.prefixCaching ?? ENGINE_DEFAULTS.prefixCaching,
    matmulSplitK: resolveSplitK(s.matmulSplitK ?? ENGINE_DEFAULTS.matmulSplitK),
    promptMatmul: s.promptMatmul ?? ENGINE_DEFAULTS.promptMatmul,
    pipelineDepth: s.pipelineDepth ?? ENGINE_DEFAULTS.pipelineDepth,
    longQueries: s.longQueries ?? ENGINE_DEFAULTS.longQueries,
  };
}

function resolveSplitK(s: number): number {
  if (!Number.isInteger(s) || s < 1 || s > MAX_MATMUL_SPLIT_K) {
    throw new EngineConfigError(`matmul split-K ${s} must be an integer in [1, ${MAX_MATMUL_SPLIT_K}]`);
  }
  return s;
}

/**
 * Batch sizes MIN_STEP_ROWS, twice that, ... below maxSeqs, then maxSeqs itself, at most
 * MAX_CAPTURED_BATCH: every step computes MIN_STEP_ROWS rows at least, so smaller ones would be the same.
 */
function captureBatchSizes(maxSeqs: number): number[] {
  const top = Math.max(MIN_STEP_ROWS, Math.min(maxSeqs, MAX_CAPTURED_BATCH));
  const sizes: number[] = [];
  for (let b = MIN_STEP_ROWS; b < top; b *= 2) sizes.push(b);
  sizes.push(top);
  return sizes;
}

/** auto: f32 keeps an all-F32 checkpoint's precision; anything narrower on disk runs in f16. */
function resolveDtype(d: "auto" | ActDType, model: Pick<LoadedModel, "weights">): ActDType {
  if (d !== "auto") return d;
  const w = model.weights;
  return w.names().every((n) => w.get(n).dtype === "f32") ? "f32" : "f16";
}

/** Every sequence at full context, capped; K and V in fp16 with head rows padded as the pool's. */
function defaultKvCacheMb(c: LoadedModel["config"], maxSeqs: number, maxContext: number): number {
  const bytesPerToken = 2 * c.numLayers * c.numKvHeads * paddedHeadDim(c.headDim) * 2;
  return Math.min(DEFAULT_KV_CAP_MB, Math.ceil((maxSeqs * maxContext * bytesPerToken) / 2 ** 20));
}
