// Steps in flight (--pipeline-depth): a fixed depth is never exceeded and is reached under load,
// "auto" keeps two in flight once steps are slow, and a request's tokens never depend on the depth.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Harness,
  type Outcome,
  outcomeOf,
  params,
  startEngine,
  stories,
  STORY_TEXT,
} from "../helpers/engine.ts";
import type { StepStats } from "../../engine/llm_engine.ts";
import type { EngineSettings } from "../../engine/protocol.ts";

interface Flight {
  /** Most steps dispatched and not yet read back, over the run. */
  max: number;
  /** The same, over the steps after the first `settle` (once "auto" has timed a few). */
  maxSettled: number;
  steps: StepStats[];
}

/**
 * Counts the runner's steps in flight (dispatched, results not yet back); `readDelayMs` makes every
 * readback that much later, as a slow device would.
 */
function watch(h: Harness, readDelayMs: number, settle: number): Flight {
  const f: Flight = { max: 0, maxSettled: 0, steps: [] };
  let inFlight = 0, dispatched = 0;
  const run = h.runner.run.bind(h.runner), read = h.runner.read.bind(h.runner);
  h.runner.run = async (s) => {
    const handle = await run(s);
    inFlight++;
    dispatched++;
    f.max = Math.max(f.max, inFlight);
    if (dispatched > settle) f.maxSettled = Math.max(f.maxSettled, inFlight);
    return handle;
  };
  h.runner.read = async (handle) => {
    const r = await read(handle);
    if (readDelayMs > 0) await new Promise((res) => setTimeout(res, readDelayMs));
    inFlight--;
    return r;
  };
  h.engine.onStep = (s) => f.steps.push(s);
  return f;
}

async function generateAll(h: Harness): Promise<Map<string, Outcome>> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const runs = [0, 1, 2, 3].map(async (i) => {
    const id = `r${i}`;
    const promptIds = [1, ...story.slice(i * 23, i * 23 + 5 + i * 9)];
    // Greedy and seeded GPU sampling, and a penalty (its pending token counted on the GPU): all
    // pipelined.
    const p = i === 3
      ? params({
        maxTokens: 20,
        ignoreEos: true,
        temperature: 0.8,
        seed: 5,
        topP: 0.9,
        frequencyPenalty: 0.3,
      })
      : params({ maxTokens: 20 + 3 * i, ignoreEos: true, temperature: i === 1 ? 0.8 : 0, seed: 3 });
    return [id, outcomeOf(await h.generate(id, promptIds, p))] as const;
  });
  return new Map(await Promise.all(runs));
}

async function runWith(settings: EngineSettings, readDelayMs = 0, settle = 0, software?: boolean) {
  const h = await startEngine(settings);
  try {
    if (software !== undefined) h.runner.softwareAdapter = software;
    const flight = watch(h, readDelayMs, settle);
    const outcomes = await generateAll(h);
    return { flight, outcomes };
  } finally {
    await h.close();
  }
}

Deno.test("engine: a fixed pipeline depth bounds the steps in flight and never changes tokens", async () => {
  const one = await runWith({ pipelineDepth: 1 });
  const three = await runWith({ pipelineDepth: 3 });
  assertEquals(one.flight.max, 1);
  // Under load (decode steps back to back), three are in flight at once, and never more.
  assertEquals(three.flight.max, 3);
  assert(three.flight.steps.every((s) => s.depth <= 3) && one.flight.steps.every((s) => s.depth === 1));
  for (const [id, o] of three.outcomes) {
    assertEquals(o.finishReason, "length", id);
    assertEquals(o, one.outcomes.get(id), `${id}: depth 3 vs depth 1`);
  }
});

Deno.test("engine: pipeline depth auto keeps two steps in flight once steps are slow", async () => {
  // Every readback 80 ms late: each step then takes longer than LONG_STEP_MS (40 ms) results to results.
  // The rule for a GPU: the tests' llvmpipe is a software adapter, which keeps one (next test).
  const slow = await runWith({ pipelineDepth: "auto" }, 80, 8, false);
  assertEquals(slow.flight.maxSettled, 2);
  const later = slow.flight.steps.slice(8);
  assert(later.length > 10 && later.every((s) => s.depth <= 2), "auto kept more than two in flight");
  const fixed = await runWith({ pipelineDepth: 3 });
  for (const [id, o] of slow.outcomes) {
    assertEquals(o, fixed.outcomes.get(id), `${id}: auto (slow) vs depth 3`);
  }
});

Deno.test("engine: pipeline depth auto keeps one step in flight on a software adapter", async () => {
  const cpu = await runWith({ pipelineDepth: "auto" }, 0, 0, true);
  assertEquals(cpu.flight.max, 1);
  assert(cpu.flight.steps.length > 20 && cpu.flight.steps.every((s) => s.depth === 1));
  // Without the software flag the same load (fast readbacks, short steps) runs three deep.
  const gpu = await runWith({ pipelineDepth: "auto" }, 0, 0, false);
  assertEquals(gpu.flight.max, 3);
  for (const [id, o] of cpu.outcomes) assertEquals(o, gpu.outcomes.get(id), `${id}: software vs GPU rule`);
});

Deno.test("engine: a penalised request pipelines, its pending tokens counted as known ones", async () => {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const promptIds = [1, ...story.slice(0, 12)];
  // Alone, so that only its own decodes could overlap; greedy and sampled, each with every penalty.
  const runs = [0, 0.9].map((temperature) =>
    params({
      maxTokens: 24,
      ignoreEos: true,
      temperature,
      seed: 11,
      repetitionPenalty: 1.4,
      frequencyPenalty: 0.6,
      presencePenalty: 0.3,
      logitBias: { [story[3]]: 1.5 },
    })
  );
  for (const p of runs) {
    const out: Record<number, { flight: Flight; outcome: Outcome }> = {};
    for (const depth of [1, 3] as const) {
      const h = await startEngine({ pipelineDepth: depth });
      try {
        const flight = watch(h, 0, 0);
        out[depth] = { flight, outcome: outcomeOf(await h.generate("p", promptIds, p)) };
      } finally {
        await h.close();
      }
    }
    assert(out[3].flight.max >= 2, `T ${p.temperature}: its decodes never overlapped`);
    assertEquals(out[3].outcome, out[1].outcome, `T ${p.temperature}: depth 3 vs depth 1`);
    assertEquals(out[1].outcome.finishReason, "length");
  }
});
