// End to end on stories260K (main.ts as a subprocess): requests sharing a prompt prefix report the
// reused tokens as usage.prompt_tokens_details.cached_tokens (chat and completions, streamed and
// not), /metrics counts the same tokens, and --prefix-caching off reports 0 with the same outputs.
import assert from "node:assert/strict";
import { post, readSse } from "../helpers/fake_engine.ts";
import { withServerProcess } from "../helpers/server_process.ts";

const BLOCK = 16;
const SYSTEM = "You are a kind storyteller. You tell short, happy stories about animals who live in a big " +
  "green forest, and every story ends with the animals becoming good friends.";
const PREFIX =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park " +
  "with her dog, who liked to run after the ball.";

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens: number };
}

async function ask(baseURL: string, path: string, body: object, stream: boolean) {
  const req = {
    ...body,
    max_tokens: 8,
    temperature: 0,
    stream,
    ...(stream ? { stream_options: { include_usage: true } } : {}),
  };
  const res = await post(`${baseURL}/${path}`, req);
  assert.equal(res.status, 200);
  if (!stream) {
    const r = await res.json();
    return { usage: r.usage as Usage, text: String(r.choices[0].message?.content ?? r.choices[0].text) };
  }
  const events = (await readSse(res)).events as Array<{
    choices: Array<{ text?: string; delta?: { content?: string } }>;
    usage: Usage;
  }>;
  const text = events.flatMap((e) => e.choices.map((c) => c.delta?.content ?? c.text ?? "")).join("");
  return { usage: events.at(-1)!.usage, text };
}

async function metric(origin: string, name: string): Promise<number> {
  const text = await (await fetch(`${origin}/metrics`)).text();
  return Number(text.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1]);
}

/** The same six requests: three chats over one system prompt, three completions over one prefix. */
async function session(baseURL: string, origin: string) {
  const chat = (user: string) => ({
    messages: [{ role: "system", content: SYSTEM }, { role: "user", content: user }],
  });
  const runs = [
    await ask(baseURL, "chat/completions", chat("Tell me about a fox."), false),
    await ask(baseURL, "chat/completions", chat("Tell me about a bear."), false),
    await ask(baseURL, "chat/completions", chat("Tell me about an owl."), true),
    await ask(baseURL, "completions", { prompt: PREFIX }, false),
    await ask(baseURL, "completions", { prompt: PREFIX + " One day" }, true),
    await ask(baseURL, "completions", { prompt: PREFIX + " The sun" }, false),
  ];
  const metrics = {
    queries: await metric(origin, "ragtime_prefix_cache_queries_total"),
    hits: await metric(origin, "ragtime_prefix_cache_hits_total"),
    blocks: await metric(origin, "ragtime_prefix_cache_blocks"),
  };
  return { runs, metrics };
}

const ARGS = ["--max-seqs", "4", "--graph-capture", "off"];

Deno.test("prefix caching end to end: cached_tokens and /metrics on, 0 off, the same outputs", async () => {
  let on: Awaited<ReturnType<typeof session>> | undefined;
  await withServerProcess({ args: ARGS }, async (s) => {
    on = await session(s.baseURL, s.origin);
  });
  let off: Awaited<ReturnType<typeof session>> | undefined;
  await withServerProcess({ args: [...ARGS, "--prefix-caching", "off"] }, async (s) => {
    off = await session(s.baseURL, s.origin);
  });
  const cached = on!.runs.map((r) => r.usage.prompt_tokens_details!.cached_tokens);
  for (const i of [1, 2, 4, 5]) {
    assert.ok(cached[i] >= 2 * BLOCK, `request ${i} reused ${cached[i]} tokens: ${cached}`);
    assert.equal(cached[i] % BLOCK, 0, `request ${i}: ${cached[i]} is not whole blocks`);
    assert.ok(cached[i] < on!.runs[i].usage.prompt_tokens);
  }
  assert.equal(cached[0], 0, "the first chat finds nothing cached");
  assert.equal(cached[3], 0, "the first completion shares no full block with the chats");
  const prompts = on!.runs.reduce((a, r) => a + r.usage.prompt_tokens, 0);
  assert.deepEqual(on!.metrics.queries, prompts);
  assert.deepEqual(on!.metrics.hits, cached.reduce((a, b) => a + b, 0));
  assert.ok(on!.metrics.blocks >= 2, `cached blocks ${on!.metrics.blocks}`);

  assert.deepEqual(
    off!.runs.map((r) => r.usage.prompt_tokens_details),
    on!.runs.map(() => ({ cached_tokens: 0 })),
  );
  assert.deepEqual(off!.metrics, { queries: 0, hits: 0, blocks: 0 });
  // Greedy: caching never changes a request's tokens.
  assert.deepEqual(
    off!.runs.map((r) => [r.text, r.usage.prompt_tokens]),
    on!.runs.map((r) => [r.text, r.usage.prompt_tokens]),
  );
});
