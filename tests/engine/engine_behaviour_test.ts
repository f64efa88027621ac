// Engine behaviour over stories260K: KV eviction, chunked prefill, aborts, stop conditions, context
// limits, logprobs, penalties and seeds.

import { BATCH_INVARIANT_ITEM_TOKENS } from "../../engine/protocol.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  idsOf,
  type Outcome,
  outcomeOf,
  params,
  runAlone,
  startEngine,
  stories,
  STORY_TEXT,
  type Submission,
  textOf,
  tracePlans,
} from "../helpers/engine.ts";
import type { GenerateEvent, SamplingParams } from "../../engine/protocol.ts";
import type { LLMEngine, StepStats } from "../../engine/llm_engine.ts";
import type { StepInputs } from "../../engine/step_inputs.ts";

type DoneEvent = Extract<GenerateEvent, { type: "done" }>;

function doneOf(events: GenerateEvent[]): DoneEvent {
  const last = events[events.length - 1];
  assert(last?.type === "done", `expected a done event, got ${JSON.stringify(last)}`);
  assertEquals(events.filter((e) => e.type !== "delta").length, 1, "terminal events");
  return last;
}

/** Blocks held by every sequence the scheduler knows (a cached prefix once): what the pool reports as used. */
function blocksHeld(engine: LLMEngine): number {
  const s = engine.scheduler;
  return new Set([...s.running, ...s.waiting].flatMap((seq) => seq.blockTable)).size;
}

function submitRaw(
  engine: LLMEngine,
  id: string,
  promptIds: number[],
  p: SamplingParams,
  onEvent: (ev: GenerateEvent) => void = () => {},
): { events: GenerateEvent[]; done: Promise<GenerateEvent[]> } {
  const events: GenerateEvent[] = [];
  let resolve!: (e: GenerateEvent[]) => void;
  const done = new Promise<GenerateEvent[]>((r) => (resolve = r));
  engine.add({ id, promptIds, params: p }, (ev) => {
    events.push(ev);
    onEvent(ev);
    if (ev.type !== "delta") resolve(events);
  });
  return { events, done };
}

const repeats = (ids: number[]) => ids.length - new Set(ids).size;

Deno.test("KV blocks of a finished request are free before the next step forms; idle holds none", async () => {
  const h = await startEngine();
  try {
    const tk = h.model.tokenizer;
    const story = tk.encode(STORY_TEXT, false);
    const plans = tracePlans(h.engine);
    const leaks: string[] = [];
    h.engine.onStep = (s) => {
      // The pool's count always matches what live sequences hold: nothing leaks.
      const held = blocksHeld(h.engine);
      if (s.blocksUsed !== held) leaks.push(`step ${s.step}: ${s.blocksUsed} used, ${held} held`);
    };
    // A: 40-token prompt (3 blocks), ends after 3 tokens. B: 5-token prompt, runs on.
    let atADone: { plansFormed: number; used: number; heldByB: number } | null = null;
    let aBlocksWhileRunning = 0;
    const a = submitRaw(
      h.engine,
      "A",
      [1, ...story.slice(0, 39)],
      params({ maxTokens: 3, ignoreEos: true }),
      (ev) => {
        if (ev.type === "delta") aBlocksWhileRunning = h.engine.scheduler.get("A")?.blockTable.length ?? 0;
        if (ev.type !== "done") return;
        atADone = {
          plansFormed: plans.length,
          used: h.engine.scheduler.stats().blocksUsed,
          heldByB: h.engine.scheduler.get("B")!.blockTable.length,
        };
      },
    );
    const b = submitRaw(h.engine, "B", [1, 403, 407, 261, 378], params({ maxTokens: 30, ignoreEos: true }));
    await a.done;
    await b.done;

    assertEquals(leaks, []);
    assertEquals(doneOf(a.events).finishReason, "length");
    assertEquals(doneOf(a.events).completionTokens, 3);
    assertEquals(aBlocksWhileRunning, 3);
    assert(atADone !== null);
    const at = atADone as { plansFormed: number; used: number; heldByB: number };
    // Right when A is done, only B's blocks are in use ...
    assertEquals(at.used, at.heldByB);
    assert(at.heldByB >= 1);
    // ... and the next step is formed from that pool, without A.
    const next = plans[at.plansFormed];
    assert(next !== undefined, "no step formed after A finished");
    assertEquals(next.blocksBefore, at.heldByB);
    assert(next.items.every((it) => it.id !== "A"));
    // Before A finished, the steps held A's 3 blocks on top of B's.
    assert(plans.slice(0, at.plansFormed).some((p) => p.blocksBefore >= 4));

    // Idle: nothing running or waiting, no block in use, and the counters add up.
    const st = h.engine.stats();
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);
    assertEquals(st.promptTokensTotal, 45);
    assertEquals(st.generationTokensTotal, 33);
    assertEquals(h.engine.lastStep!.blocksUsed, 0);
  } finally {
    await h.close();
  }
});

Deno.test("chunked prefill: a 300-token prompt spans many 16-token steps while another request decodes", async () => {
  const tk = (await stories()).tokenizer;
  const story = tk.encode(STORY_TEXT, false);
  const longPrompt = [1, ...story.slice(0, 299)];
  const shortPrompt = tk.encode("Once upon a time", true);
  const reqs: Submission[] = [
    { id: "R", promptIds: shortPrompt, params: params({ maxTokens: 40, ignoreEos: true }) },
    { id: "L", promptIds: longPrompt, params: params({ maxTokens: 8, ignoreEos: true }) },
  ];

  // Reference: each alone with a large budget, which prefills the long prompt in one step.
  const big = await startEngine({ maxBatchTokens: 512 });
  let alone: Map<string, Outcome>;
  try {
    const plans = tracePlans(big.engine);
    alone = await runAlone(big, reqs);
    const lFirst = plans.find((p) => p.items.some((it) => it.id === "L-alone"))!;
    assertEquals(lFirst.items.map((it) => [it.start, it.numTokens]), [[0, 300]], "L prefilled in one step");
  } finally {
    await big.close();
  }

  // Decode pauses off: with them (the default) R would wait while L's backlog exceeds a step.
  const h = await startEngine({ maxBatchTokens: 16, decodePauseSteps: 0 });
  try {
    const plans = tracePlans(h.engine);
    const steps: StepStats[] = [];
    const r = submitRaw(h.engine, "R", reqs[0].promptIds, reqs[0].params);
    let l: { events: GenerateEvent[]; done: Promise<GenerateEvent[]> } | null = null;
    h.engine.onStep = (s) => {
      steps.push(s);
      // L arrives once R is decoding.
      if (!l && h.engine.scheduler.get("R")!.outputIds.length >= 3) {
        l = submitRaw(h.engine, "L", reqs[1].promptIds, reqs[1].params);
      }
    };
    await r.done;
    assert(l !== null);
    const lEvents = await (l as { done: Promise<GenerateEvent[]> }).done;

    // L's prompt went through in contiguous chunks of at most 16 tokens (the budget), over many steps.
    const chunks = plans.flatMap((p) =>
      p.items.filter((it) => it.id === "L" && it.start < 300).map((it) => ({ plan: p, it }))
    );
    assert(chunks.length >= 19, `only ${chunks.length} prefill steps for a 300-token prompt`);
    let pos = 0;
    for (const { it } of chunks) {
      assertEquals(it.start, pos, "chunks are contiguous");
      assert(it.numTokens <= 16);
      pos += it.numTokens;
    }
    assertEquals(pos, 300);
    assert(chunks.slice(0, -1).every(({ it }) => !it.sample), "only the last chunk samples");
    assert(chunks[chunks.length - 1].it.sample);
    // R kept decoding in every step that carried one of L's chunks.
    for (const { plan } of chunks) {
      assert(plan.items.some((it) => it.id === "R" && it.decode), `step ${plan.index} has no decode of R`);
      const st = steps.find((s) => s.step === plan.index)!;
      assert(st.prefillTokens > 0 && st.decodeTokens > 0);
    }

    // Both outputs equal the reference.
    assertEquals(outcomeOf(lEvents), alone.get("L")!);
    assertEquals(outcomeOf(r.events), alone.get("R")!);
    const st = h.engine.stats();
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);
  } finally {
    await h.close();
  }
});

Deno.test("a 300-token prompt prefills in one step, as attention items of at most 31 tokens", async () => {
  const tk = (await stories()).tokenizer;
  const longPrompt = [1, ...tk.encode(STORY_TEXT, false).slice(0, 299)];
  const h = await startEngine({ maxBatchTokens: 512 });
  const inputs: StepInputs[] = [];
  const run = h.runner.run.bind(h.runner);
  h.runner.run = (s) => (inputs.push(s), run(s));
  try {
    const plans = tracePlans(h.engine);
    const events = await h.generate("L", longPrompt, params({ maxTokens: 8, ignoreEos: true }));
    const first = plans.find((p) => p.items.some((it) => it.id === "L"))!;
    assertEquals(first.items.map((it) => [it.start, it.numTokens, it.sample]), [[0, 300, true]]);
    // The step's rows: items of the one sequence, contiguous, none longer than the kernel's limit;
    // the last row of the last item is sampled.
    const s = inputs[first.index - 1];
    const lens = Array.from(s.pastSeqlens, (_, b) => s.cuSeqlens[b + 1] - s.cuSeqlens[b]);
    if (h.runner.longKernel(true)) {
      // Long-query mode (RAGTIME_TEST_LONG_QUERIES): the prompt chunk is one item on the long kernel.
      assertEquals(lens, [300]);
      return;
    }
    assertEquals(lens.length, Math.ceil(300 / BATCH_INVARIANT_ITEM_TOKENS));
    assert(lens.every((n) => n >= 1 && n <= BATCH_INVARIANT_ITEM_TOKENS), `item lengths ${lens}`);
    assertEquals(Array.from(s.pastSeqlens), lens.map((_, b) => s.cuSeqlens[b]));
    assertEquals(Array.from(s.sampleRows), [299]);
    assertEquals(idsOf(events).length, 8);
    assertEquals(doneOf(events).finishReason, "length");
  } finally {
    await h.close();
  }
});

Deno.test("prefill in one step as many items gives the tokens of a chunk per step (f16; greedy, seeded)", async () => {
  const tk = (await stories()).tokenizer;
  const story = tk.encode(STORY_TEXT, false);
  const reqs: Submission[] = [
    {
      id: "greedy",
      promptIds: [1, ...story.slice(0, 260)],
      params: params({ maxTokens: 24, ignoreEos: true }),
    },
    {
      id: "seeded",
      promptIds: [1, ...story.slice(40, 333)],
      params: params({ maxTokens: 24, ignoreEos: true, temperature: 0.9, seed: 7 }),
    },
    {
      id: "cpu-sampled",
      promptIds: [1, ...story.slice(90, 290)],
      params: params({ maxTokens: 24, ignoreEos: true, temperature: 0.8, topK: 20, seed: 3, logprobs: 2 }),
    },
  ];
  const outcomes: Map<string, Outcome>[] = [];
  const prefillSteps: number[] = [];
  // Large budget: each prompt in one step; a 31-token cap: a chunk per step, as before multi-item steps.
  // In f16, where roundings differ most (the other engine tests run f32).
  for (const maxChunkTokens of [undefined, BATCH_INVARIANT_ITEM_TOKENS]) {
    const h = await startEngine({ dtype: "f16", maxBatchTokens: 512, maxChunkTokens });
    try {
      const plans = tracePlans(h.engine);
      outcomes.push(await runAlone(h, reqs));
      prefillSteps.push(plans.filter((p) => p.prefillTokens > 0).length);
    } finally {
      await h.close();
    }
  }
  assertEquals(prefillSteps[0], reqs.length);
  assert(prefillSteps[1] >= 3 * 7, `${prefillSteps[1]} prefill steps with a 31-token cap`);
  for (const r of reqs) {
    assertEquals(outcomes[0].get(r.id)!.ids.length, 24);
    assertEquals(outcomes[0].get(r.id), outcomes[1].get(r.id), r.id);
  }
});

Deno.test("decode pauses: a burst prefills without decodes for up to N steps; every request keeps its tokens", async () => {
  const tk = (await stories()).tokenizer;
  const story = tk.encode(STORY_TEXT, false);
  const streams: Submission[] = [
    {
      id: "s-greedy",
      promptIds: [1, ...story.slice(0, 12)],
      params: params({ maxTokens: 40, ignoreEos: true }),
    },
    {
      id: "s-seeded",
      promptIds: [1, ...story.slice(20, 30)],
      params: params({ maxTokens: 40, ignoreEos: true, temperature: 0.8, seed: 11 }),
    },
  ];
  const burst: Submission[] = Array.from({ length: 6 }, (_, i) => ({
    id: `b${i}`,
    promptIds: [1, ...story.slice(40 + 30 * i, 120 + 30 * i)],
    params: params({ maxTokens: 6, ignoreEos: true }),
  }));
  const h = await startEngine({ maxBatchTokens: 64, decodePauseSteps: 2 });
  try {
    const plans = tracePlans(h.engine);
    const running = streams.map((r) => submitRaw(h.engine, r.id, r.promptIds, r.params));
    // The streams decode before the burst (~480 prompt tokens, 7-8 steps of the budget) arrives.
    while (!plans.some((p) => p.items.some((it) => it.decode && it.id === "s-greedy"))) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const batched = await Promise.all([
      ...running.map((r) => r.done),
      ...burst.map((r) => submitRaw(h.engine, r.id, r.promptIds, r.params).done),
    ]);
    const outcomes = new Map([...streams, ...burst].map((r, i) => [r.id, outcomeOf(batched[i])]));
    // Steps of the burst with prompt tokens only, beside streams that were decoding: never more than
    // two in a row.
    const streamIds = new Set(streams.map((r) => r.id));
    const first = plans.findIndex((p) => p.items.some((it) => it.id.startsWith("b")));
    let inRow = 0, paused = 0;
    for (const p of plans.slice(first)) {
      const decodes = p.items.some((it) => it.decode && streamIds.has(it.id));
      if (decodes || !p.items.every((it) => !it.decode)) inRow = 0;
      else if (p.prefillTokens > 0) paused++, inRow++;
      assert(inRow <= 2, `plan ${p.index}: ${inRow} steps in a row without decodes`);
    }
    assert(paused >= 2, `${paused} paused steps`);
    const alone = await runAlone(h, [...streams, ...burst]);
    for (const r of [...streams, ...burst]) assertEquals(outcomes.get(r.id), alone.get(r.id), r.id);
  } finally {
    await h.close();
  }
});

Deno.test("abort in the queue, mid-prefill and mid-decode: done/abort, blocks freed, others undisturbed", async () => {
  // In arrival order, so that C waits behind A and B.
  const h = await startEngine({ maxSeqs: 2, maxBatchTokens: 32, prefillOrder: "arrival" });
  try {
    const tk = h.model.tokenizer;
    const story = tk.encode(STORY_TEXT, false);
    const sched = h.engine.scheduler;
    const plans = tracePlans(h.engine);
    const A: Submission = {
      id: "A",
      promptIds: tk.encode("Once upon a time", true),
      params: params({ maxTokens: 60, ignoreEos: true }),
    };
    const B: Submission = {
      id: "B",
      promptIds: [1, ...story.slice(10, 159)],
      params: params({ maxTokens: 10 }),
    };
    const C: Submission = {
      id: "C",
      promptIds: [1, ...story.slice(200, 209)],
      params: params({ maxTokens: 10 }),
    };
    const D: Submission = {
      id: "D",
      promptIds: [1, ...story.slice(300, 311)],
      params: params({ maxTokens: 50, ignoreEos: true }),
    };
    const E: Submission = {
      id: "E",
      promptIds: [1, ...story.slice(50, 70)],
      params: params({ maxTokens: 12, ignoreEos: true, temperature: 0.7, seed: 5 }),
    };
    const sub = (r: Submission) => submitRaw(h.engine, r.id, r.promptIds, r.params);

    const a = sub(A), b = sub(B), c = sub(C);
    let d: ReturnType<typeof sub> | null = null, e: ReturnType<typeof sub> | null = null;
    const freed: Record<string, { before: number; held: number; after: number; where: string }> = {};
    const abortNow = (id: string, where: string) => {
      const before = sched.stats().blocksUsed, held = sched.get(id)!.blockTable.length;
      h.engine.abort(id);
      freed[id] = { before, held, after: sched.stats().blocksUsed, where };
      assert(sched.get(id) === undefined, `${id} still known after abort`);
    };
    h.engine.onStep = (s) => {
      // C waits behind A and B (maxSeqs 2): abort it in the queue.
      if (!freed.C) {
        assert(sched.waiting.some((q) => q.id === "C"), "C is not queued");
        abortNow("C", "queue");
      }
      // B: abort once a step with its first chunk has completed, while its prompt is still prefilling.
      const bSeq = sched.get("B");
      if (!freed.B && bSeq && plans.some((p) => p.index <= s.step && p.items.some((it) => it.id === "B"))) {
        assert(bSeq.numComputed < B.promptIds.length, "B is past its prefill");
        abortNow("B", "prefill");
        d = sub(D);
      }
      // D: abort after 5 tokens.
      const dSeq = sched.get("D");
      if (!freed.D && dSeq && dSeq.outputIds.length >= 5) {
        abortNow("D", "decode");
        e = sub(E);
      }
    };
    const aEvents = await a.done;
    while (!e) await new Promise((r) => setTimeout(r, 20));
    const eEvents = await (e as ReturnType<typeof sub>).done;
    const [bEvents, cEvents, dEvents] = await Promise.all([
      b.done,
      c.done,
      (d as unknown as ReturnType<typeof sub>).done,
    ]);

    // Each aborted request ends with exactly one done event, finishReason "abort".
    for (const [id, ev] of [["B", bEvents], ["C", cEvents], ["D", dEvents]] as const) {
      const done = doneOf(ev);
      assertEquals(done.finishReason, "abort", id);
      assertEquals(done.stopReason, null, id);
    }
    assertEquals(cEvents.length, 1, "C got events before its abort");
    assertEquals(doneOf(cEvents).completionTokens, 0);
    assertEquals(doneOf(bEvents).completionTokens, 0);
    assertEquals(idsOf(bEvents), []);
    const dDone = doneOf(dEvents);
    assert(
      dDone.completionTokens >= 5 && dDone.completionTokens < 50,
      `D made ${dDone.completionTokens} tokens`,
    );
    assertEquals(idsOf(dEvents).length, dDone.completionTokens);

    // Aborts free their blocks at once (C held none), and no later step includes them.
    assertEquals(freed.C, { ...freed.C, held: 0, where: "queue" });
    assertEquals(freed.C.after, freed.C.before);
    for (const id of ["B", "D"]) {
      assert(freed[id].held > 0, `${id} held no blocks`);
      assertEquals(freed[id].after, freed[id].before - freed[id].held, `${id} blocks freed`);
    }
    const lastPlanWith = (id: string) =>
      Math.max(0, ...plans.filter((p) => p.items.some((it) => it.id === id)).map((p) => p.index));
    const bChunks = plans.filter((p) => p.items.some((it) => it.id === "B"));
    assert(bChunks.length >= 1 && bChunks.length <= 3, `B was in ${bChunks.length} steps`);
    assert(lastPlanWith("D") < lastPlanWith("E"));
    const st = h.engine.stats();
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);

    // The others are undisturbed: A and E equal their outputs alone; D's tokens are a prefix of its own.
    const alone = await runAlone(h, [A, E, D]);
    assertEquals(outcomeOf(aEvents), alone.get("A")!);
    assertEquals(outcomeOf(eEvents), alone.get("E")!);
    assertEquals(idsOf(dEvents), alone.get("D")!.ids.slice(0, dDone.completionTokens));
    assertEquals(h.engine.stats().kvBlocksUsed, 0);
  } finally {
    await h.close();
  }
});

Deno.test("stop strings across token boundaries and multi-byte characters, stop tokens, length, context limit", async (t) => {
  const h = await startEngine();
  try {
    const tk = h.model.tokenizer;
    const once = tk.encode("Once upon a time", true);
    const ref = await h.generate("ref", once, params({ maxTokens: 40, ignoreEos: true }));
    const refIds = idsOf(ref);
    const refTexts = ref.flatMap((e) => (e.type === "delta" ? [e.text] : []));
    const refText = refTexts.join("");
    assertEquals(refTexts.length, 40);

    /** Runs `prompt` with stop strings and checks the text ends right before `stop`. */
    const checkStop = async (
      id: string,
      prompt: number[],
      fullText: string,
      fullIds: number[],
      stop: string,
    ) => {
      const at = fullText.indexOf(stop);
      assert(at >= 0);
      const ev = await h.generate(
        id,
        prompt,
        params({ maxTokens: 40, ignoreEos: true, stop: [stop, "never-there"] }),
      );
      const done = doneOf(ev);
      assertEquals(done.finishReason, "stop");
      assertEquals(done.stopReason, stop);
      assertEquals(textOf(ev), fullText.slice(0, at));
      // No delta carries any part of the stop string past the text before it.
      let sent = "";
      for (const e of ev) {
        if (e.type !== "delta") continue;
        sent += e.text;
        assert(fullText.slice(0, at).startsWith(sent), `leaked ${JSON.stringify(e.text)}`);
      }
      // Generation ended with the token that completed the stop string.
      const ids = idsOf(ev);
      assertEquals(ids, fullIds.slice(0, ids.length));
      assertEquals(done.completionTokens, ids.length);
      return ids.length;
    };

    await t.step("stop string spanning two tokens", async () => {
      // The last 2 characters of one token and the first 2 of the next, first occurring at that seam.
      let i = 2, stop = "", seam = 0;
      for (; i < refTexts.length - 1; i++) {
        seam = refTexts.slice(0, i + 1).join("").length;
        stop = refTexts[i].slice(-2) + refTexts[i + 1].slice(0, 2);
        if (refTexts[i].length >= 2 && refTexts[i + 1].length >= 2 && refText.indexOf(stop) === seam - 2) {
          break;
        }
      }
      assert(i < refTexts.length - 1, "no token seam to test");
      const n = await checkStop("stop-ascii", once, refText, refIds, stop);
      assertEquals(n, i + 2);
    });

    await t.step("stop string with a multi-byte character, spanning several tokens", async () => {
      const prompt = tk.encode("Tom said \u201chello\u201d and \u201cbye\u201d and \u201c", true);
      const full = await h.generate("ref-mb", prompt, params({ maxTokens: 40, ignoreEos: true }));
      const texts = full.flatMap((e) => (e.type === "delta" ? [e.text] : []));
      const text = texts.join("");
      const nonAscii = (s: string) => [...s].some((ch) => ch.codePointAt(0)! > 0x7f);
      const j = texts.findIndex((s, k) => k >= 1 && k < texts.length - 1 && nonAscii(s));
      assert(j >= 1, `no multi-byte character in the continuation ${JSON.stringify(text)}`);
      const start = texts.slice(0, j).join("").length;
      const stop = text.slice(Math.max(0, start - 2), start + texts[j].length + 1);
      assert(new TextEncoder().encode(stop).length > stop.length, "the stop string is ASCII");
      assert(text.indexOf(stop) === Math.max(0, start - 2), "the stop string occurs earlier");
      const n = await checkStop("stop-mb", prompt, text, idsOf(full), stop);
      assertEquals(n, j + 2);
    });

    await t.step("stop token id", async () => {
      const k = refIds.findIndex((id, n) => n >= 3 && !refIds.slice(0, n).includes(id));
      const ev = await h.generate(
        "stop-id",
        once,
        params({ maxTokens: 40, ignoreEos: true, stopTokenIds: [refIds[k]] }),
      );
      const done = doneOf(ev);
      assertEquals(done.finishReason, "stop");
      assertEquals(done.stopReason, refIds[k]);
      assertEquals(done.completionTokens, k + 1);
      assertEquals(textOf(ev), refTexts.slice(0, k).join(""));
      assertEquals(idsOf(ev).slice(0, k), refIds.slice(0, k));
    });

    await t.step("max_tokens ends with length and exact counts", async () => {
      const ev = await h.generate("len", once, params({ maxTokens: 7 }));
      const done = doneOf(ev);
      assertEquals(done.finishReason, "length");
      assertEquals(done.stopReason, null);
      assertEquals(done.completionTokens, 7);
      assertEquals(done.promptTokens, 5);
      assertEquals(idsOf(ev), refIds.slice(0, 7));
      assertEquals(textOf(ev), refTexts.slice(0, 7).join(""));
    });

    await t.step("prompts over the context are rejected before they are queued", () => {
      const before = h.engine.stats();
      const tooLong = Array.from({ length: 513 }, (_, n) => (n === 0 ? 1 : 300 + (n % 100)));
      const cases: [string, number[], number][] = [
        ["ctx-prompt", tooLong, 1],
        ["ctx-total", tooLong.slice(0, 500), 13],
        ["ctx-max", tooLong.slice(0, 512), 1],
      ];
      for (const [id, prompt, maxTokens] of cases) {
        const events: GenerateEvent[] = [];
        h.engine.add({ id, promptIds: prompt, params: params({ maxTokens }) }, (e) => events.push(e));
        // The error comes synchronously, and nothing was queued.
        assertEquals(events.length, 1, id);
        const err = events[0];
        assert(err.type === "error", `${id}: ${JSON.stringify(err)}`);
        assertEquals(err.code, "context_length_exceeded", id);
        assert(h.engine.scheduler.get(id) === undefined);
      }
      const after = h.engine.stats();
      assertEquals([after.waiting, after.running, after.promptTokensTotal], [0, 0, before.promptTokensTotal]);
    });

    await t.step("a prompt that exactly fills the context with max_tokens runs", async () => {
      const prompt = [1, ...tk.encode(STORY_TEXT, false).slice(0, 499)];
      const ev = await h.generate("ctx-fits", prompt, params({ maxTokens: 12, ignoreEos: true }));
      const done = doneOf(ev);
      assertEquals([done.finishReason, done.completionTokens], ["length", 12]);
    });
  } finally {
    await h.close();
  }
});

Deno.test("logprobs=2: chosen logprob <= 0, two sorted alternatives, greedy picks the top one", async () => {
  const h = await startEngine();
  try {
    const tk = h.model.tokenizer;
    const once = tk.encode("Once upon a time", true);
    const plain = await h.generate("plain", once, params({ maxTokens: 16, ignoreEos: true }));
    const ev = await h.generate("lp", once, params({ maxTokens: 16, ignoreEos: true, logprobs: 2 }));
    const deltas = ev.filter((e) => e.type === "delta");
    assertEquals(deltas.length, 16);
    for (const d of deltas) {
      assert(d.type === "delta" && d.logprobs !== undefined && d.logprobs.length === 1);
      const lp = d.logprobs[0];
      assertEquals(lp.tokenId, d.tokenIds[0]);
      assertEquals(lp.token, tk.tokenText(lp.tokenId));
      assert(Number.isFinite(lp.logprob) && lp.logprob <= 0, `logprob ${lp.logprob}`);
      assertEquals(lp.top.length, 2);
      assert(lp.top[0].logprob >= lp.top[1].logprob, "top not sorted");
      assert(lp.top[1].logprob <= 0 && Math.exp(lp.top[0].logprob) + Math.exp(lp.top[1].logprob) <= 1 + 1e-6);
      assert(lp.top[0].tokenId !== lp.top[1].tokenId);
      // Greedy chooses the most likely token.
      assertEquals(lp.top[0].tokenId, lp.tokenId);
      assertEquals(lp.top[0].logprob, lp.logprob);
    }
    // The CPU path (logprobs) and the GPU path (plain greedy) agree.
    assertEquals(idsOf(ev), idsOf(plain));
    assertEquals(textOf(ev), textOf(plain));
  } finally {
    await h.close();
  }
});

Deno.test("penalties reduce repeats; a seed gives the same tokens twice and another seed others", async (t) => {
  const h = await startEngine();
  try {
    const once = h.model.tokenizer.encode("Once upon a time", true);
    const run = async (id: string, over: Partial<SamplingParams>) =>
      idsOf(await h.generate(id, once, params({ maxTokens: 48, ignoreEos: true, ...over })));

    await t.step("frequency and repetition penalties", async () => {
      const greedy = await run("greedy", {});
      const freq = await run("freq", { frequencyPenalty: 2 });
      const rep = await run("rep", { repetitionPenalty: 1.8 });
      assert(repeats(greedy) >= 10, `greedy repeats only ${repeats(greedy)} times`);
      for (const [name, ids] of [["frequency", freq], ["repetition", rep]] as const) {
        assertEquals(ids.length, 48);
        assert(JSON.stringify(ids) !== JSON.stringify(greedy), `${name} penalty changed nothing`);
        assert(
          repeats(ids) < repeats(greedy),
          `${name}: ${repeats(ids)} repeats vs ${repeats(greedy)} greedy`,
        );
      }
      // Until a repeat is penalised, the penalty leaves greedy alone: the first token is the same.
      assertEquals(freq[0], greedy[0]);
    });

    await t.step(
      "seeded sampling on the GPU (with filters and a penalty) and the CPU (logprobs)",
      async () => {
        for (
          const [name, over] of [
            ["gpu", { temperature: 1 }],
            ["gpu-filters", { temperature: 1, topK: 50, topP: 0.95 }],
            ["gpu-penalty", { temperature: 1, topK: 50, topP: 0.95, presencePenalty: 0.1 }],
            ["cpu", { temperature: 1, topK: 50, topP: 0.95, logprobs: 1 }],
          ] as const
        ) {
          const a = await run(`${name}-42a`, { ...over, seed: 42 });
          const b = await run(`${name}-42b`, { ...over, seed: 42 });
          const c = await run(`${name}-43`, { ...over, seed: 43 });
          assertEquals(a, b, `${name}: same seed`);
          assert(JSON.stringify(a) !== JSON.stringify(c), `${name}: seeds 42 and 43 gave the same tokens`);
        }
      },
    );
  } finally {
    await h.close();
  }
});
