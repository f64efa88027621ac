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
  TEST_LONG_QUERIES,
} from "../helpers/engine.ts";
import type { StepStats } from "../../engine/llm_engine.ts";
import type { EngineClient } from "../../engine/protocol.ts";
import { Metrics } from "../../http/metrics.ts";
import { captureShapes } from "../../engine/model_runner.ts";
import { pickCapturedPrompt } from "../../engine/captured_steps.ts";
import { singleSequenceStep } from "../../engine/step_inputs.ts";

async function requests(n: number): Promise<Submission[]> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const reqs: Submission[] = [];
  for (let i = 0; i < n; i++) {
    const promptIds = [1, ...story.slice((i * 37) % 200, (i * 37) % 200 + 3 + ((i * 13) % 60))];
    // All prompts prefill in a step or two, so all decode together: the CPU-sampled ones (logprobs,
    // whose steps are never captured) stop first, and the rest stop at many different lengths after them.
    const maxTokens = i % 4 === 3 ? 12 : 14 + ((i * 5) % 23);
    reqs.push({ id: `g${i}`, promptIds, params: params({ maxTokens, ignoreEos: true }) });
    reqs.push({
      id: `s${i}`,
      promptIds,
      // Temperature samples on the GPU (after a captured step too), with top_p and with a penalty
      // (logits edited in place) there as well; with logprobs on the CPU.
      params: params({
        maxTokens,
        ignoreEos: true,
        temperature: 0.8,
        seed: 7 + i,
        topP: i % 2 === 1 ? 0.9 : 1,
        presencePenalty: i % 4 === 1 ? 0.1 : 0,
        logprobs: i % 4 === 3 ? 1 : null,
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
      const issueRecorded = h.runner.issueRecorded;
      runs.push({
        ...await runAll(h, reqs),
        stats: h.engine.stats(),
        lines,
        splits: h.runner.splitDecodes,
        issueRecorded,
      });
    } finally {
      await h.close();
    }
  }
  const [on, off] = runs;
  for (const r of reqs) assertEquals(on.out.get(r.id), off.out.get(r.id), r.id);
  for (const r of reqs) assertEquals(on.out.get(r.id)!.finishReason, "length", r.id);

  // Capture on: decode-only steps without CPU logits replay captured sessions, the rest do not (in
  // long-query mode prompts, prompt-only steps too: engine_long_queries_test.ts).
  const captured = on.steps.filter((s) => s.path === "captured");
  assert(captured.length > 0, "no step took the captured path");
  for (const s of captured) {
    if (TEST_LONG_QUERIES === "prompts" && s.decodeTokens === 0) continue;
    assertEquals(s.tokens, s.seqs, `captured step ${s.step} is not one token a row`);
  }
  // In long-query mode prompts (RAGTIME_TEST_LONG_QUERIES) a step holding decodes and a prompt chunk
  // always runs as two parts, captured or not; on Dawn (splitDecodes) a mixed step with enough decodes
  // replays them apart when capture is on.
  const split = (r: typeof on) => r.steps.filter((s) => s.path === "split");
  const splits = (r: typeof on) => TEST_LONG_QUERIES === "prompts" || (r === on && r.splits);
  if (TEST_LONG_QUERIES === "prompts") {
    for (const s of [...split(on), ...split(off)]) {
      assert(s.prefillTokens > 0 && s.decodeTokens > 0, `step ${s.step}`);
    }
  }
  assertEquals(on.stats.stepsByPath, {
    captured: captured.length,
    uncaptured: on.steps.length - captured.length - split(on).length,
    split: splits(on) ? split(on).length : 0,
  });
  assertEquals(off.stats.stepsByPath, {
    captured: 0,
    uncaptured: off.steps.length - split(off).length,
    split: splits(off) ? split(off).length : 0,
  });
  assert(
    on.lines.some((l) => l.startsWith("step ") && l.includes('"path":"captured"')),
    "no captured step line",
  );
  assert(on.lines.some((l) => l.startsWith("graph capture: decode session batch")), on.lines.join("\n"));
  // Every captured session replays as the engine's record of onnxruntime's replay (replay_record.ts).
  if (on.issueRecorded) {
    assert(!on.lines.some((l) => l.includes("replayed by onnxruntime")), on.lines.join("\n"));
  }

  const metrics = new Metrics().render({ stats: () => on.stats } as EngineClient);
  assert(metrics.includes(`ragtime_engine_steps_total{path="captured"} ${captured.length}`), metrics);
  assert(
    metrics.includes(
      `ragtime_engine_steps_total{path="uncaptured"} ${on.steps.length - captured.length - split(on).length}`,
    ),
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

Deno.test("a mixed step split into a replay of its decodes gives the tokens of the unsplit step", async () => {
  // Greedy and seeded GPU sampling (CPU-sampled steps are never split): ten at once, then six more
  // while the ten decode, so that steps carry prefill chunks behind ten decodes.
  const reqs = (await requests(8)).filter((r) => r.params.topP === 1);
  assert(reqs.length >= 12);
  const [first, later] = [reqs.slice(0, 10), reqs.slice(10)];
  const runs = [];
  for (const split of [true, false]) {
    const h = await startEngine({});
    h.runner.splitDecodes = split;
    try {
      const steps: StepStats[] = [];
      const pending: Promise<[string, Outcome]>[] = [];
      const submit = (rs: Submission[]) => {
        for (const r of rs) {
          pending.push(h.generate(r.id, r.promptIds, r.params).then((ev) => [r.id, outcomeOf(ev)]));
        }
      };
      h.engine.onStep = (s) => {
        steps.push(s);
        if (s.step === 3) submit(later);
      };
      submit(first);
      while (pending.length < reqs.length) await new Promise((r) => setTimeout(r, 10));
      runs.push({ out: new Map(await Promise.all(pending)), steps, stats: h.engine.stats() });
    } finally {
      await h.close();
    }
  }
  const [on, off] = runs;
  for (const r of reqs) assertEquals(on.out.get(r.id), off.out.get(r.id), r.id);
  const split = on.steps.filter((s) => s.path === "split");
  assert(
    split.length > 0,
    `no step split: ${JSON.stringify(on.steps.map((s) => [s.prefillTokens, s.decodeTokens]))}`,
  );
  const minDecodes = TEST_LONG_QUERIES === "prompts" ? 1 : 8;
  for (const s of split) assert(s.prefillTokens > 0 && s.decodeTokens >= minDecodes, `split step ${s.step}`);
  assertEquals(on.stats.stepsByPath?.split, split.length);
  // Long-query mode prompts splits a step holding a prompt chunk whatever splitDecodes says.
  assert(
    off.steps.every((s) => s.path !== "split" || (TEST_LONG_QUERIES === "prompts" && s.prefillTokens > 0)),
  );
});

Deno.test("captured prompt rows between the smallest and 512 stop at the 4096 bound; longer contexts take 512", () => {
  const settings = {
    batchSizes: [16],
    kvCaps: [256, 1024, 4096],
    promptRows: [128, 256, 384, 512, 2048],
    eager: true,
  };
  const shapes = captureShapes(settings, 32752, true);
  const boundsOf = (rows: number) => shapes.filter((c) => c.rows === rows).map((c) => c.kvCap);
  const all = [256, 1024, 4096, 32752];
  assertEquals(boundsOf(128), all);
  assertEquals(boundsOf(256), [256, 1024, 4096]);
  assertEquals(boundsOf(384), [256, 1024, 4096]);
  assertEquals(boundsOf(512), all);
  assertEquals(boundsOf(2048), all);
  // Decode shapes keep every bound; without long-query mode "prompts" there are no prompt shapes.
  assertEquals(shapes.filter((c) => c.kind === "decode").map((c) => c.kvCap), all);
  assertEquals(captureShapes(settings, 32752, false).every((c) => c.kind === "decode"), true);
  // A context limit within the bound keeps every row at every bound.
  assertEquals(captureShapes(settings, 2048, true).filter((c) => c.rows === 256).map((c) => c.kvCap), [
    256,
    1024,
    2048,
  ]);
  // A 200-token prompt part replays the 256-row shape over a short context, the 512-row one past 4096.
  const step = (past: number) =>
    singleSequenceStep(
      new Int32Array(200),
      past,
      Int32Array.from({ length: Math.ceil((past + 200) / 16) }),
      0,
    );
  const picked = (past: number) => shapes[pickCapturedPrompt(shapes, step(past), 1 << 12)];
  assertEquals([picked(100).rows, picked(100).kvCap], [256, 1024]);
  assertEquals([picked(3000).rows, picked(3000).kvCap], [256, 4096]);
  assertEquals([picked(5000).rows, picked(5000).kvCap], [512, 32752]);
});
