// Server-sent events in the OpenAI dialect: `data: {json}\n\n` per event, `data: [DONE]\n\n` at the end.
import { toApiError } from "./errors.ts";

const encoder = new TextEncoder();

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
 */
export function sseResponse(events: AsyncIterable<unknown>, opts: SseOptions): Response {
  const it = events[Symbol.asyncIterator]();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;

  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => send(": ping\n\n"), opts.keepAliveMs);
  };
  const send = (s: string) => {
    if (closed) return;
    controller.enqueue(encoder.encode(s));
    arm();
  };
  const finish = () => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    opts.onClose?.();
  };
  const end = () => {
    send("data: [DONE]\n\n");
    finish();
    controller.close();
  };

  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      arm();
    },
    async pull() {
      try {
        const r = await it.next();
        if (closed) return;
        if (r.done) end();
        else send(`data: ${JSON.stringify(r.value)}\n\n`);
      } catch (err) {
        if (closed) return;
        send(`data: ${JSON.stringify(toApiError(err).body())}\n\n`);
        end();
      }
    },
    cancel() {
      finish();
      opts.onCancel?.();
      // Not awaited: a next() in flight finishes first, which the abort above makes quick.
      it.return?.().catch(() => {});
    },
  });

  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    },
  });
}
