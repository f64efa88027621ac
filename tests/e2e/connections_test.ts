// The connection front on the real server (stories260K): idle and silent sockets closed, a trickled
// head cut, stalled 1 MiB uploads cut (RSS reported), and ordinary use unchanged: keep-alive reuse,
// streaming and not, a 1 MiB body. The socket cap and departed clients: tests/e2e/reliability_test.ts.
import assert from "node:assert/strict";
import { type ServerProcess, withServerProcess } from "../helpers/server_process.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads until the server closes or `ms` pass. */
async function readUntilClosed(
  conn: Deno.Conn,
  ms: number,
): Promise<{ text: string; closed: boolean; ms: number }> {
  const buf = new Uint8Array(65536);
  let text = "";
  const t0 = performance.now();
  for (;;) {
    const left = t0 + ms - performance.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = left <= 0 ? "timeout" : await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
    ]);
    clearTimeout(timer);
    if (n === "timeout") return { text, closed: false, ms: performance.now() - t0 };
    if (n === null) return { text, closed: true, ms: performance.now() - t0 };
    text += dec.decode(buf.subarray(0, n));
  }
}

/** Reads one whole response with a Content-Length or chunked body from a kept-alive connection. */
async function readResponse(conn: Deno.Conn): Promise<{ status: number; body: string }> {
  const buf = new Uint8Array(65536);
  let text = "";
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed mid-response: ${text.slice(0, 200)}`);
    text += dec.decode(buf.subarray(0, n));
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) continue;
    const head = text.slice(0, end);
    const rest = text.slice(end + 4);
    const length = /content-length: (\d+)/i.exec(head);
    if (length && rest.length >= Number(length[1])) {
      return { status: Number(head.split(" ")[1]), body: rest.slice(0, Number(length[1])) };
    }
    if (/transfer-encoding: chunked/i.test(head) && rest.endsWith("0\r\n\r\n")) {
      let body = "";
      for (let at = 0;;) {
        const eol = rest.indexOf("\r\n", at);
        const size = parseInt(rest.slice(at, eol), 16);
        if (size === 0) break;
        body += rest.slice(eol + 2, eol + 2 + size);
        at = eol + 2 + size + 2;
      }
      return { status: Number(head.split(" ")[1]), body };
    }
  }
}

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1]) / 1024;

async function metric(s: ServerProcess, series: string): Promise<number> {
  const text = await (await fetch(`${s.origin}/metrics`)).text();
  return Number(new RegExp(`^${series.replace(/[{}"]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1]);
}

const completion = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: "stories260K", prompt: "Once upon a time", max_tokens: 8, ...extra });

const post = (body: string) =>
  enc.encode(
    `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
      `content-length: ${enc.encode(body).byteLength}\r\n\r\n${body}`,
  );

Deno.test("connections: timeouts on the real server, and ordinary use unchanged", async (t) => {
  const args = ["--header-timeout", "1.5", "--idle-timeout", "1.5", "--body-timeout", "2"];
  await withServerProcess({ args }, async (s) => {
    await t.step("keep-alive reuse (streaming, not, a 1 MiB body), then the idle timeout", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      await conn.write(post(completion()));
      const a = await readResponse(conn);
      assert.equal(a.status, 200);
      assert.equal(JSON.parse(a.body).usage.completion_tokens, 8);
      await conn.write(post(completion({ stream: true })));
      const b = await readResponse(conn);
      assert.equal(b.status, 200);
      assert.match(b.body, /data: \[DONE\]\n\n$/);
      const big = completion({ user: "u".repeat(1024 * 1024 - 200) });
      await conn.write(post(big));
      const c = await readResponse(conn);
      assert.equal(c.status, 200, c.body);
      const idle = await readUntilClosed(conn, 5000);
      conn.close();
      assert.ok(idle.closed, "closed after --idle-timeout");
      assert.ok(idle.ms > 1000 && idle.ms < 3500, `${idle.ms} ms`);
    });

    await t.step("a silent connection and a trickled head are cut at the header timeout", async () => {
      const before = await metric(s, 'ragtime_connections_timed_out_total{timeout="header"}');
      const silent = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      const trickle = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      const head = "GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " + "a".repeat(1000);
      const writer = (async () => {
        for (const ch of head) {
          if (await trickle.write(enc.encode(ch)).catch(() => null) === null) return;
          await sleep(10);
        }
      })();
      const [a, b] = await Promise.all([readUntilClosed(silent, 5000), readUntilClosed(trickle, 5000)]);
      await writer;
      silent.close();
      trickle.close();
      assert.ok(a.closed && b.closed);
      assert.ok(b.ms > 1000 && b.ms < 3500, `${b.ms} ms`);
      assert.match(b.text, /^HTTP\/1\.1 408 /);
      assert.equal(JSON.parse(b.text.split("\r\n\r\n")[1]).error.code, "request_timeout");
      assert.equal(await metric(s, 'ragtime_connections_timed_out_total{timeout="header"}'), before + 2);
    });

    await t.step("40 uploads stalled 1 byte short of 1 MiB: 408, closed, connections freed", async () => {
      const n = 40;
      const size = 1 << 20;
      const rss0 = rssMiB(s.child.pid);
      const head = enc.encode(
        `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${size}\r\n\r\n`,
      );
      const body = enc.encode(completion({ user: "u".repeat(size) })).subarray(0, size - 1);
      const conns = await Promise.all(Array.from({ length: n }, async () => {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
        await c.write(head);
        for (let at = 0; at < body.byteLength;) at += await c.write(body.subarray(at));
        return c;
      }));
      let peak = rssMiB(s.child.pid);
      const sampler = setInterval(() => peak = Math.max(peak, rssMiB(s.child.pid)), 100);
      const ends = await Promise.all(conns.map((c) => readUntilClosed(c, 8000)));
      clearInterval(sampler);
      for (const c of conns) c.close();
      const rss1 = rssMiB(s.child.pid);
      await sleep(6500); // past the trim's debounce (server/trim.ts)
      const rss2 = rssMiB(s.child.pid);
      console.log(
        `RSS with ${n} stalled 1 MiB uploads: before ${rss0.toFixed(1)} MiB, peak ${peak.toFixed(1)}, ` +
          `after ${rss1.toFixed(1)}, 6.5 s later ${rss2.toFixed(1)}`,
      );
      assert.equal(ends.filter((e) => e.closed && /^HTTP\/1\.1 408/.test(e.text)).length, n);
      assert.ok(await metric(s, "ragtime_connections_open") <= 1);
      const health = await fetch(`${s.origin}/health`);
      await health.body?.cancel();
      assert.equal(health.status, 200);
    });
  });
});
