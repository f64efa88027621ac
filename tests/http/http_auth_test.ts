// API keys, the metrics key, CORS and body limits.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { post, readError, withFake } from "../helpers/fake_engine.ts";

const chatBody = { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 };

Deno.test("auth: inference routes need a matching bearer token", async () => {
  await withFake({ args: ["--api-key", "k1", "--api-key", "k2"] }, async (s) => {
    const routes: Array<[string, string, unknown]> = [
      ["POST", "/v1/chat/completions", chatBody],
      ["POST", "/v1/completions", { prompt: "x" }],
      ["GET", "/v1/models", undefined],
      ["POST", "/tokenize", { prompt: "x" }],
      ["POST", "/detokenize", { tokens: [1] }],
    ];
    for (const [method, path, body] of routes) {
      for (const auth of [undefined, "Bearer nope", "Bearer k1x", "k1", "Basic azE6"]) {
        const res = await fetch(`${s.origin}${path}`, {
          method,
          headers: auth ? { authorization: auth } : {},
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const { status, error } = await readError(res);
        assert.equal(status, 401, `${method} ${path} with ${auth}`);
        assert.equal(error.type, "invalid_request_error");
        assert.equal(error.code, "invalid_api_key");
        assert.equal(res.headers.get("www-authenticate"), "Bearer");
      }
      for (const key of ["k1", "k2"]) {
        const res = await fetch(`${s.origin}${path}`, {
          method,
          headers: { authorization: `Bearer ${key}` },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        await res.body?.cancel();
        assert.equal(res.status, 200, `${method} ${path} with ${key}`);
      }
    }
    // The openai client sends the key the same way.
    const r = await new OpenAI({ baseURL: s.baseURL, apiKey: "k2", maxRetries: 0 }).chat.completions.create({
      model: "fake-model",
      messages: [{ role: "user", content: "Hi" }],
    });
    assert.equal(r.object, "chat.completion");
    await assert.rejects(
      new OpenAI({ baseURL: s.baseURL, apiKey: "wrong", maxRetries: 0 }).models.list(),
      OpenAI.AuthenticationError,
    );
  });
});

Deno.test("auth: /health and /metrics stay public without --metrics-key", async () => {
  await withFake({ args: ["--api-key", "k1"] }, async (s) => {
    for (const path of ["/health", "/metrics"]) {
      const res = await fetch(`${s.origin}${path}`);
      await res.body?.cancel();
      assert.equal(res.status, 200, path);
    }
  });
});

Deno.test("auth: --metrics-key guards /metrics only", async () => {
  await withFake({ args: ["--metrics-key", "mk"] }, async (s) => {
    const none = await fetch(`${s.origin}/metrics`);
    assert.equal((await readError(none)).status, 401);
    const wrong = await fetch(`${s.origin}/metrics`, { headers: { authorization: "Bearer k" } });
    assert.equal((await readError(wrong)).status, 401);
    const ok = await fetch(`${s.origin}/metrics`, { headers: { authorization: "Bearer mk" } });
    assert.match(await ok.text(), /ragtime_requests_running/);
    assert.equal(ok.status, 200);
    // No API keys configured: inference stays open.
    const inf = await post(`${s.baseURL}/chat/completions`, chatBody);
    await inf.body?.cancel();
    assert.equal(inf.status, 200);
    const h = await fetch(`${s.origin}/health`);
    await h.body?.cancel();
    assert.equal(h.status, 200);
  });
});

Deno.test("cors: off by default", async () => {
  await withFake({}, async (s) => {
    const res = await post(`${s.baseURL}/chat/completions`, chatBody, { origin: "https://app.example" });
    await res.body?.cancel();
    assert.equal(res.headers.get("access-control-allow-origin"), null);
    const pre = await fetch(`${s.baseURL}/chat/completions`, {
      method: "OPTIONS",
      headers: { origin: "https://app.example", "access-control-request-method": "POST" },
    });
    await pre.body?.cancel();
    assert.equal(pre.headers.get("access-control-allow-origin"), null);
  });
});

Deno.test("cors: listed origins are echoed exactly, others never", async () => {
  const args = ["--cors-origins", "https://app.example,http://localhost:3000", "--api-key", "k"];
  await withFake({ args }, async (s) => {
    const res = await post(`${s.baseURL}/chat/completions`, chatBody, {
      origin: "https://app.example",
      authorization: "Bearer k",
    });
    await res.body?.cancel();
    assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(res.headers.get("vary")!, /Origin/);
    assert.match(res.headers.get("access-control-expose-headers")!, /x-request-id/);

    for (const origin of ["https://evil.example", "https://app.example.evil", "null"]) {
      const bad = await post(`${s.baseURL}/chat/completions`, chatBody, {
        origin,
        authorization: "Bearer k",
      });
      await bad.body?.cancel();
      assert.equal(bad.headers.get("access-control-allow-origin"), null, origin);
      assert.match(bad.headers.get("vary")!, /Origin/);
    }

    // Errors carry CORS headers too, so browsers can read them.
    const unauth = await post(`${s.baseURL}/chat/completions`, chatBody, { origin: "http://localhost:3000" });
    await unauth.body?.cancel();
    assert.equal(unauth.status, 401);
    assert.equal(unauth.headers.get("access-control-allow-origin"), "http://localhost:3000");

    // Preflight needs no API key.
    const pre = await fetch(`${s.baseURL}/chat/completions`, {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os",
      },
    });
    await pre.body?.cancel();
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(pre.headers.get("access-control-allow-methods")!, /POST/);
    assert.match(pre.headers.get("access-control-allow-headers")!, /x-stainless-os/);
    assert.match(pre.headers.get("access-control-allow-headers")!, /authorization/);

    const evilPre = await fetch(`${s.baseURL}/chat/completions`, {
      method: "OPTIONS",
      headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
    });
    await evilPre.body?.cancel();
    assert.equal(evilPre.headers.get("access-control-allow-origin"), null);
    assert.equal(evilPre.headers.get("access-control-allow-methods"), null);
  });
});

Deno.test("cors: '*' answers with a literal wildcard, not the caller's origin", async () => {
  await withFake({ args: ["--cors-origins", "*"] }, async (s) => {
    const res = await fetch(`${s.origin}/health`, { headers: { origin: "https://anything.example" } });
    await res.body?.cancel();
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
  });
});

Deno.test("413: declared Content-Length over --max-body-kb", async () => {
  await withFake({ args: ["--max-body-kb", "1"] }, async (s) => {
    const big = JSON.stringify({ prompt: "x".repeat(2000) });
    const { status, error } = await readError(await post(`${s.baseURL}/completions`, big));
    assert.equal(status, 413);
    assert.equal(error.type, "invalid_request_error");
    assert.equal(error.code, "request_too_large");
    // Just under the limit is fine.
    const ok = await post(
      `${s.baseURL}/completions`,
      JSON.stringify({ prompt: "x".repeat(400), user: "y".repeat(500), max_tokens: 1 }),
    );
    await ok.body?.cancel();
    assert.equal(ok.status, 200);
  });
});

Deno.test("413: chunked body without Content-Length is counted as it is read", async () => {
  await withFake({ args: ["--max-body-kb", "1"] }, async (s) => {
    const chunk = new TextEncoder().encode(" ".repeat(512));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 4) c.enqueue(chunk);
        else c.close();
      },
    });
    const res = await fetch(`${s.baseURL}/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    const { status, error } = await readError(res);
    assert.equal(status, 413);
    assert.equal(error.code, "request_too_large");
  });
});
