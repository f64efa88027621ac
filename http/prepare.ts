// What the endpoints share before a request reaches the engine: the engine's availability, the model
// name, prompt checks and sampling parameters.
import type { EngineClient, SamplingParams } from "../engine/protocol.ts";
import type { ChatMessage, Tokenizer, ToolDefinition } from "../engine/protocol.ts";
import { ApiError, badRequest } from "./errors.ts";
import type { Shared } from "./context.ts";
import type { SamplingFields } from "./schemas.ts";

export function requireEngine(s: Shared, opts: { allowDraining?: boolean } = {}): EngineClient {
  if (!opts.allowDraining && s.deps.draining()) {
    throw new ApiError(503, "The server is shutting down.", { code: "server_draining" });
  }
  const engine = s.deps.engine();
  if (!engine) {
    throw new ApiError(503, "The model is still loading; retry shortly.", {
      code: "model_loading",
      headers: { "retry-after": "5" },
    });
  }
  return engine;
}

export const servedName = (s: Shared, engine: EngineClient): string =>
  s.config.servedModelName ?? engine.info.name;

/** An absent model means "the one served"; any other name is a 404. */
export function checkModel(s: Shared, engine: EngineClient, model: string | undefined): void {
  if (model === undefined || model === servedName(s, engine)) return;
  throw new ApiError(404, `The model '${model.slice(0, 200)}' does not exist.`, {
    param: "model",
    code: "model_not_found",
  });
}

export const contextLimit = (s: Shared, engine: EngineClient): number =>
  Math.min(engine.info.maxContext, s.config.maxModelLen ?? Infinity);

/**
 * Characters one token may stand for, at most: the UTF-8 length of the longest token text (never
 * less than its UTF-16 length, and a U+FFFD from a partial byte counts 3), times 4 for normalizers
 * that fold several code points into one (NFC joins up to three Hangul jamo). Computed once per tokenizer.
 */
const charsPerToken = new WeakMap<Tokenizer, number>();
const NORMALIZATION_SLACK = 4;

export function maxCharsPerToken(tokenizer: Tokenizer): number {
  let n = charsPerToken.get(tokenizer);
  if (n === undefined) {
    const encoder = new TextEncoder();
    let longest = 1;
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      longest = Math.max(longest, encoder.encode(tokenizer.tokenText(id)).length);
    }
    n = longest * NORMALIZATION_SLACK;
    charsPerToken.set(tokenizer, n);
  }
  return n;
}

/**
 * Refuses a text that cannot fit the context whatever it tokenizes to, before tokenizing it: a 1 MiB
 * prompt took seconds of the HTTP thread only to be refused afterwards. A text that fits is never
 * refused here, unless its tokenizer deletes characters outright (a normalizer dropping controls).
 */
export function checkTextLength(engine: EngineClient, text: string, param: "messages" | "prompt"): void {
  const ctx = engine.info.maxContext;
  const bound = ctx * maxCharsPerToken(engine.tokenizer);
  if (text.length <= bound) return;
  throw badRequest(
    `This model's maximum context length is ${ctx} tokens, and your ${param} have ${text.length} ` +
      `characters, more than ${ctx} tokens can hold (${bound}).`,
    param,
    "context_length_exceeded",
  );
}

/** Tokenizes a prompt text once it is known to be short enough to possibly fit. */
export function encodeText(
  engine: EngineClient,
  text: string,
  addSpecial: boolean,
  param: "messages" | "prompt" = "prompt",
): number[] {
  checkTextLength(engine, text, param);
  return engine.tokenizer.encode(text, addSpecial);
}

/**
 * Renders a conversation and tokenizes it. Templates that write the BOS token themselves must not
 * get a second one from the tokenizer.
 */
export function encodeChat(
  engine: EngineClient,
  messages: ChatMessage[],
  addGenerationPrompt = true,
  addSpecial?: boolean,
  tools?: ToolDefinition[],
): number[] {
  let text: string;
  try {
    text = engine.chatTemplate.render(messages, addGenerationPrompt, tools);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw badRequest(`The chat template rejected the messages: ${why}`, "messages", "invalid_messages");
  }
  const { tokenizer } = engine;
  const bos = tokenizer.bosTokenId === null ? "" : tokenizer.tokenText(tokenizer.bosTokenId);
  return encodeText(engine, text, addSpecial ?? !(bos !== "" && text.startsWith(bos)), "messages");
}

export function checkTokenIds(engine: EngineClient, ids: number[], param: string): void {
  const vocab = engine.info.vocabSize;
  const bad = ids.find((id) => id >= vocab);
  if (bad !== undefined) {
    throw badRequest(`'${param}' has token id ${bad}, outside the vocabulary [0, ${vocab}).`, param);
  }
}

export interface PromptInfo {
  /** "messages" or "prompt": where a too-long prompt is reported. */
  param: "messages" | "prompt";
  length: number;
}

/**
 * Maps request fields to engine parameters, with OpenAI defaults; rejects requests that cannot fit
 * the context before they are queued. max_tokens defaults to the model's max_new_tokens, at most
 * whatever room the prompt leaves.
 */
export function requestSamplingParams(
  s: Shared,
  engine: EngineClient,
  req: SamplingFields & { max_completion_tokens?: number },
  prompt: PromptInfo,
  logprobs: number | null,
): SamplingParams {
  const ctx = contextLimit(s, engine);
  if (prompt.length === 0) throw badRequest(`'${prompt.param}' must not be empty.`, prompt.param);
  if (prompt.length >= ctx) {
    throw badRequest(
      `This model's maximum context length is ${ctx} tokens, and your ${prompt.param} ` +
        `${prompt.param === "messages" ? "have" : "has"} ` +
        `${prompt.length} tokens, leaving no room for the completion.`,
      prompt.param,
      "context_length_exceeded",
    );
  }
  const maxParam = req.max_completion_tokens !== undefined ? "max_completion_tokens" : "max_tokens";
  const asked = req.max_completion_tokens ?? req.max_tokens;
  if (asked !== undefined && prompt.length + asked > ctx) {
    throw badRequest(
      `This model's maximum context length is ${ctx} tokens. However, you requested ` +
        `${prompt.length + asked} tokens (${prompt.length} in the ${prompt.param}, ${asked} in the ` +
        `completion). Please reduce the length of the ${prompt.param} or completion.`,
      maxParam,
      "context_length_exceeded",
    );
  }
  const logitBias: Record<number, number> = {};
  for (const [k, v] of Object.entries(req.logit_bias ?? {})) logitBias[Number(k)] = v;
  checkTokenIds(engine, Object.keys(logitBias).map(Number), "logit_bias");
  checkTokenIds(engine, req.stop_token_ids ?? [], "stop_token_ids");
  // Fields left out take the model's generation_config.json defaults, then OpenAI's (as vLLM does).
  const gen = engine.info.generation ?? {};
  return {
    temperature: req.temperature ?? gen.temperature ?? 1,
    topP: req.top_p ?? gen.topP ?? 1,
    topK: req.top_k ?? gen.topK ?? 0,
    minP: req.min_p ?? gen.minP ?? 0,
    presencePenalty: req.presence_penalty ?? 0,
    frequencyPenalty: req.frequency_penalty ?? 0,
    repetitionPenalty: req.repetition_penalty ?? gen.repetitionPenalty ?? 1,
    logitBias,
    seed: req.seed ?? null,
    stopTokenIds: req.stop_token_ids ?? [],
    stop: req.stop ?? [],
    ignoreEos: req.ignore_eos ?? false,
    maxTokens: asked ?? Math.min(gen.maxNewTokens ?? Infinity, ctx - prompt.length),
    logprobs,
    skipSpecialTokens: req.skip_special_tokens ?? true,
  };
}
