// Deeply nested JSON gets a 400 in OpenAI's shape, before parsing or any recursive walk (it used to
// overflow the stack in the schemas and answer 500).
import assert from "node:assert/strict";
import { post, readError, withFake } from "../helpers/fake_engine.ts";
import { ApiError } from "../../http/errors.ts";
import { bytesNestDeeperThan, MAX_JSON_DEPTH, nestsDeeperThan } from "../../http/json_depth.ts";
import { ChatRequest, parseBody } from "../../http/schemas.ts";

const N = 100_000;
const deepArray = (n: number) => "[".repeat(n) + "]".repeat(n);
const deepObject = (n: number) => '{"a":'.repeat(n) + "1" + "}".repeat(n);

/** Raw bodies with a 100k-deep value in one field each. */
const BODIES: Array<[string, string]> = [
  ["/v1/chat/completions", deepArray(N)],
  ["/v1/chat/completions", deepObject(N)],
  ["/v1/chat/completions", `{"messages": ${deepArray(N)}}`],
  ["/v1/chat/completions", `{"messages": [{"role": "user", "content": ${deepArray(N)}}]}`],
  [
    "/v1/chat/completions",
    `{"messages": [{"role": "user", "content": [{"type": "text", "text": ${deepObject(N)}}]}]}`,
  ],
  ["/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "stop": ${deepArray(N)}}`],
  [
    "/v1/chat/completions",
    `{"messages": [{"role": "user", "content": "x"}], "logit_bias": ${deepObject(N)}}`,
  ],
  ["/v1/chat/completions", `{"messages": [{"role": "user", "content": "x"}], "metadata": ${deepObject(N)}}`],
  ["/v1/completions", `{"prompt": ${deepArray(N)}}`],
  ["/v1/completions", `{"prompt": "x", "stream_options": ${deepObject(N)}}`],
  ["/v1/completions", `{"prompt": "x", "stop_token_ids": ${deepArray(N)}}`],
  ["/tokenize", `{"prompt": ${deepArray(N)}}`],
  ["/tokenize", `{"messages": [{"role": "user", "content": ${deepObject(N)}}]}`],
  ["/detokenize", `{"tokens": ${deepArray(N)}}`],
  // Unbalanced and mixed: still refused on depth, not a crash.
  ["/v1/completions", "[{".repeat(N)],
];

Deno.test("deep JSON: 100k-deep arrays and objects in any field get 400 invalid_body, at once", async () => {
  await withFake({ args: ["--max-body-kb", "2048"] }, async (s) => {
    for (const [path, body] of BODIES) {
      const t0 = performance.now();
      const { status, error } = await readError(await post(`${s.origin}${path}`, body));
      const ms = performance.now() - t0;
      const what = `${path} ${body.slice(0, 60)}`;
      assert.equal(status, 400, what);
      assert.equal(error.type, "invalid_request_error", what);
      assert.equal(error.code, "invalid_body", what);
      assert.equal(error.param, null, what);
      assert.match(String(error.message), /deeper than 32 levels/);
      assert.ok(ms < 1000, `${what}: ${ms.toFixed(0)} ms`);
    }
    assert.equal((await fetch(`${s.origin}/health`)).status, 200);
    assert.ok(
      s.logs.filter((l) => l.path !== "/health").every((l) => l.status === 400 && l.error === undefined),
      "no internal error was logged",
    );
  });
});

Deno.test("deep JSON: brackets inside strings do not count, and ordinary bodies pass", async () => {
  await withFake({}, async (s) => {
    const text = "[{".repeat(100) + '\\"[' + "]".repeat(50);
    const res = await post(
      `${s.baseURL}/chat/completions`,
      `{"messages": [{"role": "user", "content": [{"type": "text", "text": "${text}"}]}], "max_tokens": 2}`,
    );
    assert.equal(res.status, 200, await res.clone().text());
    await res.body?.cancel();
  });
});

Deno.test("deep JSON: the byte scan and the value walk agree on the limit", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  assert.equal(bytesNestDeeperThan(enc(deepArray(MAX_JSON_DEPTH))), false);
  assert.equal(bytesNestDeeperThan(enc(deepArray(MAX_JSON_DEPTH + 1))), true);
  assert.equal(bytesNestDeeperThan(enc(`"${"[".repeat(100)}"`)), false);
  assert.equal(nestsDeeperThan(JSON.parse(deepArray(MAX_JSON_DEPTH))), false);
  assert.equal(nestsDeeperThan(JSON.parse(deepObject(MAX_JSON_DEPTH + 1))), true);
  // parseBody on a value that bypassed the byte scan: a 400, not a RangeError.
  let err: unknown;
  try {
    parseBody(ChatRequest, { messages: JSON.parse(deepArray(N)) });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ApiError && err.status === 400, String(err));
});
