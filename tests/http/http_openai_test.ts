// Wire format, through the official openai client and through raw fetch + SSE parsing.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { BOS, DEFAULT_REPLY, post, readSse, withFake } from "../helpers/fake_engine.ts";

const client = (baseURL: string, apiKey = "unused") => new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const user = (content: string) => [{ role: "user" as const, content }];

Deno.test("openai client: chat, non-streaming", async () => {
  await withFake({}, async (s, engine) => {
    const r = await client(s.baseURL).chat.completions.create({ model: "fake-model", messages: user("Hi") });
    assert.equal(r.object, "chat.completion");
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.model, "fake-model");
    assert.equal(typeof r.created, "number");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].index, 0);
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, DEFAULT_REPLY);
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.equal(r.choices[0].logprobs, null);
    const promptTokens = engine.requests[0].promptIds.length;
    assert.deepEqual(r.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: DEFAULT_REPLY.length,
      total_tokens: promptTokens + DEFAULT_REPLY.length,
    });
  });
});

Deno.test("openai client: chat, streaming with usage", async () => {
  await withFake({ engine: { tokensPerDelta: 3 } }, async (s) => {
    const stream = await client(s.baseURL).chat.completions.create({
      model: "fake-model",
      messages: user("Hi"),
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      assert.equal(chunk.object, "chat.completion.chunk");
      for (const c of chunk.choices) {
        text += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, DEFAULT_REPLY);
    assert.equal(finish, "stop");
    assert.equal(usage?.completion_tokens, DEFAULT_REPLY.length);
    assert.ok(chunks > 3);
  });
});

Deno.test("openai client: completions, string and token-id prompts", async () => {
  await withFake({}, async (s, engine) => {
    const openai = client(s.baseURL);
    const a = await openai.completions.create({ model: "fake-model", prompt: "Once", max_tokens: 5 });
    assert.equal(a.object, "text_completion");
    assert.match(a.id, /^cmpl-/);
    assert.equal(a.choices[0].text, DEFAULT_REPLY.slice(0, 5));
    assert.equal(a.choices[0].finish_reason, "length");
    assert.deepEqual(a.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
    // A string prompt gets BOS; token ids are used as given.
    assert.deepEqual(engine.requests[0].promptIds, [BOS, ...new TextEncoder().encode("Once")]);

    await openai.completions.create({ model: "fake-model", prompt: [1, 2, 3], max_tokens: 2 });
    assert.deepEqual(engine.requests[1].promptIds, [1, 2, 3]);
    await openai.completions.create({ model: "fake-model", prompt: [[4, 5]], max_tokens: 2 });
    assert.deepEqual(engine.requests[2].promptIds, [4, 5]);
    await openai.completions.create({ model: "fake-model", prompt: ["ab"], max_tokens: 2 });
    assert.deepEqual(engine.requests[3].promptIds, [BOS, 97, 98]);
  });
});

Deno.test("openai client: completions, streaming", async () => {
  await withFake({}, async (s) => {
    const stream = await client(s.baseURL).completions.create({
      model: "fake-model",
      prompt: "x",
      stream: true,
      max_tokens: 8,
    });
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, "text_completion");
      text += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, DEFAULT_REPLY.slice(0, 8));
    assert.equal(finish, "length");
  });
});

Deno.test("chat: a request resending an assistant turn tells the engine the conversation goes on", async () => {
  await withFake({}, async (s, engine) => {
    const turn = async (messages: { role: string; content: string }[]) =>
      await (await post(`${s.baseURL}/chat/completions`, { messages, max_tokens: 1 })).body?.cancel();
    await turn(user("Hi"));
    await turn([{ role: "system", content: "Be brief." }, ...user("Hi")]);
    await turn([...user("Hi"), { role: "assistant", content: "Hello" }, ...user("More")]);
    await (await post(`${s.baseURL}/completions`, { prompt: "Hi Hello More", max_tokens: 1 })).body?.cancel();
    await engine.arrivals(4);
    assert.deepEqual(engine.requests.map((r) => r.continues ?? false), [false, false, true, false]);
  });
});

Deno.test("wire: chat stream is role chunk, content chunks, finish chunk, [DONE]", async () => {
  await withFake({}, async (s) => {
    const res = await post(`${s.baseURL}/chat/completions`, {
      messages: user("Hi"),
      stream: true,
      max_tokens: 4,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/event-stream/);
    const sse = await readSse(res);
    assert.equal(sse.data.at(-1), "[DONE]");
    const ev = sse.events as Array<{
      id: string;
      object: string;
      created: number;
      model: string;
      choices: Array<
        { index: number; delta: Record<string, unknown>; logprobs: unknown; finish_reason: unknown }
      >;
    }>;
    assert.equal(ev.length, 1 + 4 + 1);
    assert.ok(
      ev.every((e) => e.id === ev[0].id && e.object === "chat.completion.chunk" && e.model === "fake-model"),
    );
    assert.ok(ev.every((e) => !("usage" in e)), "no usage field without include_usage");
    assert.deepEqual(ev[0].choices, [{
      index: 0,
      delta: { role: "assistant", content: "" },
      logprobs: null,
      finish_reason: null,
    }]);
    for (const [i, e] of ev.slice(1, 5).entries()) {
      assert.deepEqual(e.choices, [{
        index: 0,
        delta: { content: DEFAULT_REPLY[i] },
        logprobs: null,
        finish_reason: null,
      }]);
    }
    assert.deepEqual(ev[5].choices, [{ index: 0, delta: {}, logprobs: null, finish_reason: "length" }]);
  });
});

Deno.test("wire: include_usage puts usage: null on chunks and a final usage chunk with no choices", async () => {
  await withFake({}, async (s) => {
    const res = await post(`${s.baseURL}/completions`, {
      prompt: [1, 2],
      stream: true,
      max_tokens: 3,
      stream_options: { include_usage: true },
    });
    const sse = await readSse(res);
    assert.deepEqual(sse.data.slice(-1), ["[DONE]"]);
    const ev = sse.events as Array<Record<string, unknown> & { choices: Array<Record<string, unknown>> }>;
    const last = ev.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 });
    for (const e of ev.slice(0, -1)) {
      assert.equal(e.usage, null);
      assert.equal(e.object, "text_completion");
    }
    assert.deepEqual(ev.slice(0, 3).map((e) => e.choices[0].text), ["H", "e", "l"]);
    assert.deepEqual(ev.at(-2)!.choices, [{ index: 0, text: "", logprobs: null, finish_reason: "length" }]);
  });
});

Deno.test("wire: chat logprobs", async () => {
  await withFake({}, async (s, engine) => {
    const res = await post(`${s.baseURL}/chat/completions`, {
      messages: user("Hi"),
      max_tokens: 2,
      logprobs: true,
      top_logprobs: 2,
    });
    const body = await res.json();
    assert.equal(engine.requests[0].params.logprobs, 2);
    assert.deepEqual(body.choices[0].logprobs.content[0], {
      token: "H",
      logprob: -0.25,
      bytes: [72],
      top_logprobs: [{ token: "H", logprob: -0.25, bytes: [72] }, { token: " ", logprob: -0.5, bytes: [32] }],
    });
    assert.equal(body.choices[0].logprobs.content.length, 2);

    const stream = await readSse(
      await post(`${s.baseURL}/chat/completions`, {
        messages: user("Hi"),
        max_tokens: 2,
        logprobs: true,
        stream: true,
      }),
    );
    const chunk = stream.events[1] as { choices: Array<{ logprobs: { content: unknown[] } }> };
    assert.deepEqual(chunk.choices[0].logprobs.content, [{
      token: "H",
      logprob: -0.25,
      bytes: [72],
      top_logprobs: [],
    }]);
  });
});

Deno.test("wire: completions logprobs", async () => {
  await withFake({}, async (s) => {
    const body = await (await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 3, logprobs: 1 }))
      .json();
    assert.deepEqual(body.choices[0].logprobs, {
      tokens: ["H", "e", "l"],
      token_logprobs: [-0.25, -0.25, -0.25],
      top_logprobs: [{ H: -0.25 }, { e: -0.25 }, { l: -0.25 }],
      text_offset: [0, 1, 2],
    });
    const sse = await readSse(
      await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 3, logprobs: 0, stream: true }),
    );
    const offsets = sse.events.slice(0, 3).map((e) =>
      (e as { choices: Array<{ logprobs: { text_offset: number[] } }> }).choices[0].logprobs.text_offset
    );
    assert.deepEqual(offsets, [[0], [1], [2]]);
  });
});

Deno.test("sampling fields reach the engine, nulls mean absent, metadata fields are ignored", async () => {
  await withFake({}, async (s, engine) => {
    const res = await post(`${s.baseURL}/chat/completions`, {
      model: "fake-model",
      messages: [
        { role: "system", content: "be brief" },
        { role: "developer", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] },
        { role: "user", content: "Hi", name: "bob" },
        { role: "assistant", content: null, tool_calls: [] },
        { role: "tool", content: "42", tool_call_id: "x" },
      ],
      temperature: 0.5,
      top_p: 0.9,
      top_k: 40,
      min_p: 0.05,
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      repetition_penalty: 1.1,
      logit_bias: { "65": 10, "66": -100 },
      seed: 1234,
      stop: ["zz"],
      stop_token_ids: [3],
      ignore_eos: true,
      max_completion_tokens: 7,
      skip_special_tokens: false,
      n: 1,
      user: "someone",
      metadata: { deeply: ["nested"] },
      store: false,
      service_tier: "auto",
      response_format: null,
      tools: null,
    });
    assert.equal(res.status, 200, await res.clone().text());
    await res.body?.cancel();
    const p = engine.requests[0].params;
    assert.deepEqual(p, {
      temperature: 0.5,
      topP: 0.9,
      topK: 40,
      minP: 0.05,
      presencePenalty: 0.5,
      frequencyPenalty: -0.5,
      repetitionPenalty: 1.1,
      logitBias: { 65: 10, 66: -100 },
      seed: 1234,
      stopTokenIds: [3],
      stop: ["zz"],
      ignoreEos: true,
      maxTokens: 7,
      logprobs: null,
      skipSpecialTokens: false,
    });
    const text = engine.tokenizer.decode(engine.requests[0].promptIds);
    assert.equal(
      text,
      "<s><|system|>\nbe brief\n<|developer|>\na\nb\n<|user|>\nHi\n<|assistant|>\n\n<|tool|>\n42\n<|assistant|>\n",
    );

    const nulls = await post(`${s.baseURL}/completions`, {
      prompt: "x",
      model: null,
      temperature: null,
      top_p: null,
      stop: null,
      seed: null,
      max_tokens: null,
      logprobs: null,
      stream: null,
      stream_options: null,
      logit_bias: null,
      n: null,
      echo: null,
    });
    assert.equal(nulls.status, 200, await nulls.clone().text());
    await nulls.body?.cancel();
    const d = engine.requests[1].params;
    assert.equal(d.temperature, 1);
    assert.equal(d.topP, 1);
    assert.equal(d.topK, 0);
    assert.equal(d.seed, null);
    assert.deepEqual(d.stop, []);
    assert.equal(d.logprobs, null);
    assert.equal(d.skipSpecialTokens, true);
    // Default max_tokens: whatever room the prompt leaves in the context.
    assert.equal(d.maxTokens, engine.info.maxContext - 2);
  });
});

Deno.test("stop strings end generation with finish_reason stop", async () => {
  await withFake({}, async (s) => {
    const body = await (await post(`${s.baseURL}/completions`, { prompt: "x", stop: "fake" })).json();
    assert.equal(body.choices[0].text, "Hello! I am a ");
    assert.equal(body.choices[0].finish_reason, "stop");
  });
});

Deno.test("chat prompt gets exactly one BOS when the template writes it", async () => {
  await withFake({}, async (s, engine) => {
    await (await post(`${s.baseURL}/chat/completions`, { messages: user("Hi"), max_tokens: 1 })).body
      ?.cancel();
    const ids = engine.requests[0].promptIds;
    assert.equal(ids[0], BOS);
    assert.notEqual(ids[1], BOS);
  });
});

Deno.test("GET /v1/models, and --served-model-name", async () => {
  await withFake({}, async (s) => {
    const list = await client(s.baseURL).models.list();
    assert.equal(list.data.length, 1);
    assert.equal(list.data[0].id, "fake-model");
    assert.equal(list.data[0].object, "model");
    const one = await (await fetch(`${s.baseURL}/models/fake-model`)).json();
    assert.equal(one.id, "fake-model");
    assert.equal(one.max_model_len, 512);
  });
  await withFake({ args: ["--served-model-name", "org/served", "--max-model-len", "100"] }, async (s) => {
    const list = await (await fetch(`${s.baseURL}/models`)).json();
    assert.equal(list.data[0].id, "org/served");
    assert.equal(list.data[0].max_model_len, 100);
    const r = await client(s.baseURL).chat.completions.create({ model: "org/served", messages: user("Hi") });
    assert.equal(r.model, "org/served");
    assert.equal((await fetch(`${s.baseURL}/models/org/served`)).status, 200);
    const wrong = await post(`${s.baseURL}/completions`, { model: "fake-model", prompt: "x" });
    assert.equal(wrong.status, 404);
    await wrong.body?.cancel();
  });
});

Deno.test("POST /tokenize and /detokenize", async () => {
  await withFake({}, async (s) => {
    const a = await (await post(`${s.origin}/tokenize`, { model: "fake-model", prompt: "ab" })).json();
    assert.deepEqual(a, { tokens: [BOS, 97, 98], count: 3, max_model_len: 512 });
    const b = await (await post(`${s.origin}/tokenize`, { prompt: "ab", add_special_tokens: false })).json();
    assert.deepEqual(b.tokens, [97, 98]);
    const c = await (await post(`${s.origin}/tokenize`, { messages: user("Hi") })).json();
    assert.equal(c.tokens[0], BOS);
    assert.notEqual(c.tokens[1], BOS);
    assert.equal(c.count, c.tokens.length);
    const d = await (await post(`${s.origin}/detokenize`, { tokens: [BOS, 104, 105] })).json();
    assert.deepEqual(d, { prompt: "<s>hi" });
  });
});

Deno.test("GET /health and /metrics", async () => {
  await withFake({}, async (s) => {
    const h = await fetch(`${s.origin}/health`);
    assert.equal(h.status, 200);
    assert.deepEqual(await h.json(), { status: "ok" });
    await (await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 3 })).body?.cancel();
    const m = await fetch(`${s.origin}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
    const text = await m.text();
    for (
      const line of [
        "# TYPE ragtime_requests_running gauge",
        "# TYPE ragtime_requests_waiting gauge",
        "# TYPE ragtime_kv_cache_usage_ratio gauge",
        "# TYPE ragtime_prompt_tokens_total counter",
        "ragtime_prompt_tokens_total 2",
        "ragtime_generation_tokens_total 3",
        "# TYPE ragtime_preemptions_total counter",
        'ragtime_request_success_total{finished_reason="length"} 1',
        'ragtime_request_success_total{finished_reason="stop"} 0',
        "# TYPE ragtime_time_to_first_token_seconds histogram",
        'ragtime_time_to_first_token_seconds_bucket{le="+Inf"} 1',
        "ragtime_time_to_first_token_seconds_count 1",
        "ragtime_inter_token_latency_seconds_count 2",
        "ragtime_e2e_request_latency_seconds_count 1",
        // One prefill step of 2 tokens and three decode steps of 1.
        'ragtime_step_batch_tokens_bucket{le="1"} 3',
        'ragtime_step_batch_tokens_bucket{le="2"} 4',
        "ragtime_step_batch_tokens_sum 5",
      ]
    ) assert.ok(text.split("\n").includes(line), `missing ${line}`);
    assert.ok(text.endsWith("\n"));
    // Every sample belongs to a family announced by # HELP and # TYPE.
    const families = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]));
    for (const line of text.split("\n").filter((l) => l && !l.startsWith("#"))) {
      const name = line.split(/[{ ]/)[0].replace(/_(bucket|sum|count)$/, "");
      assert.ok(families.has(name) || families.has(line.split(/[{ ]/)[0]), line);
    }
  });
});

Deno.test("X-Request-Id is echoed (sanitised) or generated, and every request logs one line", async () => {
  await withFake({}, async (s) => {
    const a = await post(`${s.baseURL}/completions`, { prompt: "secret prompt", max_tokens: 2 }, {
      "x-request-id": "abc-123<script>",
    });
    await a.body?.cancel();
    assert.equal(a.headers.get("x-request-id"), "abc-123script");
    const b = await fetch(`${s.origin}/health`);
    await b.body?.cancel();
    assert.match(b.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
    const long = await fetch(`${s.origin}/health`, { headers: { "x-request-id": "x".repeat(300) } });
    await long.body?.cancel();
    assert.equal(long.headers.get("x-request-id"), "x".repeat(128));

    const line = s.logs.find((l) => l.id === "abc-123script")!;
    assert.equal(line.method, "POST");
    assert.equal(line.path, "/v1/completions");
    assert.equal(line.status, 200);
    assert.equal(line.prompt_tokens, 14);
    assert.equal(line.completion_tokens, 2);
    assert.equal(typeof line.ttft, "number");
    assert.equal(typeof line.duration, "number");
    assert.ok(!JSON.stringify(s.logs).includes("secret"), "no prompt text without --log-prompts");
  });
  await withFake({ args: ["--log-prompts"] }, async (s) => {
    await (await post(`${s.baseURL}/completions`, { prompt: "secret prompt", max_tokens: 2 })).body?.cancel();
    assert.equal(s.logs[0].prompt, "secret prompt");
  });
});

Deno.test("streamed requests log once the stream ends", async () => {
  await withFake({}, async (s) => {
    const sse = await readSse(
      await post(`${s.baseURL}/chat/completions`, { messages: user("Hi"), stream: true, max_tokens: 3 }),
    );
    assert.equal(sse.data.at(-1), "[DONE]");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(s.logs.length, 1);
    assert.equal(s.logs[0].completion_tokens, 3);
    assert.equal(s.logs[0].finish_reason, "length");
  });
});

Deno.test("an unknown field is a 400 naming it, at the top level and inside messages", async () => {
  await withFake({}, async (s, engine) => {
    const cases: [string, Record<string, unknown>, string][] = [
      ["/chat/completions", { messages: user("Hi"), frobnicate: 1 }, "frobnicate"],
      ["/chat/completions", { messages: [{ role: "user", content: "Hi", foo: 1 }] }, "messages[0].foo"],
      ["/chat/completions", { messages: user("Hi"), stream_options: { bar: true } }, "stream_options.bar"],
      ["/completions", { prompt: "x", best_of: 2 }, "best_of"],
    ];
    for (const [path, body, param] of cases) {
      const res = await post(`${s.baseURL}${path}`, body);
      assert.equal(res.status, 400);
      const { error } = await res.json();
      assert.equal(error.param, param);
      assert.equal(error.type, "invalid_request_error");
      assert.match(error.message, new RegExp(`'${param.replace(/[[\].]/g, "\\$&")}' is not supported`));
    }
    assert.equal(engine.requests.length, 0);
  });
});

Deno.test("wire: usage.prompt_tokens_details.cached_tokens in chat and completions, streamed and not", async () => {
  await withFake({ engine: { prefixCacheBlock: 16 } }, async (s) => {
    const system = "You are a helpful assistant who answers in one short sentence. ".repeat(2);
    const messages = [{ role: "system", content: system }, { role: "user", content: "Hi" }];
    const usages: Record<string, unknown>[] = [];
    for (const stream of [false, true]) {
      const routes: [string, object][] = [["chat/completions", { messages }], ["completions", {
        prompt: system,
      }]];
      for (const [path, body] of routes) {
        const req = {
          ...body,
          max_tokens: 2,
          stream,
          ...(stream ? { stream_options: { include_usage: true } } : {}),
        };
        const res = await post(`${s.baseURL}/${path}`, req);
        usages.push(stream ? (await readSse(res)).events.at(-1)!.usage : (await res.json()).usage);
      }
    }
    const cached = usages.map((u) => (u.prompt_tokens_details as { cached_tokens: number }).cached_tokens);
    // The first chat prompt finds nothing; the completions prompt (the system text without the template)
    // shares no full block with it; each repeat finds its first run's full blocks, short of the last token.
    const lengths = usages.map((u) => u.prompt_tokens as number);
    assert.deepEqual(cached, [
      0,
      0,
      Math.floor((lengths[2] - 1) / 16) * 16,
      Math.floor((lengths[3] - 1) / 16) * 16,
    ]);
    assert.ok(cached[2] > 0 && cached[3] > 0);
  });
});

Deno.test("wire: no prompt_tokens_details where the engine reports no cached tokens", async () => {
  await withFake({}, async (s) => {
    const r = await (await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 1 })).json();
    assert.equal("prompt_tokens_details" in r.usage, false);
  });
});
