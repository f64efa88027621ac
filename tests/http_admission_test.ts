// Admission (--max-queue) on its own: requests handed to the engine count as waiting until a stats
// snapshot two steps later must include them.
import assert from "node:assert/strict";
import { type EngineStats, STEP_TOKEN_BUCKETS } from "../engine/protocol.ts";
import { Admission } from "../http/admission.ts";
import { ApiError } from "../http/errors.ts";

const stats = (stepsTotal: number, waiting = 0): EngineStats => ({
  running: 0,
  waiting,
  kvBlocksUsed: 0,
  kvBlocksTotal: 64,
  promptTokensTotal: 0,
  generationTokensTotal: 0,
  preemptionsTotal: 0,
  stepsTotal,
  stepTokens: { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 },
});

Deno.test("admission: a submitted request counts as waiting until the snapshot two steps later", () => {
  const a = new Admission();
  a.admit("r1", stats(10), 8);
  assert.equal(a.waiting(stats(10)), 1);
  // It may arrive during step 11, so the snapshot after step 11 may still lack it.
  assert.equal(a.waiting(stats(11)), 1);
  // From step 12 on the engine's own waiting count includes it: counting it again would be double.
  assert.equal(a.waiting(stats(12)), 0);
  assert.equal(a.waiting(stats(12, 1)), 1);
});

Deno.test("admission: 429 with retry-after once engine waiting plus unseen reach --max-queue", () => {
  const a = new Admission();
  a.admit("r1", stats(0, 1), 3);
  a.admit("r2", stats(0, 1), 3);
  let rejected: unknown = null;
  try {
    a.admit("r3", stats(0, 1), 3);
  } catch (e) {
    rejected = e;
  }
  assert.ok(rejected instanceof ApiError);
  assert.equal(rejected.status, 429);
  assert.equal(rejected.code, "rate_limit_exceeded");
  assert.equal(rejected.headers["retry-after"], "1");
  // The rejected request took no slot; one seen by the engine frees its own.
  assert.equal(a.waiting(stats(0, 1)), 3);
  a.seen("r1");
  assert.equal(a.waiting(stats(0, 1)), 2);
  a.admit("r3", stats(0, 1), 3);
  assert.equal(a.waiting(stats(0, 1)), 3);
});
