// Long-query mode: PagedAttention's kernel for queries of 32 tokens and more, for every step
// (--long-queries on) or for prompt chunks only (prompts: decodes and a preempted sequence's
// recomputed outputs stay on the short kernel, a step holding both runs as two parts). A prompt chunk
// goes as one attention item, and the guarantees hold as in the default mode: the published greedy
// text, and a request's tokens independent of its batch, preempted or cached or not.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Harness,
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
  tracePlans,
} from "../helpers/engine.ts";
import type { StepInputs } from "../../engine/step_inputs.ts";
import { layerWeights, resolveAnswerCache } from "../../engine/llm_engine.ts";
import { randomModel } from "../helpers/random_model.ts";
import { type LongQueries, resolveLongQueries } from "../../engine/protocol.ts";

const MODES: LongQueries[] = ["on", "prompts"];

/**
 * Mode prompts: checks that each step's long-kernel part holds exactly its plan's prompt spans (so a
 * preempted sequence's recomputed outputs stay on the short kernel, like the decodes that made them).
 * Returns how many spans recomputed outputs.
 */
function checkKernels(
  h: Awaited<ReturnType<typeof startEngine>>,
  promptLen: Map<string, number>,
): () => number {
  const plans = tracePlans(h.engine);
  const longTokens: number[] = [];
  const run = h.runner.run.bind(h.runner);
  h.runner.run = (s: StepInputs) => {
    const T = s.inputIds.length;
    longTokens.push(s.longFrom === undefined ? 0 : T - s.cuSeqlens[s.longFrom]);
    return run(s);
  };
  return () => {
    assertEquals(longTokens.length, plans.length);
    let recomputed = 0;
    plans.forEach((plan, i) => {
      let prompt = 0;
      for (const it of plan.items) {
        const P = promptLen.get(it.id)!;
        if (it.start < P) {
          assert(it.start + it.numTokens <= P, `step ${i + 1}: ${it.id} crosses its prompt's end`);
          prompt += it.numTokens;
        } else if (it.numTokens > 1) recomputed++;
      }
      assertEquals(longTokens[i], prompt, `step ${i + 1}: tokens on the long kernel`);
    });
    return recomputed;
  };
}

/** Items of each step the runner was given (before padding), as [past, query length] pairs. */
function recordItems(h: Harness): [number, number][][] {
  const steps: [number, number][][] = [];
  const run = h.runner.run.bind(h.runner);
  h.runner.run = (s: StepInputs) => {
    steps.push([...s.pastSeqlens].map((p, b) => [p, s.cuSeqlens[b + 1] - s.cuSeqlens[b]]));
    return run(s);
  };
  return steps;
}

for (const mode of MODES) {
  Deno.test(`long-query mode ${mode}: the published greedy text, and a 100-token prompt as one attention item`, async () => {
    const h = await startEngine({ longQueries: mode });
    try {
      assert(h.runner.longQueries === mode && h.runner.itemTokens(true) === Infinity);
      assertEquals(h.runner.itemTokens(false), mode === "on" ? Infinity : 31);
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
}

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

for (const mode of MODES) {
  Deno.test(`long-query mode ${mode}: batched, staggered and preempted requests equal their outputs alone`, async () => {
    const reqs = await requests();
    const solo = await startEngine({ longQueries: mode });
    let alone: Map<string, Outcome>;
    try {
      alone = await runAlone(solo, reqs);
    } finally {
      await solo.close();
    }
    // A pool of 16 blocks: the longest request fits alone, all of them together do not. Then the GPU's
    // rules on this adapter: mixed steps split at any decode (mode on), three steps in flight.
    const runs = [
      { kvCacheMb: 8, gpu: false },
      { kvCacheMb: (17 * 2048 * 10) / 2 ** 20, gpu: false },
      { kvCacheMb: 8, gpu: true },
    ];
    for (const { kvCacheMb, gpu } of runs) {
      const h = await startEngine({ longQueries: mode, kvCacheMb });
      if (gpu) h.runner.softwareAdapter = false;
      try {
        const steps = recordItems(h);
        const kernels = mode === "prompts"
          ? checkKernels(h, new Map(reqs.map((r) => [r.id, r.promptIds.length])))
          : null;
        // Mode on: a step with a CPU-sampled row is never split (its logits come back whole), so
        // leave those out there. Mode prompts splits such steps too: their logits come in two parts.
        const batch = gpu && mode === "on" ? reqs.filter((r) => r.params.topP === 1) : reqs;
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
        const recomputed = kernels?.();
        if (kernels && kvCacheMb < 1) assert(recomputed! > 0, "no preempted sequence recomputed its outputs");
        if (gpu || mode === "prompts") {
          assert((h.engine.stats().stepsByPath?.split ?? 0) > 0, "no mixed step was split");
        }
      } finally {
        await h.close();
      }
    }
  });
}

/** A chat's first prompt (71 tokens: 4 full blocks) and the greedy 40-token answer all turns ask for. */
async function firstTurn(): Promise<{ story: number[]; first: number[]; greedy: ReturnType<typeof params> }> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  return { story, first: [1, ...story.slice(0, 70)], greedy: params({ maxTokens: 40, ignoreEos: true }) };
}

/** Runs a turn on h: the prompt tokens it found cached, and its outcome. */
async function turn(h: Harness, id: string, ids: number[], p: ReturnType<typeof params>) {
  const ev = await h.generate(id, ids, p);
  const done = ev[ev.length - 1];
  assert(done.type === "done");
  return { cached: done.cachedPromptTokens ?? -1, outcome: outcomeOf(ev) };
}

/** Waits (up to 5 s) for the engine to hold at least `blocks` cached blocks. */
async function untilCached(h: Harness, blocks: number): Promise<void> {
  for (let i = 0; i < 500 && (h.engine.stats().kvBlocksCached ?? 0) < blocks; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The outcome of an engine that caches nothing, which a cached turn's must equal. */
async function uncached(ids: number[], p: ReturnType<typeof params>): Promise<Outcome> {
  const fresh = await startEngine({ longQueries: "prompts", prefixCaching: false });
  try {
    return outcomeOf(await fresh.generate("b", ids, p));
  } finally {
    await fresh.close();
  }
}

Deno.test("long-query mode prompts: a prompt holding an earlier answer reuses only the earlier prompt's blocks", async () => {
  // An answer's KV came from the short kernel, the same tokens in a later prompt's from the long one:
  // the cache must not hand the first to the second ("caching never changes a request's tokens").
  const { story, first, greedy } = await firstTurn();
  const h = await startEngine({ longQueries: "prompts" });
  let second: Awaited<ReturnType<typeof turn>>, next: number[];
  try {
    const answer = (await h.generate("a", first, greedy)).flatMap((
      e,
    ) => (e.type === "delta" ? e.tokenIds : []));
    assertEquals(answer.length, 40);
    next = [...first, ...answer, ...story.slice(200, 240)];
    second = await turn(h, "b", next, greedy);
  } finally {
    await h.close();
  }
  // The first prompt's full blocks (64 of its 71 tokens), not the answer's.
  assertEquals(second.cached, 64);
  assertEquals(await uncached(next, greedy), second.outcome);
});

Deno.test("long-query mode prompts: an answer cached as a prompt's (--answer-cache on) serves the next turn, same tokens", async () => {
  // The answer's full blocks are computed again on the prompt kernel (once the engine idles), so the
  // next turn reuses them, and its tokens equal those of a run that caches nothing.
  const { story, first, greedy } = await firstTurn();
  const h = await startEngine({ longQueries: "prompts", answerCache: "on" });
  let second: Awaited<ReturnType<typeof turn>>, next: number[];
  try {
    const answer = (await h.generate("a", first, greedy)).flatMap((
      e,
    ) => (e.type === "delta" ? e.tokenIds : []));
    next = [...first, ...answer, ...story.slice(200, 240)];
    // Once the engine has been idle ANSWER_IDLE_MS (its user reads the answer), a step computes the
    // answer's blocks as a prompt's and caches them: then they are cached twice over from the one
    // holding the prompt's end on (the request's own, keyed as an answer's, and the copy's).
    const full = Math.floor((first.length + answer.length) / 16), prompt = Math.floor(first.length / 16);
    await untilCached(h, 2 * full - prompt);
    second = await turn(h, "b", next, greedy);
  } finally {
    await h.close();
  }
  // The first prompt's 4 full blocks and the answer's 2 (71 + 40 tokens: 6 full blocks).
  assertEquals(second.cached, 96);
  assertEquals(await uncached(next, greedy), second.outcome);
});

Deno.test("long-query mode prompts: a predicted next prompt (--answer-cache on; auto on a large model) is cached as a prompt's and serves the next turn, same tokens", async () => {
  // A chat's answer text may come back split into other tokens than those sampled: the HTTP side
  // predicts the next prompt's tokens (here: the prompt, then story tokens standing for the answer's
  // text split otherwise), and the engine caches those, once it idles.
  const { story, first, greedy } = await firstTurn();
  const predicted = [...first, ...story.slice(100, 141)];
  const next = [...predicted, ...story.slice(200, 240)];
  const h = await startEngine({ longQueries: "prompts", answerCache: "on" });
  let second: Awaited<ReturnType<typeof turn>>;
  try {
    const { promise, resolve } = Promise.withResolvers<void>();
    h.engine.add(
      { id: "a", promptIds: first, params: greedy, continues: true, predictsAnswer: true },
      (ev) => {
        if (ev.type !== "delta") resolve();
      },
    );
    await promise;
    const before = h.engine.stats().kvBlocksCached ?? 0;
    h.engine.predictAnswer("a", predicted, true);
    // 112 predicted tokens: 7 full blocks, the first 4 the prompt's (cached); the copy adds 3.
    await untilCached(h, before + 3);
    second = await turn(h, "b", next, greedy);
  } finally {
    await h.close();
  }
  assertEquals(second.cached, 112);
  assertEquals(await uncached(next, greedy), second.outcome);
});

Deno.test("--answer-cache as it acts: auto caches answers on models of 1B shape, not on small ones or where answers are prompts' KV", () => {
  const base = randomModel().config;
  // Published shapes (make-model presets): Llama-3.2-1B, SmolLM2-135M.
  const llama1b = {
    ...base,
    hiddenSize: 2048,
    intermediateSize: 8192,
    numLayers: 16,
    numHeads: 32,
    numKvHeads: 8,
  };
  const smol = {
    ...base,
    hiddenSize: 576,
    intermediateSize: 1536,
    numLayers: 30,
    numHeads: 9,
    numKvHeads: 3,
  };
  for (const m of [llama1b, smol]) m.headDim = 64;
  assertEquals(Math.round(layerWeights(llama1b) / 1e6), 973);
  assertEquals(Math.round(layerWeights(smol) / 1e6), 106);
  assertEquals(resolveAnswerCache("auto", "prompts", true, llama1b), "auto");
  assertEquals(resolveAnswerCache("auto", "prompts", true, smol), "off");
  assertEquals(resolveAnswerCache("on", "prompts", true, smol), "on");
  // Answers' KV is already a prompt's, or nothing is cached: nothing to do.
  for (const [mode, caching] of [["off", true], ["on", true], ["prompts", false]] as const) {
    assertEquals(resolveAnswerCache("on", mode, caching, llama1b), "off");
  }
});

Deno.test("long-query mode prompts: prompt parts replayed from captured sessions give the tokens of uncaptured ones", async () => {
  // Small prompt parts (a short prompt, a chat turn after its cached prefix) replay a captured prompt
  // session, cut into items of its query bound and padded; larger ones run uncaptured (on a GPU a short
  // backlog is cut to fit instead: Scheduler's capturedPrefillTokens). Every request
  // must get the same tokens with capture on and off: alone, then all at once, then each followed by a
  // turn that resends it with its answer (cached prefix, a few new tokens).
  const reqs = await requests();
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const long: Submission = {
    id: "long",
    // 505 tokens: 8 items of at most 64, short of the 512-row shape's padding (a token per spare item).
    promptIds: [1, ...story, ...story].slice(0, 505),
    params: params({ maxTokens: 4, ignoreEos: true }),
  };
  const runs = [];
  for (const graphCapture of [true, false]) {
    const h = await startEngine({ longQueries: "prompts", graphCapture });
    const paths: { path: string; prefill: number; decode: number }[] = [];
    h.engine.onStep = (st) =>
      paths.push({ path: st.path, prefill: st.prefillTokens, decode: st.decodeTokens });
    try {
      const out = await runAlone(h, [...reqs, long]);
      const all = await Promise.all([...reqs, long].map(async (r) => {
        return [r.id + "-all", outcomeOf(await h.generate(r.id + "-all", r.promptIds, r.params))] as const;
      }));
      for (const [id, o] of all) out.set(id, o);
      for (const r of reqs) {
        const turn = [
          ...r.promptIds,
          ...out.get(r.id)!.ids,
          ...story.slice(300, 307 + r.id.length),
        ];
        out.set(r.id + "-turn", outcomeOf(await h.generate(r.id + "-turn", turn, r.params)));
      }
      runs.push({ out, paths, shapes: h.runner.capturedShapes, cap: h.runner.capturedPromptTokens });
    } finally {
      await h.close();
    }
  }
  const [on, off] = runs;
  assertEquals([...on.out.keys()].sort(), [...off.out.keys()].sort());
  for (const [id, o] of off.out) assertEquals(on.out.get(id), o, id);
  assert(on.shapes.some((c) => c.kind === "prompt"), "no prompt session was captured");
  const replayed = on.paths.filter((p) => p.path === "captured" && p.prefill > 0);
  assert(replayed.length > reqs.length, `only ${replayed.length} prompt steps replayed`);
  if (on.cap > 0) {
    // A GPU: the long prompt alone is a short prefill backlog, so it goes in replayed steps of at most
    // the captured prompt tokens (Scheduler's capturedPrefillTokens).
    assert(
      on.paths.some((p) => p.path === "captured" && p.prefill === on.cap),
      "no replayed step at the cap",
    );
  } else {
    assert(
      on.paths.some((p) => p.path === "uncaptured" && p.prefill === 505),
      "the long prompt was replayed",
    );
  }
  assert(off.paths.every((p) => p.path !== "captured"));
});

Deno.test("long-query mode auto: prompts on a GPU, off on a software adapter (this one)", async () => {
  assertEquals(resolveLongQueries("auto", false), "prompts");
  assertEquals(resolveLongQueries("auto", true), "off");
  for (const m of MODES) assertEquals(resolveLongQueries(m, true), m);
  const h = await startEngine({ longQueries: "auto" });
  try {
    assertEquals(h.runner.longQueries, h.runner.softwareAdapter ? "off" : "prompts");
  } finally {
    await h.close();
  }
});
