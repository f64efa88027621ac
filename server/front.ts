// The connection front: owns the public socket, because Deno.serve (2.9.6) has no header, body or idle
// timeout and no connection limit (docs/RELIABILITY.md). Each accepted connection counts against a cap
// (over it: 503 and close); bytes are forwarded unchanged, both ways, to the real server on an internal
// endpoint over a connection of its own, with backpressure (one read in flight per direction). Requests
// and responses are framed (server/http1_framing.ts) only to know whether a request is in flight:
//   - a request head must arrive whole within the header timeout (from the connection's start, or from
//     the request's first byte on a kept-alive connection): slowloris;
//   - a request body must make progress: no body byte for the body timeout (and a second of grace, for
//     the app's 408 to go out first) closes the connection;
//   - a kept-alive connection with nothing in flight closes after the idle timeout;
//   - a response with `Connection: close` closes the connection once it is through (Deno.serve leaves it
//     open when the request body is incomplete, e.g. after the app's 408).
// A client that leaves is passed on as the internal connection's close, so the app sees it as before.
import { Framing } from "./http1_framing.ts";

export interface FrontOptions {
  host: string;
  /** 0 picks a free port; see addr. */
  port: number;
  /** Opens a connection to the real server. */
  connectBackend: () => Promise<Deno.Conn>;
  /** Most open client connections; more get 503 and are closed. */
  maxConnections: number;
  /** Seconds; 0: no limit. */
  headerTimeoutS: number;
  bodyTimeoutS: number;
  idleTimeoutS: number;
  /** A response write the client takes nothing of for this long closes the connection. */
  sendTimeoutS: number;
  /** Called when a connection that received at least `largeBytes` closes (to return freed memory). */
  onLargeClose?: () => void;
}

/** Request bytes on one connection past which its close calls onLargeClose. */
const LARGE_BYTES = 256 * 1024;

/** Counters for /metrics. */
export interface FrontStats {
  open: number;
  accepted: number;
  refused: number;
  timedOut: { header: number; body: number; idle: number; send: number };
}

export interface Front {
  addr: Deno.NetAddr;
  stats(): FrontStats;
  /**
   * Stops accepting; closes connections with nothing in flight at once and the rest when their server
   * side has closed (their last bytes forwarded), or after `graceMs`.
   */
  close(graceMs?: number): Promise<void>;
}

/** How often deadlines are checked; timeouts are whole seconds or more, so this is fine-grained enough. */
const SWEEP_MS = 200;
/** After the server's last byte to a client that is still sending: how long to drain before closing. */
const LINGER_MS = 2000;
/** The front cuts a stalled body this long after the app's own 408 would have gone out, so the answer wins. */
const BODY_GRACE_MS = 1000;
/** Refused connections lingering at once (to let their 503 be read); beyond, closed at once. */
const MAX_REFUSED_LINGERING = 256;
const BUFFER_BYTES = 16 * 1024;
/** How long a refused connection may take to send its request and read the 503. */
const REFUSE_MS = 1000;

const enc = new TextEncoder();

const errorResponse = (status: string, code: string, message: string, extra = "") => {
  const type = status.startsWith("5") ? "server_error" : "invalid_request_error";
  const body = JSON.stringify({ error: { message, type, param: null, code } });
  return enc.encode(
    `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${
      enc.encode(body).byteLength
    }\r\n` +
      `${extra}connection: close\r\n\r\n${body}`,
  );
};

const REFUSED = errorResponse(
  "503 Service Unavailable",
  "server_overloaded",
  "The server has too many open connections; retry shortly.",
  "retry-after: 1\r\n",
);

const HEADER_TIMEOUT = errorResponse(
  "408 Request Timeout",
  "request_timeout",
  "The request headers did not arrive in time.",
);

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

const tryClose = (conn: Deno.Conn | null) => {
  try {
    conn?.close();
  } catch {
    // already closed
  }
};

type Reason = "header" | "body" | "idle" | "send" | "linger";

class Connection {
  backend: Deno.Conn | null = null;
  #connecting: Promise<Deno.Conn> | null = null;
  /** Methods of requests whose heads went through and whose responses have not ended. */
  readonly pending: string[] = [];
  readonly request: Framing;
  readonly response: Framing;
  served = 0;
  requestStart = 0;
  lastBodyByte = 0;
  lastActivity: number;
  readonly acceptedAt: number;
  /** Writing to the backend (body progress is not the client's fault while it blocks). */
  blockedOnBackend = false;
  /** Since when a write of response bytes to the client has been waiting (0: none). */
  sendingSince = 0;
  closeAfterResponse = false;
  /** The server closed its side: client bytes are dropped while its last response goes out. */
  backendGone = false;
  lingerSince = 0;
  closed = false;
  /** Request bytes received, up to LARGE_BYTES. */
  received = 0;
  deadline = Infinity;
  reason: Reason = "header";

  constructor(readonly client: Deno.Conn, readonly front: FrontImpl) {
    this.acceptedAt = this.lastActivity = performance.now();
    this.request = new Framing("request", {
      head: (h) => {
        this.pending.push(h.method ?? "");
        this.lastBodyByte = performance.now();
      },
      end: () => {},
    });
    this.response = new Framing("response", {
      head: (h) => {
        if (h.close && (h.status ?? 0) >= 200) this.closeAfterResponse = true;
      },
      end: () => {
        this.pending.shift();
        this.served++;
      },
    }, () => this.pending[0] === "HEAD");
    this.schedule();
  }

  /** Sets the deadline that applies in the current state. */
  schedule(): void {
    const o = this.front.opts;
    const at = (base: number, s: number) => s > 0 ? base + s * 1000 : Infinity;
    if (this.lingerSince) [this.deadline, this.reason] = [this.lingerSince + LINGER_MS, "linger"];
    else if (this.sendingSince) {
      [this.deadline, this.reason] = [at(this.sendingSince, o.sendTimeoutS), "send"];
    } else if (this.request.phase === "head") {
      // A new connection's first head counts from the accept, so waiting before it buys no time.
      const from = this.served === 0 && this.pending.length === 0 ? this.acceptedAt : this.requestStart;
      [this.deadline, this.reason] = [at(from, o.headerTimeoutS), "header"];
    } else if (this.request.inBody) {
      this.deadline = this.blockedOnBackend
        ? Infinity
        : at(this.lastBodyByte, o.bodyTimeoutS) + BODY_GRACE_MS;
      this.reason = "body";
    } else if (this.request.phase === "opaque") {
      // Framing the server will refuse: it answers and closes; bound the wait by the body timeout.
      [this.deadline, this.reason] = [at(this.lastActivity, o.bodyTimeoutS), "body"];
    } else if (this.pending.length > 0 || this.response.partial) this.deadline = Infinity;
    else if (this.served === 0) {
      [this.deadline, this.reason] = [at(this.acceptedAt, o.headerTimeoutS), "header"];
    } else [this.deadline, this.reason] = [at(this.lastActivity, o.idleTimeoutS), "idle"];
  }

  async run(): Promise<void> {
    const buf = new Uint8Array(BUFFER_BYTES);
    try {
      for (;;) {
        const n = await this.client.read(buf);
        if (n === null) break;
        if (this.closed) return;
        const now = performance.now();
        this.lastActivity = now;
        if (this.lingerSince || this.backendGone) continue; // the server is done with this connection
        const bytes = buf.subarray(0, n);
        if (this.received < LARGE_BYTES) this.received += n;
        const wasBody = this.request.inBody;
        if (!this.request.partial) this.requestStart = now;
        this.request.push(bytes);
        if (wasBody || this.request.inBody) this.lastBodyByte = now;
        const backend = this.backend ?? await this.#connect();
        if (this.closed) return;
        this.blockedOnBackend = true;
        this.schedule();
        try {
          await writeAll(backend, bytes);
        } catch {
          this.backendGone = true; // what the server sent is finishing in pumpResponses
        } finally {
          this.blockedOnBackend = false;
        }
        this.schedule();
      }
    } catch {
      return this.close(); // reset by the client
    }
    // The client sent its last byte (or left): pass it on, so the server sees the departure as before.
    if (this.closed || this.backendGone) return; // pumpResponses ends it after the server's last byte
    if (!this.backend || this.lingerSince || (this.pending.length === 0 && !this.response.partial)) {
      return this.close();
    }
    this.backend.closeWrite().catch(() => this.close());
  }

  #connect(): Promise<Deno.Conn> {
    return this.#connecting ??= this.front.opts.connectBackend().then((b) => {
      this.backend = b;
      if (this.closed) tryClose(b);
      else this.#pumpResponses(b);
      return b;
    });
  }

  async #pumpResponses(backend: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(BUFFER_BYTES);
    try {
      for (;;) {
        const n = await backend.read(buf);
        if (n === null || this.closed) break;
        const bytes = buf.subarray(0, n);
        this.response.push(bytes);
        // A write blocks only while the client reads nothing (the kernel's buffers are full).
        this.sendingSince = performance.now();
        this.schedule();
        try {
          await writeAll(this.client, bytes);
        } catch {
          return this.close(); // the client left: closing the server's side aborts its work
        } finally {
          this.sendingSince = 0;
        }
        this.lastActivity = performance.now();
        if (this.closeAfterResponse && !this.response.partial) break;
        this.schedule();
      }
    } catch {
      // the server's side failed: end the client's connection
    }
    if (this.closed) return;
    tryClose(backend);
    // A client still sending (an upload the server refused) gets a moment to read the answer.
    if (this.request.partial) {
      this.lingerSince = performance.now();
      this.client.closeWrite().catch(() => this.close());
      this.schedule();
    } else this.close();
  }

  /** Nothing in flight: no request begun and no response owed or in progress. */
  get idle(): boolean {
    return !this.request.partial && this.pending.length === 0 && !this.response.partial;
  }

  /** Deadline passed. */
  expire(): void {
    if (this.reason !== "linger") this.front.timedOut[this.reason]++;
    if (this.reason === "header" && this.request.partial && this.pending.length === 0) {
      // A request that never finished its head: say so (best effort), as nginx does not but clients prefer.
      this.client.write(HEADER_TIMEOUT).catch(() => {}).finally(() => this.close());
      this.closed = true;
      this.front.forget(this);
      return;
    }
    this.close();
  }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.front.forget(this);
    }
    tryClose(this.client);
    tryClose(this.backend);
  }
}

class FrontImpl implements Front {
  readonly conns = new Set<Connection>();
  readonly timedOut = { header: 0, body: 0, idle: 0, send: 0 };
  accepted = 0;
  refused = 0;
  #lingering = 0;
  readonly #listener: Deno.TcpListener;
  readonly #sweep: ReturnType<typeof setInterval>;
  #stopped = false;
  readonly addr: Deno.NetAddr;

  constructor(readonly opts: FrontOptions) {
    this.#listener = Deno.listen({ hostname: opts.host, port: opts.port });
    this.addr = this.#listener.addr;
    this.#sweep = setInterval(() => {
      const now = performance.now();
      for (const c of this.conns) if (now >= c.deadline) c.expire();
    }, SWEEP_MS);
    this.#accept();
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#stopped || err instanceof Deno.errors.BadResource) return;
        // Out of descriptors and the like: back off rather than spin.
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      try {
        conn.setNoDelay(true);
      } catch {
        // not a TCP socket
      }
      if (this.conns.size >= this.opts.maxConnections) {
        this.refused++;
        this.#refuse(conn);
        continue;
      }
      this.accepted++;
      const c = new Connection(conn, this);
      this.conns.add(c);
      c.run();
    }
  }

  /**
   * 503 once the client has sent something (a response before the request confuses clients), then a
   * short drain so it reads the 503 rather than a reset; all within REFUSE_MS.
   */
  async #refuse(conn: Deno.Conn): Promise<void> {
    if (this.#lingering >= MAX_REFUSED_LINGERING) return tryClose(conn);
    this.#lingering++;
    const timer = setTimeout(() => tryClose(conn), REFUSE_MS);
    try {
      const buf = new Uint8Array(4096);
      if (await conn.read(buf) === null) return;
      await writeAll(conn, REFUSED);
      await conn.closeWrite();
      while (await conn.read(buf) !== null) { /* discard */ }
    } catch {
      // gone or timed out
    } finally {
      clearTimeout(timer);
      this.#lingering--;
      tryClose(conn);
    }
  }

  forget(c: Connection): void {
    this.conns.delete(c);
    if (c.received >= LARGE_BYTES) this.opts.onLargeClose?.();
    if (this.conns.size === 0) this.#empty?.resolve();
  }

  #empty: PromiseWithResolvers<void> | null = null;

  stats(): FrontStats {
    return {
      open: this.conns.size,
      accepted: this.accepted,
      refused: this.refused,
      timedOut: { ...this.timedOut },
    };
  }

  async close(graceMs = 2000): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      try {
        this.#listener.close();
      } catch {
        // already closed
      }
    }
    for (const c of [...this.conns]) if (c.idle) c.close();
    if (this.conns.size > 0) {
      this.#empty ??= Promise.withResolvers<void>();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.#empty.promise, new Promise((r) => timer = setTimeout(r, graceMs))]);
      clearTimeout(timer);
    }
    clearInterval(this.#sweep);
    for (const c of [...this.conns]) c.close();
  }
}

export function startFront(opts: FrontOptions): Front {
  return new FrontImpl(opts);
}
