// The scheduler's algorithm, step by step, plus long simulated runs that play the pipelined engine.

import { neutralSamplingParams, type PrefillOrder, SHORTEST_FIRST_WINDOW_MS } from "../../engine/protocol.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { BlockManager } from "../../engine/block_manager.ts";
import {
  ANSWER_BATCH_TOKENS,
  ANSWER_IDLE_MS,
  type PlanItem,
  PREFILL_BACKLOG_STEPS,
  PREFILL_SEQUENCE_STEPS,
  Scheduler,
  SchedulerError,
  type SchedulerPolicy,
  type StepPlan,
} from "../../engine/scheduler.ts";
import { Sequence } from "../../engine/sequence.ts";
import type { SamplingParams } from "../../engine/protocol.ts";

const EOS = 0;

const params = neutralSamplingParams;

/** A prompt of its own per id (no shared prefix), so tests of scheduling are not tests of caching. */
function seq(id: string, promptLen: number, maxTokens = 16, over: Partial<SamplingParams> = {}): Sequence {
  let base = 0;
  for (const c of id) base = (base * 31 + c.charCodeAt(0)) % 100_000;
  return seqOf(id, Array.from({ length: promptLen }, (_, i) => 10_000 + base * 1000 + i), maxTokens, over);
}

function seqOf(
  id: string,
  promptIds: number[],
  maxTokens = 16,
  over: Partial<SamplingParams> = {},
): Sequence {
  return new Sequence(id, promptIds, params({ maxTokens, ...over }), 0);
}

interface Setup {
  numBlocks?: number;
  blockSize?: number;
  maxBatchTokens?: number;
  maxSeqs?: number;
  maxContext?: number;
  policy?: SchedulerPolicy;
  maxChunkTokens?: number;
  prefixCaching?: boolean;
  capturedPrefillTokens?: number;
  burstPrefillTokens?: number;
  prefillOrder?: PrefillOrder;
  splitAtPrompt?: boolean;
  decodePauseSteps?: number;
}

function setup(o: Setup = {}) {
  const blockSize = o.blockSize ?? 4;
  const bm = new BlockManager(o.numBlocks ?? 64, blockSize, { prefixCaching: o.prefixCaching });
  let clock = 0;
  const sched = new Scheduler({
    blockManager: bm,
    blockSize,
    maxBatchTokens: o.maxBatchTokens ?? 64,
    maxSeqs: o.maxSeqs ?? 8,
    maxContext: o.maxContext ?? 4096,
    policy: o.policy ?? "continuous",
    maxChunkTokens: o.maxChunkTokens,
    capturedPrefillTokens: o.capturedPrefillTokens,
    burstPrefillTokens: o.burstPrefillTokens,
    prefillOrder: o.prefillOrder,
    splitAtPrompt: o.splitAtPrompt,
    decodePauseSteps: o.decodePauseSteps,
    now: () => ++clock,
  });
  const advance = (ms: number) => void (clock += ms);
  return { bm, sched, sim: new Sim(sched, bm), advance };
}

/** [id, start, numTokens, sample] per item, for compact assertions. */
function shape(plan: StepPlan | null): [string, number, number, boolean][] {
  assert(plan, "expected a plan");
  return plan.items.map((i: PlanItem) => [i.seq.id, i.start, i.numTokens, i.sample]);
}

/**
 * Plays the pipelined engine: each tick forms and submits a step, then reads back the step before
 * it, so every step is formed while its predecessor's samples are still "on the GPU". A fake KV
 * cache records what each slot holds (a position and every token up to it), to prove a sequence
 * reads only KV of its own tokens, whoever wrote it, and that no write clobbers a block another
 * running sequence relies on. With splitAtPrompt a slot also records where the prompt kernel's
 * positions ended when it was written (an answer's KV is not a prompt's), so a prompt that reads an
 * answer's decode KV fails. Answer copies (the scheduler's, planned without sampling) take part.
 */
class Sim {
  inFlight: StepPlan[] = [];
  plans: StepPlan[] = [];
  /** Steps left in flight after a tick (the engine keeps up to three). */
  depth = 1;
  wasted = 0;
  /** Output index at which a sequence emits EOS (else it runs to maxTokens). */
  eosAt = new Map<string, number>();
  #kv: (string | null)[];

  constructor(readonly sched: Scheduler, readonly bm: BlockManager) {
    this.#kv = new Array(bm.numBlocks * bm.blockSize).fill(null);
  }

  /** The token a sequence has (or will have, once read back) at position p. */
  tokenAt(seq: Sequence, p: number): number {
    const prompt = seq.promptIds.length;
    if (p < prompt) return seq.promptIds[p];
    return this.eosAt.get(seq.id) === p - prompt ? EOS : 1000 + p - prompt;
  }

  /** What a KV slot holds beside its tokens: with splitAtPrompt, where prompt-kernel positions end. */
  kindAt(seq: Sequence, p: number): string {
    return this.sched.config.splitAtPrompt ? `|${Math.min(seq.promptIds.length, p + 1)}` : "";
  }

  tick(idleMs = 0): StepPlan | null {
    const prefillInFlight = this.inFlight.some((p) => p.numPrefillTokens > 0);
    const plan = this.sched.schedule({ prefillInFlight, idleMs });
    if (plan) {
      this.#execute(plan);
      this.sched.onStepSubmitted(plan);
      this.#checkHeldKv();
      this.inFlight.push(plan);
      this.plans.push(plan);
    }
    while (this.inFlight.length > this.depth || (!plan && this.inFlight.length > 0)) {
      this.resolve(this.inFlight.shift()!);
      if (!plan) break;
    }
    return plan;
  }

  /** Reads a step's samples back and finishes sequences at EOS or their token limit. */
  resolve(plan: StepPlan): void {
    for (const { seq, sample } of plan.items) {
      if (!sample) continue;
      if (seq.status === "finished") {
        this.wasted++;
        continue;
      }
      const token = this.tokenAt(seq, seq.knownLen);
      this.sched.onTokenResolved(seq, token);
      if (token === EOS) this.sched.finish(seq, "stop");
      else if (seq.outputIds.length >= seq.params.maxTokens) this.sched.finish(seq, "length");
    }
  }

  run(maxTicks = 10_000): number {
    let ticks = 0;
    while (!this.sched.isIdle || this.inFlight.length > 0) {
      assert(
        ++ticks <= maxTicks,
        `no progress after ${maxTicks} ticks: ${JSON.stringify(this.sched.stats())}`,
      );
      this.tick();
    }
    assertEquals(this.bm.numUsed, 0, "blocks used at idle");
    return ticks;
  }

  // What the GPU would do with the plan, checked against the scheduler's invariants.
  #execute(plan: StepPlan): void {
    const { maxBatchTokens, maxSeqs, policy } = this.sched.config;
    assert(this.sched.running.length <= (policy === "sequential" ? 1 : maxSeqs), "too many running");
    const total = plan.items.reduce((n, i) => n + i.numTokens, 0);
    assert(total > 0 && total <= maxBatchTokens, `step has ${total} tokens`);
    assertEquals(total, plan.numPrefillTokens + plan.numDecodeTokens);
    assert(plan.items.length <= maxSeqs);
    assert(plan.items.slice(0, plan.numDecodeTokens).every((i) => i.numTokens === 1), "decodes come first");
    const held = new Set(
      [...this.sched.running, ...plan.items.map((i) => i.seq)].flatMap((s) => s.blockTable),
    );
    assertEquals(this.bm.numUsed, held.size, "blocks used = blocks held by running sequences and the plan");
    const prev = this.inFlight.at(-1);
    for (const { seq, start, numTokens, sample } of plan.items) {
      assertEquals(seq.status, "running");
      assertEquals(start, seq.numComputed, `${seq.id} start`);
      const copy = !this.sched.running.includes(seq);
      if (copy) assert(seq.id.endsWith("/answer") && start + numTokens === seq.totalLen, `${seq.id} copy`);
      assertEquals(sample, !copy && start + numTokens === seq.totalLen, `${seq.id} sample flag`);
      assert(seq.blockTable.length * this.bm.blockSize >= start + numTokens, `${seq.id} lacks blocks`);
      if (start + numTokens > seq.knownLen) {
        // The runner's contract: an input not yet on the CPU is the token the previous step sampled.
        assertEquals(numTokens, 1);
        assert(prev?.items.some((i) => i.seq === seq && i.sample), `${seq.id} input is nowhere`);
      }
      const slot = (p: number) =>
        seq.blockTable[Math.floor(p / this.bm.blockSize)] * this.bm.blockSize +
        (p % this.bm.blockSize);
      let content = "";
      for (let p = 0; p < start + numTokens; p++) {
        content += (p > 0 ? "," : "") + this.tokenAt(seq, p);
        const kv = content + this.kindAt(seq, p);
        if (p < start) assertEquals(this.#kv[slot(p)], kv, `${seq.id} attention reads position ${p}`);
        else this.#kv[slot(p)] = kv;
      }
    }
  }

  /** Every running sequence's KV so far is its own: nothing it holds was overwritten. */
  #checkHeldKv(): void {
    for (const seq of this.sched.running) {
      const bs = this.bm.blockSize;
      let content = "";
      for (let p = 0; p < seq.numComputed; p++) {
        content += (p > 0 ? "," : "") + this.tokenAt(seq, p);
        const got = this.#kv[seq.blockTable[Math.floor(p / bs)] * bs + (p % bs)];
        assertEquals(got, content + this.kindAt(seq, p), `${seq.id} KV at position ${p}`);
      }
    }
  }
}

Deno.test("a step never exceeds the token budget; the last admitted prompt is chunked", () => {
  const { sched, bm } = setup({ blockSize: 16, maxBatchTokens: 128 });
  for (const id of ["a", "b", "c"]) sched.add(seq(id, 100));
  const plan = sched.schedule();
  assertEquals(shape(plan), [["a", 0, 100, true], ["b", 0, 28, false]]);
  assertEquals([plan!.numPrefillTokens, plan!.numDecodeTokens], [128, 0]);
  assertEquals(bm.numUsed, 7 + 2); // only the blocks for positions scheduled
  assertEquals(sched.stats().waiting, 1);
});

Deno.test("decodes come first; prefill takes only what is left of the budget", () => {
  const { sched, sim } = setup({ maxBatchTokens: 64 });
  sched.add(seq("a", 10, 50));
  assertEquals(shape(sim.tick()), [["a", 0, 10, true]]);
  sched.add(seq("b", 200));
  const plan = sim.tick();
  assertEquals(shape(plan), [["a", 10, 1, true], ["b", 0, 63, false]]);
  assertEquals([plan!.numDecodeTokens, plan!.numPrefillTokens], [1, 63]);
});

Deno.test("decode pause: behind a backlog of more than a step, up to decodePauseSteps steps in a row prefill only", () => {
  const run = (decodePauseSteps: number) => {
    const { sched, sim } = setup({ numBlocks: 256, maxBatchTokens: 64, decodePauseSteps });
    // Two steps in flight: a paused sequence's last token is still unread when the pause ends, so it
    // must skip that step (its input is on neither the CPU nor the previous step's outputs).
    sim.depth = 2;
    sched.add(seq("a", 8, 200));
    for (let i = 0; i < 3; i++) sim.tick();
    // 300 prompt tokens: about five steps' worth.
    for (let i = 0; i < 5; i++) sched.add(seq(`p${i}`, 60, 2));
    const steps: { a: boolean; prefill: number; waiting: number }[] = [];
    for (let i = 0; i < 14; i++) {
      const waiting = sched.waiting.length;
      const plan = sim.tick()!;
      steps.push({ a: plan.items.some((it) => it.seq.id === "a"), prefill: plan.numPrefillTokens, waiting });
    }
    sim.run();
    return steps;
  };
  // Off: a decodes in every step, beside what is left of the budget.
  assert(run(0).every((s) => s.a));
  const steps = run(2);
  // The backlog's first two steps are prefill only, with the whole budget; then a decodes again.
  assertEquals(steps.slice(0, 2).map((s) => [s.a, s.prefill]), [[false, 64], [false, 64]]);
  assert(steps[2].a && steps[2].prefill > 0 && steps[2].prefill < 64, JSON.stringify(steps[2]));
  // Never more than two steps in a row without a while the backlog lasts; every step decodes once
  // what waits fits one step.
  let run_ = 0;
  for (const s of steps) {
    run_ = s.a ? 0 : run_ + 1;
    assert(run_ <= 2, `${JSON.stringify(steps)}`);
  }
  const last = steps.findLastIndex((s) => !s.a);
  assert(last > 2 && steps.slice(last + 1).length >= 4 && steps.slice(last + 1).every((s) => s.a));
  assert(steps.slice(last + 1).every((s) => s.waiting === 0), "pauses end with the backlog");
});

Deno.test("a long prompt prefills in chunks while the others keep decoding", () => {
  const { sched, sim } = setup({ numBlocks: 128, maxBatchTokens: 100 });
  sched.add(seq("a", 10, 50));
  sched.add(seq("b", 10, 50));
  assertEquals(shape(sim.tick()), [["a", 0, 10, true], ["b", 0, 10, true]]);
  sched.add(seq("c", 300));
  assertEquals(shape(sim.tick()), [["a", 10, 1, true], ["b", 10, 1, true], ["c", 0, 98, false]]);
  assertEquals(shape(sim.tick()), [["a", 11, 1, true], ["b", 11, 1, true], ["c", 98, 98, false]]);
  assertEquals(shape(sim.tick()), [["a", 12, 1, true], ["b", 12, 1, true], ["c", 196, 98, false]]);
  assertEquals(shape(sim.tick()), [["a", 13, 1, true], ["b", 13, 1, true], ["c", 294, 6, true]]);
  assertEquals(shape(sim.tick()), [["a", 14, 1, true], ["b", 14, 1, true], ["c", 300, 1, true]]);
  sim.run();
  assertEquals(sched.get("c"), undefined);
});

Deno.test("a long prompt finishes its prefill in one step when the budget allows", () => {
  const { sched, sim, bm } = setup({ blockSize: 16, numBlocks: 128, maxBatchTokens: 2048 });
  sched.add(seq("a", 1500, 4));
  assertEquals(shape(sim.tick()), [["a", 0, 1500, true]]);
  assertEquals(bm.numUsed, Math.ceil(1500 / 16));
  assertEquals(shape(sim.tick()), [["a", 1500, 1, true]]);
});

Deno.test("decodes first, then prefill chunks oldest first, each as long as the budget left allows", () => {
  const { sched, sim } = setup({ blockSize: 16, numBlocks: 256, maxBatchTokens: 1000 });
  sched.add(seq("a", 10, 50));
  sched.add(seq("b", 10, 50));
  sim.tick();
  for (const [id, len] of [["c", 700], ["d", 400], ["e", 100]] as const) sched.add(seq(id, len));
  const plan = sim.tick();
  assertEquals(shape(plan), [["a", 10, 1, true], ["b", 10, 1, true], ["c", 0, 700, true], [
    "d",
    0,
    298,
    false,
  ]]);
  assertEquals([plan!.numDecodeTokens, plan!.numPrefillTokens], [2, 998]);
  assertEquals(shape(sim.tick()), [
    ["a", 11, 1, true],
    ["b", 11, 1, true],
    ["c", 700, 1, true],
    ["d", 298, 102, true],
    ["e", 0, 100, true],
  ]);
});

Deno.test("maxChunkTokens caps each prefill chunk, so prompts behind a long one start in the same step", () => {
  const { sched, sim } = setup({ blockSize: 16, numBlocks: 256, maxBatchTokens: 1024, maxChunkTokens: 256 });
  sched.add(seq("long", 1000));
  sched.add(seq("s1", 40));
  sched.add(seq("s2", 300));
  assertEquals(shape(sim.tick()), [["long", 0, 256, false], ["s1", 0, 40, true], ["s2", 0, 256, false]]);
  const plan = sim.tick();
  assertEquals(shape(plan), [["s1", 40, 1, true], ["long", 256, 256, false], ["s2", 256, 44, true]]);
  assert(plan!.items.every((it) => it.numTokens <= 256));
});

Deno.test("a short prefill backlog goes in steps of capturedPrefillTokens; a long one keeps whole steps", () => {
  const cap = 64;
  const { sched, sim } = setup({
    blockSize: 16,
    numBlocks: 256,
    maxBatchTokens: 1024,
    capturedPrefillTokens: cap,
  });
  sched.add(seq("a", 10, 50));
  assertEquals(shape(sim.tick()), [["a", 0, 10, true]]);
  // Chat turns' worth of new tokens: 3 x 40 fits PREFILL_BACKLOG_STEPS steps of 64, so each step takes 64
  // prefill tokens at most (decodes on top), the prompts in order, one cut where the cap falls.
  for (const id of ["b", "c", "d"]) sched.add(seq(id, 40));
  assertEquals(shape(sim.tick()), [["a", 10, 1, true], ["b", 0, 40, true], ["c", 0, 24, false]]);
  assertEquals(shape(sim.tick()), [["a", 11, 1, true], ["b", 40, 1, true], ["c", 24, 16, true], [
    "d",
    0,
    40,
    true,
  ]]);
  sim.run();
  // A backlog past PREFILL_BACKLOG_STEPS steps of the cap (fresh long prompts) fills the budget as before.
  const long = Math.ceil((PREFILL_BACKLOG_STEPS * cap) / 2) + 1;
  sched.add(seq("e", long));
  sched.add(seq("f", long));
  const plan = sim.tick();
  assertEquals(shape(plan), [["e", 0, long, true], ["f", 0, long, true]]);
  sim.run();
  assertEquals(sched.stats().running + sched.stats().waiting, 0);
});

Deno.test("the first prefill step while none is in flight takes at most burstPrefillTokens", () => {
  const cap = 64, burst = 200;
  const { sched, sim } = setup({
    blockSize: 16,
    numBlocks: 256,
    maxBatchTokens: 1024,
    maxSeqs: 16,
    capturedPrefillTokens: cap,
    burstPrefillTokens: burst,
  });
  // A long backlog (past PREFILL_BACKLOG_STEPS steps of the cap): the first step is cut to the burst
  // size, the next (formed while that one is in flight) takes the whole budget left.
  const ids = ["a", "b", "c", "d", "p", "q"];
  assert(ids.length * 150 - burst > PREFILL_BACKLOG_STEPS * cap);
  for (const id of ids) sched.add(seq(id, 150, 4));
  assertEquals(shape(sim.tick()), [["a", 0, 150, true], ["b", 0, 50, false]]);
  assertEquals(shape(sim.tick()), [
    ["a", 150, 1, true],
    ["b", 50, 100, true],
    ...ids.slice(2).map((id) => [id, 0, 150, true]),
  ]);
  sim.run();
  // Decodes alone in flight: a new long backlog's first step is cut again, decodes on top.
  sched.add(seq("e", 10, 20));
  sim.tick();
  sim.tick();
  for (const id of ["f", "g"]) sched.add(seq(id, 300, 2));
  const plan = sim.tick();
  assertEquals(plan!.numPrefillTokens, burst);
  assertEquals(shape(plan), [["e", 11, 1, true], ["f", 0, 200, false]]);
  // A short backlog keeps the smaller cut (the burst size applies only where it is larger).
  sim.run();
  sched.add(seq("h", 100, 2));
  assertEquals(shape(sim.tick()), [["h", 0, cap, false]]);
  sim.run();
  assertEquals(sched.stats().running + sched.stats().waiting, 0);
});

Deno.test("a lone prompt longer than PREFILL_SEQUENCE_STEPS steps of the cap keeps whole steps", () => {
  const cap = 64;
  const { sched, sim } = setup({
    blockSize: 16,
    numBlocks: 256,
    maxBatchTokens: 1024,
    capturedPrefillTokens: cap,
  });
  // Within the backlog's bound, but more replays for this one prompt than one uncaptured step costs.
  const long = PREFILL_SEQUENCE_STEPS * cap + 1;
  assert(long <= PREFILL_BACKLOG_STEPS * cap);
  sched.add(seq("a", long));
  assertEquals(shape(sim.tick()), [["a", 0, long, true]]);
  // At the bound it is cut to the cap.
  sched.add(seq("b", PREFILL_SEQUENCE_STEPS * cap));
  assertEquals(shape(sim.tick()), [["a", long, 1, true], ["b", 0, cap, false]]);
  sim.run();
  assertEquals(sched.stats().running + sched.stats().waiting, 0);
});

Deno.test("the prefill backlog counts a waiting prompt past its cached prefix", () => {
  const cap = 16;
  const { sched, sim } = setup({
    blockSize: 4,
    numBlocks: 256,
    maxBatchTokens: 512,
    capturedPrefillTokens: cap,
  });
  const turn1 = range(500, 100);
  sched.add(seqOf("t1", turn1, 2));
  sim.run();
  // 100 cached tokens plus 20 new ones: a backlog of 20, within 4 x 16, so the new tokens go 16 then 4.
  sched.add(seqOf("t2", [...turn1, ...range(900, 20)], 2));
  assertEquals(shape(sim.tick()), [["t2", 100, 16, false]]);
  assertEquals(shape(sim.tick()), [["t2", 116, 4, true]]);
  sim.run();
  // Without the cached prefix the same prompt is a long backlog: one step takes it whole.
  sched.add(seqOf("u", range(3000, 120), 2));
  assertEquals(shape(sim.tick()), [["u", 0, 120, true]]);
});

Deno.test("a finished sequence's blocks are free before the next plan is formed", () => {
  const { sched, sim, bm } = setup({ numBlocks: 4, blockSize: 4, maxBatchTokens: 64 });
  const a = seq("a", 12, 4);
  sched.add(a);
  sched.add(seq("b", 12, 4));
  sim.tick();
  assertEquals(bm.numUsed, 3); // b (3 blocks) does not fit beside a
  assertEquals(sched.stats().waiting, 1);
  sched.finish(a, "stop");
  assertEquals(bm.numUsed, 0);
  assertEquals(shape(sim.tick()), [["b", 0, 12, true]]);
  assertEquals([a.status, a.finishReason], ["finished", "stop"]);
});

Deno.test("the pool runs dry: newest preempted first, to the front of the queue, recomputed later", () => {
  // 6 blocks of 4; three prompts of 8 take all of them, so the first decodes must preempt. Without
  // prefix caching every recompute starts at 0 (see below for the same with caching).
  const { sched, sim, bm } = setup({ numBlocks: 6, blockSize: 4, maxBatchTokens: 64, prefixCaching: false });
  const [a, b, c] = [seq("a", 8, 8), seq("b", 8, 8), seq("c", 8, 8)];
  for (const s of [a, b, c]) sched.add(s);
  assertEquals(shape(sim.tick()), [["a", 0, 8, true], ["b", 0, 8, true], ["c", 0, 8, true]]);
  assertEquals(bm.numFree, 0);

  // a needs a block for position 8: c, the newest, gives way; b then gets c's other block.
  let plan = sim.tick();
  assertEquals(shape(plan), [["a", 8, 1, true], ["b", 8, 1, true]]);
  assertEquals(plan!.preempted.map((s) => s.id), ["c"]);
  assertEquals([c.status, c.numComputed, c.blockTable.length, c.numPreemptions], ["waiting", 0, 0, 1]);
  assertEquals(sched.waiting.map((s) => s.id), ["c"]);

  // Positions 9..11 fit the blocks a and b hold; c (9 known tokens) cannot get 3 blocks.
  assertEquals(shape(sim.tick()), [["a", 9, 1, true], ["b", 9, 1, true]]);
  assertEquals(c.outputIds.length, 1); // its in-flight token was still read back
  sim.tick();
  sim.tick();
  // Position 12 needs a fourth block for a: b is now the newest and goes to the front, ahead of c.
  plan = sim.tick();
  assertEquals(shape(plan), [["a", 12, 1, true]]);
  assertEquals(plan!.preempted.map((s) => s.id), ["b"]);
  assertEquals(sched.waiting.map((s) => s.id), ["b", "c"]);
  assertEquals(sched.stats().preemptionsTotal, 2);

  sim.run();
  for (const s of [a, b, c]) assertEquals([s.id, s.outputIds.length, s.finishReason], [s.id, 8, "length"]);
  // b and c came back as prefills of their prompt plus the outputs they already had (b's fifth
  // token was in flight when it was preempted).
  const recomputes = sim.plans.flatMap((p) => p.items).filter((i) => i.seq !== a && i.start === 0);
  assertEquals(recomputes.map((i) => [i.seq.id, i.numTokens]), [["b", 8], ["c", 8], ["b", 13], ["c", 9]]);
  assertEquals(sched.stats().preemptionsTotal, b.numPreemptions + c.numPreemptions);
});

Deno.test("a tiny pool never deadlocks: every sequence finishes and no block leaks", () => {
  // 5 blocks of 4 = 20 positions; each request alone fits, together they fight for blocks.
  const { sched, sim } = setup({ numBlocks: 5, blockSize: 4, maxBatchTokens: 16, maxSeqs: 4 });
  const seqs = [
    seq("a", 9, 12),
    seq("b", 3, 17),
    seq("c", 14, 7, { logprobs: 2 }),
    seq("d", 1, 20),
    seq("e", 6, 5, { repetitionPenalty: 1.1 }),
    seq("f", 11, 10),
  ];
  for (const s of seqs) sched.add(s);
  sim.eosAt.set("f", 6);
  sim.run();
  assertEquals(seqs.map((s) => s.outputIds.length), [12, 17, 7, 20, 5, 7]);
  assertEquals(seqs.map((s) => s.finishReason), ["length", "length", "length", "length", "length", "stop"]);
  assert(sched.stats().preemptionsTotal > 0);
});

Deno.test("random workloads under every policy, with and without the captured-size cut and decode pauses: invariants hold, all finish, nothing leaks", () => {
  let state = 12345;
  // The high bits: an LCG's low bits cycle, so `state % n` for small powers of two repeats with the
  // call's position (every trial would get the same budget, or the same cut).
  const rand = (n: number) => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return Math.floor((state / 2147483648) * n);
  };
  let preemptions = 0;
  for (let trial = 0; trial < 100; trial++) {
    const policy = (["continuous", "static", "sequential"] as const)[trial % 3];
    const prefillOrder = Math.floor(trial / 3) % 2 ? "shortest" : "arrival";
    const blockSize = 1 + rand(8);
    const numBlocks = 2 + rand(30);
    const maxBatchTokens = 1 + rand(64);
    // Half the trials cut prefill to a captured size (which changes their plans: checked with it off).
    const cap = rand(2) ? 4 + rand(40) : undefined;
    const { sched, sim } = setup({
      numBlocks,
      blockSize,
      maxBatchTokens,
      maxSeqs: 1 + rand(6),
      policy,
      capturedPrefillTokens: cap,
      prefillOrder,
      // A third of the trials pause decodes behind a prompt backlog (the Sim checks every decode's
      // input is on the CPU or sampled by the step before).
      decodePauseSteps: trial % 3 === 1 ? 1 + (trial % 4) : undefined,
    });
    const expected = new Map<Sequence, number>();
    let id = 0;
    const addSome = (k: number) => {
      for (let i = 0; i < k; i++) {
        const capacity = numBlocks * blockSize;
        const prompt = 1 + rand(Math.min(capacity, 40));
        const maxTokens = 1 + rand(Math.min(capacity - prompt + 1, 30));
        const s = seq(`t${trial}-${id++}`, prompt, maxTokens, rand(3) === 0 ? { logprobs: 0 } : {});
        if (rand(4) === 0) sim.eosAt.set(s.id, rand(maxTokens));
        sched.add(s);
        expected.set(s, sim.eosAt.has(s.id) ? sim.eosAt.get(s.id)! + 1 : maxTokens);
      }
    };
    addSome(1 + rand(8));
    for (let t = 0; t < 20; t++) {
      sim.tick();
      if (rand(3) === 0) addSome(1 + rand(3));
    }
    sim.run();
    for (const [s, n] of expected) assertEquals(s.outputIds.length, n, `${policy} ${s.id}`);
    assertEquals(sched.stats().running + sched.stats().waiting, 0);
    preemptions += sched.stats().preemptionsTotal;
  }
  assert(preemptions > 0, "the workloads should exercise preemption");
});

Deno.test("FCFS: a large request at the head is not starved by small ones behind it", () => {
  const { sched, sim } = setup({ numBlocks: 10, blockSize: 4, maxBatchTokens: 64 });
  const a = seq("a", 20, 20);
  sched.add(a);
  sim.tick(); // a holds 5 blocks
  sched.add(seq("big", 24, 4)); // needs 6 blocks, 5 free
  sched.add(seq("small", 4, 4)); // would fit, but must not jump the queue
  assertEquals(shape(sim.tick()), [["a", 20, 1, true]]);
  assertEquals(sched.waiting.map((s) => s.id), ["big", "small"]);
  sched.finish(a, "stop");
  assertEquals(shape(sim.tick()), [["big", 0, 24, true], ["small", 0, 4, true]]);
  sim.run();
});

Deno.test("prefill order shortest: waiting prompts start by the tokens they have left past their cached prefix", () => {
  const { sched, sim } = setup({
    blockSize: 4,
    numBlocks: 256,
    maxBatchTokens: 450,
    prefillOrder: "shortest",
  });
  const system = range(500, 200);
  sched.add(seqOf("warm", system, 1));
  sim.run();
  sched.add(seq("long", 700));
  sched.add(seq("mid", 300));
  sched.add(seq("short", 100));
  // 208 tokens, 200 of them cached: 8 left, the fewest.
  sched.add(seqOf("turn", [...system, ...range(900, 8)]));
  assertEquals(shape(sim.tick()), [["turn", 200, 8, true], ["short", 0, 100, true], ["mid", 0, 300, true], [
    "long",
    0,
    42,
    false,
  ]]);
  sim.run();
  // The same arrivals in arrival order: the long prompt takes the step.
  const fcfs = setup({ blockSize: 4, numBlocks: 256, maxBatchTokens: 450 });
  for (const [id, n] of [["long", 700], ["mid", 300], ["short", 100]] as const) fcfs.sched.add(seq(id, n));
  assertEquals(shape(fcfs.sim.tick()), [["long", 0, 450, false]]);
});

Deno.test("prefill order shortest: only requests that arrived within SHORTEST_FIRST_WINDOW_MS pass a waiting one", () => {
  // A decoding sequence, a long prompt waiting, then a short one arriving `waited` ms later.
  // `queued`: how long both then wait before the step forms (a burst whose prefill takes a while).
  const firstPrefill = (waited: number, queued = 0) => {
    const { sched, sim, advance } = setup({
      blockSize: 4,
      numBlocks: 256,
      maxBatchTokens: 64,
      prefillOrder: "shortest",
    });
    sched.add(seq("a", 8, 200));
    sim.tick();
    sched.add(seq("long", 100));
    advance(waited);
    sched.add(seq("short", 60));
    advance(queued);
    const plan = shape(sim.tick());
    sim.run();
    return plan;
  };
  assertEquals(firstPrefill(0), [["a", 8, 1, true], ["short", 0, 60, true], ["long", 0, 3, false]]);
  assertEquals(firstPrefill(0, 3 * SHORTEST_FIRST_WINDOW_MS), firstPrefill(0));
  assertEquals(firstPrefill(SHORTEST_FIRST_WINDOW_MS - 10), [["a", 8, 1, true], ["short", 0, 60, true], [
    "long",
    0,
    3,
    false,
  ]]);
  assertEquals(firstPrefill(SHORTEST_FIRST_WINDOW_MS), [["a", 8, 1, true], ["long", 0, 63, false]]);
});

Deno.test("prefill order shortest: a preempted sequence restarts before shorter new prompts", () => {
  const { sched, sim } = setup({
    numBlocks: 6,
    blockSize: 4,
    maxBatchTokens: 64,
    prefixCaching: false,
    prefillOrder: "shortest",
  });
  const [a, b, c] = [seq("a", 8, 8), seq("b", 8, 8), seq("c", 8, 8)];
  for (const s of [a, b, c]) sched.add(s);
  sim.tick();
  assertEquals(sim.tick()!.preempted.map((s) => s.id), ["c"]);
  sched.add(seq("tiny", 1, 1));
  // c (9 tokens to recompute) stays at the front of the queue, ahead of the 1-token prompt.
  sim.tick();
  assertEquals(sched.waiting.map((s) => s.id), ["c", "tiny"]);
  sim.run();
  const restarts = sim.plans.flatMap((p) => p.items).filter((i) => i.start === 0 && i.numTokens > 0)
    .map((i) => i.seq.id);
  assert(restarts.indexOf("c", 3) < restarts.indexOf("tiny"), `restarts ${restarts}`);
});

Deno.test("static policy: a batch runs until it drains before the next one is admitted", () => {
  const { sched, sim } = setup({ policy: "static", maxBatchTokens: 64 });
  sched.add(seq("a", 10, 3));
  sched.add(seq("b", 10, 5));
  assertEquals(shape(sim.tick()), [["a", 0, 10, true], ["b", 0, 10, true]]);
  sched.add(seq("c", 10, 3));
  assertEquals(shape(sim.tick()), [["a", 10, 1, true], ["b", 10, 1, true]]);
  assertEquals(shape(sim.tick()), [["a", 11, 1, true], ["b", 11, 1, true]]);
  // a has its 3 tokens in flight; b still decodes alone, c keeps waiting.
  assertEquals(shape(sim.tick()), [["b", 12, 1, true]]);
  assertEquals(shape(sim.tick()), [["b", 13, 1, true]]);
  assertEquals(sched.waiting.map((s) => s.id), ["c"]);
  sim.tick(); // nothing to schedule while b's last token is read back
  assertEquals(shape(sim.tick()), [["c", 0, 10, true]]);
  sim.run();
});

Deno.test("static policy: the batch stays open while its prompts are still being chunked", () => {
  const { sched, sim } = setup({ policy: "static", maxBatchTokens: 16 });
  sched.add(seq("a", 40, 2));
  sched.add(seq("b", 8, 2));
  assertEquals(shape(sim.tick()), [["a", 0, 16, false]]);
  assertEquals(shape(sim.tick()), [["a", 16, 16, false]]);
  assertEquals(shape(sim.tick()), [["a", 32, 8, true], ["b", 0, 8, true]]);
  sched.add(seq("c", 4, 2));
  assertEquals(shape(sim.tick()), [["a", 40, 1, true], ["b", 8, 1, true]]);
  sim.run();
});

Deno.test("sequential policy: one sequence at a time", () => {
  const { sched, sim } = setup({ policy: "sequential" });
  sched.add(seq("a", 5, 2));
  sched.add(seq("b", 5, 2));
  assertEquals(shape(sim.tick()), [["a", 0, 5, true]]);
  assertEquals(shape(sim.tick()), [["a", 5, 1, true]]);
  assertEquals(sim.tick(), null); // a's last token is being read back
  assertEquals(shape(sim.tick()), [["b", 0, 5, true]]);
  sim.run();
  assert(sim.plans.every((p) => p.items.length === 1));
});

Deno.test("requests that can never fit are rejected with context_length_exceeded", () => {
  const { sched } = setup({ numBlocks: 4, blockSize: 4, maxContext: 64 });
  const code = (s: Sequence) => (assertThrows(() => sched.add(s)) as SchedulerError).code;
  assertEquals(code(seq("long", 65, 1)), "context_length_exceeded");
  assertEquals(code(seq("long-out", 60, 5)), "context_length_exceeded");
  assertEquals(code(seq("pool", 10, 8)), "context_length_exceeded"); // 17 positions > 16 slots
  assertEquals(code(seq("empty", 0, 1)), "invalid_request");
  sched.add(seq("fits", 10, 7)); // 16 positions: the last sampled token needs no KV
  assertThrows(() => sched.add(seq("fits", 1, 1)), /duplicate/);
  assertEquals(sched.stats().waiting, 1);
});

Deno.test("abort frees blocks wherever the sequence is: waiting, prefilling, decoding", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, maxBatchTokens: 16 });
  const dec = seq("dec", 4, 10);
  sched.add(dec);
  sim.tick();
  sched.add(seq("pre", 40));
  sched.add(seq("wait", 8));
  sim.tick(); // dec decodes, pre takes a 15-token chunk, wait is out of budget
  const pre = sched.get("pre")!;
  assertEquals([pre.status, pre.numComputed, pre.blockTable.length], ["running", 15, 4]);

  assertEquals(sched.abort("wait")?.finishReason, "abort");
  assertEquals(sched.stats().waiting, 0);
  const used = bm.numUsed;
  sched.abort("pre");
  assertEquals(bm.numUsed, used - 4);
  sched.abort("dec"); // its token from the last step is still in flight
  assertEquals(bm.numUsed, 0);
  assertEquals(sched.abort("dec"), undefined);
  assertEquals(sim.tick(), null);
  sim.run(); // the in-flight token is discarded
  assertEquals(dec.outputIds.length, 1);
  assertEquals(sim.wasted, 1);
});

Deno.test("a sequence that needs CPU logits decodes only once its token is read back", () => {
  const { sched, sim } = setup();
  sched.add(seq("cpu", 4, 4, { logprobs: 1 }));
  sched.add(seq("gpu", 4, 4));
  assertEquals(shape(sim.tick()), [["cpu", 0, 4, true], ["gpu", 0, 4, true]]);
  assertEquals(shape(sim.tick()), [["gpu", 4, 1, true]]); // cpu's first token is still pending
  assertEquals(shape(sim.tick()), [["cpu", 4, 1, true], ["gpu", 5, 1, true]]);
  assertEquals(shape(sim.tick()), [["gpu", 6, 1, true]]);
  assertEquals(shape(sim.tick()), [["cpu", 5, 1, true]]);
  sim.run();
  assertEquals(sched.stats().blocksUsed, 0);
});

Deno.test("idle means zero blocks used, and timestamps are filled in", () => {
  const { sched, sim, bm } = setup({ maxSeqs: 2, maxBatchTokens: 8 });
  const seqs = ["a", "b", "c"].map((id) => seq(id, 5, 3));
  for (const s of seqs) sched.add(s);
  sim.run();
  assertEquals([bm.numUsed, sched.stats().running, sched.stats().waiting], [0, 0, 0]);
  assertEquals(sched.schedule(), null);
  for (const s of seqs) {
    assert(s.firstScheduledTime !== null && s.firstTokenTime! > s.firstScheduledTime, s.id);
    assert(s.lastTokenTime! > s.firstTokenTime!, s.id);
  }
});

// ---- Prefix caching -------------------------------------------------------------------------------

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

Deno.test("prefix cache: a prompt that extends a finished one computes only its new tokens", () => {
  const { sched, sim } = setup({ blockSize: 4 });
  const a = seqOf("a", range(500, 20), 3);
  sched.add(a);
  sim.run();
  assertEquals(a.numCachedTokens, 0);
  const b = seqOf("b", [...range(500, 20), ...range(900, 6)], 3);
  sched.add(b);
  assertEquals(shape(sim.tick()), [["b", 20, 6, true]]); // a's 5 prompt blocks reused
  sim.run();
  assertEquals(b.numCachedTokens, 20);
  const st = sched.stats();
  assertEquals([st.prefixCacheQueries, st.prefixCacheHits], [20 + 26, 20]);
  assertEquals(b.outputIds, [1000, 1001, 1002]);
});

Deno.test("prefix cache: a prompt cached whole still computes its last token, for its logits", () => {
  const { sched, sim } = setup({ blockSize: 4 });
  sched.add(seqOf("a", range(500, 16), 2));
  sim.run();
  sched.add(seqOf("b", range(500, 16), 2));
  // 4 blocks cached, but position 15 must be computed: the last block is recomputed.
  assertEquals(shape(sim.tick()), [["b", 12, 4, true]]);
  sched.add(seqOf("c", range(500, 17), 2));
  // c also finds a's decode blocks? No: a's outputs (1000, ...) are not c's 17th token.
  assertEquals(shape(sim.tick()), [["b", 16, 1, true], ["c", 16, 1, true]]);
  sim.run();
  assertEquals(sched.get("c"), undefined);
});

Deno.test("prefix cache: a multi-turn conversation reuses the previous turn's answer blocks", () => {
  const { sched, sim } = setup({ blockSize: 4 });
  const t1 = seqOf("turn1", range(500, 10), 8);
  sched.add(t1);
  sim.run();
  // The next turn's prompt is the whole first turn (prompt + answer) and a new question.
  const t2 = seqOf("turn2", [...t1.promptIds, ...t1.outputIds, ...range(700, 5)], 4);
  sched.add(t2);
  // Positions 0..15 are in full blocks committed by turn 1 (its answer's KV was computed by its
  // decodes, position 17 never was: the last sampled token is never fed back).
  assertEquals(shape(sim.tick()), [["turn2", 16, 7, true]]);
  sim.run();
  assertEquals(t2.numCachedTokens, 16);
});

Deno.test("prefix cache: blocks are shared as soon as dispatched, while their writer still prefills", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, maxChunkTokens: 8 });
  const prompt = range(500, 30);
  sched.add(seqOf("a", prompt, 2));
  assertEquals(shape(sim.tick()), [["a", 0, 8, false]]);
  sched.add(seqOf("b", prompt, 2));
  // a's first two blocks were committed when its step was submitted: b starts at 8, beside a.
  assertEquals(shape(sim.tick()), [["a", 8, 8, false], ["b", 8, 8, false]]);
  // Both computed 8..15 in the same step; on submission b's copies give way to a's blocks.
  const a = sched.get("a")!, b = sched.get("b")!;
  assertEquals(b.blockTable, a.blockTable);
  assertEquals(bm.numUsed, 4);
  assertEquals(shape(sim.tick()), [["a", 16, 8, false], ["b", 16, 8, false]]);
  sim.run();
  assertEquals(b.numCachedTokens, 8);
});

Deno.test("prefix cache: finished requests' blocks stay cached until the pool needs them, LRU first", () => {
  const { sched, sim, bm } = setup({ numBlocks: 10, blockSize: 4 });
  sched.add(seqOf("a", range(100, 12), 1)); // 3 blocks, all committed (the sampled token needs no KV)
  sim.run();
  sched.add(seqOf("b", range(200, 12), 1));
  sim.run();
  assertEquals([bm.numUsed, bm.numFree, bm.numCached], [0, 10, 6]);
  // c needs 6 blocks: the 4 never cached first, then the least recently released cached ones:
  // a's, its last block first, so a keeps its first block.
  sched.add(seqOf("c", range(300, 24), 1));
  sim.run();
  assertEquals(bm.numCached, 6 - 2 + 6);
  sched.add(seqOf("b2", range(200, 12), 1));
  // b is intact; its last block is recomputed (the last token must be), into a new block that
  // evicts a's first block, the oldest left.
  assertEquals(shape(sim.tick()), [["b2", 8, 4, true]]);
  sim.run();
  sched.add(seqOf("a2", range(100, 12), 1));
  assertEquals(shape(sim.tick()), [["a2", 0, 12, true]]);
  sim.run();
  assertEquals(bm.numUsed, 0);
});

Deno.test("prefix cache: a preempted sequence recomputes only what is no longer cached", () => {
  // As "the pool runs dry" above, with caching: a restart begins where its cached prefix ends.
  const { sched, sim } = setup({ numBlocks: 6, blockSize: 4, maxBatchTokens: 64 });
  const [a, b, c] = [seq("a", 8, 8), seq("b", 8, 8), seq("c", 8, 8)];
  for (const s of [a, b, c]) sched.add(s);
  sim.run();
  for (const s of [a, b, c]) assertEquals([s.id, s.outputIds.length, s.finishReason], [s.id, 8, "length"]);
  // The first item of a sequence after each of its preemptions, as [id, start, numTokens].
  const restarts: [string, number, number][] = [];
  const preempted = new Set<Sequence>();
  for (const plan of sim.plans) {
    for (const s of plan.preempted) preempted.add(s);
    for (const it of plan.items) {
      if (preempted.delete(it.seq)) restarts.push([it.seq.id, it.start, it.numTokens]);
    }
  }
  assertEquals(restarts.length, b.numPreemptions + c.numPreemptions);
  // The Sim checks every read against what the slot holds, so a restart past an evicted block
  // would have failed.
  assertEquals(restarts, [["b", 8, 5], ["c", 0, 9]]); // b kept its prompt blocks, c lost its own
  assertEquals([b.numCachedTokens, c.numCachedTokens], [0, 0]); // usage counts the first admission
});

Deno.test("prefix cache: aborts in every state leave the pool consistent and the prefix reusable", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, maxBatchTokens: 16 });
  const prompt = range(500, 24);
  sched.add(seqOf("a", prompt, 10));
  sim.tick(); // a prefills 16
  sched.add(seqOf("b", prompt, 10));
  sim.tick(); // a prefills 8 more and samples; b reuses a's first 4 blocks, then is out of budget
  sched.add(seqOf("c", prompt, 10));
  sim.tick();
  sched.abort("a");
  sched.abort("c");
  const bNow = sched.get("b")!;
  assertEquals(bm.numUsed, new Set(bNow.blockTable).size);
  sched.abort("b");
  assertEquals(bm.numUsed, 0);
  sim.run();
  assert(bm.numCached >= 5, `cached ${bm.numCached}`);
  sched.add(seqOf("d", prompt, 2));
  assertEquals(shape(sim.tick()), [["d", 20, 4, true]]);
  sim.run();
  const st = sched.stats();
  assert(st.prefixCacheHits <= st.prefixCacheQueries);
  assertEquals([st.running, st.waiting, st.blocksUsed], [0, 0, 0]);
});

Deno.test("answers as prompts: an answer's full blocks are computed as a prompt's once the engine idles, and the next turn reuses them", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, numBlocks: 64, maxBatchTokens: 64, splitAtPrompt: true });
  const turn = (id: string, cacheAnswer: boolean) => {
    const s = seq(id, 6, 10);
    s.cacheAnswer = cacheAnswer;
    sched.add(s);
    sim.run();
    return s;
  };
  const a = turn("a", true);
  // Neither decodes alone nor the finished answer take a step for 12 answer tokens (a client sending
  // its next turn at once would find that step ahead of its own), until the engine has idled a while:
  // from the block holding the prompt's end (cached with answer tokens as an answer's) to the last
  // full block.
  assert(sim.plans.every((p) => p.items.every((i) => !i.seq.id.endsWith("/answer"))));
  assertEquals(sim.tick(ANSWER_IDLE_MS - 1), null);
  assertEquals(shape(sim.tick(ANSWER_IDLE_MS)), [["a/answer", 4, 12, false]]);
  sim.run();
  const next = (s: Sequence) => {
    const n = seqOf(`${s.id}2`, [...s.promptIds, ...s.outputIds, 7, 7], 2);
    sched.add(n);
    sim.run();
    return n.numCachedTokens;
  };
  assertEquals(next(a), 16);
  // Or another request's prompt part takes them along.
  const e = turn("e", true);
  sched.add(seq("c", 5, 1));
  assertEquals(shape(sim.tick()), [["c", 0, 5, true], ["e/answer", 4, 12, false]]);
  sim.run();
  assertEquals(next(e), 16);
  // Without cacheAnswer only the prompt's full block is reused: the answer's KV is not a prompt's.
  const b = turn("b", false);
  assertEquals(sim.tick(ANSWER_IDLE_MS), null);
  assertEquals(next(b), 4);
  assertEquals(bm.numUsed, 0);
});

Deno.test("answers as prompts: copies ride a step with prompt work, or a replay's worth; a turn resending the answer first computes it itself", () => {
  const { sched, sim } = setup({ blockSize: 4, numBlocks: 256, maxBatchTokens: 512, splitAtPrompt: true });
  const a = seq("a", 6, 40);
  a.cacheAnswer = true;
  sched.add(a);
  while (a.outputIds.length < 12) sim.tick();
  assert(sim.plans.every((p) => p.items.every((i) => !i.seq.id.endsWith("/answer"))));
  // Another request's prompt makes a prompt part: the copy goes with it, after it.
  sched.add(seq("c", 5, 2));
  const plan = shape(sim.tick());
  assertEquals(plan.slice(1, 2), [["c", 0, 5, true]]);
  assertEquals(plan[2].slice(0, 2), ["a/answer", 4]);
  assertEquals(plan[2][3], false);
  // A turn resending the answer before its copy: no copy of those blocks, the turn computes them.
  while (a.outputIds.length < 24) sim.tick();
  const turn = seqOf("a2", [...a.promptIds, ...a.outputIds, 9], 2);
  sched.add(turn);
  const withTurn = sim.tick()!;
  assert(withTurn.items.some((i) => i.seq === turn));
  assert(withTurn.items.every((i) => !i.seq.id.endsWith("/answer")));
  sim.run();

  // Decodes alone take a copy once ANSWER_BATCH_TOKENS answer tokens have gathered.
  const long = seq("long", 4, ANSWER_BATCH_TOKENS + 40);
  long.cacheAnswer = true;
  sched.add(long);
  let first: [string, number, number, boolean] | undefined;
  while (!first) first = shape(sim.tick()).find((i) => i[0] === "long/answer");
  assertEquals(first, ["long/answer", 4, ANSWER_BATCH_TOKENS, false]);
  assertEquals(long.status, "running");
  sim.run();
});

Deno.test("answers as prompts: predicted tokens (predictAnswer) are computed in place of the sampled ones, and the turn sending them reuses them", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, numBlocks: 64, maxBatchTokens: 64, splitAtPrompt: true });
  const owner = (id: string) => {
    const s = seq(id, 6, 10);
    s.cacheAnswer = true;
    s.predictAnswer = true;
    sched.add(s);
    sim.run();
    return s;
  };
  const a = owner("a");
  // Before a prediction there is nothing to compute, even idle: the sampled ids are not the work.
  assertEquals(sim.tick(ANSWER_IDLE_MS), null);
  // The answer's text comes back split otherwise than sampled: the prompt's tokens, then others. A
  // settled part first (blocks up to position 8), then the final one, which differs from position 7.
  const partial = [...a.promptIds, 900, 901, 902];
  const predicted = [...a.promptIds, 900, 955, ...range(960, 9)];
  sched.predictAnswer("a", partial, false);
  assertEquals(shape(sim.tick(ANSWER_IDLE_MS)), [["a/answer", 4, 4, false]]);
  sim.run();
  sched.predictAnswer("a", predicted, true);
  assertEquals(shape(sim.tick(ANSWER_IDLE_MS)), [["a/answer", 4, 12, false]]);
  sim.run();
  const a2 = seqOf("a2", [...predicted, 7, 7], 2);
  sched.add(a2);
  sim.run();
  assertEquals(a2.numCachedTokens, 16);
  // The owner is let go after its final prediction: later ones are ignored.
  sched.predictAnswer("a", [...predicted, ...range(980, 8)], true);
  assertEquals(sim.tick(ANSWER_IDLE_MS), null);

  // A turn that sends the predicted tokens before their copy ran computes them itself.
  const b = owner("b");
  const bPredicted = [...b.promptIds, ...range(700, 10)];
  sched.predictAnswer("b", bPredicted, true);
  const b2 = seqOf("b2", [...bPredicted, 7], 2);
  sched.add(b2);
  const plan = sim.tick()!;
  assertEquals(shape(plan), [["b2", 4, 13, true]]);
  sim.run();
  assertEquals(sim.tick(ANSWER_IDLE_MS), null);

  // An aborted owner's predictions are ignored.
  const c = seq("c", 6, 10);
  c.cacheAnswer = c.predictAnswer = true;
  sched.add(c);
  sim.tick();
  sched.abort("c");
  sim.run();
  sched.predictAnswer("c", [...c.promptIds, ...range(800, 10)], true);
  assertEquals(sim.tick(ANSWER_IDLE_MS), null);
  assertEquals(bm.numUsed, 0);
});

Deno.test("prefix cache off: identical prompts share nothing and nothing is counted", () => {
  const { sched, sim, bm } = setup({ blockSize: 4, prefixCaching: false });
  sched.add(seqOf("a", range(500, 16), 2));
  sim.run();
  sched.add(seqOf("b", range(500, 16), 2));
  assertEquals(shape(sim.tick()), [["b", 0, 16, true]]);
  sim.run();
  const st = sched.stats();
  assertEquals([st.prefixCacheQueries, st.prefixCacheHits, st.blocksCached, bm.numCached], [0, 0, 0, 0]);
});

Deno.test("prefix cache: random workloads over shared prefixes keep every invariant", () => {
  let state = 777;
  const rand = (n: number) => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state % n;
  };
  // Predictions draw from a stream of their own, so the rest of each trial is as without them.
  let state2 = 4242;
  const rand2 = (n: number) => {
    state2 = (state2 * 1103515245 + 12345) % 2147483648;
    return state2 % n;
  };
  let hits = 0, preemptions = 0, answerHits = 0, copies = 0, predictedHits = 0;
  for (let trial = 0; trial < 100; trial++) {
    const policy = (["continuous", "static", "sequential"] as const)[trial % 3];
    const prefillOrder = Math.floor(trial / 3) % 2 ? "shortest" : "arrival";
    // Long-query mode prompts: answers' KV is not prompts' (the Sim checks), and cached as prompts'
    // by copies for the sequences that ask.
    const splitAtPrompt = Math.floor(trial / 6) % 2 === 1;
    const blockSize = 1 + rand(6);
    const numBlocks = 4 + rand(40);
    const { sched, sim, bm } = setup({
      numBlocks,
      blockSize,
      maxBatchTokens: 1 + rand(48),
      maxSeqs: 1 + rand(6),
      maxChunkTokens: rand(2) ? 1 + rand(16) : undefined,
      policy,
      capturedPrefillTokens: rand(100) < 50 ? 4 + rand(40) : undefined,
      burstPrefillTokens: rand(2) ? 8 + rand(60) : undefined,
      prefillOrder,
      splitAtPrompt,
    });
    // A few system prompts, each continued by a few user turns, so prompts share prefixes.
    const systems = [range(100, 3 + rand(20)), range(200, 3 + rand(20)), range(300, 1 + rand(5))];
    const expected = new Map<Sequence, number>();
    const answerOf = new Map<Sequence, Sequence>();
    // Owners with predictAnswer and their latest prediction: their prompt, then tokens of their own.
    const predictions = new Map<Sequence, number[]>();
    const predictedTurns = new Map<Sequence, Sequence>();
    let id = 0;
    const addSome = (k: number) => {
      for (let i = 0; i < k; i++) {
        const capacity = numBlocks * blockSize;
        const sys = systems[rand(systems.length)];
        // Or a conversation's next turn: an earlier request's prompt and answer so far, then more.
        const earlier = [...expected.keys()].filter((e) => e.outputIds.length > 0);
        const predicted = [...predictions.keys()];
        const owner = predicted.length > 0 && rand2(4) === 0 ? predicted[rand2(predicted.length)] : undefined;
        const head = owner
          ? predictions.get(owner)!
          : earlier.length > 0 && rand(3) === 0
          ? (({ promptIds, outputIds }) => [...promptIds, ...outputIds])(earlier[rand(earlier.length)])
          : sys;
        const prompt = [...head, ...range(1000 + 10 * rand(4), rand(12))].slice(0, Math.min(capacity, 40));
        const maxTokens = 1 + rand(Math.min(capacity - prompt.length + 1, 20));
        const s = seqOf(`t${trial}-${id++}`, prompt, maxTokens, rand(3) === 0 ? { logprobs: 0 } : {});
        if (rand(4) === 0) sim.eosAt.set(s.id, rand(maxTokens));
        s.cacheAnswer = rand(2) === 0;
        s.predictAnswer = s.cacheAnswer && rand2(3) === 0;
        const from = earlier.find((e) =>
          e.cacheAnswer && [...e.promptIds, ...e.outputIds].every((t, i) => prompt[i] === t)
        );
        sched.add(s);
        if (splitAtPrompt && from && !from.predictAnswer) answerOf.set(s, from);
        if (splitAtPrompt && owner && prompt.length >= head.length) predictedTurns.set(s, owner);
        expected.set(s, sim.eosAt.has(s.id) ? sim.eosAt.get(s.id)! + 1 : maxTokens);
      }
    };
    addSome(1 + rand(8));
    for (let t = 0; t < 30; t++) {
      sim.tick();
      if (rand(3) === 0) addSome(1 + rand(3));
      // A prediction for an owner, running or done: its prompt and tokens the HTTP side would render.
      const owners = [...expected.keys()].filter((e) => e.predictAnswer);
      if (owners.length > 0 && rand2(2) === 0) {
        const o = owners[rand2(owners.length)];
        const ids = [...o.promptIds, ...range(5000 + 100 * rand2(3), 1 + rand2(16))].slice(0, 40);
        predictions.set(o, ids);
        sched.predictAnswer(o.id, ids, rand2(3) === 0);
      }
      if (rand(10) === 0 && sched.running.length > 0) {
        sched.abort(sched.running[rand(sched.running.length)].id);
      }
    }
    sim.run();
    for (const [s, n] of expected) {
      if (s.finishReason !== "abort") assertEquals(s.outputIds.length, n, `${policy} ${s.id}`);
    }
    // A turn that found its earlier answer's blocks cached as a prompt's (past that answer's prompt),
    // and the copies that computed answers as prompts.
    for (const [s, from] of answerOf) {
      if (s.numCachedTokens > Math.floor(from.promptIds.length / blockSize) * blockSize) answerHits++;
    }
    for (const [s, o] of predictedTurns) {
      if (s.numCachedTokens > Math.floor(o.promptIds.length / blockSize) * blockSize) predictedHits++;
    }
    copies += sim.plans.reduce((n, p) => n + p.items.filter((i) => i.seq.id.endsWith("/answer")).length, 0);
    const st = sched.stats();
    assertEquals([st.running, st.waiting, bm.numUsed, bm.numFree], [0, 0, 0, numBlocks]);
    assert(st.prefixCacheHits <= st.prefixCacheQueries && bm.numCached <= numBlocks);
    hits += st.prefixCacheHits;
    preemptions += st.preemptionsTotal;
  }
  assert(
    hits > 0 && preemptions > 0 && answerHits > 0 && copies > 0 && predictedHits > 0,
    `hits ${hits}, preemptions ${preemptions}, answer hits ${answerHits}, copies ${copies}, ` +
      `predicted hits ${predictedHits}`,
  );
});
