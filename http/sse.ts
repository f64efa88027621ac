// Server-sent events in the OpenAI dialect: `data: {json}\n\n` per event, `data: [DONE]\n\n` at the end.
import { toApiError } from "./errors.ts";

const encoder = new TextEncoder();
const PING = Symbol("ping");

export interface SseOptions {
  /** Send `: ping` after this long without output, so proxies and clients keep the connection. */
  keepAliveMs: number;
  /** The client went away; stop producing. */
  onCancel?: () => void;
  /** Called once when the stream ends for any reason (done, error, cancel). */
  onClose?: () => void;
}

/**
 * Streams each value of `events` as one JSON data event. An exception from `events` becomes an
 * error event; either way the stream ends with [DONE] and closes cleanly.
 *
 * Every enqueue happens in pull() and is guarded: Deno's HTTP server can cancel the stream at any
 * moment (the client left), and an enqueue or close on a cancelled controller throws, which from a
 * timer callback would take the whole process down.
 */
export function sseResponse(events: AsyncIterable<unknown>, opts: SseOptions): Response {
  const it = events[Symbol.asyncIterator]();
  let closed = false;
  let pending: Promise<IteratorResult<unknown>> | null = null;

  const finish = () => {
    if (closed) return false;
    closed = true;
    opts.onClose?.();
    return true;
  };
  const put = (c: ReadableStreamDefaultController<Uint8Array>, s: string) => {
    try {
      c.enqueue(encoder.encode(s));
    } catch {
      finish(); // cancelled under us
    }
  };
  const end = (c: ReadableStreamDefaultController<Uint8Array>) => {
    put(c, "data: [DONE]\n\n");
    finish();
    try {
      c.close();
    } catch {
      // already cancelled
    }
  };

  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      if (closed) return;
      if (!pending) {
        pending = it.next();
        // A stream cancelled while this is in flight never awaits it again: no unhandled rejection.
        pending.catch(() => {});
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        const r = await Promise.race([
          pending,
          new Promise<typeof PING>((resolve) => timer = setTimeout(() => resolve(PING), opts.keepAliveMs)),
        ]);
        if (closed) return;
        if (r === PING) return put(c, ": ping\n\n");
        pending = null;
        if (r.done) end(c);
        else put(c, `data: ${JSON.stringify(r.value)}\n\n`);
      } catch (err) {
        pending = null;
        if (closed) return;
        put(c, `data: ${JSON.stringify(toApiError(err).body())}\n\n`);
        end(c);
      } finally {
        clearTimeout(timer);
      }
    },
    cancel() {
      if (!finish()) return;
      opts.onCancel?.();
      // Not awaited: a next() in flight finishes first, which the abort above makes quick.
      it.return?.().catch(() => {});
    },
  }, { highWaterMark: 0 });

  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    },
  });
}
