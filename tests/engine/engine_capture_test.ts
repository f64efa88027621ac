// Captured decode steps (engine/captured_steps.ts) against uncaptured ones: the same requests give
// the same tokens with --graph-capture on and off, greedy and seeded (GPU and CPU sampling), with and
// without preemption; the captured path is really taken, and /metrics and the step log say so.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Harness,
  type Outcome,
  outcomeOf,
  params,
  startEngine,
  stories,
  STORY_TEXT,
  type Submission,
} from "../helpers/engine.ts";
import type { StepStats } from "../../engine/llm_engine.ts";
import type { EngineClient } from "../../engine/protocol.ts";
import { Metrics } from "../../http/metrics.ts";

async function requests(n: number): Promise<Submission[]> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const reqs: Submission[] = [];
  for (let i = 0; i < n; i++) {
    const promptIds = [1, ...story.slice((i * 37) % 200, (i * 37) % 200 + 3 + ((i * 13) % 60))];
    // All prompts prefill in a step or two, so all decode together: the CPU-sampled ones (top_p, whose
    // steps are never captured) stop first, and the rest stop at many different lengths after them.
    const maxTokens = i % 4 === 3 ? 12 : 14 + ((i * 5) % 23);
    reqs.push({ id: `g${i}`, promptIds, params: params({ maxTokens, ignoreEos: true }) });
    reqs.push({
      id: `s${i}`,
      promptIds,
      // Plain temperature samples on the GPU (after a captured step too); top_p on the CPU.
      params: params({
        maxTokens,
        ignoreEos: true,
        temperature: 0.8,
        seed: 7 + i,
        topP: i % 4 === 3 ? 0.9 : 1,
      }),
    });
  }
  return reqs;
}

/** Every request at once; outcomes by id, and the engine's steps. */
async function runAll(
  h: Harness,
  reqs: Submission[],
): Promise<{ out: Map<string, Outcome>; steps: StepStats[] }> {
  const steps: StepStats[] = [];
  h.engine.onStep = (s) => steps.push(s);
  const done = await Promise.all(reqs.map((r) => h.generate(r.id, r.promptIds, r.params)));
  return { out: new Map(reqs.map((r, i) => [r.id, outcomeOf(done[i])])), steps };
}

async function compare(kvCacheMb: number | undefined, n: number) {
  const reqs = await requests(n);
  const runs = [];
  for (const graphCapture of [true, false]) {
    const lines: string[] = [];
    const h = await startEngine({ graphCapture, kvCacheMb, debugSteps: true, log: (l) => lines.push(l) });
    try {
      runs.push({ ...await runAll(h, reqs), stats: h.engine.stats(), lines });
    } finally {
      await h.close();
    }
  }
  const [on, off] = runs;
  for (const r of reqs) assertEquals(on.out.get(r.id), off.out.get(r.id), r.id);
  for (const r of reqs) assertEquals(on.out.get(r.id)!.finishReason, "length", r.id);

  // Capture on: decode-only steps without CPU logits replay captured sessions, the rest do not.
  const captured = on.steps.filter((s) => s.path === "captured");
  assert(captured.length > 0, "no step took the captured path");
  for (const s of captured) assertEquals(s.tokens, s.seqs, `captured step ${s.step} is not one token a row`);
  assertEquals(on.stats.stepsByPath, {
    captured: captured.length,
    uncaptured: on.steps.length - captured.length,
  });
  assertEquals(off.stats.stepsByPath, { captured: 0, uncaptured: off.steps.length });
  assert(
    on.lines.some((l) => l.startsWith("step ") && l.includes('"path":"captured"')),
    "no captured step line",
  );
  assert(on.lines.some((l) => l.startsWith("graph capture: decode session batch")), on.lines.join("\n"));

  const metrics = new Metrics().render({ stats: () => on.stats } as EngineClient);
  assert(metrics.includes(`ragtime_engine_steps_total{path="captured"} ${captured.length}`), metrics);
  assert(
    metrics.includes(`ragtime_engine_steps_total{path="uncaptured"} ${on.steps.length - captured.length}`),
  );
  return { on, off };
}

Deno.test("graph capture on and off give identical tokens (greedy, seeded GPU and CPU sampling)", async () => {
  const { on } = await compare(undefined, 12);
  assertEquals(on.stats.preemptionsTotal, 0);
  // 24 requests at once: decode steps of many sizes, so several batch buckets were captured.
  const shapes = new Set(on.steps.filter((s) => s.path === "captured").map((s) => s.seqs));
  assert(shapes.size > 2, `captured steps of only ${[...shapes]} sequences`);
});

Deno.test("graph capture on and off give identical tokens when a tiny KV pool forces preemption", async () => {
  // 12 blocks of 16 tokens (the runner keeps one more for its padding item).
  const { on, off } = await compare((13 * 2048 * 10) / 2 ** 20, 8);
  assert(on.stats.preemptionsTotal > 0, "no preemption");
  assertEquals(on.stats.preemptionsTotal, off.stats.preemptionsTotal);
});
