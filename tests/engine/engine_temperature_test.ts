// A positive temperature too small to divide by (1 / 3e-38 overflows the GPU's f32 logits) samples
// greedily on both sampling paths, like temperature 0.

import { needsCpuLogits } from "../../engine/sampler.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { idsOf, params, startEngine } from "../helpers/engine.ts";
import type { SamplingParams } from "../../engine/protocol.ts";

Deno.test("temperature 3e-38 gives the greedy tokens, GPU-sampled and CPU-sampled", async () => {
  const h = await startEngine();
  try {
    const once = h.model.tokenizer.encode("Once upon a time", true);
    const run = async (id: string, over: Partial<SamplingParams>) => {
      const events = await h.generate(id, once, params({ maxTokens: 32, ignoreEos: true, ...over }));
      const last = events[events.length - 1];
      assert(last.type === "done", `${id}: ${JSON.stringify(last)}`);
      return idsOf(events);
    };
    const greedy = await run("greedy", {});
    assertEquals(greedy.length, 32);
    for (
      const [name, over] of [
        ["gpu", { temperature: 3e-38 }],
        ["gpu-seeded", { temperature: 3e-38, seed: 7 }],
        ["gpu-1e-6", { temperature: 1e-6 }],
        ["cpu-top_k", { temperature: 3e-38, topK: 40 }],
        ["cpu-top_p", { temperature: 5e-324, topP: 0.9, seed: 7 }],
        ["gpu-penalty", { temperature: 3e-38, topK: 40, presencePenalty: 1e-9 }],
        ["cpu-logprobs", { temperature: 3e-38, topK: 40, logprobs: 1 }],
      ] as const
    ) {
      // The logprobs request is the one that really takes the CPU path (greedy ignores filters).
      if (name === "cpu-logprobs") assert(needsCpuLogits(params(over)));
      assertEquals(await run(name, over), greedy, name);
    }
    // Batched together, the tiny temperatures still match greedy.
    const batch = await Promise.all([
      run("b-gpu", { temperature: 3e-38, seed: 1 }),
      run("b-cpu", { temperature: 3e-38, topK: 40, logprobs: 1 }),
      run("b-penalty", { temperature: 3e-38, presencePenalty: 1e-9 }),
      run("b-greedy", {}),
    ]);
    for (const ids of batch) assertEquals(ids, greedy);
  } finally {
    await h.close();
  }
});
