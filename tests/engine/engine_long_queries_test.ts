// Long-query mode (--long-queries on): every step on PagedAttention's kernel for queries of 32 tokens
// and more. A prompt chunk goes as one attention item, and the guarantees hold as in the default mode:
// the published greedy text, and a request's tokens independent of its batch, preempted or not.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Outcome,
  outcomeOf,
  params,
  PUBLISHED_GREEDY,
  runAlone,
  startEngine,
  stories,
  STORY_TEXT,
  type Submission,
  textOf,
} from "../helpers/engine.ts";
import type { StepInputs } from "../../engine/step_inputs.ts";

/** Items of each step the runner was given (before padding), as [past, query length] pairs. */
function recordItems(h: Awaited<ReturnType<typeof startEngine>>): [number, number][][] {
  const steps: [number, number][][] = [];
  const run = h.runner.run.bind(h.runner);
  h.runner.run = (s: StepInputs) => {
    steps.push([...s.pastSeqlens].map((p, b) => [p, s.cuSeqlens[b + 1] - s.cuSeqlens[b]]));
    return run(s);
  };
  return steps;
}

Deno.test("long-query mode: the published greedy text, and a 100-token prompt as one attention item", async () => {
  const h = await startEngine({ longQueries: true });
  try {
    assert(h.runner.longQueries && h.runner.itemTokens === Infinity);
    const steps = recordItems(h);
    const model = await stories();
    const ev = await h.generate(
      "a",
      model.tokenizer.encode("Once upon a time", true),
      params({ maxTokens: 200 }),
    );
    const text = "Once upon a time" + textOf(ev);
    const n = Math.min(text.length, PUBLISHED_GREEDY.length);
    assert(n > 400, `only ${n} characters compared`);
    assertEquals(text.slice(0, n), PUBLISHED_GREEDY.slice(0, n));
    const long = [1, ...model.tokenizer.encode(STORY_TEXT, false).slice(0, 99)];
    const before = steps.length;
    await h.generate("b", long, params({ maxTokens: 3 }));
    assertEquals(steps[before], [[0, 100]]);
  } finally {
    await h.close();
  }
});

async function requests(): Promise<Submission[]> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  return Array.from({ length: 12 }, (_, i) => {
    const len = 1 + i * 11; // 1..122 tokens: short chunks padded, long ones as one item
    const promptIds = [1, ...story.slice(i * 17, i * 17 + len - 1)];
    const p = i % 3 === 0 ? params({ maxTokens: 12 + i, ignoreEos: true }) : params({
      maxTokens: 12 + i,
      ignoreEos: true,
      temperature: 0.8,
      seed: 40 + i,
      topP: i % 3 === 2 ? 0.9 : 1,
    });
    return { id: `r${i}`, promptIds, params: p };
  });
}

Deno.test("long-query mode: batched, staggered and preempted requests equal their outputs alone", async () => {
  const reqs = await requests();
  const solo = await startEngine({ longQueries: true });
  let alone: Map<string, Outcome>;
  try {
    alone = await runAlone(solo, reqs);
  } finally {
    await solo.close();
  }
  // A pool of 16 blocks: the longest request fits alone, all of them together do not. Then the GPU's
  // rules on this adapter: mixed steps split at any decode, three steps in flight.
  const runs = [
    { kvCacheMb: 8, gpu: false },
    { kvCacheMb: (17 * 2048 * 10) / 2 ** 20, gpu: false },
    { kvCacheMb: 8, gpu: true },
  ];
  for (const { kvCacheMb, gpu } of runs) {
    const h = await startEngine({ longQueries: true, kvCacheMb });
    if (gpu) h.runner.softwareAdapter = false;
    try {
      const steps = recordItems(h);
      // A step with a CPU-sampled row is never split (its logits come back whole): leave those out there.
      const batch = gpu ? reqs.filter((r) => r.params.topP === 1) : reqs;
      const pending = batch.map(async (r, i) => {
        await new Promise((res) => setTimeout(res, 15 * i));
        return [r.id, outcomeOf(await h.generate(r.id, r.promptIds, r.params))] as const;
      });
      const batched = new Map(await Promise.all(pending));
      for (const r of batch) {
        assertEquals(batched.get(r.id), alone.get(r.id), `${r.id} (pool ${kvCacheMb} MiB)`);
      }
      assert(
        steps.some((s) => s.length > 1 && s.some(([, q]) => q > 31)),
        "no step mixed a long item with others",
      );
      if (kvCacheMb < 1) assert(h.engine.stats().preemptionsTotal > 0, "the small pool preempted nothing");
      if (gpu) assert((h.engine.stats().stepsByPath?.split ?? 0) > 0, "no mixed step was split");
    } finally {
      await h.close();
    }
  }
});
