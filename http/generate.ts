// Running a chat or completions request on the engine: admission, then one of two responders, the
// whole completion as JSON or a stream of SSE chunks.
import type {
  EngineClient,
  FinishReason,
  GenerateEvent,
  SamplingParams,
  TokenLogprob,
} from "../engine/protocol.ts";
import { AnswerPredictor } from "./answer_prediction.ts";
import type { AppContext, Shared } from "./context.ts";
import { engineError, toApiError } from "./errors.ts";
import { servedName } from "./prepare.ts";
import { Run } from "./run.ts";
import { sseResponse } from "./sse.ts";

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
  /** One choice delta, or several (chat's tool calls), or none. */
  delta(text: string, logprobs: TokenLogprob[] | null): object | object[];
  finish(finish: Finish): object | object[];
}

export interface Job {
  engine: EngineClient;
  promptIds: number[];
  params: SamplingParams;
  promptParam: string;
  stream: boolean;
  includeUsage: boolean;
  format: Format;
  /** The conversation goes on: its answer will likely come back in a later prompt (GenerateRequest). */
  continues?: boolean;
  /**
   * The next prompt's tokens if this answer's text comes back (a chat's conversation rendered with it):
   * given, the engine caches them as the answer is generated (AnswerPredictor).
   */
  predict?: (answer: string) => number[];
}

const usage = (d: Done) => ({
  prompt_tokens: d.promptTokens,
  completion_tokens: d.completionTokens,
  total_tokens: d.promptTokens + d.completionTokens,
  // As OpenAI: prompt tokens served from the prefix cache (only where the engine has one).
  ...(d.cachedPromptTokens === undefined
    ? {}
    : { prompt_tokens_details: { cached_tokens: d.cachedPromptTokens } }),
});

const encoder = new TextEncoder();
const TIMEOUT = Symbol("timeout");

/** `p`'s value, or TIMEOUT if it takes longer than `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<typeof TIMEOUT>((r) => timer = setTimeout(() => r(TIMEOUT), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const randomId = () => crypto.randomUUID().replaceAll("-", "");

/** What every response object carries: the response id, its creation time and the served model name. */
interface Base {
  id: string;
  created: number;
  model: string;
}

/** Admits the request, then answers it with the JSON or the streaming responder. */
export async function generate(c: AppContext, s: Shared, job: Job): Promise<Response> {
  const { engine, format } = job;
  const id = `${format.idPrefix}-${randomId()}`;
  s.admission.admit(id, engine.stats(), s.config);
  const predictor = job.predict && new AnswerPredictor(engine, id, job.promptIds, job.predict);
  const run = new Run(c, s, engine, {
    id,
    promptIds: job.promptIds,
    params: job.params,
    continues: job.continues,
    predictsAnswer: predictor !== undefined,
  }, predictor);
  const base: Base = { id, created: Math.floor(Date.now() / 1000), model: servedName(s, engine) };
  return await (job.stream ? streamResponse(c, s, job, run, base) : jsonResponse(c, s, job, run, base));
}

/** The whole completion in one JSON body, once the engine is done. */
async function jsonResponse(c: AppContext, s: Shared, job: Job, run: Run, base: Base): Promise<Response> {
  const result = completion(job, run, base);
  // Settled here or in the body below; a body cancelled early must not leave a rejection unhandled.
  result.catch(() => {});
  const early = await within(result, s.commitMs);
  if (early !== TIMEOUT) return c.json(early);
  // Deno 2.9.6 only notices a departed client of a request with a body over ~512 bytes once the
  // response has started (docs/deno-disconnect.md): so start it, with 200 and JSON's leading
  // whitespace as keep-alive, and write the object (or an error object) when the engine is done.
  const { promise: bodyDone, resolve } = Promise.withResolvers<void>();
  c.set("bodyDone", bodyDone);
  async function* body(): AsyncGenerator<Uint8Array> {
    try {
      yield encoder.encode(" ");
      for (;;) {
        let obj: object | typeof TIMEOUT;
        try {
          obj = await within(result, s.keepAliveMs);
        } catch (err) {
          const e = toApiError(err);
          c.var.log.error ??= e.message;
          c.var.log.error_status = e.status;
          obj = e.body();
        }
        if (obj === TIMEOUT) {
          yield encoder.encode(" ");
          continue;
        }
        yield encoder.encode(JSON.stringify(obj));
        return;
      }
    } finally {
      resolve();
    }
  }
  return new Response(ReadableStream.from(body()), {
    headers: { "content-type": "application/json; charset=UTF-8" },
  });
}

/** Collects the engine's events into the response object; throws the request's error. */
async function completion(job: Job, run: Run, base: Base): Promise<object> {
  const { format } = job;
  const wantLogprobs = job.params.logprobs !== null;
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
  return {
    ...base,
    object: format.object,
    choices: [format.choice(text, wantLogprobs ? logprobs : null, done.finishReason)],
    usage: usage(done),
  };
}

/** SSE chunks, started once the first event is in (or keep-alive is due). */
async function streamResponse(c: AppContext, s: Shared, job: Job, run: Run, base: Base): Promise<Response> {
  const { format } = job;
  const wantLogprobs = job.params.logprobs !== null;
  // Wait briefly for the first event so an early engine error still gets a proper HTTP status, but
  // start the stream soon (a departed client is only noticed once it has: docs/deno-disconnect.md)
  // and before a ping is due.
  const firstEvent = run.next();
  const waited = await within(firstEvent, Math.min(s.commitMs, s.keepAliveMs));
  const first = waited === TIMEOUT ? null : waited;
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
            for (const d of [format.delta(ev.text, logprobs)].flat()) yield chunk([d]);
          }
        } else if (ev.type === "error") {
          yield engineError(ev, job.promptParam).body();
          return;
        } else {
          if (ev.finishReason === "abort") {
            if (!run.clientGone) yield run.abortError().body();
            return;
          }
          for (const d of [format.finish(ev.finishReason)].flat()) yield chunk([d]);
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
