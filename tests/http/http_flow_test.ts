// Load and lifecycle: 429, client disconnects, keep-alive pings, loading, draining.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { FakeEngine, post, readError, readSse, startServer, withFake } from "../helpers/fake_engine.ts";

const chatBody = (extra: Record<string, unknown> = {}) => ({
  messages: [{ role: "user", content: "Hi" }],
  ...extra,
});

async function waitFor(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("429: requests accepted but not yet started by the engine count against --max-queue", async () => {
  // One running slot and a queue of one: the second request is the queue.
  await withFake({ args: ["--max-queue", "1", "--max-seqs", "1"] }, async (s, engine) => {
    const release = engine.hold();
    const a = post(`${s.baseURL}/chat/completions`, chatBody());
    const b = post(`${s.baseURL}/completions`, { prompt: "x", stream: true });
    await engine.arrivals(2);
    const t0 = performance.now();
    const res = await post(`${s.baseURL}/chat/completions`, chatBody());
    assert.ok(performance.now() - t0 < 500, "answered at once");
    assert.equal(res.headers.get("retry-after"), "1");
    const { status, error } = await readError(res);
    assert.equal(status, 429);
    assert.equal(error.type, "rate_limit_error");
    assert.equal(error.code, "rate_limit_exceeded");
    assert.equal(error.param, null);
    assert.equal(engine.requests.length, 2, "the rejected request never reached the engine");

    release();
    assert.equal((await (await a).json()).object, "chat.completion");
    assert.equal((await readSse(await b)).data.at(-1), "[DONE]");
    const again = await post(`${s.baseURL}/chat/completions`, chatBody());
    await again.body?.cancel();
    assert.equal(again.status, 200);
  });
});

Deno.test("429: the engine's own waiting count is honoured (openai client sees RateLimitError)", async () => {
  await withFake({ args: ["--max-queue", "3"] }, async (s, engine) => {
    engine.extraWaiting = 3;
    const openai = new OpenAI({ baseURL: s.baseURL, apiKey: "x", maxRetries: 0 });
    await assert.rejects(
      openai.chat.completions.create({ model: "fake-model", messages: [{ role: "user", content: "x" }] }),
      OpenAI.RateLimitError,
    );
    engine.extraWaiting = 2;
    const r = await openai.chat.completions.create({
      model: "fake-model",
      messages: [{ role: "user", content: "x" }],
    });
    assert.equal(r.object, "chat.completion");
  });
});

Deno.test("disconnect: cancelling a stream mid-way aborts the engine request", async () => {
  await withFake({ engine: { tokenDelayMs: 30 } }, async (s, engine) => {
    const res = await post(`${s.baseURL}/chat/completions`, chatBody({ stream: true }));
    const reader = res.body!.getReader();
    let seen = "";
    while (!seen.includes('"content":"H"')) seen += new TextDecoder().decode((await reader.read()).value);
    await reader.cancel();
    await waitFor(() => engine.aborted.length === 1, "engine abort");
    assert.equal(engine.aborted[0], engine.requests[0].id);
    await waitFor(() => s.logs.length === 1, "log line");
    assert.equal(s.logs[0].finish_reason, "client_closed");
    const metrics = await (await fetch(`${s.origin}/metrics`)).text();
    assert.match(metrics, /ragtime_request_success_total\{finished_reason="abort"\} 1/);
  });
});

Deno.test("disconnect: the openai client aborting a stream aborts the engine request", async () => {
  await withFake({ engine: { tokenDelayMs: 30 } }, async (s, engine) => {
    const openai = new OpenAI({ baseURL: s.baseURL, apiKey: "x", maxRetries: 0 });
    const ac = new AbortController();
    const stream = await openai.completions.create(
      { model: "fake-model", prompt: "x", stream: true },
      { signal: ac.signal },
    );
    let text = "";
    try {
      for await (const chunk of stream) {
        text += chunk.choices[0]?.text ?? "";
        if (text === "He") ac.abort();
      }
    } catch {
      // Depending on timing the client ends the iteration or throws an abort error.
    }
    assert.equal(text, "He");
    await waitFor(() => engine.aborted.length === 1, "engine abort");
  });
});

Deno.test("disconnect: a queued non-streaming request is aborted in the engine", async () => {
  await withFake({}, async (s, engine) => {
    engine.hold();
    const ac = new AbortController();
    const pending = fetch(`${s.baseURL}/chat/completions`, {
      method: "POST",
      body: JSON.stringify(chatBody()),
      signal: ac.signal,
    });
    await engine.arrivals(1);
    ac.abort();
    await assert.rejects(pending);
    await waitFor(() => engine.aborted.length === 1, "engine abort");
    assert.equal(engine.aborted[0], engine.requests[0].id);
  });
});

Deno.test("disconnect: a queued streaming request is aborted, before and after headers were sent", async () => {
  // keepAliveMs 100: the first request disconnects before headers, the second after the first ping.
  await withFake({ keepAliveMs: 100 }, async (s, engine) => {
    engine.hold();
    const ac = new AbortController();
    const pending = fetch(`${s.baseURL}/chat/completions`, {
      method: "POST",
      body: JSON.stringify(chatBody({ stream: true })),
      signal: ac.signal,
    });
    await engine.arrivals(1);
    ac.abort();
    await assert.rejects(pending);
    await waitFor(() => engine.aborted.length === 1, "first abort");

    const res = await post(`${s.baseURL}/chat/completions`, chatBody({ stream: true }));
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let seen = "";
    while (!seen.includes(": ping")) seen += new TextDecoder().decode((await reader.read()).value);
    assert.match(seen, /"role":"assistant"/);
    await reader.cancel();
    await waitFor(() => engine.aborted.length === 2, "second abort");
    assert.equal(engine.aborted[1], engine.requests[1].id);
  });
});

Deno.test("keep-alive: pings while waiting for the first token and between tokens", async () => {
  const engine = { firstTokenDelayMs: 250, tokenDelayMs: 250, reply: () => "ab" };
  await withFake({ engine, keepAliveMs: 60 }, async (s) => {
    const res = await post(`${s.baseURL}/chat/completions`, chatBody({ stream: true }));
    const sse = await readSse(res);
    const blocks = sse.raw.split("\n\n");
    const firstToken = blocks.findIndex((b) => b.includes('"content":"a"'));
    const secondToken = blocks.findIndex((b) => b.includes('"content":"b"'));
    assert.ok(blocks.slice(0, firstToken).filter((b) => b === ": ping").length >= 2, sse.raw);
    assert.ok(blocks.slice(firstToken, secondToken).filter((b) => b === ": ping").length >= 2, sse.raw);
    assert.deepEqual(sse.data.at(-1), "[DONE]");
  });
});

Deno.test("keep-alive: no pings when tokens flow faster than the interval", async () => {
  await withFake({ keepAliveMs: 1000 }, async (s) => {
    const sse = await readSse(await post(`${s.baseURL}/chat/completions`, chatBody({ stream: true })));
    assert.equal(sse.pings, 0);
  });
});

Deno.test("loading: /health and inference routes answer 503 until the engine is ready", async () => {
  const s = startServer(null);
  try {
    const h = await fetch(`${s.origin}/health`);
    assert.equal(h.status, 503);
    assert.deepEqual(await h.json(), { status: "loading" });
    for (const path of ["/v1/chat/completions", "/v1/completions", "/tokenize"]) {
      const res = await post(`${s.origin}${path}`, chatBody());
      assert.ok(res.headers.get("retry-after"));
      const { status, error } = await readError(res);
      assert.equal(status, 503, path);
      assert.equal(error.type, "server_error");
      assert.equal(error.code, "model_loading");
    }
    const models = await fetch(`${s.baseURL}/models`);
    await models.body?.cancel();
    assert.equal(models.status, 503);
    const metrics = await fetch(`${s.origin}/metrics`);
    assert.match(await metrics.text(), /ragtime_requests_running 0/);

    const engine = new FakeEngine();
    s.setEngine(engine);
    const ready = await fetch(`${s.origin}/health`);
    await ready.body?.cancel();
    assert.equal(ready.status, 200);
    const res = await post(`${s.baseURL}/chat/completions`, chatBody());
    await res.body?.cancel();
    assert.equal(res.status, 200);

    // An engine whose loop died is not healthy: load balancers must stop sending it traffic.
    engine.failed = "engine failed: boom";
    const dead = await fetch(`${s.origin}/health`);
    assert.equal(dead.status, 503);
    assert.deepEqual(await dead.json(), { status: "failed", error: "engine failed: boom" });
  } finally {
    await s.close();
  }
});

Deno.test("drain: streams in flight complete, new requests and /health get 503", async () => {
  const engine = new FakeEngine({ tokenDelayMs: 20 });
  const s = startServer(engine);
  const streams = await Promise.all([
    post(`${s.baseURL}/chat/completions`, chatBody({ stream: true })),
    post(`${s.baseURL}/completions`, { prompt: "x", stream: true }),
  ]);
  const bodies = streams.map(readSse);
  const drained = s.server.drain();
  assert.equal(s.draining, true);

  const fresh = await post(`${s.baseURL}/chat/completions`, chatBody());
  const { status, error } = await readError(fresh);
  assert.equal(status, 503);
  assert.equal(error.code, "server_draining");
  const health = await fetch(`${s.origin}/health`);
  assert.equal(health.status, 503);
  assert.deepEqual(await health.json(), { status: "draining" });

  for (const sse of await Promise.all(bodies)) {
    assert.equal(sse.data.at(-1), "[DONE]");
    const finish = sse.events.at(-1) as { choices: Array<{ finish_reason: string }> };
    assert.equal(finish.choices[0].finish_reason, "stop");
  }
  await drained;
  await s.server.finished;
  assert.equal(engine.aborted.length, 0);
  await assert.rejects(fetch(`${s.origin}/health`), "the server is closed");
});

Deno.test("drain: past --shutdown-timeout, streams end with an error event and [DONE], engine requests aborted", async () => {
  const engine = new FakeEngine();
  const s = startServer(engine, { args: ["--shutdown-timeout", "0.2"], keepAliveMs: 30 });
  engine.hold();
  const res = await post(`${s.baseURL}/chat/completions`, chatBody({ stream: true }));
  assert.equal(res.status, 200);
  const body = res.text().catch(() => "");
  const t0 = performance.now();
  await s.server.drain();
  await s.server.finished;
  assert.ok(performance.now() - t0 < 2000);
  // An explicit end, so the client can tell a shutdown from a network failure.
  const text = await body;
  assert.match(
    text,
    /data: \{"error":\{[^\n]*"type":"server_error"[^\n]*"code":"server_shutdown"\}\}\n\ndata: \[DONE\]\n\n$/,
  );
  await waitFor(() => engine.aborted.length === 1, "engine abort");
});

Deno.test("serve: SIGTERM drains in-flight streams, then the process exits 0", async () => {
  const at = (path: string) => new URL(path, import.meta.url).href;
  const script = `
    import { serve } from "${at("../../server/serve.ts")}";
    import { createApp } from "${at("../../http/app.ts")}";
    import { parseConfig } from "${at("../../server/config.ts")}";
    import { FakeEngine } from "${at("../helpers/fake_engine.ts")}";
    let draining = false;
    const engine = new FakeEngine({ tokenDelayMs: 20 });
    const config = parseConfig(["--model", "fake"], { get: () => undefined });
    const app = createApp({ engine: () => engine, config, draining: () => draining, log: () => {} });
    const server = serve({ app, host: "127.0.0.1", port: 0, shutdownTimeoutS: 5, onDrainStart: () => draining = true });
    console.log("port " + server.addr.port);
    await server.finished;
    console.log("finished, aborted " + engine.aborted.length);
    Deno.exit(0);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--unstable-no-legacy-abort", script],
    cwd: new URL("../..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/port \d+\n/.test(out)) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`child exited early: ${out}`);
    out += value;
  }
  const port = Number(/port (\d+)/.exec(out)![1]);
  const res = await post(`http://127.0.0.1:${port}/v1/chat/completions`, chatBody({ stream: true }));
  const body = readSse(res);
  child.kill("SIGTERM");
  const sse = await body;
  assert.equal(sse.data.at(-1), "[DONE]");
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    out += value;
  }
  const status = await child.status;
  assert.equal(status.code, 0);
  assert.match(out, /finished, aborted 0/);
});
