// Issue 2's check: the published greedy text is reproduced exactly while its steps are shared with
// other prompts of different lengths that arrive at different times, and those prompts are not
// changed by the company either.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Outcome,
  outcomeOf,
  params,
  PUBLISHED_GREEDY,
  runAlone,
  startEngine,
  STORY_TEXT,
  type Submission,
  textOf,
  tracePlans,
} from "../helpers/engine.ts";
import type { StepStats } from "../../engine/llm_engine.ts";
import type { GenerateEvent } from "../../engine/protocol.ts";

Deno.test("published greedy text is exact inside a continuous batch of 16 staggered prompts", async () => {
  const h = await startEngine();
  try {
    const tk = h.model.tokenizer;
    const mainPrompt = tk.encode("Once upon a time", true);
    assertEquals(mainPrompt, [1, 403, 407, 261, 378]);
    const story = tk.encode(STORY_TEXT, false);

    // 16 other prompts: lengths 1..130 (BOS + a slice of the story), mixed sampling, and an arrival
    // step each. Four are queued before the main prompt; the rest arrive while it decodes.
    const lengths = [1, 3, 7, 12, 20, 28, 35, 44, 52, 60, 71, 80, 90, 100, 110, 130];
    const arrivals = [0, 0, 0, 0, 3, 5, 8, 12, 18, 26, 40, 60, 85, 110, 140, 170];
    const others: (Submission & { arriveAt: number })[] = lengths.map((len, i) => {
      const start = (i * 37) % (story.length - len);
      const kind = i % 4;
      return {
        id: `other${i}`,
        promptIds: [1, ...story.slice(start, start + len - 1)],
        params: params({
          maxTokens: 12 + (i * 7) % 37,
          ignoreEos: i % 2 === 0,
          // 0: greedy (GPU), 1: seeded temperature (GPU), 2: seeded top-k/top-p (CPU), 3: greedy.
          temperature: kind === 1 || kind === 2 ? 0.9 : 0,
          seed: kind === 1 || kind === 2 ? 100 + i : null,
          topK: kind === 2 ? 30 : 0,
          topP: kind === 2 ? 0.95 : 1,
        }),
        arriveAt: arrivals[i],
      };
    });
    assertEquals(new Set(others.map((o) => o.promptIds.length)).size, 16);

    const plans = tracePlans(h.engine);
    const steps: StepStats[] = [];
    const results = new Map<string, Promise<GenerateEvent[]>>();
    const MAIN_AT = 2;
    let mainEvents: Promise<GenerateEvent[]> | null = null;
    const submitDue = (step: number) => {
      for (const o of others) {
        if (o.arriveAt === step) results.set(o.id, h.generate(o.id, o.promptIds, o.params));
      }
      if (step === MAIN_AT) {
        mainEvents = h.generate("main", mainPrompt, params({ maxTokens: 200, ignoreEos: true }));
      }
    };
    h.engine.onStep = (s) => {
      steps.push(s);
      submitDue(s.step);
    };
    submitDue(0);

    // Wait for the main request to be submitted, then for everything.
    while (mainEvents === null) await new Promise((r) => setTimeout(r, 20));
    const mainEv = await (mainEvents as Promise<GenerateEvent[]>);
    while (results.size < others.length) await new Promise((r) => setTimeout(r, 20));
    const batched = new Map<string, Outcome>();
    for (const [id, p] of results) batched.set(id, outcomeOf(await p));

    // The main prompt: the published text, 200 tokens, finish "length".
    const text = "Once upon a time" + textOf(mainEv);
    const n = Math.min(text.length, PUBLISHED_GREEDY.length);
    assert(n > 400, `only ${n} characters compared`);
    assertEquals(text.slice(0, n), PUBLISHED_GREEDY.slice(0, n));
    const done = mainEv[mainEv.length - 1];
    assert(done.type === "done" && done.finishReason === "length" && done.completionTokens === 200);

    // The steps really were shared: several sequences, prefill chunks mixed with decodes.
    assert(
      steps.some((s) => s.seqs > 1 && s.prefillTokens > 0 && s.decodeTokens > 0),
      "no step mixed prefill with decode",
    );
    const mainSteps = plans.filter((p) => p.items.some((it) => it.id === "main"));
    const mainShared = mainSteps.filter((p) => p.items.length > 1);
    const mainDecodeWithPrefill = mainSteps.filter((p) =>
      p.items.some((it) => it.id === "main" && it.decode) && p.prefillTokens > 0
    );
    assert(mainShared.length >= 100, `main shared only ${mainShared.length} of ${mainSteps.length} steps`);
    assert(
      mainDecodeWithPrefill.length >= 10,
      `main decoded in only ${mainDecodeWithPrefill.length} steps that also carried prefill`,
    );
    assert(Math.max(...plans.map((p) => p.items.length)) >= 5, "never 5 sequences in one step");
    // Other prompts were admitted both before the main prompt and while it was decoding.
    const firstStepOf = (id: string) => plans.find((p) => p.items.some((it) => it.id === id))!.index;
    const mainFirst = firstStepOf("main");
    assert(others.filter((o) => firstStepOf(o.id) < mainFirst).length >= 4);
    assert(others.filter((o) => firstStepOf(o.id) > mainFirst + 10).length >= 8);

    // Nothing is left behind.
    const st = h.engine.stats();
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);

    // Every other prompt yields exactly what it yields alone.
    const alone = await runAlone(h, others);
    for (const o of others) {
      const b = batched.get(o.id)!, a = alone.get(o.id)!;
      assert(b.finishReason === "length" || b.finishReason === "stop", `${o.id}: ${b.finishReason}`);
      assertEquals(b, a, `${o.id} (${o.promptIds.length} prompt tokens) batched vs alone`);
    }
  } finally {
    await h.close();
  }
});
