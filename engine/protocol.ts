// The contract between the HTTP side and the engine: requests in, events out. The HTTP layer imports
// nothing else from engine/.

import type { ChatTemplate, GenerationDefaults, Tokenizer } from "./model/types.ts";

export type {
  ChatMessage,
  ChatTemplate,
  GenerationDefaults,
  Tokenizer,
  ToolCall,
  ToolDefinition,
  ToolFormat,
} from "./model/types.ts";

/** Sampling parameters with OpenAI/vLLM semantics, already validated and defaulted. */
export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 1 disables. */
  topP: number;
  /** 0 or -1 disables. */
  topK: number;
  /** 0 disables. */
  minP: number;
  /** OpenAI: subtract once if the token appeared in the output so far. */
  presencePenalty: number;
  /** OpenAI: subtract count * penalty for tokens in the output so far. */
  frequencyPenalty: number;
  /** vLLM/HF: divide positive logits (multiply negative) of tokens seen in prompt or output; 1 disables. */
  repetitionPenalty: number;
  /** token id -> bias added to its logit, in [-100, 100]. */
  logitBias: Record<number, number>;
  /** Same seed and prompt give the same tokens whatever shares the batch; null draws a random seed. */
  seed: number | null;
  stopTokenIds: number[];
  /** Stop strings; never reach the client. */
  stop: string[];
  ignoreEos: boolean;
  maxTokens: number;
  /** null: no logprobs; n >= 0: chosen token's logprob plus the n most likely (n <= 5). */
  logprobs: number | null;
  skipSpecialTokens: boolean;
  /** Constrained decoding: only tokens that continue a document of this grammar are sampled. */
  grammar?: GrammarSpec;
}

/**
 * A grammar for constrained decoding (compiled by xgrammar in the engine, see engine/grammar.ts).
 * `param` names the request field it came from, for the 400 of a grammar that does not compile.
 */
export type GrammarSpec =
  & { param: string }
  & (
    /** Any JSON object, compact (no whitespace between tokens). */
    | { type: "json_object" }
    /** A JSON Schema as JSON text; properties in schema order, compact separators. */
    | { type: "json_schema"; schema: string }
    /** An xgrammar structural tag as JSON text (tool calls: free text, then tagged calls). */
    | { type: "structural_tag"; tag: string }
  );

/** Neutral parameters (greedy, no penalties, 16 tokens) with overrides; for tools and tests. */
export function neutralSamplingParams(over: Partial<SamplingParams> = {}): SamplingParams {
  return {
    temperature: 0,
    topP: 1,
    topK: 0,
    minP: 0,
    presencePenalty: 0,
    frequencyPenalty: 0,
    repetitionPenalty: 1,
    logitBias: {},
    seed: null,
    stopTokenIds: [],
    stop: [],
    ignoreEos: false,
    maxTokens: 16,
    logprobs: null,
    skipSpecialTokens: true,
    ...over,
  };
}

export interface GenerateRequest {
  id: string;
  promptIds: number[];
  params: SamplingParams;
  /**
   * The caller expects this prompt and its answer to come back as the start of a later prompt (a chat
   * request that resends an assistant turn: the conversation goes on). See AnswerCache.
   */
  continues?: boolean;
  /**
   * With continues: the caller will send predictions of the next turn's prompt
   * (EngineClient.predictAnswer), to be cached in place of the answer's sampled ids.
   */
  predictsAnswer?: boolean;
}

export interface TopLogprob {
  tokenId: number;
  token: string;
  logprob: number;
}

export interface TokenLogprob extends TopLogprob {
  top: TopLogprob[];
}

export type FinishReason = "stop" | "length" | "abort";

export type GenerateEvent =
  /** New text (may be empty when hold-back for a stop string keeps it) and the ids that produced it. */
  | { type: "delta"; text: string; tokenIds: number[]; logprobs?: TokenLogprob[] }
  | {
    type: "done";
    finishReason: FinishReason;
    /** The stop string or token id that ended generation, when finishReason is "stop". */
    stopReason: string | number | null;
    promptTokens: number;
    completionTokens: number;
    /**
     * Prompt tokens whose KV came from the prefix cache (usage.prompt_tokens_details.cached_tokens);
     * absent where the engine has no prefix cache.
     */
    cachedPromptTokens?: number;
    /** Seconds, measured in the engine. */
    queueTime: number;
    timeToFirstToken: number;
    e2eTime: number;
  }
  | {
    type: "error";
    message: string;
    code: "context_length_exceeded" | "invalid_request" | "internal";
    /** The request field at fault, where known (a grammar that does not compile). */
    param?: string;
  };

/** Upper bounds of the tokens-per-step histogram; larger steps count only in its total. */
export const STEP_TOKEN_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/** A histogram counted since the engine started: counts[i] holds the values in (bounds[i-1], bounds[i]]. */
export interface HistogramCounts {
  counts: number[];
  sum: number;
  count: number;
}

/**
 * A snapshot of the engine's load and counters, refreshed every step. Everything in it is a gauge or
 * a running total, so reading it takes nothing away from another reader.
 */
export interface EngineStats {
  running: number;
  waiting: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  promptTokensTotal: number;
  generationTokensTotal: number;
  preemptionsTotal: number;
  stepsTotal: number;
  /** Steps by the session that ran them (see engine/captured_steps.ts); absent where not counted. */
  stepsByPath?: { captured: number; uncaptured: number; split: number };
  /**
   * Prefix cache, as vLLM counts it: prompt tokens looked up at admission and found cached, and
   * blocks holding cached content (held or evictable). Absent where the engine has no prefix cache.
   */
  prefixCacheQueriesTotal?: number;
  prefixCacheHitsTotal?: number;
  kvBlocksCached?: number;
  /** Tokens (prefill and decode) per step, over STEP_TOKEN_BUCKETS. */
  stepTokens: HistogramCounts;
}

export interface ModelInfo {
  name: string;
  maxContext: number;
  vocabSize: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
  /** Sampling defaults for fields a request leaves out (generation_config.json); absent: none. */
  generation?: GenerationDefaults;
}

/**
 * What the HTTP layer sees of the engine. The real one (engine/client.ts) talks to a Worker;
 * tokenization and chat templating run on the calling thread because they are cheap and synchronous.
 */
export interface EngineClient {
  readonly info: ModelInfo;
  readonly tokenizer: Tokenizer;
  readonly chatTemplate: ChatTemplate;
  /** Latest snapshot; cheap, never blocks. */
  stats(): EngineStats;
  /** Why the engine can no longer serve (its loop or Worker died), or null while healthy. */
  failure(): string | null;
  /**
   * Streams events until exactly one terminal event ("done" or "error").
   * Aborting the signal removes the request wherever it is (queued, prefilling, decoding)
   * and frees its KV blocks by the next step; the iterator then ends with done/abort.
   */
  generate(req: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateEvent>;
  /**
   * Whose answers are cached as prompts' (AnswerCache) as this engine resolved it: "off" where answers'
   * KV is already a prompt's or nothing is cached.
   */
  readonly answerCache: AnswerCache;
  /**
   * The tokens that the next prompt of request `id`'s conversation likely starts with, as far as they
   * are settled (`final`: the answer is complete); only for requests sent with predictsAnswer.
   */
  predictAnswer(id: string, ids: number[], final: boolean): void;
  /**
   * Stops the engine after the steps in flight and releases the GPU. `exiting`: the process exits
   * next, so the engine's thread is left to the exit (see EngineClient in client.ts).
   */
  close(exiting?: boolean): Promise<void>;
}

/**
 * Fewest token rows, and fewest sampled rows, a step computes. On the H200 in f16, onnxruntime's
 * WebGPU matmuls gave a token different bits in steps of 8 rows or fewer than in steps of 9 to 31
 * (bench/gpu/kv_probe.ts --sweep, 2026-12-02), which broke batch invariance and prefix caching's
 * bit-exact reuse there; llvmpipe and f32 showed no difference. 16 keeps a margin; the padding rows
 * cost little next to a step's fixed cost.
 */
export const MIN_STEP_ROWS = 16;

/**
 * Longest attention item (one row of cu_seqlens) of a step, which keeps outputs independent of what
 * shares a step. onnxruntime's PagedAttention on WebGPU picks its kernel from a step's longest query
 * (1 token, 2-31, 32 and more) and the kernels round differently; items of at most 31 tokens, and a
 * 2-token padding item in decode-only steps, keep every step on one kernel (see ModelRunner.run). A
 * longer prefill chunk goes as several items of the same sequence in one step (LLMEngine.buildInputs):
 * PagedAttention writes all of a step's new K/V before it attends, so each item sees the ones before
 * it, bit for bit as if they had run in earlier steps (bench/gpu/kv_probe.ts).
 */
export const BATCH_INVARIANT_ITEM_TOKENS = 31;

/**
 * Shortest longest-query of a step on the long-query kernel (LongQueries): onnxruntime's
 * PagedAttention kernel for queries of 32 tokens and more gives a token the same bits whatever its item's
 * length, its step's other items and bounds, one-token items beside a 32-token padding item included
 * (bench/gpu/kv_probe.ts --long: H200 f16 on Dawn and Deno's WebGPU, llvmpipe), so every step can use it:
 * prompts go as one item each, and a step whose items are all shorter gets a padding item this long.
 */
export const LONG_QUERY_TOKENS = 32;

/**
 * Which tokens run on PagedAttention's long-query kernel (LONG_QUERY_TOKENS): none ("off", every item
 * at most BATCH_INVARIANT_ITEM_TOKENS), all ("on", decodes padded to 32 query rows), or prompt tokens
 * only ("prompts": a prompt chunk is one long item, decodes and a preempted sequence's recomputed
 * outputs stay on the short kernel, and a step holding both runs them as two parts). A token's kernel
 * then depends only on its own request (is it a prompt token?), never on its batch.
 */
export type LongQueries = "off" | "on" | "prompts";

/**
 * The mode resolved against the adapter: "prompts" on a GPU, where it wins everywhere measured (H200:
 * 1.25x the output throughput and 0.6x the TTFT of "off" under load, and cheaper chat turns, cached or
 * not); "off" on a software adapter, where it keeps a chat's earlier answers in the prefix cache: there
 * "prompts" gave 1.16x the throughput on random prompts but cached chat turns 1.2-1.6x slower
 * (docs/BENCHMARKS.md session 12).
 */
export function resolveLongQueries(setting: LongQueries | "auto", softwareAdapter: boolean): LongQueries {
  return setting !== "auto" ? setting : softwareAdapter ? "off" : "prompts";
}

/**
 * The engine settings a user chooses (flags, or a test's options); every field may be left out.
 * engine/config.ts resolves them against the loaded model into the one EngineConfig the engine runs with.
 */
export interface EngineSettings {
  /** auto: f32 when every weight of the checkpoint is F32, f16 otherwise. */
  dtype?: "auto" | "f16" | "f32";
  /** Absent: room for maxSeqs sequences at full context, up to 1 GiB. */
  kvCacheMb?: number;
  maxBatchTokens?: number;
  maxSeqs?: number;
  /**
   * Most prompt tokens one sequence prefills in a step (vLLM's long_prefill_token_threshold), so one
   * long prompt cannot take a whole step from the prompts behind it; absent: up to maxBatchTokens.
   */
  maxChunkTokens?: number;
  /** Context limit; at most the model's own (more is refused), absent means the model's. */
  maxModelLen?: number;
  policy?: "continuous" | "static" | "sequential";
  /** Which waiting request starts its prefill first (PrefillOrder). */
  prefillOrder?: PrefillOrder;
  /**
   * Steps in a row that may go without decodes while more prompt tokens wait than a step holds
   * (SchedulerConfig.decodePauseSteps); absent: ENGINE_DEFAULTS' (0 in the scheduler alone).
   */
  decodePauseSteps?: number;
  /** Whose answers are recomputed as prompt KV for a later turn to reuse (AnswerCache). */
  answerCache?: AnswerCache;
  /** One log line per step. */
  debugSteps?: boolean;
  /** Folder for built step graphs; absent or null: no cache. */
  graphCache?: string | null;
  /** Decode steps replayed from captured graphs (see engine/captured_steps.ts). */
  graphCapture?: boolean;
  /**
   * Bounds on a captured step's longest context (tokens) below the context limit, which is always
   * one: each makes its own set of captured sessions (a lower bound is a cheaper attention dispatch).
   * Absent: 256 and 1024 (engine/config.ts); bounds at or over the limit are dropped.
   */
  graphCaptureKv?: number[];
  /**
   * Token rows of the captured prompt steps (long-query mode "prompts": a step's part on the long-query
   * kernel of up to that many rows replays one); [] captures none. Absent: 128 and 512 (engine/config.ts);
   * sizes over the step budget are dropped.
   */
  graphCapturePromptRows?: number[];
  /** Capture every session at startup (default), or each on its first use (tests: cheaper starts). */
  graphCaptureEager?: boolean;
  /** Reuse the KV of cached full blocks of a prompt's prefix (see engine/block_manager.ts). */
  prefixCaching?: boolean;
  /**
   * Split factor S of the matmuls' K (split-K, see linear in engine/model/step_blocks.ts): a layer
   * whose K splits into S slices of at least 32 runs as S batched partial products and a sum; 1: plain
   * MatMul everywhere.
   */
  matmulSplitK?: number;
  /**
   * The matmuls of prompt tokens in long-query mode "prompts" (PromptMatmul); absent: "auto".
   */
  promptMatmul?: PromptMatmul;
  /** WebGPU implementation (engine/webgpu_backend.ts); absent: "auto". */
  webgpu?: "auto" | "dawn" | "deno";
  /** Whose kernels run PagedAttention's decode and prefill programs (engine/attention_kernel.ts). */
  attentionKernels?: "ragtime" | "onnxruntime";
  /**
   * Engine steps in flight at most (engine/llm_engine.ts); "auto": three while steps are short, two
   * once they take longer than a readback hides behind.
   */
  pipelineDepth?: "auto" | 1 | 2 | 3;
  /**
   * Long-query mode (LongQueries): prompts prefill several times faster on PagedAttention's kernel for
   * queries of 32 tokens and more; "on" puts decodes there too (dearer), "prompts" keeps them short;
   * "auto": resolveLongQueries.
   */
  longQueries?: LongQueries | "auto";
}

/**
 * In long-query mode "prompts" a prompt token never shares a session run with an output token, so its
 * matmuls may differ from theirs. auto: a second graph for prompt parts runs the split layers whose K
 * is at most their N as one MatMul (see linear in engine/model/step_blocks.ts), faster on hundreds of
 * rows, except on Intel adapters, where onnxruntime's own split-K would make a row's bits depend on the
 * rows beside it; split: prompt parts run the decodes' graph. Changes tokens' last bits (as
 * --matmul-split-k does), never their independence from the batch.
 */
export type PromptMatmul = "auto" | "split";

/**
 * Which waiting request starts its prefill first. arrival: first come, first served. shortest: the
 * fewest prompt tokens left to compute (after its cached prefix) first, so that a burst's short
 * prompts and a chat's cached turns are not queued behind long prompts (the mean time to first token
 * falls; the total prefill work does not change). A request is passed only by requests that arrived
 * less than SHORTEST_FIRST_WINDOW_MS after it, and preempted sequences go first, in queue order.
 */
export type PrefillOrder = "arrival" | "shortest";

/**
 * Long-query mode "prompts" with prefix caching: an answer's KV comes from the decode kernel, which a
 * prompt holding the same tokens must not reuse ("caching never changes a request's tokens"), so a
 * chat's next turn would prefill the previous answer again. For the requests this names, the engine
 * computes the answer's full blocks once more the way a prompt's are (whenever a replay's worth has
 * gathered, in a step that has prompt work anyway, or once the engine has idled ANSWER_IDLE_MS) and
 * caches them, so the next turn finds them. auto: requests that say they continue a conversation
 * (GenerateRequest.continues), on a model of ANSWER_CACHE_MIN_LAYER_WEIGHTS or more (llm_engine.ts);
 * on: every request; off: none. A chat request's tokens come from the HTTP side's predictions of its
 * next prompt (GenerateRequest.predictsAnswer, http/answer_prediction.ts). The extra prefill costs
 * about what the next turn would have spent on the answer, moved from its TTFT to the answer's
 * decode; a request resending it before that work ran computes it itself instead.
 */
export type AnswerCache = "auto" | "on" | "off";

/**
 * Prefill order "shortest": a waiting request may be passed by shorter ones that arrived up to this
 * long after it, never by later ones, so a stream of short prompts cannot starve a long one, and a
 * burst (requests arriving together) goes shortest first however long its prefill takes.
 */
export const SHORTEST_FIRST_WINDOW_MS = 2000;

/** Largest matmul split (EngineSettings.matmulSplitK): more partial products than this only add traffic. */
export const MAX_MATMUL_SPLIT_K = 64;

/** Defaults for the settings that do not depend on the model (the flags show the same). */
export const ENGINE_DEFAULTS = {
  dtype: "auto",
  maxBatchTokens: 2048,
  maxSeqs: 256,
  policy: "continuous",
  prefillOrder: "shortest",
  // A 1B burst's mean TTFT 4-12% lower, throughput 1-2% higher on the H100 (docs/BENCHMARKS.md, session 25).
  decodePauseSteps: 4,
  // GPU host, 1B shape, 16-user chat: cached turns 3-4 26% faster, TPOT 10-12% higher (session 29).
  answerCache: "auto",
  graphCapture: true,
  prefixCaching: true,
  matmulSplitK: 8,
  promptMatmul: "auto",
  webgpu: "auto",
  // H100, 1B shape, 128 at once: +24% output tok/s (docs/BENCHMARKS.md, session 31).
  attentionKernels: "ragtime",
  pipelineDepth: "auto",
  longQueries: "auto",
} as const satisfies EngineSettings;
