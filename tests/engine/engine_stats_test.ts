// The engine's stats are running totals: reading them takes nothing away from the next reader.
import assert from "node:assert/strict";
import { params, startEngine, stories } from "../helpers/engine.ts";

Deno.test("engine stats: the step-token histogram counts every step and survives any number of reads", async () => {
  const tk = (await stories()).tokenizer;
  const h = await startEngine();
  try {
    await h.generate("a", tk.encode("Once upon a time", true), params({ maxTokens: 5, ignoreEos: true }));
    const first = h.engine.stats();
    await h.generate("b", tk.encode("Lily", true), params({ maxTokens: 3, ignoreEos: true }));
    const second = h.engine.stats();
    const third = h.engine.stats();
    assert.deepEqual(third, second, "reading stats changes nothing");
    for (const st of [first, second]) {
      assert.equal(st.stepTokens.count, st.stepsTotal);
      assert.equal(st.stepTokens.counts.reduce((a, b) => a + b, 0), st.stepsTotal);
      // Every prompt token is prefilled in some step, and decodes add more.
      assert.ok(st.stepTokens.sum > st.promptTokensTotal);
    }
    assert.ok(second.stepTokens.count > first.stepTokens.count);
    // The first request's steps are still counted after the second ran and stats were read again.
    first.stepTokens.counts.forEach((n, i) => assert.ok(second.stepTokens.counts[i] >= n));
  } finally {
    await h.close();
  }
});
