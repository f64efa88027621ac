// Departed and hostile clients against the real server (stories260K): large-body disconnects,
// streaming or not and however framed, the openai client's abort, cut and stalled uploads, the
// connection cap, and an expired drain. See docs/deno-disconnect.md for why large bodies matter.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { type ServerProcess, startServerProcess, withServerProcess } from "../helpers/server_process.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const enc = new TextEncoder();

/** A request that generates for a long time unless stopped: ignore_eos up to the context limit. */
const longChat = (stream: boolean, padding: number) => ({
  model: "stories260K",
  messages: [{ role: "user", content: "Once upon a time" }],
  max_tokens: 440,
  ignore_eos: true,
  stream,
  // Ignored by the server, but makes the body as large as a real conversation.
  user: "u".repeat(padding),
});

async function gauges(s: ServerProcess): Promise<{ running: number; waiting: number; kv: number }> {
  const text = await (await fetch(`${s.origin}/metrics`)).text();
  const get = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  return {
    running: get("ragtime_requests_running"),
    waiting: get("ragtime_requests_waiting"),
    kv: get("ragtime_kv_cache_usage_ratio"),
  };
}

/** Waits until the engine has a request running (so a disconnect lands mid-generation). */
async function untilRunning(s: ServerProcess, timeoutMs = 10_000) {
  const t0 = performance.now();
  while ((await gauges(s)).running === 0) {
    if (performance.now() - t0 > timeoutMs) throw new Error("no request started running");
    await sleep(20);
  }
}

/** Milliseconds until running, waiting and KV usage are all 0; throws past `timeoutMs`. */
async function untilIdle(s: ServerProcess, timeoutMs = 3000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const g = await gauges(s);
    if (g.running === 0 && g.waiting === 0 && g.kv === 0) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) {
      throw new Error(`still busy ${timeoutMs} ms after the client left: ${JSON.stringify(g)}`);
    }
    await sleep(25);
  }
}

/** Sends a raw HTTP/1.1 POST (headers and body in one write, or split), returns the connection. */
async function rawPost(s: ServerProcess, body: string, split: boolean): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
  const bytes = enc.encode(body);
  const head = `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
    `content-length: ${bytes.byteLength}\r\n\r\n`;
  if (split) {
    await conn.write(enc.encode(head));
    await sleep(30);
    await conn.write(bytes);
  } else {
    const all = new Uint8Array(head.length + bytes.byteLength);
    all.set(enc.encode(head));
    all.set(bytes, head.length);
    await conn.write(all);
  }
  return conn;
}

/** Reads what the server sends until it closes the connection or `ms` pass. */
async function readAll(conn: Deno.Conn, ms: number): Promise<{ text: string; closed: boolean }> {
  const buf = new Uint8Array(65536);
  let text = "";
  const deadline = performance.now() + ms;
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0) return { text, closed: false };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
    ]);
    clearTimeout(timer);
    if (n === "timeout") return { text, closed: false };
    if (n === null) return { text, closed: true };
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
}

Deno.test("reliability: departed clients stop their generation, whatever the body size and framing", async (t) => {
  await withServerProcess({ args: ["--max-seqs", "4"] }, async (s) => {
    for (const stream of [false, true]) {
      for (const padding of [0, 100_000]) {
        for (const split of [false, true]) {
          const name = `${stream ? "streaming" : "non-streaming"}, body ${padding ? "100 KB" : "small"}, ` +
            `${split ? "headers and body in separate writes" : "one write"}`;
          await t.step(name, async () => {
            const conn = await rawPost(s, JSON.stringify(longChat(stream, padding)), split);
            await untilRunning(s);
            conn.close();
            const ms = await untilIdle(s);
            assert.ok(ms < 3000, `${ms} ms`);
          });
        }
      }
    }

    await t.step("the openai client's abort (AbortController), streaming and not, 100 KB body", async () => {
      const client = new OpenAI({ baseURL: s.baseURL, apiKey: "none", maxRetries: 0 });
      for (const stream of [false, true]) {
        const ac = new AbortController();
        const body = longChat(stream, 100_000) as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming;
        const pending = client.chat.completions.create(body, { signal: ac.signal }).then(async (r) => {
          if (stream) {
            for await (const _ of r as unknown as AsyncIterable<unknown>) {
              /* until aborted */
            }
          }
        });
        const outcome = pending.then(() => "finished", (e) => `rejected: ${(e as Error).name}`);
        await untilRunning(s);
        ac.abort();
        // The openai client's stream iterator ends quietly on abort; the non-streaming call rejects.
        if (!stream) assert.match(await outcome, /^rejected/);
        else await outcome;
        await untilIdle(s);
      }
    });

    await t.step(
      "a long non-streaming answer still arrives whole, as JSON after keep-alive space",
      async () => {
        const res = await fetch(`${s.baseURL}/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(longChat(false, 100_000)),
        });
        assert.equal(res.status, 200);
        const json = await res.json();
        assert.equal(json.choices[0].finish_reason, "length");
        assert.equal(json.usage.completion_tokens, 440);
      },
    );
  });
});

Deno.test("reliability: cut and stalled uploads, the connection cap", async (t) => {
  const args = ["--body-timeout", "1", "--max-connections", "4", "--idle-timeout", "1"];
  await withServerProcess({ args }, async (s) => {
    await t.step("an upload cut short is a client abort (499 in the log), never a 500", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      await conn.write(enc.encode(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + "x".repeat(5000),
      ));
      await sleep(100);
      conn.close();
      const t0 = performance.now();
      while (!/"status":499/.test(s.output())) {
        assert.ok(performance.now() - t0 < 3000, "no 499 log line");
        await sleep(50);
      }
      assert.doesNotMatch(s.output(), /"status":500/);
      const health = await fetch(`${s.origin}/health`);
      await health.body?.cancel();
      assert.equal(health.status, 200);
    });

    await t.step("a stalled upload gets 408 after --body-timeout and its connection is closed", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      await conn.write(enc.encode(
        'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"model"',
      ));
      const t0 = performance.now();
      const { text } = await readAll(conn, 2500);
      conn.close();
      assert.match(text, /^HTTP\/1\.1 408/);
      assert.match(text, /connection: close/i);
      assert.match(text, /"code":"request_timeout"/);
      assert.ok(performance.now() - t0 > 800);
    });

    await t.step("beyond --max-connections open connections: 503 and close; open ones carry on", async () => {
      await sleep(1500); // kept-alive connections of earlier steps pass --idle-timeout
      const streams = [];
      for (let i = 0; i < 2; i++) streams.push(await rawPost(s, JSON.stringify(longChat(true, 0)), false));
      const idle = [];
      for (let i = 0; i < 2; i++) idle.push(await Deno.connect({ hostname: "127.0.0.1", port: s.port }));
      await sleep(300);
      const res = await fetch(`${s.origin}/health`);
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("connection"), "close");
      assert.equal((await res.json()).error.code, "server_overloaded");
      for (const c of streams) assert.match((await readAll(c, 500)).text, /data: \{/);
      for (const c of [...streams, ...idle]) c.close();
      await untilIdle(s);
      await sleep(100);
      const again = await fetch(`${s.origin}/health`);
      await again.body?.cancel();
      assert.equal(again.status, 200);
      const metrics = await (await fetch(`${s.origin}/metrics`)).text();
      assert.match(metrics, /^ragtime_connections_refused_total [1-9]/m);
    });
  });
});

Deno.test("reliability: an expired drain ends streams with an error event and [DONE]", async () => {
  const s = await startServerProcess({ args: ["--shutdown-timeout", "0.5"] });
  try {
    const res = await fetch(`${s.baseURL}/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(longChat(true, 0)),
    });
    assert.equal(res.status, 200);
    const body = res.text();
    await untilRunning(s);
    s.child.kill("SIGTERM");
    const text = await body;
    assert.match(
      text,
      /data: \{"error":\{[^\n]*"type":"server_error"[^\n]*"code":"server_shutdown"\}\}\n\ndata: \[DONE\]\n\n$/,
    );
    assert.equal((await s.status).code, 0);
  } finally {
    await s.stop();
  }
});
