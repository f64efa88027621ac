// What chat and completions share: admission, prompt checks, sampling parameters, and running a
// request against the engine as one JSON response or an SSE stream.
import type {
  EngineClient,
  EngineStats,
  FinishReason,
  GenerateEvent,
  SamplingParams,
  TokenLogprob,
} from "../engine/protocol.ts";
import type { ChatMessage } from "../engine/model/types.ts";
import { ApiError, badRequest, engineError } from "./errors.ts";
import { sseResponse } from "./sse.ts";
import type { AppContext, Shared } from "./context.ts";
import type { SamplingFields } from "./schemas.ts";

/**
 * Counts requests the HTTP layer handed to the engine that its stats may not show yet: a request
 * submitted at step S is surely in a snapshot from step S + 2 on (it arrives during S + 1 at worst).
 */
export class Admission {
  readonly #pending = new Map<string, number>();

  waiting(stats: EngineStats): number {
    let unseen = 0;
    for (const step of this.#pending.values()) if (stats.stepsTotal < step + 2) unseen++;
    return stats.waiting + unseen;
  }

  /** Throws 429 when the queue is full, otherwise records the request as submitted. */
  admit(id: string, stats: EngineStats, maxQueue: number): void {
    if (this.waiting(stats) >= maxQueue) {
      throw new ApiError(429, "The server is at capacity; retry shortly.", {
        code: "rate_limit_exceeded",
        headers: { "retry-after": "1" },
      });
    }
    this.#pending.set(id, stats.stepsTotal);
  }

  /** The request produced an event, so the engine has it (or it is over). */
  seen(id: string): void {
    this.#pending.delete(id);
  }
}

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
 * Renders a conversation and tokenizes it. Templates that write the BOS token themselves must not
 * get a second one from the tokenizer.
 */
export function encodeChat(
  engine: EngineClient,
  messages: ChatMessage[],
  addGenerationPrompt = true,
  addSpecial?: boolean,
): number[] {
  let text: string;
  try {
    text = engine.chatTemplate.render(messages, addGenerationPrompt);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw badRequest(`The chat template rejected the messages: ${why}`, "messages", "invalid_messages");
  }
  const { tokenizer } = engine;
  const bos = tokenizer.bosTokenId === null ? "" : tokenizer.tokenText(tokenizer.bosTokenId);
  return tokenizer.encode(text, addSpecial ?? !(bos !== "" && text.startsWith(bos)));
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
 * the context before they are queued. max_tokens defaults to whatever room the prompt leaves.
 */
export function samplingParams(
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
      `This model's maximum context length is ${ctx} tokens, and your ${prompt.param} have ` +
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
  return {
    temperature: req.temperature ?? 1,
    topP: req.top_p ?? 1,
    topK: req.top_k ?? 0,
    minP: req.min_p ?? 0,
    presencePenalty: req.presence_penalty ?? 0,
    frequencyPenalty: req.frequency_penalty ?? 0,
    repetitionPenalty: req.repetition_penalty ?? 1,
    logitBias,
    seed: req.seed ?? null,
    stopTokenIds: req.stop_token_ids ?? [],
    stop: req.stop ?? [],
    ignoreEos: req.ignore_eos ?? false,
    maxTokens: asked ?? ctx - prompt.length,
    logprobs,
    skipSpecialTokens: req.skip_special_tokens ?? true,
  };
}

type Finish = Exclude<FinishReason, "abort">;
type Done = Extract<GenerateEvent, { type: "done" }>;

/** How one endpoint spells its objects; one instance per request (completions keeps text offsets). */
export interface Format {
  idPrefix: string;
  object: string;
  chunkObject: string;
  /** The single choice of a non-streaming response; logprobs null when not requested. */
  choice(text: string, logprobs: TokenLogprob[] | null, finish: Finish): object;
  /** Choices sent before any token (chat's role announcement). */
  start(): object[];
  delta(text: string, logprobs: TokenLogprob[] | null): object;
  finish(finish: Finish): object;
}

export interface Job {
  engine: EngineClient;
  promptIds: number[];
  params: SamplingParams;
  promptParam: string;
  stream: boolean;
  includeUsage: boolean;
  format: Format;
}

const usage = (d: Done) => ({
  prompt_tokens: d.promptTokens,
  completion_tokens: d.completionTokens,
  total_tokens: d.promptTokens + d.completionTokens,
});

const randomId = () => crypto.randomUUID().replaceAll("-", "");

/** Runs a request to completion as JSON, or as SSE once the first event is in (or keep-alive is due). */
export async function generate(c: AppContext, s: Shared, job: Job): Promise<Response> {
  const { engine, format } = job;
  const id = `${format.idPrefix}-${randomId()}`;
  s.admission.admit(id, s.metrics.readStats(engine), s.config.maxQueue);
  const run = new Run(c, s, engine, id, job);
  const base = { id, created: Math.floor(Date.now() / 1000), model: servedName(s, engine) };
  const wantLogprobs = job.params.logprobs !== null;

  if (!job.stream) {
    let text = "";
    const logprobs: TokenLogprob[] = [];
    let done: Done;
    try {
      for (;;) {
        const ev = await run.next();
        if (ev.type === "error") throw engineError(ev, job.promptParam);
        if (ev.type === "done") {
          done = ev;
          break;
        }
        text += ev.text;
        if (ev.logprobs) logprobs.push(...ev.logprobs);
      }
    } finally {
      run.close();
    }
    if (done.finishReason === "abort") throw run.abortError();
    return c.json({
      ...base,
      object: format.object,
      choices: [format.choice(text, wantLogprobs ? logprobs : null, done.finishReason)],
      usage: usage(done),
    });
  }

  // Wait briefly for the first event so an early engine error still gets a proper HTTP status,
  // but never longer than the keep-alive interval: the stream must start before a ping is due.
  const firstEvent = run.next();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    firstEvent,
    new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), s.keepAliveMs)),
  ]);
  clearTimeout(timer);
  if (first?.type === "error") {
    run.close();
    throw engineError(first, job.promptParam);
  }
  if (first?.type === "done" && first.finishReason === "abort") {
    run.close();
    throw run.abortError();
  }

  const chunk = (choices: object[]) =>
    job.includeUsage
      ? { ...base, object: format.chunkObject, choices, usage: null }
      : { ...base, object: format.chunkObject, choices };

  async function* chunks(): AsyncGenerator<object> {
    try {
      for (const choice of format.start()) yield chunk([choice]);
      let ev = first ?? await firstEvent;
      for (;;) {
        if (ev.type === "delta") {
          const logprobs = wantLogprobs ? ev.logprobs ?? [] : null;
          if (ev.text !== "" || (logprobs && logprobs.length > 0)) {
            yield chunk([format.delta(ev.text, logprobs)]);
          }
        } else if (ev.type === "error") {
          yield engineError(ev, job.promptParam).body();
          return;
        } else {
          if (ev.finishReason === "abort") {
            if (!run.clientGone) yield run.abortError().body();
            return;
          }
          yield chunk([format.finish(ev.finishReason)]);
          if (job.includeUsage) yield { ...base, object: format.chunkObject, choices: [], usage: usage(ev) };
          return;
        }
        ev = await run.next();
      }
    } finally {
      run.close();
    }
  }

  const { promise: bodyDone, resolve } = Promise.withResolvers<void>();
  c.set("bodyDone", bodyDone);
  return sseResponse(chunks(), {
    keepAliveMs: s.keepAliveMs,
    onCancel: () => {
      c.var.log.finish_reason ??= "client_closed";
      run.close();
    },
    onClose: resolve,
  });
}

/** One engine request: links client disconnects to the abort signal and records timing. */
class Run {
  readonly #controller = new AbortController();
  readonly #iterator: AsyncIterator<GenerateEvent>;
  readonly #unlink: () => void;
  #tokensSeen = false;
  #lastTokenAt = 0;
  #finished = false;
  #closed = false;
  /** The abort came from our side of the connection (client went away). */
  clientGone = false;

  constructor(
    readonly c: AppContext,
    readonly s: Shared,
    engine: EngineClient,
    readonly id: string,
    job: Job,
  ) {
    const signal = c.req.raw.signal;
    const onAbort = () => {
      this.clientGone = true;
      this.#controller.abort();
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    this.#unlink = () => signal.removeEventListener("abort", onAbort);
    c.var.log.prompt_tokens = job.promptIds.length;
    try {
      const req = { id, promptIds: job.promptIds, params: job.params };
      this.#iterator = engine.generate(req, this.#controller.signal)[Symbol.asyncIterator]();
    } catch (err) {
      // Same path as a failure mid-generation, so the admission slot and listeners are released.
      c.var.log.error = err instanceof Error ? err.message : String(err);
      this.#iterator = (async function* (): AsyncGenerator<GenerateEvent> {
        yield { type: "error", message: "The engine did not accept the request.", code: "internal" };
      })();
    }
  }

  /** The next event; engine failures and a stream without a terminal event become error events. */
  async next(): Promise<GenerateEvent> {
    let ev: GenerateEvent;
    try {
      const r = await this.#iterator.next();
      ev = r.done
        ? { type: "error", message: "The engine ended the request without a result.", code: "internal" }
        : r.value;
    } catch (err) {
      this.c.var.log.error = err instanceof Error ? err.message : String(err);
      ev = { type: "error", message: "The engine failed while generating.", code: "internal" };
    }
    this.s.admission.seen(this.id);
    this.#observe(ev);
    return ev;
  }

  #observe(ev: GenerateEvent): void {
    const { metrics } = this.s;
    const log = this.c.var.log;
    const now = performance.now();
    if (ev.type === "delta") {
      const n = ev.tokenIds.length;
      if (n === 0) return;
      if (!this.#tokensSeen) {
        this.#tokensSeen = true;
        log.ttft = (now - this.c.var.startedAt) / 1000;
        metrics.ttft.observe(log.ttft);
      } else {
        // Several tokens in one delta arrived together; spread the gap over them.
        const gap = (now - this.#lastTokenAt) / 1000 / n;
        for (let i = 0; i < n; i++) metrics.itl.observe(gap);
      }
      this.#lastTokenAt = now;
      return;
    }
    if (this.#finished) {
      // close() already counted this request as aborted (the client went away mid-stream).
      if (ev.type === "done") {
        log.prompt_tokens = ev.promptTokens;
        log.completion_tokens = ev.completionTokens;
      }
      return;
    }
    this.#finished = true;
    if (ev.type === "error") {
      log.error ??= ev.message;
      return;
    }
    metrics.observeFinish(ev.finishReason);
    metrics.e2e.observe((now - this.c.var.startedAt) / 1000);
    log.prompt_tokens = ev.promptTokens;
    log.completion_tokens = ev.completionTokens;
    log.finish_reason = this.clientGone ? "client_closed" : ev.finishReason;
  }

  abortError(): ApiError {
    return this.clientGone
      ? new ApiError(499, "The client closed the request.", { code: "client_closed" })
      : new ApiError(503, "The request was aborted by the server.", { code: "aborted" });
  }

  /** Idempotent: stops generation if it is still going, and releases listeners and the admission slot. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unlink();
    this.s.admission.seen(this.id);
    if (!this.#finished) {
      // The consumer stopped before the terminal event (a stream cancelled between chunks): that
      // event may never be read, so the request is counted as aborted here, once.
      this.#finished = true;
      this.clientGone = true;
      this.#controller.abort();
      this.s.metrics.observeFinish("abort");
      this.s.metrics.e2e.observe((performance.now() - this.c.var.startedAt) / 1000);
      this.c.var.log.finish_reason ??= "client_closed";
    }
    this.#iterator.return?.().catch(() => {});
  }
}
