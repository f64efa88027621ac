// End to end: the real server (main.ts as a subprocess) on stories260K, through the official openai
// client and raw fetch. Two server starts in all: one shared by most steps, one for auth and drain.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { PUBLISHED_GREEDY } from "../helpers/engine.ts";
import { post, readError, readSse } from "../helpers/fake_engine.ts";
import { type ServerProcess, startServerProcess, within } from "../helpers/server_process.ts";

const MODEL = "stories260K";
const PROMPT = "Once upon a time";
const PROMPT_IDS = [1, 403, 407, 261, 378];
/** What greedy decoding must continue the prompt with (a prefix of it, for short max_tokens). */
const CONTINUATION = PUBLISHED_GREEDY.slice(PROMPT.length);
const user = (content: string) => [{ role: "user" as const, content }];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a step; a failure carries the tail of the server's output. */
async function step(t: Deno.TestContext, s: ServerProcess, name: string, fn: () => Promise<void>) {
  await t.step(name, async () => {
    try {
      await fn();
    } catch (e) {
      if (e instanceof Error) e.message += `\n--- server output (tail) ---\n${s.output().slice(-6000)}`;
      throw e;
    }
  });
}

async function metrics(s: ServerProcess): Promise<Map<string, number>> {
  const res = await fetch(`${s.origin}/metrics`);
  assert.equal(res.status, 200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

const ABORTS = 'ragtime_request_success_total{finished_reason="abort"}';

/** Polls /metrics until `ok` holds; returns the last snapshot, or throws with it after `timeoutMs`. */
async function waitForMetrics(
  s: ServerProcess,
  ok: (m: Map<string, number>) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<Map<string, number>> {
  const t0 = performance.now();
  for (;;) {
    const m = await metrics(s);
    if (ok(m)) return m;
    if (performance.now() - t0 > timeoutMs) {
      const show = [...m].filter(([k]) => !k.includes("_bucket")).map(([k, v]) => `${k} ${v}`).join("\n");
      throw new Error(`metrics did not reach "${what}" within ${timeoutMs} ms; last:\n${show}`);
    }
    await sleep(100);
  }
}

const idle = (m: Map<string, number>) =>
  m.get("ragtime_requests_running") === 0 && m.get("ragtime_requests_waiting") === 0 &&
  m.get("ragtime_kv_cache_usage_ratio") === 0;

/** Reads an SSE body event by event (for streams the test must interleave with other work). */
class SseReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = "";
  raw = "";
  /** Every `data:` payload read so far, "[DONE]" included. */
  readonly data: string[] = [];

  constructor(res: Response) {
    this.#reader = res.body!.getReader();
  }

  /** The next data payload (pings are skipped), or null at the end of the body. */
  async next(): Promise<string | null> {
    for (;;) {
      const end = this.#buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        if (block === ": ping") continue;
        assert.ok(
          block.startsWith("data: ") && !block.includes("\n"),
          `bad SSE block ${JSON.stringify(block)}`,
        );
        const payload = block.slice(6);
        this.data.push(payload);
        return payload;
      }
      const r = await this.#reader.read();
      if (r.done) {
        assert.equal(this.#buffer, "", "SSE body ends mid-event");
        return null;
      }
      const text = this.#decoder.decode(r.value, { stream: true });
      this.raw += text;
      this.#buffer += text;
    }
  }

  /** Reads to the end; returns the JSON events (everything but [DONE]). */
  async rest(): Promise<Record<string, unknown>[]> {
    while (await this.next() !== null) { /* collect */ }
    return this.data.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d));
  }

  cancel(): Promise<void> {
    return this.#reader.cancel().catch(() => {});
  }
}

type Choice = { text?: string; delta?: { content?: string; role?: string }; finish_reason: string | null };
const choicesOf = (events: Record<string, unknown>[]) => events.flatMap((e) => e.choices as Choice[]);
const completionText = (events: Record<string, unknown>[]) =>
  choicesOf(events).map((c) => c.text ?? "").join("");
const chatText = (events: Record<string, unknown>[]) =>
  choicesOf(events).map((c) => c.delta?.content ?? "").join("");

Deno.test("real server: OpenAI API, wire format, errors, 429 and disconnects", async (t) => {
  // One sequence at a time and a queue of one, so the 429 and queued-abort steps are deterministic.
  const s = await startServerProcess({ args: ["--max-seqs", "1", "--max-queue", "1"] });
  const client = new OpenAI({ baseURL: s.baseURL, apiKey: "x", maxRetries: 0 });
  let greedy = "";
  try {
    await step(t, s, "health, models, tokenize round trip, metrics", async () => {
      const health = await fetch(`${s.origin}/health`);
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { status: "ok" });

      const models = await client.models.list();
      assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
      assert.equal(models.data[0].object, "model");
      assert.equal((models.data[0] as unknown as { max_model_len: number }).max_model_len, 512);
      assert.equal((await client.models.retrieve(MODEL)).id, MODEL);

      const tok = await post(`${s.origin}/tokenize`, { model: MODEL, prompt: PROMPT });
      assert.equal(tok.status, 200);
      assert.deepEqual(await tok.json(), { tokens: PROMPT_IDS, count: 5, max_model_len: 512 });
      const bare = await (await post(`${s.origin}/tokenize`, { prompt: PROMPT, add_special_tokens: false }))
        .json();
      assert.deepEqual(bare.tokens, PROMPT_IDS.slice(1));
      const detok = await post(`${s.origin}/detokenize`, { model: MODEL, tokens: bare.tokens });
      assert.equal(detok.status, 200);
      assert.deepEqual(await detok.json(), { prompt: PROMPT });
      const withBos = await (await post(`${s.origin}/detokenize`, { tokens: PROMPT_IDS })).json();
      assert.ok(withBos.prompt.startsWith("<s>") && withBos.prompt.endsWith(PROMPT), withBos.prompt);

      const res = await fetch(`${s.origin}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
      const text = await res.text();
      for (
        const name of [
          "ragtime_requests_running",
          "ragtime_requests_waiting",
          "ragtime_kv_cache_usage_ratio",
          "ragtime_prompt_tokens_total",
          "ragtime_generation_tokens_total",
          ABORTS,
          "ragtime_time_to_first_token_seconds_bucket",
        ]
      ) assert.ok(text.includes(`\n${name}`), `/metrics lacks ${name}`);
      assert.ok(idle(await metrics(s)));
    });

    await step(t, s, "openai client: completions reproduce the published greedy text", async () => {
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPT,
        temperature: 0,
        max_tokens: 40,
      });
      greedy = r.choices[0].text;
      assert.ok(greedy.length > 80, JSON.stringify(greedy));
      assert.ok(CONTINUATION.startsWith(greedy), `not the published continuation: ${JSON.stringify(greedy)}`);
      assert.equal(r.object, "text_completion");
      assert.equal(r.model, MODEL);
      assert.equal(r.choices[0].finish_reason, "length");
      assert.deepEqual(r.usage, {
        prompt_tokens: 5,
        completion_tokens: 40,
        total_tokens: 45,
        prompt_tokens_details: { cached_tokens: 0 },
      });

      const stream = await client.completions.create({
        model: MODEL,
        prompt: PROMPT,
        temperature: 0,
        max_tokens: 40,
        stream: true,
      });
      let text = "";
      let finish: string | null = null;
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        assert.equal(chunk.object, "text_completion");
        for (const c of chunk.choices) {
          text += c.text;
          finish = c.finish_reason ?? finish;
        }
      }
      assert.equal(text, greedy);
      assert.equal(finish, "length");
      assert.ok(chunks >= 10, `only ${chunks} chunks`);
    });

    await step(t, s, "completions with token ids give the same text", async () => {
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPT_IDS,
        temperature: 0,
        max_tokens: 40,
      });
      assert.equal(r.choices[0].text, greedy);
      assert.equal(r.usage?.prompt_tokens, 5);
    });

    await step(t, s, "openai client: chat, non-streaming and streaming with usage", async () => {
      const messages = user("Tell me a story.");
      const r = await client.chat.completions.create({
        model: MODEL,
        messages,
        temperature: 0,
        max_tokens: 16,
      });
      assert.equal(r.object, "chat.completion");
      assert.match(r.id, /^chatcmpl-/);
      assert.equal(r.choices[0].message.role, "assistant");
      assert.equal(typeof r.choices[0].message.content, "string");
      assert.ok(["length", "stop"].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
      const promptTokens = (await (await post(`${s.origin}/tokenize`, { messages })).json()).count;
      assert.equal(r.usage?.prompt_tokens, promptTokens);
      assert.ok(r.usage!.completion_tokens >= 1 && r.usage!.completion_tokens <= 16);
      assert.equal(r.usage?.total_tokens, promptTokens + r.usage!.completion_tokens);

      const stream = await client.chat.completions.create({
        model: MODEL,
        messages,
        temperature: 0,
        max_tokens: 16,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks: OpenAI.ChatCompletionChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      assert.equal(chunks[0].choices[0].delta.role, "assistant");
      const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
      assert.equal(text, r.choices[0].message.content, "greedy streaming differs from non-streaming");
      const last = chunks.at(-1)!;
      assert.deepEqual(last.choices, []);
      // The same prompt again: its full 16-token blocks, short of the last token, come from the prefix cache.
      const cached = Math.floor((promptTokens - 1) / 16) * 16;
      assert.ok(cached > 0);
      assert.deepEqual(last.usage, { ...r.usage, prompt_tokens_details: { cached_tokens: cached } });
      for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
      const finishes = chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter((f) => f !== null);
      assert.deepEqual(finishes, [r.choices[0].finish_reason]);
    });

    await step(t, s, "raw SSE wire format: chat and completions", async () => {
      const res = await post(`${s.baseURL}/chat/completions`, {
        model: MODEL,
        messages: user("Hi"),
        temperature: 0,
        max_tokens: 12,
        ignore_eos: true,
        stream: true,
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
      assert.equal(res.headers.get("cache-control"), "no-cache");
      const sse = await readSse(res); // checks each event is `data: ...\n\n`
      assert.ok(sse.raw.startsWith("data: {"));
      assert.ok(sse.raw.endsWith("data: [DONE]\n\n"));
      assert.equal(sse.data.at(-1), "[DONE]");
      assert.equal(sse.data.filter((d) => d === "[DONE]").length, 1);
      const ev = sse.events;
      assert.deepEqual((ev[0].choices as Choice[])[0].delta, { role: "assistant", content: "" });
      const ids = new Set(ev.map((e) => e.id));
      assert.equal(ids.size, 1);
      for (const e of ev) {
        assert.equal(e.object, "chat.completion.chunk");
        assert.equal(e.model, MODEL);
        assert.equal((e.choices as Choice[]).length, 1);
        assert.ok(!("usage" in e), "usage sent without include_usage");
      }
      for (const e of ev.slice(1)) assert.ok(!("role" in (e.choices as Choice[])[0].delta!));
      const finish = ev.at(-1)!.choices as Choice[];
      assert.equal(finish[0].finish_reason, "length");
      assert.deepEqual(finish[0].delta, {});
      for (const e of ev.slice(0, -1)) assert.equal((e.choices as Choice[])[0].finish_reason, null);
      assert.ok(chatText(ev).length > 0);

      const res2 = await post(`${s.baseURL}/completions`, {
        prompt: PROMPT,
        temperature: 0,
        max_tokens: 40,
        stream: true,
        stream_options: { include_usage: true },
      });
      assert.equal(res2.status, 200);
      const sse2 = await readSse(res2);
      assert.equal(sse2.data.at(-1), "[DONE]");
      const ev2 = sse2.events;
      assert.equal(completionText(ev2), greedy);
      const usage = ev2.at(-1)!;
      assert.deepEqual(usage.choices, []);
      assert.deepEqual(usage.usage, {
        prompt_tokens: 5,
        completion_tokens: 40,
        total_tokens: 45,
        prompt_tokens_details: { cached_tokens: 0 },
      });
      for (const e of ev2.slice(0, -1)) {
        assert.equal(e.object, "text_completion");
        assert.equal(e.usage, null);
      }
      const finishes = choicesOf(ev2).filter((c) => c.finish_reason !== null);
      assert.equal(finishes.length, 1);
      assert.equal(finishes[0].finish_reason, "length");
      assert.equal(choicesOf(ev2.slice(0, -1)).at(-1)!.finish_reason, "length");
    });

    await step(t, s, "errors from the real engine", async () => {
      // prompt + max_tokens beyond --max-model-len 512
      let e = await readError(await post(`${s.baseURL}/completions`, { prompt: PROMPT, max_tokens: 510 }));
      assert.equal(e.status, 400);
      assert.equal(e.error.code, "context_length_exceeded");
      assert.equal(e.error.param, "max_tokens");
      assert.equal(e.error.type, "invalid_request_error");
      assert.match(String(e.error.message), /512/);

      // a prompt that alone fills the context
      const long = "Once upon a time there was a dog. ".repeat(80);
      e = await readError(await post(`${s.baseURL}/completions`, { prompt: long, max_tokens: 1 }));
      assert.equal(e.status, 400);
      assert.equal(e.error.code, "context_length_exceeded");
      assert.equal(e.error.param, "prompt");
      e = await readError(
        await post(`${s.baseURL}/chat/completions`, { messages: user(long), stream: true }),
      );
      assert.equal(e.status, 400);
      assert.equal(e.error.code, "context_length_exceeded");
      assert.equal(e.error.param, "messages");

      // the same through the openai client
      await assert.rejects(
        client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 600 }),
        (err: unknown) =>
          err instanceof OpenAI.BadRequestError && err.status === 400 &&
          err.code === "context_length_exceeded",
      );

      e = await readError(await post(`${s.baseURL}/completions`, { model: "gpt-4", prompt: PROMPT }));
      assert.equal(e.status, 404);
      assert.equal(e.error.code, "model_not_found");
      assert.equal(e.error.param, "model");
      await assert.rejects(
        client.chat.completions.create({ model: "nope", messages: user("Hi") }),
        (err: unknown) => err instanceof OpenAI.NotFoundError,
      );

      e = await readError(await post(`${s.baseURL}/completions`, { prompt: PROMPT, temperature: 3 }));
      assert.equal(e.status, 400);
      assert.equal(e.error.param, "temperature");
      e = await readError(
        await post(`${s.baseURL}/chat/completions`, { messages: user("Hi"), temperature: -1 }),
      );
      assert.equal(e.status, 400);
      assert.equal(e.error.param, "temperature");

      // token ids outside the vocabulary (512)
      e = await readError(await post(`${s.baseURL}/completions`, { prompt: [1, 600] }));
      assert.equal(e.status, 400);
      assert.equal(e.error.param, "prompt");

      assert.ok(idle(await metrics(s)), "errors left work in the engine");
    });

    await step(t, s, "429 when the queue is full, with Retry-After, answered at once", async () => {
      const send = async () => {
        const t0 = performance.now();
        const res = await post(`${s.baseURL}/completions`, {
          prompt: PROMPT,
          temperature: 0,
          max_tokens: 30,
        });
        const ms = performance.now() - t0;
        const retryAfter = res.headers.get("retry-after");
        const body = await res.json();
        return { status: res.status, ms, retryAfter, body };
      };
      const results = await Promise.all(Array.from({ length: 6 }, send));
      const ok = results.filter((r) => r.status === 200);
      const limited = results.filter((r) => r.status === 429);
      assert.equal(ok.length + limited.length, results.length, JSON.stringify(results.map((r) => r.status)));
      assert.ok(ok.length >= 1, "no request got through");
      assert.ok(limited.length >= 1, "no request got 429");
      for (const r of ok) {
        assert.equal(r.body.choices[0].text, CONTINUATION.slice(0, r.body.choices[0].text.length));
      }
      for (const r of limited) {
        assert.ok(r.retryAfter !== null && Number(r.retryAfter) >= 1, `retry-after ${r.retryAfter}`);
        assert.equal(r.body.error.code, "rate_limit_exceeded");
        assert.ok(r.ms < 1500, `429 took ${r.ms.toFixed(0)} ms`);
      }
      const slowest429 = Math.max(...limited.map((r) => r.ms));
      const fastest200 = Math.min(...ok.map((r) => r.ms));
      assert.ok(slowest429 < fastest200, `429 after ${slowest429} ms, a 200 after ${fastest200} ms`);
      await waitForMetrics(s, idle, "idle after the 429 burst");
    });

    await step(t, s, "client disconnects: running stream and queued request free everything", async () => {
      const before = (await metrics(s)).get(ABORTS)!;

      // A long stream: read a few chunks, then abort it.
      const running = new AbortController();
      const res = await fetch(`${s.baseURL}/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: PROMPT,
          max_tokens: 400,
          ignore_eos: true,
          temperature: 0,
          stream: true,
        }),
        signal: running.signal,
      });
      assert.equal(res.status, 200);
      const sse = new SseReader(res);
      for (let i = 0; i < 3; i++) assert.ok(await sse.next() !== null);

      // With --max-seqs 1 this one waits behind the stream; abort it while it is queued.
      const queued = new AbortController();
      const queuedRes = fetch(`${s.baseURL}/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: PROMPT, max_tokens: 20 }),
        signal: queued.signal,
      }).then((r) => r.body?.cancel().then(() => r.status), (e: Error) => e.name);
      await waitForMetrics(
        s,
        (m) => m.get("ragtime_requests_waiting") === 1 && m.get("ragtime_requests_running") === 1,
        "one running, one waiting",
      );
      queued.abort();
      assert.equal(await queuedRes, "AbortError");
      await waitForMetrics(
        s,
        (m) => m.get("ragtime_requests_waiting") === 0 && m.get("ragtime_requests_running") === 1,
        "queued request gone, stream still running",
      );
      assert.ok(await sse.next() !== null, "the stream stopped with the queued request");

      running.abort();
      await sse.cancel();
      const after = await waitForMetrics(s, idle, "running 0, waiting 0, KV cache empty");
      assert.ok(after.get(ABORTS)! >= before + 2, `aborts ${before} -> ${after.get(ABORTS)}`);

      // The engine is still fine afterwards.
      const r = await client.completions.create({
        prompt: PROMPT,
        model: MODEL,
        temperature: 0,
        max_tokens: 40,
      });
      assert.equal(r.choices[0].text, greedy);
    });

    await step(t, s, "SIGTERM when idle: exits 0 promptly", async () => {
      const t0 = performance.now();
      s.child.kill("SIGTERM");
      const status = await within(s.status, 10_000);
      assert.ok(status, "still running 10 s after SIGTERM");
      assert.equal(status.code, 0);
      assert.ok(performance.now() - t0 < 8000);
    });
  } finally {
    await s.stop();
  }
});

Deno.test("real server: API key, then a graceful drain on SIGTERM", async (t) => {
  const KEY = "sekret-key";
  const s = await startServerProcess({ args: ["--shutdown-timeout", "30", "--api-key", KEY] });
  const auth = { authorization: `Bearer ${KEY}` };
  try {
    await step(t, s, "--api-key: 401 without the bearer, 200 with it", async () => {
      const body = { prompt: PROMPT, temperature: 0, max_tokens: 8 };
      let res = await post(`${s.baseURL}/completions`, body);
      assert.equal(res.status, 401);
      assert.equal(res.headers.get("www-authenticate"), "Bearer");
      assert.equal((await res.json()).error.code, "invalid_api_key");
      res = await post(`${s.baseURL}/completions`, body, { authorization: "Bearer wrong" });
      assert.equal(res.status, 401);
      await res.body?.cancel();
      res = await post(`${s.origin}/tokenize`, { prompt: PROMPT });
      assert.equal(res.status, 401);
      await res.body?.cancel();
      res = await fetch(`${s.baseURL}/models`);
      assert.equal(res.status, 401);
      await res.body?.cancel();

      res = await post(`${s.baseURL}/completions`, body, auth);
      assert.equal(res.status, 200);
      assert.ok(CONTINUATION.startsWith((await res.json()).choices[0].text));
      const r = await new OpenAI({ baseURL: s.baseURL, apiKey: KEY, maxRetries: 0 }).completions.create({
        model: MODEL,
        ...body,
      });
      assert.ok(CONTINUATION.startsWith(r.choices[0].text));
      await assert.rejects(
        new OpenAI({ baseURL: s.baseURL, apiKey: "bad", maxRetries: 0 }).models.list(),
        (err: unknown) => err instanceof OpenAI.AuthenticationError,
      );

      // health and metrics stay public
      res = await fetch(`${s.origin}/health`);
      assert.equal(res.status, 200);
      await res.body?.cancel();
      res = await fetch(`${s.origin}/metrics`);
      assert.equal(res.status, 200);
      await res.body?.cancel();
    });

    await step(t, s, "drain: streams in flight finish, new requests get 503, exit 0", async () => {
      const streams = await Promise.all([0, 1, 2].map(async () => {
        const res = await post(`${s.baseURL}/completions`, {
          prompt: PROMPT,
          temperature: 0,
          max_tokens: 60,
          ignore_eos: true,
          stream: true,
        }, auth);
        assert.equal(res.status, 200);
        const sse = new SseReader(res);
        const first = await sse.next();
        assert.ok(first !== null && first !== "[DONE]", `first event ${first}`);
        return sse;
      }));

      s.child.kill("SIGTERM");
      const t0 = performance.now();
      try {
        // The signal reaches the server asynchronously: wait until /health (which starts no work)
        // says it is draining. It keeps listening while it drains, and refuses new work with 503.
        for (;;) {
          const health = await fetch(`${s.origin}/health`).catch((e) => {
            throw new Error("/health gone after SIGTERM: the server stopped at once (nothing in flight)", {
              cause: e,
            });
          });
          const body = await health.json();
          if (health.status === 503) {
            assert.deepEqual(body, { status: "draining" });
            break;
          }
          assert.equal(health.status, 200);
          assert.ok(performance.now() - t0 < 5000, "/health did not turn 503 within 5 s of SIGTERM");
          await sleep(20);
        }
        // The server has seen the signal (it admits nothing new) and the engine still holds all three
        // streams: they were in flight when the signal came, so the drain below is really exercised.
        const m = await metrics(s);
        assert.equal(
          (m.get("ragtime_requests_running") ?? 0) + (m.get("ragtime_requests_waiting") ?? 0),
          streams.length,
          `requests in the engine once draining (running ${m.get("ragtime_requests_running")}, waiting ${
            m.get("ragtime_requests_waiting")
          })`,
        );
        const res = await post(`${s.baseURL}/completions`, { prompt: PROMPT, max_tokens: 4 }, auth);
        assert.equal(res.status, 503);
        assert.equal((await res.json()).error.code, "server_draining");
        // Listing models starts no work, so it still answers.
        const models = await fetch(`${s.baseURL}/models`, { headers: auth });
        assert.equal(models.status, 200);
        await models.body?.cancel();

        const results = await Promise.all(streams.map((sse) => sse.rest()));
        for (const [i, events] of results.entries()) {
          const sse = streams[i];
          assert.equal(sse.data.at(-1), "[DONE]", `stream ${i} did not end with [DONE]`);
          assert.ok(!events.some((e) => "error" in e), `stream ${i} got an error: ${sse.raw.slice(-400)}`);
          const finishes = choicesOf(events).filter((c) => c.finish_reason !== null);
          assert.deepEqual(finishes.map((c) => c.finish_reason), ["length"], `stream ${i}`);
          const text = completionText(events);
          assert.ok(
            CONTINUATION.startsWith(text) && text.length > 100,
            `stream ${i}: ${JSON.stringify(text)}`,
          );
        }
      } finally {
        await Promise.all(streams.map((sse) => sse.cancel()));
      }
      const status = await within(s.status, 20_000);
      assert.ok(status, "the server did not exit within 20 s of the streams ending");
      assert.equal(status.code, 0, `exit code ${status.code}`);
      assert.ok(performance.now() - t0 < 25_000);
    });
  } finally {
    await s.stop();
  }
});
