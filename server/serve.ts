// Deno.serve with graceful shutdown: on SIGINT/SIGTERM the app is told to drain (new requests 503),
// requests in flight (streams included) get up to the timeout to finish, then the server stops.
// With a front (server/front.ts), Deno.serve listens on a private unix socket and the front owns the
// public port: connection cap and header, body and idle timeouts.
import { type Front, type FrontStats, startFront } from "./front.ts";
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

/**
 * Requests in flight, from the handler's start until their body ends, and how to cut off the bodies
 * still streaming; drain waits on it.
 */
class InFlight {
  count = 0;
  #idle = Promise.withResolvers<void>();
  readonly cutters = new Set<() => void>();

  acquire(): void {
    if (this.count++ === 0) this.#idle = Promise.withResolvers<void>();
  }

  release(): void {
    if (--this.count === 0) this.#idle.resolve();
  }

  /** Resolves once no request is in flight. */
  idle(): Promise<void> {
    return this.count === 0 ? Promise.resolve() : this.#idle.promise;
  }

  cutAll(): void {
    // A copy: each cut removes itself from the set.
    for (const cut of [...this.cutters]) cut();
  }
}

// The client can cancel at any moment: enqueue, close and error must never throw out of a stream.
function enqueueQuietly(controller: ReadableStreamDefaultController<Uint8Array>, bytes: Uint8Array): void {
  try {
    controller.enqueue(bytes);
  } catch {
    // cancelled
  }
}

function closeQuietly(controller: ReadableStreamDefaultController<Uint8Array>): void {
  try {
    controller.close();
  } catch {
    // cancelled
  }
}

function errorQuietly(controller: ReadableStreamDefaultController<Uint8Array>, err: unknown): void {
  try {
    controller.error(err);
  } catch {
    // cancelled
  }
}

/**
 * What ends a body cut off by an expired drain, where its type allows an explicit end: an SSE error
 * event and [DONE], or an error object in a JSON body that so far holds only keep-alive whitespace.
 */
function shutdownEnding(sse: boolean, blankJson: boolean): Uint8Array | null {
  const error = JSON.stringify(SHUTDOWN_ERROR);
  if (sse) return encoder.encode(`data: ${error}\n\ndata: [DONE]\n\n`);
  if (blankJson) return encoder.encode(error);
  return null;
}

/**
 * Passes a response body through, noting when it ends so drain knows the request is over, and
 * registering a cut that drain calls if the body is still open when its timeout expires.
 */
function track(
  body: ReadableStream<Uint8Array>,
  contentType: string,
  requests: InFlight,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const sse = contentType.startsWith("text/event-stream");
  let blankJson = contentType.startsWith("application/json");
  let open = true;
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  // The body's end, its error, the client's cancel and a cut can all race: only the first counts.
  const end = () => {
    if (!open) return false;
    open = false;
    requests.cutters.delete(cut);
    requests.release();
    return true;
  };
  const cut = () => {
    if (!end()) return;
    reader.cancel("server shutting down").catch(() => {});
    const ending = shutdownEnding(sse, blankJson);
    if (ending) enqueueQuietly(controller, ending);
    closeQuietly(controller);
  };
  requests.cutters.add(cut);
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
          closeQuietly(controller);
        } else {
          if (blankJson && !/^\s*$/.test(decoder.decode(r.value))) blankJson = false;
          enqueueQuietly(controller, r.value);
        }
      } catch (err) {
        if (end()) errorQuietly(controller, err);
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  });
}

/** Wraps the app: refuses requests beyond maxRequests and counts the rest in flight until their body ends. */
function handlerFor(opts: ServeOptions, requests: InFlight): (req: Request) => Promise<Response> {
  return async (req) => {
    // With a front, its connection cap applies instead.
    if (!opts.front && opts.maxRequests !== undefined && requests.count >= opts.maxRequests) {
      await req.body?.cancel().catch(() => {});
      return Response.json(OVERLOADED_ERROR, {
        status: 503,
        headers: { "retry-after": "1", connection: "close" },
      });
    }
    requests.acquire();
    let res: Response;
    try {
      res = await opts.app.fetch(req);
    } catch (err) {
      requests.release();
      throw err;
    }
    if (!res.body) {
      requests.release();
      return res;
    }
    return new Response(track(res.body, res.headers.get("content-type") ?? "", requests), res);
  };
}

/** Where serve ended up listening, and what to close when it finishes. */
interface Listening {
  server: Deno.HttpServer;
  /** The public address: the front's, or Deno.serve's without one. */
  addr: Deno.NetAddr;
  front: Front | null;
  /** The private socket's folder, removed when the server has finished; null if none was made. */
  socketDir: string | null;
}

function listenDirect(opts: ServeOptions, handler: Deno.ServeHandler): Listening {
  const server = Deno.serve({
    hostname: opts.host,
    port: opts.port,
    onListen: (a) => opts.onListen?.(a as Deno.NetAddr),
  }, handler);
  return { server, addr: server.addr as Deno.NetAddr, front: null, socketDir: null };
}

/** Deno.serve where only the front can reach it: a unix socket in a private folder, else loopback. */
function listenBehind(handler: Deno.ServeHandler): {
  server: Deno.HttpServer;
  connectBackend: () => Promise<Deno.Conn>;
  socketDir: string | null;
} {
  let socketDir: string | null = null;
  try {
    // A private folder (mode 0700), so only this user can reach the server behind the front.
    socketDir = Deno.makeTempDirSync({ prefix: "ragtime-" });
    const path = `${socketDir}/http.sock`;
    const server = Deno.serve({ path, onListen: () => {} }, handler);
    return { server, connectBackend: () => Deno.connect({ transport: "unix", path }), socketDir };
  } catch {
    // No writable temp folder or no unix sockets: loopback on a free port instead.
    if (socketDir) Deno.remove(socketDir, { recursive: true }).catch(() => {});
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
    const port = (server.addr as Deno.NetAddr).port;
    return { server, connectBackend: () => Deno.connect({ hostname: "127.0.0.1", port }), socketDir: null };
  }
}

/** Below what the cap needs, connections would fail for want of descriptors before the cap is reached. */
function warnOpenFileLimit(maxConnections: number): void {
  const files = openFileLimit(), need = openFilesFor(maxConnections);
  if (files !== null && maxConnections > 0 && files < need) {
    console.error(
      `ragtime: warning: the open-file limit (${files}) is below the ${need} that ` +
        `--max-connections ${maxConnections} needs; raise it (ulimit -Hn) or lower --max-connections`,
    );
  }
}

function listenWithFront(opts: ServeOptions, limits: FrontLimits, handler: Deno.ServeHandler): Listening {
  const { server, connectBackend, socketDir } = listenBehind(handler);
  warnOpenFileLimit(limits.maxConnections);
  const front = startFront({
    host: opts.host,
    port: opts.port,
    ...limits,
    connectBackend,
    onLargeClose: memoryTrimmer(),
  });
  opts.onListen?.(front.addr);
  return { server, addr: front.addr, front, socketDir };
}

/** Waits for the first of `waits` or `ms`, leaving no timer behind. */
async function raceTimer(waits: Promise<unknown>[], ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((r) => timer = setTimeout(r, ms));
  await Promise.race([...waits, timeout]);
  clearTimeout(timer);
}

/**
 * Lets requests in flight finish (until the timeout, or `force` for a second signal), cuts off the
 * bodies still open, then stops the server, giving handlers still running a grace period.
 */
async function drainServer(
  opts: ServeOptions,
  server: Deno.HttpServer,
  requests: InFlight,
  force: Promise<void>,
): Promise<void> {
  opts.onDrainStart?.();
  await raceTimer([requests.idle(), force], opts.shutdownTimeoutS * 1000);
  requests.cutAll();
  await raceTimer([server.shutdown()], SHUTDOWN_GRACE_MS);
}

/** Listens for SIGINT and SIGTERM where the platform has them; returns the signals listened to. */
function addSignalListeners(enabled: boolean, onSignal: () => void): Deno.Signal[] {
  const signals: Deno.Signal[] = enabled ? ["SIGINT", "SIGTERM"] : [];
  return signals.filter((sig) => {
    try {
      Deno.addSignalListener(sig, onSignal);
      return true;
    } catch {
      return false; // SIGTERM is not available on Windows
    }
  });
}

export function serve(opts: ServeOptions): RunningServer {
  const requests = new InFlight();
  const handler = handlerFor(opts, requests);
  const { server, addr, front, socketDir } = opts.front
    ? listenWithFront(opts, opts.front, handler)
    : listenDirect(opts, handler);

  const force = Promise.withResolvers<void>();
  const drained = Promise.withResolvers<void>();
  let draining: Promise<void> | null = null;
  const drain = () =>
    draining ??= drainServer(opts, server, requests, force.promise).then(() => drained.resolve());

  // A second signal, once draining, stops at once.
  const onSignal = () => {
    if (draining) force.resolve();
    else drain();
  };
  const listening = addSignalListeners(opts.handleSignals !== false, onSignal);

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
