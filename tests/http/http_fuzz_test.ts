// Seeded fuzzing of the HTTP layer: thousands of hostile bodies, headers and framings against the real
// app over a fake engine, and a smaller set against the real server. No 5xx, every error in OpenAI's
// shape, healthy and idle afterwards. FUZZ_SEED picks the seed, FUZZ_COUNT the number of fetch cases
// (default 1200, bounded for CI; FUZZ_REAL_COUNT for the real server, default 40).
import assert from "node:assert/strict";
import { type FakeEngine, readSse, withFake } from "../helpers/fake_engine.ts";
import { type FuzzCase, fuzzCase, rawCase } from "../helpers/fuzz_cases.ts";
import { withServerProcess } from "../helpers/server_process.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20260101);
const COUNT = Number(Deno.env.get("FUZZ_COUNT") ?? 1200);
const RAW_COUNT = Math.max(50, Math.floor(COUNT / 10));
const REAL_COUNT = Number(Deno.env.get("FUZZ_REAL_COUNT") ?? 40);
const CONCURRENCY = 8;
const API_KEY = "fuzz-key";

/** Checks one answer: no 5xx, errors in OpenAI's shape, successes complete. Returns the status. */
async function check(res: Response, c: FuzzCase): Promise<number> {
  const what = `${c.what} -> ${res.status}`;
  assert.ok(res.status < 500, what);
  const type = res.headers.get("content-type") ?? "";
  if (type.startsWith("text/event-stream")) {
    assert.equal(res.status, 200, what);
    const sse = await readSse(res);
    const last = sse.events.at(-1);
    // A stream ends with [DONE], or with an error event when the engine failed mid-way.
    assert.ok(sse.data.at(-1) === "[DONE]" || (last && "error" in last), what);
    return res.status;
  }
  const text = await res.text();
  if (c.path === "/metrics" && res.status === 200) return res.status;
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${what}: body is not JSON: ${text.slice(0, 200)}`);
  }
  if (res.status >= 400) {
    const e = body.error as Record<string, unknown> | undefined;
    assert.ok(e && typeof e === "object", `${what}: ${text.slice(0, 200)}`);
    assert.equal(typeof e.message, "string", what);
    assert.equal(typeof e.type, "string", what);
    assert.ok(e.param === null || typeof e.param === "string", what);
    assert.ok(e.code === null || typeof e.code === "string", what);
    assert.ok(!String(e.message).includes("    at "), `${what}: stack trace in the message`);
  }
  return res.status;
}

async function send(origin: string, c: FuzzCase): Promise<number> {
  const res = await fetch(`${origin}${c.path}`, {
    method: c.method,
    headers: c.headers,
    body: c.body as BodyInit | null,
  });
  return await check(res, c);
}

/** Runs `n` items with at most CONCURRENCY at once. */
async function pool(n: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < n) await fn(next++);
  }));
}

/** Writes raw bytes, reads whatever comes back until the server closes or 2 s pass. */
async function sendRaw(port: number, bytes: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const out: Uint8Array[] = [];
  try {
    await conn.write(new TextEncoder().encode(bytes)).catch(() => {});
    const deadline = Date.now() + 2000;
    const buf = new Uint8Array(65536);
    while (Date.now() < deadline) {
      const n = await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise<"t">((r) => setTimeout(() => r("t"), deadline - Date.now())),
      ]);
      if (n === null || n === "t") break;
      out.push(buf.slice(0, n));
      // One complete response is enough (the raw cases all fit in one response).
      const so_far = new TextDecoder().decode(out.at(-1));
      if (/\r\n\r\n/.test(so_far) && !/transfer-encoding: chunked/i.test(so_far)) break;
    }
  } finally {
    try {
      conn.close();
    } catch {
      // already closed by the server
    }
  }
  return new TextDecoder().decode(new Uint8Array(out.flatMap((b) => [...b])));
}

function checkRaw(reply: string, what: string): void {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(reply);
  if (!m) return; // the server closed without answering: acceptable for garbage
  assert.ok(Number(m[1]) < 500, `${what}: ${reply.slice(0, 200)}`);
  // Errors from the app (not from the HTTP parser, which sends no body) are in OpenAI's shape.
  const body = reply.slice(reply.indexOf("\r\n\r\n") + 4);
  if (Number(m[1]) >= 400 && body.startsWith("{")) assert.match(body, /^\{"error":\{"message":/, what);
}

async function settled(engine: FakeEngine): Promise<void> {
  for (let i = 0; i < 200 && engine.running > 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(engine.running, 0, "the fake engine still runs requests");
}

Deno.test(`fuzz: ${COUNT} hostile requests against the app (seed ${SEED}): no 5xx, OpenAI errors`, async () => {
  const statuses: Record<number, number> = {};
  await withFake({ engine: { tokensPerDelta: 4 } }, async (open, engine) => {
    await withFake(
      { args: ["--api-key", API_KEY], engine: { tokensPerDelta: 4 } },
      async (authed, engine2) => {
        await pool(COUNT, async (i) => {
          const c = fuzzCase(SEED, i);
          // Every third case goes to the server with a key; half of those carry the right one.
          const useAuth = i % 3 === 0;
          if (useAuth && i % 2 === 0 && !c.headers.authorization) {
            c.headers.authorization = `Bearer ${API_KEY}`;
          }
          const status = await send(useAuth ? authed.origin : open.origin, c).catch((e) => {
            throw new Error(`case ${i} (seed ${SEED}): ${(e as Error).message}`);
          });
          statuses[status] = (statuses[status] ?? 0) + 1;
        });
        for (const s of [open, authed]) {
          assert.equal((await fetch(`${s.origin}/health`)).status, 200);
          const internal = s.logs.filter((l) => Number(l.status) >= 500);
          assert.deepEqual(internal, [], "no request was logged as a server error");
        }
        await settled(engine);
        await settled(engine2);
      },
    );
  });
  console.log(`fuzz statuses: ${JSON.stringify(statuses)}`);
  assert.ok(
    (statuses[200] ?? 0) > COUNT / 20,
    "too few cases succeeded: the generator lost its valid bodies",
  );
});

Deno.test(`fuzz: ${RAW_COUNT} malformed framings over raw TCP (seed ${SEED}): no 5xx, healthy after`, async () => {
  await withFake({}, async (s, engine) => {
    const port = s.server.addr.port;
    await pool(RAW_COUNT, async (i) => {
      const { bytes, what } = rawCase(SEED, i);
      checkRaw(await sendRaw(port, bytes), `raw case ${i} (${what})`);
    });
    assert.equal((await fetch(`${s.origin}/health`)).status, 200);
    assert.deepEqual(s.logs.filter((l) => Number(l.status) >= 500), []);
    await settled(engine);
  });
});

Deno.test({
  name: `fuzz: ${REAL_COUNT} hostile requests and framings against the real server (seed ${SEED})`,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await withServerProcess({ args: ["--max-queue", "64"] }, async (s) => {
      await pool(REAL_COUNT, async (i) => {
        const c = fuzzCase(SEED + 1, i);
        await send(s.origin, c).catch((e) => {
          throw new Error(`real case ${i} (seed ${SEED + 1}): ${(e as Error).message}`);
        });
      });
      await pool(Math.ceil(REAL_COUNT / 3), async (i) => {
        const { bytes, what } = rawCase(SEED + 1, i);
        checkRaw(await sendRaw(s.port, bytes), `real raw case ${i} (${what})`);
      });
      assert.equal((await fetch(`${s.origin}/health`)).status, 200);
      // Idle again: nothing left running or waiting in the engine.
      let metrics = "";
      for (let t = 0; t < 100; t++) {
        metrics = await (await fetch(`${s.origin}/metrics`)).text();
        if (/ragtime_requests_running 0\b/.test(metrics) && /ragtime_requests_waiting 0\b/.test(metrics)) {
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(metrics, /ragtime_requests_running 0\b/);
      assert.match(metrics, /ragtime_requests_waiting 0\b/);
      // /health answers 503 while the model loads; nothing else may be a server error.
      const errors = s.output().split("\n").filter((l) =>
        /"status":5\d\d/.test(l) && !l.includes('"/health"')
      );
      assert.deepEqual(errors, [], "a request was logged as a server error");
    });
  },
});
