// Running a chat or completions request on the engine: admission, then one of two responders, the
// whole completion as JSON or a stream of SSE chunks.
import type {
  EngineClient,
  FinishReason,
  GenerateEvent,
  SamplingParams,
  TokenLogprob,
} from "../engine/protocol.ts";
import type { AppContext, Shared } from "./context.ts";
import { engineError } from "./errors.ts";
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
  const run = new Run(c, s, engine, { id, promptIds: job.promptIds, params: job.params });
  const base: Base = { id, created: Math.floor(Date.now() / 1000), model: servedName(s, engine) };
  return await (job.stream ? streamResponse(c, s, job, run, base) : jsonResponse(c, job, run, base));
}

/** The whole completion in one JSON body, once the engine is done. */
async function jsonResponse(c: AppContext, job: Job, run: Run, base: Base): Promise<Response> {
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
  return c.json({
    ...base,
    object: format.object,
    choices: [format.choice(text, wantLogprobs ? logprobs : null, done.finishReason)],
    usage: usage(done),
  });
}

/** SSE chunks, started once the first event is in (or keep-alive is due). */
async function streamResponse(c: AppContext, s: Shared, job: Job, run: Run, base: Base): Promise<Response> {
  const { format } = job;
  const wantLogprobs = job.params.logprobs !== null;
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
