// Over-long prompts are refused from their character count, before tokenizing (which blocked the HTTP
// thread for seconds on 1 MiB prompts), and the bound never refuses a prompt that fits.
import assert from "node:assert/strict";
import { loadModel } from "../../engine/model/load.ts";
import { maxCharsPerToken } from "../../http/prepare.ts";
import { ByteTokenizer, post, readError, withFake } from "../helpers/fake_engine.ts";
import { STORIES260K } from "../helpers/fixtures.ts";

Deno.test("prompt length: texts past context x longest token are refused without tokenizing", async () => {
  await withFake({ engine: { maxContext: 512 } }, async (s, engine) => {
    // The byte tokenizer's longest token is "</s>": 4 characters, times 4 for normalizers.
    const bound = 512 * maxCharsPerToken(engine.tokenizer);
    assert.equal(bound, 512 * 16);
    let encoded = 0;
    const encode = engine.tokenizer.encode.bind(engine.tokenizer);
    engine.tokenizer.encode = (text, special) => {
      encoded++;
      return encode(text, special);
    };
    const big = "x".repeat(1000 * 1000);
    for (
      const [path, body] of [
        ["/v1/completions", { prompt: big }],
        ["/v1/chat/completions", { messages: [{ role: "user", content: big }] }],
        ["/tokenize", { prompt: big }],
        ["/tokenize", { messages: [{ role: "user", content: big }] }],
      ] as const
    ) {
      const { status, error } = await readError(await post(`${s.origin}${path}`, body));
      assert.equal(status, 400, path);
      assert.equal(error.code, "context_length_exceeded", path);
      assert.equal(error.param, "prompt" in body ? "prompt" : "messages", path);
      assert.match(String(error.message), /characters, more than 512 tokens can hold/);
    }
    assert.equal(encoded, 0, "nothing was tokenized");
    // Just under the bound it is tokenized and refused on its token count, as before.
    const res = await readError(await post(`${s.baseURL}/completions`, { prompt: "x".repeat(bound) }));
    assert.equal(res.error.code, "context_length_exceeded");
    assert.match(String(res.error.message), /your prompt has 8193 tokens/);
    assert.equal(encoded, 1);
  });
});

/** Random text: ASCII words, multi-byte and astral characters, specials, long runs. */
function randomText(rand: () => number, length: number): string {
  const pieces = [" the", "a", "é", "日本", "😀", "<s>", "</s>", "\n", "  ", "ﬁ", "\u0301", "=====", "x"];
  let out = "";
  while (out.length < length) out += pieces[Math.floor(rand() * pieces.length)];
  return out;
}

function seeded(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
}

Deno.test("prompt length: no text has more characters than its tokens x the bound (stories260K, bytes)", async () => {
  const stories = (await loadModel(STORIES260K, { skipWeights: true })).tokenizer;
  const rand = seeded(17);
  for (const tok of [stories, new ByteTokenizer()]) {
    const per = maxCharsPerToken(tok);
    for (let i = 0; i < 300; i++) {
      const text = randomText(rand, 1 + Math.floor(rand() * 400));
      const n = tok.encode(text, false).length;
      assert.ok(text.length <= n * per, `${JSON.stringify(text)}: ${text.length} chars, ${n} tokens`);
    }
    // The densest text: the longest token repeated.
    let longest = 0;
    for (let id = 0; id < tok.vocabSize; id++) longest = Math.max(longest, tok.tokenText(id).length);
    assert.ok(longest * 4 <= per);
  }
});
