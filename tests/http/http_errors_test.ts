// One test per error case: status, error.type, error.code and error.param.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { post, readError, readSse, withFake } from "../helpers/fake_engine.ts";
import type { FakeEngineOptions } from "../helpers/fake_engine.ts";

interface Case {
  name: string;
  path: "/v1/chat/completions" | "/v1/completions" | "/tokenize" | "/detokenize";
  body: unknown;
  status: number;
  param: string | null;
  code?: string | null;
  type?: string;
  engine?: FakeEngineOptions;
}

const chat = (extra: Record<string, unknown>) => ({ messages: [{ role: "user", content: "Hi" }], ...extra });
const cmpl = (extra: Record<string, unknown>) => ({ prompt: "Hi", ...extra });
const C = "/v1/chat/completions" as const;
const P = "/v1/completions" as const;

const cases: Case[] = [
  { name: "non-JSON body", path: C, body: "{not json", status: 400, param: null, code: "invalid_json" },
  { name: "body is not an object", path: C, body: "[1,2]", status: 400, param: null, code: "invalid_body" },
  { name: "messages missing", path: C, body: {}, status: 400, param: "messages" },
  { name: "messages empty", path: C, body: { messages: [] }, status: 400, param: "messages" },
  { name: "messages not a list", path: C, body: { messages: "hi" }, status: 400, param: "messages" },
  {
    name: "bad role",
    path: C,
    body: { messages: [{ role: "wizard", content: "x" }] },
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "content of the wrong type",
    path: C,
    body: { messages: [{ role: "user", content: 5 }] },
    status: 400,
    param: "messages[0].content",
  },
  {
    name: "content missing on a user message",
    path: C,
    body: { messages: [{ role: "system", content: "x" }, { role: "user" }] },
    status: 400,
    param: "messages[1].content",
  },
  {
    name: "non-text content part",
    path: C,
    body: { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
    status: 400,
    param: "messages[0].content[0].type",
  },
  {
    name: "chat template rejects the conversation",
    path: C,
    body: { messages: [{ role: "user", content: "RAISE" }] },
    status: 400,
    param: "messages",
    code: "invalid_messages",
  },
  {
    name: "temperature too high",
    path: C,
    body: chat({ temperature: 2.5 }),
    status: 400,
    param: "temperature",
  },
  {
    name: "temperature negative",
    path: P,
    body: cmpl({ temperature: -1 }),
    status: 400,
    param: "temperature",
  },
  {
    name: "temperature not a number",
    path: C,
    body: chat({ temperature: "hot" }),
    status: 400,
    param: "temperature",
  },
  { name: "top_p zero", path: C, body: chat({ top_p: 0 }), status: 400, param: "top_p" },
  { name: "top_p above 1", path: P, body: cmpl({ top_p: 1.5 }), status: 400, param: "top_p" },
  { name: "top_k below -1", path: C, body: chat({ top_k: -2 }), status: 400, param: "top_k" },
  { name: "top_k fractional", path: C, body: chat({ top_k: 2.5 }), status: 400, param: "top_k" },
  { name: "min_p above 1", path: C, body: chat({ min_p: 2 }), status: 400, param: "min_p" },
  {
    name: "presence_penalty out of range",
    path: C,
    body: chat({ presence_penalty: 3 }),
    status: 400,
    param: "presence_penalty",
  },
  {
    name: "frequency_penalty out of range",
    path: P,
    body: cmpl({ frequency_penalty: -2.5 }),
    status: 400,
    param: "frequency_penalty",
  },
  {
    name: "repetition_penalty zero",
    path: C,
    body: chat({ repetition_penalty: 0 }),
    status: 400,
    param: "repetition_penalty",
  },
  {
    name: "logit_bias bad key",
    path: C,
    body: chat({ logit_bias: { abc: 1 } }),
    status: 400,
    param: "logit_bias",
  },
  {
    name: "logit_bias value out of range",
    path: C,
    body: chat({ logit_bias: { "5": 101 } }),
    status: 400,
    param: "logit_bias",
  },
  {
    name: "logit_bias token outside the vocabulary",
    path: P,
    body: cmpl({ logit_bias: { "99999": 1 } }),
    status: 400,
    param: "logit_bias",
  },
  { name: "seed fractional", path: C, body: chat({ seed: 1.5 }), status: 400, param: "seed" },
  { name: "stop of the wrong type", path: C, body: chat({ stop: 5 }), status: 400, param: "stop" },
  {
    name: "too many stop strings",
    path: P,
    body: cmpl({ stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }),
    status: 400,
    param: "stop",
  },
  {
    name: "stop_token_ids outside the vocabulary",
    path: C,
    body: chat({ stop_token_ids: [1, 100000] }),
    status: 400,
    param: "stop_token_ids",
  },
  {
    name: "ignore_eos not a boolean",
    path: C,
    body: chat({ ignore_eos: "yes" }),
    status: 400,
    param: "ignore_eos",
  },
  { name: "n above 1", path: C, body: chat({ n: 2 }), status: 400, param: "n" },
  { name: "n zero", path: P, body: cmpl({ n: 0 }), status: 400, param: "n" },
  { name: "max_tokens zero", path: P, body: cmpl({ max_tokens: 0 }), status: 400, param: "max_tokens" },
  {
    name: "max_tokens not an integer",
    path: C,
    body: chat({ max_tokens: "10" }),
    status: 400,
    param: "max_tokens",
  },
  {
    name: "max_completion_tokens negative",
    path: C,
    body: chat({ max_completion_tokens: -1 }),
    status: 400,
    param: "max_completion_tokens",
  },
  { name: "stream not a boolean", path: C, body: chat({ stream: "yes" }), status: 400, param: "stream" },
  {
    name: "stream_options.include_usage not a boolean",
    path: C,
    body: chat({ stream: true, stream_options: { include_usage: 1 } }),
    status: 400,
    param: "stream_options.include_usage",
  },
  {
    name: "chat logprobs not a boolean",
    path: C,
    body: chat({ logprobs: 3 }),
    status: 400,
    param: "logprobs",
  },
  {
    name: "top_logprobs above 5",
    path: C,
    body: chat({ logprobs: true, top_logprobs: 6 }),
    status: 400,
    param: "top_logprobs",
  },
  {
    name: "top_logprobs without logprobs",
    path: C,
    body: chat({ top_logprobs: 2 }),
    status: 400,
    param: "top_logprobs",
  },
  {
    name: "completions logprobs above 5",
    path: P,
    body: cmpl({ logprobs: 6 }),
    status: 400,
    param: "logprobs",
  },
  { name: "prompt missing", path: P, body: {}, status: 400, param: "prompt" },
  {
    name: "prompt of the wrong type",
    path: P,
    body: { prompt: { text: "x" } },
    status: 400,
    param: "prompt",
  },
  {
    name: "prompt with negative token ids",
    path: P,
    body: { prompt: [1, -2] },
    status: 400,
    param: "prompt",
  },
  { name: "batched prompts", path: P, body: { prompt: ["a", "b"] }, status: 400, param: "prompt" },
  { name: "empty prompt list", path: P, body: { prompt: [] }, status: 400, param: "prompt" },
  { name: "empty prompt", path: P, body: { prompt: [[]] }, status: 400, param: "prompt" },
  {
    name: "prompt token outside the vocabulary",
    path: P,
    body: { prompt: [1, 5000] },
    status: 400,
    param: "prompt",
  },
  { name: "echo", path: P, body: cmpl({ echo: true }), status: 400, param: "echo" },
  { name: "suffix", path: P, body: cmpl({ suffix: "end" }), status: 400, param: "suffix" },
  {
    name: "prompt longer than the context",
    path: P,
    body: { prompt: Array.from({ length: 600 }, () => 1) },
    status: 400,
    param: "prompt",
    code: "context_length_exceeded",
  },
  {
    name: "prompt fills the context exactly",
    path: P,
    body: { prompt: Array.from({ length: 512 }, () => 1) },
    status: 400,
    param: "prompt",
    code: "context_length_exceeded",
  },
  {
    name: "prompt + max_tokens over the context",
    path: P,
    body: { prompt: [1, 2, 3], max_tokens: 510 },
    status: 400,
    param: "max_tokens",
    code: "context_length_exceeded",
  },
  {
    name: "chat messages longer than the context",
    path: C,
    body: { messages: [{ role: "user", content: "x".repeat(600) }] },
    status: 400,
    param: "messages",
    code: "context_length_exceeded",
  },
  {
    name: "chat messages + max_completion_tokens over the context",
    path: C,
    body: chat({ max_completion_tokens: 500 }),
    status: 400,
    param: "max_completion_tokens",
    code: "context_length_exceeded",
  },
  {
    name: "unknown model",
    path: C,
    body: chat({ model: "gpt-9" }),
    status: 404,
    param: "model",
    code: "model_not_found",
  },
  {
    name: "unknown model (completions)",
    path: P,
    body: cmpl({ model: "gpt-9" }),
    status: 404,
    param: "model",
    code: "model_not_found",
  },
  {
    name: "engine rejects before streaming (invalid request)",
    path: C,
    body: chat({ stream: true }),
    status: 400,
    param: null,
    code: "invalid_request",
    engine: { failBeforeStart: { message: "nope", code: "invalid_request" } },
  },
  {
    name: "engine reports context length before streaming",
    path: P,
    body: cmpl({ stream: true }),
    status: 400,
    param: "prompt",
    code: "context_length_exceeded",
    engine: { failBeforeStart: { message: "too long", code: "context_length_exceeded" } },
  },
  {
    name: "engine fails (non-streaming)",
    path: C,
    body: chat({}),
    status: 500,
    param: null,
    code: "internal_error",
    type: "server_error",
    engine: { failBeforeStart: { message: "boom", code: "internal" } },
  },
  { name: "tokenize without prompt or messages", path: "/tokenize", body: {}, status: 400, param: "prompt" },
  {
    name: "tokenize with a bad message",
    path: "/tokenize",
    body: { messages: [{ role: "nobody", content: "x" }] },
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "tokenize with an unknown model",
    path: "/tokenize",
    body: { model: "other", prompt: "x" },
    status: 404,
    param: "model",
    code: "model_not_found",
  },
  {
    name: "detokenize a token outside the vocabulary",
    path: "/detokenize",
    body: { tokens: [1, 300] },
    status: 400,
    param: "tokens",
  },
  { name: "detokenize without tokens", path: "/detokenize", body: {}, status: 400, param: "tokens" },
];

for (const c of cases) {
  Deno.test(`error: ${c.name} -> ${c.status} ${c.param ?? "(no param)"}`, async () => {
    await withFake({ engine: c.engine }, async (s) => {
      const res = await post(`${s.origin}${c.path}`, c.body);
      const { status, error } = await readError(res);
      assert.equal(status, c.status);
      assert.equal(res.headers.get("content-type"), "application/json");
      assert.equal(error.type, c.type ?? "invalid_request_error");
      assert.equal(error.param, c.param);
      if (c.code !== undefined) assert.equal(error.code, c.code);
      assert.equal(typeof error.message, "string");
      assert.ok((error.message as string).length > 0);
    });
  });
}

Deno.test("error messages name the field and the bad value", async () => {
  await withFake({}, async (s) => {
    const { error } = await readError(await post(`${s.baseURL}/chat/completions`, chat({ temperature: 3 })));
    assert.equal(error.message, "'temperature' must be <= 2, got 3.");
    const e2 = await readError(await post(`${s.baseURL}/chat/completions`, { messages: [] }));
    assert.equal(e2.error.message, "'messages' must have at least 1 item.");
  });
});

Deno.test("error: the openai client surfaces status, code and param", async () => {
  await withFake({}, async (s) => {
    const openai = new OpenAI({ baseURL: s.baseURL, apiKey: "x", maxRetries: 0 });
    await assert.rejects(
      openai.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
      (err: unknown) => {
        assert.ok(err instanceof OpenAI.NotFoundError);
        assert.equal(err.code, "model_not_found");
        assert.equal(err.param, "model");
        return true;
      },
    );
    await assert.rejects(
      openai.completions.create({ model: "fake-model", prompt: "x", max_tokens: 1000 }),
      (err: unknown) => {
        assert.ok(err instanceof OpenAI.BadRequestError);
        assert.equal(err.code, "context_length_exceeded");
        return true;
      },
    );
  });
});

Deno.test("error: engine failure after streaming began -> error event, then [DONE]", async () => {
  await withFake({ engine: { failAfterDeltas: 2 } }, async (s) => {
    const res = await post(`${s.baseURL}/chat/completions`, chat({ stream: true }));
    assert.equal(res.status, 200);
    const sse = await readSse(res);
    assert.equal(sse.data.at(-1), "[DONE]");
    const last = sse.events.at(-1) as { error: Record<string, unknown> };
    assert.deepEqual(last, {
      error: { message: "fake engine failure", type: "server_error", param: null, code: "internal_error" },
    });
    // Role chunk and two content chunks came first.
    assert.equal(sse.events.length, 4);
  });
});

Deno.test("error: unknown route is a JSON 404", async () => {
  await withFake({}, async (s) => {
    const { status, error } = await readError(await fetch(`${s.origin}/v1/embeddings`, { method: "POST" }));
    assert.equal(status, 404);
    assert.equal(error.code, "not_found");
  });
});
