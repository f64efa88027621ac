// stories260K through the whole engine: the published greedy text, alone and inside busy batches.

import { assert, assertEquals } from "../helpers/assert.ts";
import { params, PUBLISHED_GREEDY, startEngine, stories, textOf } from "../helpers/engine.ts";

Deno.test("stories260K greedy reproduces the published llama2.c continuation (200 tokens)", async () => {
  const h = await startEngine();
  try {
    const model = await stories();
    const prompt = model.tokenizer.encode("Once upon a time", true);
    assertEquals(prompt, [1, 403, 407, 261, 378]);
    const ev = await h.generate("a", prompt, params({ maxTokens: 200, ignoreEos: true }));
    const text = "Once upon a time" + textOf(ev);
    const n = Math.min(text.length, PUBLISHED_GREEDY.length);
    assertEquals(text.slice(0, n), PUBLISHED_GREEDY.slice(0, n));
    assert(n > 400, `only ${n} characters compared`);
    const done = ev[ev.length - 1];
    assert(done.type === "done" && done.finishReason === "length" && done.completionTokens === 200);
  } finally {
    await h.close();
  }
});
