// Soak: many concurrent clients against a real server (loopback only), most of which misbehave: they
// leave before the first byte, mid-stream, mid-response or mid-upload, with bodies from a few bytes to
// ~1 MiB, streaming or not, all drawn from a seed. Afterwards running, waiting and KV usage must
// return to 0; RSS growth is reported. Exits 1 on any violation: a 5xx other than a 503 overload, an
// error not in OpenAI's shape, a malformed answer, a hang, gauges that stay up.
//
// Usage: deno task soak [--requests 800] [--concurrency 32] [--seed 1] [--model GGUF | --url URL [--pid PID]]
//        [--server-args="--max-model-len 512 --body-timeout 5"] [--stalled 100 --stalled-end timeout,close,...]
import { parseArgs } from "node:util";
import { mulberry32, type Rng, uniformInt } from "./lib/rng.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const KINDS = [
  "stream",
  "json",
  "drop_before_first_byte",
  "drop_mid_stream",
  "drop_mid_response",
  "drop_mid_upload",
  "bad_request",
] as const;
export type Kind = typeof KINDS[number];
const WEIGHTS: Record<Kind, number> = {
  stream: 20,
  json: 14,
  drop_before_first_byte: 14,
  drop_mid_stream: 16,
  drop_mid_response: 8,
  drop_mid_upload: 14,
  bad_request: 14,
};

export interface SoakOptions {
  origin: string;
  /** Server process id, for RSS from /proc (absent: RSS is not reported). */
  pid?: number;
  requests: number;
  concurrency: number;
  seed: number;
  /** Largest padding added to bodies (the server's default limit is 1 MiB). */
  maxBodyBytes?: number;
  maxTokens?: number;
  /** No new request starts after this long. */
  timeLimitS?: number;
  /** A request with no response headers after this long, or not finished after requestTimeoutS, hangs. */
  headerTimeoutS?: number;
  requestTimeoutS?: number;
  /** How long the gauges get to return to 0 after the last client. */
  idleTimeoutS?: number;
  settleS?: number;
  /** The server's output so far, scanned for logged 5xx statuses (when the soak started the server). */
  serverOutput?: () => string;
  log?: (line: string) => void;
}

export interface Rss {
  beforeMb: number;
  peakMb: number;
  afterMb: number;
  settledMb: number;
}

export interface SoakReport {
  requests: number;
  byKind: Record<string, number>;
  outcomes: Record<string, number>;
  violations: string[];
  rss: Rss | null;
  idleAfterMs: number | null;
  wallS: number;
}

/** Resident set size of a process in MiB, from /proc (null where unavailable). */
export function rssMb(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

export interface Gauges {
  running: number;
  waiting: number;
  kv: number;
}

export async function gauges(origin: string): Promise<Gauges> {
  const res = await fetch(`${origin}/metrics`, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  const get = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  return {
    running: get("ragtime_requests_running"),
    waiting: get("ragtime_requests_waiting"),
    kv: get("ragtime_kv_cache_usage_ratio"),
  };
}

/** Milliseconds until running, waiting and KV usage are all 0, or null past `timeoutMs`. */
export async function untilIdle(origin: string, timeoutMs: number): Promise<number | null> {
  const t0 = performance.now();
  for (;;) {
    try {
      const g = await gauges(origin);
      if (g.running === 0 && g.waiting === 0 && g.kv === 0) return performance.now() - t0;
    } catch {
      // counted as busy
    }
    if (performance.now() - t0 > timeoutMs) return null;
    await sleep(100);
  }
}

/** OpenAI's error shape: {"error": {"message": string, "type": string, ...}}. */
export function isOpenAiError(v: unknown): boolean {
  const e = (v as { error?: Record<string, unknown> } | null)?.error;
  return typeof e === "object" && e !== null && typeof e.message === "string" && typeof e.type === "string";
}

const WORDS = ["Once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "who", "saw"];

/** A request body and where it goes; `padding` bytes in the (ignored) `user` field set its size. */
function drawRequest(rng: Rng, stream: boolean, maxBody: number, maxTokens: number) {
  const chat = rng() < 0.6;
  const text = Array.from({ length: uniformInt(rng, 1, 12) }, () => WORDS[uniformInt(rng, 0, 11)]).join(" ");
  // Log-uniform sizes: as many tiny bodies as near-1 MiB ones.
  const padding = rng() < 0.2 ? 0 : Math.floor(Math.exp(rng() * Math.log(maxBody)));
  const body: Record<string, unknown> = {
    model: "stories260K",
    max_tokens: uniformInt(rng, 1, maxTokens),
    stream,
    temperature: rng() < 0.5 ? 0 : rng(),
    seed: uniformInt(rng, 0, 1000),
    ignore_eos: rng() < 0.5,
    user: "u".repeat(padding),
  };
  if (chat) body.messages = [{ role: "user", content: text }];
  else body.prompt = text;
  return { path: chat ? "/v1/chat/completions" : "/v1/completions", json: JSON.stringify(body) };
}

/** Bodies the server must refuse with a 4xx in OpenAI's shape. */
function drawBadRequest(
  rng: Rng,
  maxBody: number,
): { path: string; body: string | Uint8Array<ArrayBuffer>; expect: number } {
  const choice = uniformInt(rng, 0, 5);
  const size = Math.floor(Math.exp(rng() * Math.log(maxBody)));
  switch (choice) {
    case 0: // broken JSON of any size
      return { path: "/v1/chat/completions", body: '{"messages": [' + "x".repeat(size), expect: 400 };
    case 1: // wrong types
      return { path: "/v1/completions", body: JSON.stringify({ prompt: 5, max_tokens: "x" }), expect: 400 };
    case 2: // a prompt far beyond the context
      return {
        path: "/v1/completions",
        body: JSON.stringify({ prompt: "Once upon a time ".repeat(Math.max(200, size >> 4)), max_tokens: 4 }),
        expect: 400,
      };
    case 3: // over the body limit
      return {
        path: "/v1/chat/completions",
        body: JSON.stringify({ messages: [{ role: "user", content: "x".repeat(1100 * 1024) }] }),
        expect: 413,
      };
    case 4: // deeply nested
      return { path: "/v1/chat/completions", body: "[".repeat(Math.min(size, 100_000)), expect: 400 };
    default: // invalid UTF-8
      return {
        path: "/v1/completions",
        body: new Uint8Array([
          ...enc.encode('{"prompt": "'),
          0xff,
          0xfe,
          ...enc.encode('", "max_tokens": 2}'),
        ]),
        expect: 400,
      };
  }
}

/** Writes a POST on a fresh connection: `sendBytes` of the body (all by default), in one or two writes. */
async function rawPost(
  origin: string,
  path: string,
  body: Uint8Array,
  opts: { split?: boolean; sendBytes?: number } = {},
): Promise<Deno.TcpConn> {
  const url = new URL(origin);
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
  const head = enc.encode(
    `POST ${path} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\n` +
      `content-length: ${body.byteLength}\r\n\r\n`,
  );
  const part = body.subarray(0, opts.sendBytes ?? body.byteLength);
  if (opts.split) {
    await conn.write(head);
    await sleep(10);
    await writeAll(conn, part);
  } else {
    const all = new Uint8Array(head.byteLength + part.byteLength);
    all.set(head);
    all.set(part, head.byteLength);
    await writeAll(conn, all);
  }
  return conn;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

/** Reads from `conn` until `enough(text)` or it closes, or `ms` pass; returns what came. */
async function readUntil(conn: Deno.Conn, ms: number, enough: (text: string) => boolean) {
  const buf = new Uint8Array(16384);
  const dec = new TextDecoder();
  let text = "";
  const deadline = performance.now() + ms;
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0) return { text, closed: false, timedOut: true };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
    ]);
    clearTimeout(timer);
    if (n === "timeout") return { text, closed: false, timedOut: true };
    if (n === null) return { text, closed: true, timedOut: false };
    text += dec.decode(buf.subarray(0, n), { stream: true });
    if (enough(text)) return { text, closed: false, timedOut: false };
  }
}

/** Checks an SSE body: JSON events (errors in OpenAI's shape, never a server error) then [DONE]. */
function checkSse(text: string): string | null {
  const events = text.split("\n\n").filter((e) => e.trim() !== "");
  if (events.at(-1) !== "data: [DONE]") return "stream did not end with data: [DONE]";
  for (const e of events.slice(0, -1)) {
    if (!e.startsWith("data: ")) continue; // comments and keep-alives
    let v: unknown;
    try {
      v = JSON.parse(e.slice(6));
    } catch {
      return `stream event is not JSON: ${e.slice(0, 120)}`;
    }
    if ((v as { error?: unknown }).error !== undefined) {
      if (!isOpenAiError(v)) return `stream error not in OpenAI's shape: ${e.slice(0, 200)}`;
      return `stream error event: ${e.slice(0, 200)}`;
    }
    if (!Array.isArray((v as { choices?: unknown }).choices)) return `stream event without choices: ${e}`;
  }
  return null;
}

/** Judges a finished HTTP response: null if it is acceptable, else the violation. */
function checkError(status: number, text: string): string | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return `${status} body is not JSON: ${text.slice(0, 200)}`;
  }
  if (!isOpenAiError(v)) return `${status} error not in OpenAI's shape: ${text.slice(0, 200)}`;
  if (status >= 500 && status !== 503) return `${status}: ${text.slice(0, 200)}`;
  if (status === 503 && (v as { error: { code?: string } }).error.code !== "server_overloaded") {
    return `503 other than an overload: ${text.slice(0, 200)}`;
  }
  return null;
}

class Timeout extends Error {}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, rej) => timer = setTimeout(() => rej(new Timeout(what)), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

interface Ctx {
  origin: string;
  maxBody: number;
  maxTokens: number;
  headerMs: number;
  requestMs: number;
}

/** Runs one client of `kind`; returns its outcome, or throws a string violation. */
async function runOne(ctx: Ctx, kind: Kind, rng: Rng): Promise<string> {
  const stream = rng() < 0.5;
  const req = drawRequest(rng, stream, ctx.maxBody, ctx.maxTokens);
  const bytes = enc.encode(req.json);
  switch (kind) {
    case "stream":
    case "json":
    case "drop_mid_stream":
    case "drop_mid_response": {
      const wantStream = kind === "stream" || kind === "drop_mid_stream";
      const body = wantStream === stream
        ? req.json
        : req.json.replace(/"stream":(true|false)/, `"stream":${wantStream}`);
      const ac = new AbortController();
      const t0 = performance.now();
      let res: Response;
      try {
        res = await withTimeout(
          fetch(`${ctx.origin}${req.path}`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body,
            signal: ac.signal,
          }),
          ctx.headerMs,
          "no response headers",
        );
      } catch (e) {
        ac.abort();
        if (e instanceof Timeout) throw `hang: ${kind}: no response headers after ${ctx.headerMs} ms`;
        throw `${kind}: fetch failed: ${(e as Error).message}`;
      }
      if (res.status !== 200) {
        const text = await withTimeout(res.text(), ctx.requestMs, "error body").catch(() => null);
        if (text === null) throw `hang: ${kind}: ${res.status} body never ended`;
        const bad = checkError(res.status, text);
        if (bad) throw bad;
        return `http_${res.status}`;
      }
      if (kind === "drop_mid_stream") {
        // Leave after a few events (or before any, when k is 0).
        const k = uniformInt(rng, 0, 6);
        const reader = res.body!.getReader();
        let seen = 0;
        const dec = new TextDecoder();
        try {
          while (seen < k) {
            const r = await withTimeout(reader.read(), ctx.requestMs, "stream");
            if (r.done) return "stream_ended_before_drop";
            seen += (dec.decode(r.value, { stream: true }).match(/\n\n/g) ?? []).length;
          }
        } catch (e) {
          if (e instanceof Timeout) throw `hang: mid-stream read after ${seen} events`;
          throw `drop_mid_stream: read failed: ${(e as Error).message}`;
        }
        ac.abort();
        await reader.cancel().catch(() => {});
        return "dropped_mid_stream";
      }
      if (kind === "drop_mid_response") {
        // Non-streaming answers start with keep-alive whitespace after 500 ms; leave somewhere in there.
        const wait = uniformInt(rng, 0, 2000) - (performance.now() - t0);
        if (wait > 0) await sleep(wait);
        ac.abort();
        await res.body?.cancel().catch(() => {});
        return "dropped_mid_response";
      }
      let text: string;
      try {
        text = await withTimeout(res.text(), ctx.requestMs, "body");
      } catch (e) {
        ac.abort();
        if (e instanceof Timeout) throw `hang: ${kind}: body not finished after ${ctx.requestMs} ms`;
        throw `${kind}: body read failed: ${(e as Error).message}`;
      }
      if (wantStream) {
        const bad = checkSse(text);
        if (bad) throw bad;
        return "stream_ok";
      }
      let v: { choices?: unknown[]; usage?: unknown; error?: unknown };
      try {
        v = JSON.parse(text);
      } catch {
        throw `json: 200 body is not JSON: ${text.slice(0, 200)}`;
      }
      if (v.error !== undefined) {
        if (!isOpenAiError(v)) throw `json: error after 200 not in OpenAI's shape: ${text.slice(0, 200)}`;
        throw `json: error after 200: ${text.slice(0, 200)}`;
      }
      if (!Array.isArray(v.choices) || v.choices.length !== 1 || typeof v.usage !== "object") {
        throw `json: malformed completion: ${text.slice(0, 200)}`;
      }
      return "json_ok";
    }
    case "drop_before_first_byte": {
      const conn = await rawPost(ctx.origin, req.path, bytes, { split: rng() < 0.5 });
      // Streams commit within 500 ms and refusals come at once: leave before, or just at, that point.
      const { text } = await readUntil(conn, uniformInt(rng, 0, 450), (t) => t.length > 0);
      conn.close();
      return text.length === 0 ? "dropped_before_first_byte" : "dropped_after_first_byte";
    }
    case "drop_mid_upload": {
      const sendBytes = uniformInt(rng, 0, Math.max(0, bytes.byteLength - 1));
      const conn = await rawPost(ctx.origin, req.path, bytes, { sendBytes, split: rng() < 0.5 });
      await sleep(uniformInt(rng, 0, 300));
      conn.close();
      return "dropped_mid_upload";
    }
    case "bad_request": {
      const bad = drawBadRequest(rng, ctx.maxBody);
      let res: Response;
      try {
        res = await withTimeout(
          fetch(`${ctx.origin}${bad.path}`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: bad.body,
          }),
          ctx.headerMs,
          "headers",
        );
      } catch (e) {
        if (e instanceof Timeout) throw `hang: bad_request: no response headers after ${ctx.headerMs} ms`;
        // The server may close a connection whose oversized body it refused before reading it.
        return "bad_request_connection_closed";
      }
      const text = await withTimeout(res.text(), ctx.requestMs, "body").catch(() => null);
      if (text === null) throw `hang: bad_request: ${res.status} body never ended`;
      const violation = checkError(res.status, text);
      if (violation) throw violation;
      if (res.status !== bad.expect && res.status !== 503 && res.status !== 429) {
        throw `bad_request: expected ${bad.expect}, got ${res.status}: ${text.slice(0, 200)}`;
      }
      return `refused_${res.status}`;
    }
  }
}

function drawKind(rng: Rng): Kind {
  const total = KINDS.reduce((s, k) => s + WEIGHTS[k], 0);
  let x = rng() * total;
  for (const k of KINDS) {
    x -= WEIGHTS[k];
    if (x < 0) return k;
  }
  return KINDS[0];
}

/** Server log lines (JSON, one per request) with a 5xx other than 503. */
function logged5xx(output: string): string[] {
  return output.split("\n").filter((l) => /"status":5\d\d/.test(l) && !/"status":503/.test(l));
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? (() => {});
  const ctx: Ctx = {
    origin: o.origin,
    maxBody: o.maxBodyBytes ?? 1_000_000,
    maxTokens: o.maxTokens ?? 32,
    headerMs: (o.headerTimeoutS ?? 30) * 1000,
    requestMs: (o.requestTimeoutS ?? 180) * 1000,
  };
  const timeLimitMs = (o.timeLimitS ?? 900) * 1000;
  const byKind: Record<string, number> = {};
  const outcomes: Record<string, number> = {};
  const violations: string[] = [];
  const count = (m: Record<string, number>, k: string) => m[k] = (m[k] ?? 0) + 1;

  const beforeMb = rssMb(o.pid);
  let peakMb = beforeMb ?? 0;
  const sampler = setInterval(() => peakMb = Math.max(peakMb, rssMb(o.pid) ?? 0), 250);
  const t0 = performance.now();
  let next = 0;
  let lastReport = t0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= o.requests || performance.now() - t0 > timeLimitMs) return;
      // Each request draws from its own stream, so one request's draws never shift another's.
      const rng = mulberry32((o.seed * 1_000_003 + i) >>> 0);
      const kind = drawKind(rng);
      count(byKind, kind);
      try {
        count(outcomes, await runOne(ctx, kind, rng));
      } catch (e) {
        const v = typeof e === "string" ? e : `${kind}: ${(e as Error).message}`;
        count(outcomes, v.startsWith("hang") ? "hang" : "violation");
        violations.push(`#${i} ${v}`);
      }
      if (performance.now() - lastReport > 10_000) {
        lastReport = performance.now();
        const done = Object.values(outcomes).reduce((a, b) => a + b, 0);
        log(`[soak] ${done}/${o.requests} done, ${((lastReport - t0) / 1000).toFixed(0)} s`);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  const started = Math.min(next, o.requests);
  const afterClients = rssMb(o.pid);

  const idleAfterMs = await untilIdle(o.origin, (o.idleTimeoutS ?? 30) * 1000);
  if (idleAfterMs === null) {
    violations.push(
      `gauges not back to 0 after ${o.idleTimeoutS ?? 30} s: ${
        JSON.stringify(await gauges(o.origin).catch((e) => String(e)))
      }`,
    );
  }
  const wallS = (performance.now() - t0) / 1000;
  try {
    const h = await fetch(`${o.origin}/health`, { signal: AbortSignal.timeout(10_000) });
    await h.body?.cancel();
    if (h.status !== 200) violations.push(`/health answers ${h.status} after the soak`);
  } catch (e) {
    violations.push(`/health failed after the soak: ${(e as Error).message}`);
  }
  clearInterval(sampler);
  const afterMb = rssMb(o.pid) ?? afterClients;
  await sleep((o.settleS ?? 10) * 1000);
  const settledMb = rssMb(o.pid);
  if (o.serverOutput) {
    for (const line of logged5xx(o.serverOutput())) violations.push(`server logged: ${line.slice(0, 300)}`);
  }
  return {
    requests: started,
    byKind,
    outcomes,
    violations,
    rss: beforeMb !== null && afterMb !== null && settledMb !== null
      ? { beforeMb, peakMb: Math.max(peakMb, afterMb), afterMb, settledMb }
      : null,
    idleAfterMs,
    wallS,
  };
}

export interface StalledReport {
  uploads: number;
  end: "close" | "timeout";
  /** How many got a 408 (end "timeout"). */
  timedOut: number;
  rssBeforeMb: number | null;
  rssDuringMb: number | null;
  rssAfterMb: number | null;
  rssSettledMb: number | null;
  violations: string[];
}

/**
 * `n` uploads that stop one byte short of their 1 MiB content-length, held until the server's
 * --body-timeout answers 408 (end "timeout") or closed by the client (end "close"); RSS before,
 * while they are held, after, and after `settleS`.
 */
export async function stalledUploads(
  origin: string,
  pid: number | undefined,
  n: number,
  end: "close" | "timeout",
  opts: { sizeBytes?: number; waitS?: number; settleS?: number } = {},
): Promise<StalledReport> {
  const size = opts.sizeBytes ?? 1024 * 1024;
  const body = new Uint8Array(size).fill(0x20);
  const violations: string[] = [];
  const rssBeforeMb = rssMb(pid);
  const conns = await Promise.all(
    Array.from({ length: n }, () => rawPost(origin, "/v1/completions", body, { sendBytes: size - 1 })),
  );
  await sleep(1000);
  const rssDuringMb = rssMb(pid);
  let timedOut = 0;
  if (end === "timeout") {
    const waitMs = (opts.waitS ?? 90) * 1000;
    await Promise.all(conns.map(async (c) => {
      const r = await readUntil(c, waitMs, (t) => /\r\n\r\n[^]*\}\}/.test(t));
      if (/^HTTP\/1\.1 408/.test(r.text)) timedOut++;
      else violations.push(`stalled upload: no 408 within ${waitMs} ms: ${r.text.slice(0, 100)}`);
    }));
  }
  for (const c of conns) {
    try {
      c.close();
    } catch {
      // already closed
    }
  }
  if (await untilIdle(origin, 30_000) === null) violations.push("gauges not back to 0 after stalled uploads");
  await sleep(1000);
  const rssAfterMb = rssMb(pid);
  await sleep((opts.settleS ?? 10) * 1000);
  return {
    uploads: n,
    end,
    timedOut,
    rssBeforeMb,
    rssDuringMb,
    rssAfterMb,
    rssSettledMb: rssMb(pid),
    violations,
  };
}

export interface SpawnedServer {
  origin: string;
  pid: number;
  output(): string;
  stop(): Promise<void>;
}

/** Starts main.ts on `model` on a free loopback port and waits for /health 200. */
export async function startServer(
  model: string,
  args: string[],
  readyTimeoutS = 300,
): Promise<SpawnedServer> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "--model", model, "--host", "127.0.0.1", "--port", String(port), ...args],
    cwd: new URL("..", import.meta.url).pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    try {
      for await (const b of s) {
        out += dec.decode(b, { stream: true });
        if (out.length > 8 << 20) out = out.slice(-(4 << 20));
      }
    } catch {
      // the process went away
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  const origin = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    const timer = setTimeout(() => !exited && child.kill("SIGKILL"), 15_000);
    await status;
    clearTimeout(timer);
    await pumps;
  };
  const t0 = performance.now();
  while (performance.now() - t0 < readyTimeoutS * 1000) {
    if (exited) break;
    try {
      const r = await fetch(`${origin}/health`, { signal: AbortSignal.timeout(2000) });
      await r.body?.cancel();
      if (r.status === 200) return { origin, pid: child.pid, output: () => out, stop };
    } catch {
      // not listening yet
    }
    await sleep(200);
  }
  await stop();
  throw new Error(`server did not become healthy within ${readyTimeoutS} s\n${out.slice(-4000)}`);
}

/** The options by which a bench picks its server: a running one (--url, --pid) or one it starts. */
export const SERVER_OPTIONS = {
  url: { type: "string" },
  pid: { type: "string" },
  model: { type: "string", default: "../shared/models/stories260K/stories260K.gguf" },
  "server-args": { type: "string", default: "--max-model-len 512" },
} as const;

export interface ServerTarget {
  /** The server this process started, to be stopped by the caller; null when given --url. */
  server: SpawnedServer | null;
  origin: string;
  pid: number | undefined;
}

/**
 * The running server at `origin` (already normalised by the caller) with --pid, or, when `origin` is
 * undefined, one started from --model and --server-args. `tag` prefixes the log line.
 */
export async function serverTarget(
  values: { pid?: string; model?: string; "server-args"?: string },
  origin: string | undefined,
  tag: string,
): Promise<ServerTarget> {
  if (origin) return { server: null, origin, pid: values.pid ? Number(values.pid) : undefined };
  const args = values["server-args"]!.split(/\s+/).filter(Boolean);
  console.error(`[${tag}] starting ${values.model} ${args.join(" ")}`);
  const server = await startServer(values.model!, args);
  return { server, origin: server.origin, pid: server.pid };
}

const fmtMb = (v: number | null) => v === null ? "n/a" : `${v.toFixed(1)} MiB`;

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      ...SERVER_OPTIONS,
      requests: { type: "string", default: "800" },
      concurrency: { type: "string", default: "32" },
      seed: { type: "string", default: "1" },
      "max-tokens": { type: "string", default: "32" },
      "time-limit": { type: "string", default: "900" },
      settle: { type: "string", default: "10" },
      stalled: { type: "string", default: "0" },
      "stalled-end": { type: "string", default: "timeout" },
    },
  });
  const { server, origin, pid } = await serverTarget(
    values,
    values.url?.replace(/\/+$/, "").replace(/\/v1$/, ""),
    "soak",
  );
  if (!server && !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$/.test(origin)) {
    console.error("soak: loopback servers only (http://127.0.0.1:PORT)");
    Deno.exit(2);
  }
  let failed = false;
  try {
    // Warm-up: the first requests compile and allocate; RSS "before" is taken after them.
    await runSoak({
      origin,
      requests: 8,
      concurrency: 4,
      seed: 999_999,
      settleS: 0,
      maxBodyBytes: 10_000,
    });
    const t0 = Date.now();
    const report = await runSoak({
      origin,
      pid,
      requests: Number(values.requests),
      concurrency: Number(values.concurrency),
      seed: Number(values.seed),
      maxTokens: Number(values["max-tokens"]),
      timeLimitS: Number(values["time-limit"]),
      settleS: Number(values.settle),
      serverOutput: server ? server.output : undefined,
      log: (l) => console.error(l),
    });
    console.log(JSON.stringify({ date: new Date(t0).toISOString(), ...report }, null, 2));
    console.log(
      `soak: ${report.requests} requests in ${
        report.wallS.toFixed(1)
      } s, ${report.violations.length} violations; ` +
        `idle ${
          report.idleAfterMs === null ? "never" : `${report.idleAfterMs.toFixed(0)} ms`
        } after the last ` +
        `client; RSS before ${fmtMb(report.rss?.beforeMb ?? null)}, peak ${
          fmtMb(report.rss?.peakMb ?? null)
        }, ` +
        `after ${fmtMb(report.rss?.afterMb ?? null)}, settled ${fmtMb(report.rss?.settledMb ?? null)}`,
    );
    for (const v of report.violations.slice(0, 50)) console.log(`VIOLATION ${v}`);
    failed ||= report.violations.length > 0;
    const stalled = Number(values.stalled);
    // A comma-separated list runs rounds in turn (e.g. timeout,close,timeout), to see whether RSS levels off.
    for (const e of stalled > 0 ? values["stalled-end"]!.split(",") : []) {
      const end = e.trim() === "close" ? "close" : "timeout";
      const s = await stalledUploads(origin, pid, stalled, end, { settleS: Number(values.settle) });
      console.log(JSON.stringify(s, null, 2));
      console.log(
        `stalled: ${s.uploads} uploads 1 byte short of 1 MiB, ended by ${end} (${s.timedOut} got 408); RSS ` +
          `before ${fmtMb(s.rssBeforeMb)}, during ${fmtMb(s.rssDuringMb)}, after ${fmtMb(s.rssAfterMb)}, ` +
          `settled ${fmtMb(s.rssSettledMb)}`,
      );
      for (const v of s.violations) console.log(`VIOLATION ${v}`);
      failed ||= s.violations.length > 0;
    }
  } finally {
    await server?.stop();
  }
  Deno.exit(failed ? 1 : 0);
}
