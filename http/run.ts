// One engine request seen from the HTTP side: client disconnects abort it, its events are timed
// into the latency histograms and the request's log line, and its admission slot is released.
import type { EngineClient, GenerateEvent, GenerateRequest } from "../engine/protocol.ts";
import type { AppContext, Shared } from "./context.ts";
import type { AnswerPredictor } from "./answer_prediction.ts";
import { ApiError } from "./errors.ts";

/** One engine request: links client disconnects to the abort signal and records timing. */
export class Run {
  readonly #controller = new AbortController();
  readonly #iterator: AsyncIterator<GenerateEvent>;
  readonly #unlink: () => void;
  #tokensSeen = false;
  #lastTokenAt = 0;
  #finished = false;
  #closed = false;
  /** The abort came from our side of the connection (client went away). */
  clientGone = false;
  readonly id: string;

  constructor(
    readonly c: AppContext,
    readonly s: Shared,
    engine: EngineClient,
    req: GenerateRequest,
    readonly predictor?: AnswerPredictor,
  ) {
    this.id = req.id;
    const signal = c.req.raw.signal;
    const onAbort = () => {
      this.clientGone = true;
      this.#controller.abort();
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    this.#unlink = () => signal.removeEventListener("abort", onAbort);
    c.var.log.prompt_tokens = req.promptIds.length;
    try {
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
    this.#observe(ev);
    this.predictor?.observe(ev);
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
    if (ev.cachedPromptTokens !== undefined) log.cached_tokens = ev.cachedPromptTokens;
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
    this.s.admission.release(this.id);
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
