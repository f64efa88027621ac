// Deno.serve with graceful shutdown: on SIGINT/SIGTERM the app is told to drain (new requests 503),
// requests in flight (streams included) get up to the timeout to finish, then the server stops.
// With a front (server/front.ts), Deno.serve listens on a private unix socket and the front owns the
// public port: connection cap and header, body and idle timeouts.
import { type FrontStats, startFront } from "./front.ts";
import { memoryTrimmer } from "./trim.ts";
import { openFileLimit, openFilesFor } from "./rlimit.ts";

/** What the front enforces; seconds, 0: no limit. */
export interface FrontLimits {
  maxConnections: number;
  headerTimeoutS: number;
  bodyTimeoutS: number;
  idleTimeoutS: number;
  sendTimeoutS: number;
}

export interface ServeOptions {
  app: { fetch(req: Request): Response | Promise<Response> };
  host: string;
  /** 0 picks a free port; see the returned addr. */
  port: number;
  /** How long drain() waits for requests in flight before cutting them off. */
  shutdownTimeoutS: number;
  /** Called once when draining starts; the app should then answer 503 to new requests. */
  onDrainStart?: () => void;
  /** Aborting it starts a drain, like a signal does. */
  signal?: AbortSignal;
  /** Listen for SIGINT/SIGTERM (default true); a second signal stops at once. */
  handleSignals?: boolean;
  onListen?: (addr: Deno.NetAddr) => void;
  /**
   * Most requests in flight (streams until their body ends); beyond it 503 and the connection is
   * closed. Deno.serve does not expose connections, so this caps the ones that hold a request.
   */
  maxRequests?: number;
  /** Put the connection front before Deno.serve (maxRequests is then not applied). */
  front?: FrontLimits;
}

export interface RunningServer {
  /** Resolves once the server has shut down; the caller then exits 0. */
  finished: Promise<void>;
  /** Starts draining (idempotent); resolves when the server has stopped. */
  drain(): Promise<void>;
  addr: Deno.NetAddr;
  /** The front's counters; null without a front. */
  connections(): FrontStats | null;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Ends a response cut off by an expired drain; OpenAI's error shape. */
const SHUTDOWN_ERROR = {
  error: {
    message: "The server shut down before the response was complete.",
    type: "server_error",
    param: null,
    code: "server_shutdown",
  },
};

const OVERLOADED_ERROR = {
  error: {
    message: "The server has too many requests in flight; retry shortly.",
    type: "server_error",
    param: null,
    code: "server_overloaded",
  },
};

/** Extra time for handlers still running after streams were cut off (non-streaming generations). */
const SHUTDOWN_GRACE_MS = 2000;

export function serve(opts: ServeOptions): RunningServer {
  let inFlight = 0;
  let idle = Promise.withResolvers<void>();
  const cutters = new Set<() => void>();
  const force = Promise.withResolvers<void>();
  const drained = Promise.withResolvers<void>();

  const release = () => {
    if (--inFlight === 0) idle.resolve();
  };
  const acquire = () => {
    if (inFlight++ === 0) idle = Promise.withResolvers<void>();
  };

  /**
   * Passes a response body through, noting when it ends so drain knows the request is over. A body
   * cut off by an expired drain gets an explicit end when its type allows one: an SSE error event
   * and [DONE], or an error object in a JSON body that so far holds only keep-alive whitespace.
   */
  const track = (body: ReadableStream<Uint8Array>, contentType: string): ReadableStream<Uint8Array> => {
    const reader = body.getReader();
    const sse = contentType.startsWith("text/event-stream");
    let blankJson = contentType.startsWith("application/json");
    let open = true;
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const end = () => {
      if (!open) return false;
      open = false;
      cutters.delete(cut);
      release();
      return true;
    };
    // The client can cancel at any moment: enqueue and close must never throw out of here.
    const put = (bytes: Uint8Array) => {
      try {
        controller.enqueue(bytes);
      } catch {
        // cancelled
      }
    };
    const close = () => {
      try {
        controller.close();
      } catch {
        // cancelled
      }
    };
    const cut = () => {
      if (!end()) return;
      reader.cancel("server shutting down").catch(() => {});
      const error = JSON.stringify(SHUTDOWN_ERROR);
      if (sse) put(encoder.encode(`data: ${error}\n\ndata: [DONE]\n\n`));
      else if (blankJson) put(encoder.encode(error));
      close();
    };
    cutters.add(cut);
    return new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
      },
      async pull() {
        try {
          const r = await reader.read();
          if (!open) return;
          if (r.done) {
            end();
            close();
          } else {
            if (blankJson && !/^\s*$/.test(decoder.decode(r.value))) blankJson = false;
            put(r.value);
          }
        } catch (err) {
          if (!end()) return;
          try {
            controller.error(err);
          } catch {
            // cancelled
          }
        }
      },
      cancel(reason) {
        end();
        return reader.cancel(reason);
      },
    });
  };

  const handler = async (req: Request): Promise<Response> => {
    if (!opts.front && opts.maxRequests !== undefined && inFlight >= opts.maxRequests) {
      await req.body?.cancel().catch(() => {});
      return Response.json(OVERLOADED_ERROR, {
        status: 503,
        headers: { "retry-after": "1", connection: "close" },
      });
    }
    acquire();
    let res: Response;
    try {
      res = await opts.app.fetch(req);
    } catch (err) {
      release();
      throw err;
    }
    if (!res.body) {
      release();
      return res;
    }
    return new Response(track(res.body, res.headers.get("content-type") ?? ""), res);
  };

  let addr!: Deno.NetAddr;
  let server: Deno.HttpServer;
  let front: ReturnType<typeof startFront> | null = null;
  let socketDir: string | null = null;
  if (opts.front) {
    let connectBackend: () => Promise<Deno.Conn>;
    try {
      // A private folder (mode 0700), so only this user can reach the server behind the front.
      socketDir = Deno.makeTempDirSync({ prefix: "ragtime-" });
      const path = `${socketDir}/http.sock`;
      server = Deno.serve({ path, onListen: () => {} }, handler);
      connectBackend = () => Deno.connect({ transport: "unix", path });
    } catch {
      // No writable temp folder or no unix sockets: loopback on a free port instead.
      if (socketDir) Deno.remove(socketDir, { recursive: true }).catch(() => {});
      socketDir = null;
      server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
      const port = (server.addr as Deno.NetAddr).port;
      connectBackend = () => Deno.connect({ hostname: "127.0.0.1", port });
    }
    const files = openFileLimit(), need = openFilesFor(opts.front.maxConnections);
    if (files !== null && opts.front.maxConnections > 0 && files < need) {
      console.error(
        `ragtime: warning: the open-file limit (${files}) is below the ${need} that ` +
          `--max-connections ${opts.front.maxConnections} needs; raise it (ulimit -Hn) or lower --max-connections`,
      );
    }
    front = startFront({
      host: opts.host,
      port: opts.port,
      ...opts.front,
      connectBackend,
      onLargeClose: memoryTrimmer(),
    });
    addr = front.addr;
    opts.onListen?.(addr);
  } else {
    server = Deno.serve({
      hostname: opts.host,
      port: opts.port,
      onListen: (a) => {
        addr = a as Deno.NetAddr;
        opts.onListen?.(addr);
      },
    }, handler);
    addr = server.addr as Deno.NetAddr;
  }

  let draining: Promise<void> | null = null;
  const drain = () =>
    draining ??= (async () => {
      opts.onDrainStart?.();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((r) => timer = setTimeout(r, opts.shutdownTimeoutS * 1000));
      await Promise.race([inFlight === 0 ? Promise.resolve() : idle.promise, timeout, force.promise]);
      clearTimeout(timer);
      for (const cut of [...cutters]) cut();
      let grace: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([server.shutdown(), new Promise((r) => grace = setTimeout(r, SHUTDOWN_GRACE_MS))]);
      clearTimeout(grace);
      drained.resolve();
    })();

  const signals: Deno.Signal[] = opts.handleSignals === false ? [] : ["SIGINT", "SIGTERM"];
  const onSignal = () => {
    if (draining) force.resolve();
    else drain();
  };
  const listening = signals.filter((sig) => {
    try {
      Deno.addSignalListener(sig, onSignal);
      return true;
    } catch {
      return false; // SIGTERM is not available on Windows
    }
  });

  const onAbort = () => drain();
  if (opts.signal?.aborted) drain();
  else opts.signal?.addEventListener("abort", onAbort, { once: true });

  // drain() also ends it when shutdown hangs past the grace period, so the caller can still exit.
  const finished = Promise.race([server.finished, drained.promise]).finally(async () => {
    // The front forwards what the server wrote last (a cut stream's error event) before it closes.
    await front?.close(SHUTDOWN_GRACE_MS);
    if (socketDir) await Deno.remove(socketDir, { recursive: true }).catch(() => {});
    for (const sig of listening) Deno.removeSignalListener(sig, onSignal);
    opts.signal?.removeEventListener("abort", onAbort);
  });

  return { finished, drain, addr, connections: () => front?.stats() ?? null };
}
