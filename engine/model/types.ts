// Shared model types: what a checkpoint loader produces and what the graph builder consumes.

export type Architecture = "llama" | "mistral" | "qwen2" | "qwen3";

/** Hyper-parameters in Hugging Face terms, whatever file format they came from. */
export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /**
   * Divisors of RoPE's inverse frequencies, one per pair of head dimensions (Llama 3.1 scaling);
   * absent means plain RoPE (see rope.ts).
   */
  ropeFreqFactors?: number[];
  /** Context the model was trained for; prompts plus outputs beyond it are rejected. */
  maxContext: number;
  tieEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2). */
  attentionBias: boolean;
  /** Per-head RMSNorm on q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

export type WeightDType = "f32" | "f16" | "bf16";

/**
 * One tensor in Hugging Face naming and layout (Linear weights are [out, in]).
 * Loaders convert other formats (GGUF) to this: names, row order of q/k (rotate-half RoPE) and shapes.
 */
export interface WeightTensor {
  name: string;
  shape: number[];
  dtype: WeightDType;
  /** Raw little-endian bytes; may be a view into a larger mapped file. */
  bytes: Uint8Array;
  /** File the tensor came from, for error messages. */
  file: string;
}

export interface WeightSource {
  /** Throws an error naming the file and tensor when it is missing. */
  get(name: string): WeightTensor;
  has(name: string): boolean;
  names(): string[];
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | "developer";
  content: string;
  /** An assistant turn's calls; arguments as the JSON text OpenAI clients send. */
  tool_calls?: ToolCall[];
  /** A tool turn: the call it answers. */
  tool_call_id?: string;
}

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** A function the model may call (OpenAI's `tools` entries). */
export interface ToolDefinition {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

/**
 * How a template's family writes tool calls: "hermes" (Qwen2.5, Hermes and the ChatML default)
 * `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`; "llama3" `{"name": ..., "parameters": ...}`
 * (after an optional <|python_tag|>); "mistral" `[TOOL_CALLS][{"name": ..., "arguments": ...}]`.
 */
export type ToolFormat = "hermes" | "llama3" | "mistral";

export interface Tokenizer {
  vocabSize: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** addSpecial: prepend BOS (and whatever the tokenizer's post-processor adds). */
  encode(text: string, addSpecial: boolean): number[];
  /** skipSpecial: drop special/control tokens (BOS/EOS...) from the text. */
  decode(ids: number[], skipSpecial?: boolean): string;
  /** The token's own string for logprobs/debugging (may contain U+FFFD for partial bytes). */
  tokenText(id: number): string;
}

export interface ChatTemplate {
  render(messages: ChatMessage[], addGenerationPrompt: boolean, tools?: ToolDefinition[]): string;
  /** Absent: "hermes". */
  readonly toolFormat?: ToolFormat;
}

/**
 * Sampling defaults from a Hugging Face folder's generation_config.json, for the fields a request
 * leaves out (vLLM's --generation-config auto); empty for GGUF files.
 */
export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** max_new_tokens: the default max_tokens, still bounded by the room the prompt leaves. */
  maxNewTokens?: number;
}

export interface LoadedModel {
  /** Display name (folder or file stem). */
  name: string;
  path: string;
  config: ModelConfig;
  weights: WeightSource;
  tokenizer: Tokenizer;
  chatTemplate: ChatTemplate;
  generation: GenerationDefaults;
}

/** Clear, user-facing loader failure: names the file and, where relevant, the tensor. */
export class ModelLoadError extends Error {
  constructor(message: string, public file?: string, public tensor?: string) {
    super(message);
    this.name = "ModelLoadError";
  }
}

/** Progress reports while loading (bytes read, phases). */
export type LoadProgress = (event: { phase: string; done?: number; total?: number }) => void;
