// The connection front (server/front.ts) over a small Deno.serve backend: timeouts, the socket cap,
// keep-alive, streams passed through unbuffered, client departures passed on, large bodies.
import assert from "node:assert/strict";
import { type Front, type FrontOptions, startFront } from "../../server/front.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Rig {
  front: Front;
  port: number;
  /** Signals of streaming requests the backend saw aborted. */
  aborted: string[];
  close(): Promise<void>;
}

/**
 * Backend routes: /echo (body size), /stream (an event every 100 ms), /big (bytes as fast as they go),
 * /ignore (answers late, never reads the body).
 */
function rig(opts: Partial<FrontOptions> = {}): Rig {
  const aborted: string[] = [];
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/echo") return new Response(String((await req.arrayBuffer()).byteLength));
    if (path === "/ignore") return sleep(2000).then(() => new Response("late"));
    if (path === "/big") {
      // 64 KiB chunks as fast as the front takes them, until the request is aborted.
      const chunk = new Uint8Array(65536).fill(120);
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            c.enqueue(chunk);
          },
          cancel() {
            aborted.push("big");
          },
        }),
      );
    }
    if (path === "/stream") {
      req.signal.addEventListener("abort", () => aborted.push("stream"));
      let n = 0;
      let timer: ReturnType<typeof setInterval>;
      return new Response(
        new ReadableStream<Uint8Array>({
          start(c) {
            timer = setInterval(() => c.enqueue(enc.encode(`data: ${n++}\n\n`)), 100);
          },
          cancel() {
            clearInterval(timer);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    return new Response("ok");
  });
  const front = startFront({
    host: "127.0.0.1",
    port: 0,
    maxConnections: 100,
    headerTimeoutS: 0,
    bodyTimeoutS: 0,
    idleTimeoutS: 0,
    sendTimeoutS: 0,
    connectBackend: () => Deno.connect({ hostname: "127.0.0.1", port: backend.addr.port }),
    ...opts,
  });
  return {
    front,
    port: front.addr.port,
    aborted,
    async close() {
      await backend.shutdown();
      await front.close();
    },
  };
}

/** One read (a whole small response on loopback). */
async function readOnce(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(65536);
  const n = await conn.read(buf);
  return new TextDecoder().decode(buf.subarray(0, n ?? 0));
}

/** Reads until the peer closes or `ms` pass; the connection is not read again afterwards (a read stays pending). */
async function readAll(conn: Deno.Conn, ms: number): Promise<{ text: string; closed: boolean; ms: number }> {
  const buf = new Uint8Array(65536);
  let text = "";
  const t0 = performance.now();
  for (;;) {
    const left = t0 + ms - performance.now();
    if (left <= 0) return { text, closed: false, ms: performance.now() - t0 };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
    ]);
    clearTimeout(timer);
    if (n === "timeout") return { text, closed: false, ms: performance.now() - t0 };
    if (n === null) return { text, closed: true, ms: performance.now() - t0 };
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
}

const connect = (port: number) => Deno.connect({ hostname: "127.0.0.1", port });

/** A client reading /stream for 1.5 s keeps its connection and gets an event every 100 ms. */
async function assertStreamFlows(port: number): Promise<void> {
  const conn = await connect(port);
  await conn.write(enc.encode("GET /stream HTTP/1.1\r\nhost: x\r\n\r\n"));
  const { text, closed } = await readAll(conn, 1500);
  conn.close();
  assert.equal(closed, false);
  assert.ok((text.match(/data: \d+/g) ?? []).length >= 10, text);
}

Deno.test("front: keep-alive reuse, then the idle timeout closes the connection", async () => {
  const r = rig({ idleTimeoutS: 0.6 });
  try {
    const conn = await connect(r.port);
    for (let i = 0; i < 3; i++) {
      await conn.write(enc.encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
      assert.match(await readOnce(conn), /^HTTP\/1\.1 200/);
      await sleep(300); // under the idle timeout: the connection stays
    }
    const idle = await readAll(conn, 3000);
    conn.close();
    assert.ok(idle.closed, "closed");
    // ~300 ms of the 600 ms timeout are left after the last sleep; its clock started at the front's
    // last write, a little before the sleep did (a CI run closed at 299.7 ms), hence the margin.
    assert.ok(idle.ms > 200 && idle.ms < 1500, `${idle.ms} ms`);
    assert.equal(r.front.stats().timedOut.idle, 1);
  } finally {
    await r.close();
  }
});

Deno.test("front: a response in progress is never cut by the idle timeout", async () => {
  const r = rig({ idleTimeoutS: 0.3, headerTimeoutS: 0.3, bodyTimeoutS: 0.3 });
  try {
    await assertStreamFlows(r.port);
  } finally {
    await r.close();
  }
});

Deno.test("front: a client that stops reading is cut at the send timeout, and its request aborted", async () => {
  const r = rig({ sendTimeoutS: 0.5, idleTimeoutS: 0.3 });
  try {
    const slow = await connect(r.port);
    await slow.write(enc.encode("GET /big HTTP/1.1\r\nhost: x\r\n\r\n"));
    // Never read: the socket buffers fill, the front's write blocks, then the deadline passes.
    for (let i = 0; i < 100 && r.front.stats().timedOut.send === 0; i++) await sleep(100);
    assert.equal(r.front.stats().timedOut.send, 1, "send timeouts");
    for (let i = 0; i < 50 && !r.aborted.includes("big"); i++) await sleep(100);
    assert.ok(r.aborted.includes("big"), "the backend's response was cancelled");
    slow.close();
    // A client that reads keeps its stream however long it runs (no write waits 0.5 s).
    await assertStreamFlows(r.port);
    assert.equal(r.front.stats().timedOut.send, 1);
  } finally {
    await r.close();
  }
});

Deno.test("front: header timeout: silent and trickled heads are cut, a trickle gets 408", async () => {
  const r = rig({ headerTimeoutS: 0.8 });
  try {
    const silent = await connect(r.port);
    const trickle = await connect(r.port);
    const head = "GET / HTTP/1.1\r\nhost: x\r\nx-slow: " + "a".repeat(100);
    const writer = (async () => {
      for (const ch of head) {
        if (await trickle.write(enc.encode(ch)).catch(() => null) === null) return;
        await sleep(20);
      }
    })();
    const [a, b] = await Promise.all([readAll(silent, 3000), readAll(trickle, 3000)]);
    await writer;
    silent.close();
    trickle.close();
    assert.ok(a.closed && b.closed);
    assert.equal(a.text, "");
    assert.match(b.text, /^HTTP\/1\.1 408 /);
    assert.equal(JSON.parse(b.text.split("\r\n\r\n")[1]).error.code, "request_timeout");
    assert.ok(b.ms > 600 && b.ms < 2000, `${b.ms} ms`);
    assert.equal(r.front.stats().timedOut.header, 2);
  } finally {
    await r.close();
  }
});

Deno.test("front: a body that stops making progress is cut; one that keeps going is not", async () => {
  const r = rig({ bodyTimeoutS: 0.5 });
  try {
    const slow = await connect(r.port);
    await slow.write(enc.encode("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n"));
    for (let i = 0; i < 10; i++) {
      await sleep(150); // 1.5 s in all, each gap under the timeout
      await slow.write(enc.encode("x"));
    }
    const ok = await readAll(slow, 500);
    slow.close();
    assert.match(ok.text, /^HTTP\/1\.1 200[\s\S]*\r\n\r\n10$/);

    const stalled = await connect(r.port);
    await stalled.write(enc.encode("POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc"));
    const cut = await readAll(stalled, 3000);
    stalled.close();
    // The timeout plus the front's second of grace, in which the app's own 408 would go out.
    assert.ok(cut.closed && cut.ms > 1300 && cut.ms < 2500, `${cut.ms} ms`);
    assert.equal(r.front.stats().timedOut.body, 1);
  } finally {
    await r.close();
  }
});

Deno.test("front: connections over the cap get 503 and close; open ones carry on", async () => {
  const r = rig({ maxConnections: 2 });
  try {
    const a = await connect(r.port);
    const b = await connect(r.port);
    await a.write(enc.encode("GET /stream HTTP/1.1\r\nhost: x\r\n\r\n"));
    await sleep(100);
    const res = await fetch(`http://127.0.0.1:${r.port}/`);
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("connection"), "close");
    assert.equal((await res.json()).error.code, "server_overloaded");
    await b.write(enc.encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
    assert.match(await readOnce(b), /^HTTP\/1\.1 200/);
    assert.match(await readOnce(a), /^HTTP\/1\.1 200/);
    b.close();
    await sleep(50);
    const again = await fetch(`http://127.0.0.1:${r.port}/`);
    assert.equal(again.status, 200);
    await again.body?.cancel();
    a.close();
    assert.equal(r.front.stats().refused, 1);
  } finally {
    await r.close();
  }
});

Deno.test("front: a stream arrives event by event, and a departed client aborts it", async () => {
  const r = rig();
  try {
    const res = await fetch(`http://127.0.0.1:${r.port}/stream`);
    const reader = res.body!.getReader();
    const t0 = performance.now();
    const first = await reader.read();
    assert.match(new TextDecoder().decode(first.value), /^data: 0/);
    assert.ok(performance.now() - t0 < 500, "not buffered");
    await reader.cancel();
    for (let i = 0; i < 40 && r.aborted.length === 0; i++) await sleep(25);
    assert.deepEqual(r.aborted, ["stream"]);
  } finally {
    await r.close();
  }
});

Deno.test("front: 1 MiB bodies, Content-Length and chunked, on one kept-alive client", async () => {
  const r = rig({ idleTimeoutS: 5, headerTimeoutS: 5, bodyTimeoutS: 5 });
  try {
    const big = new Uint8Array(1 << 20).fill(97);
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${r.port}/echo`, { method: "POST", body: big });
      assert.equal(await res.text(), String(big.byteLength));
    }
    const chunked = ReadableStream.from([big.subarray(0, 300_000), big.subarray(300_000)]);
    const res = await fetch(`http://127.0.0.1:${r.port}/echo`, { method: "POST", body: chunked });
    assert.equal(await res.text(), String(big.byteLength));
    assert.equal(r.front.stats().open <= 1, true);
  } finally {
    await r.close();
  }
});
