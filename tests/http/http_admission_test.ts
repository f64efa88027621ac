// Admission (--max-queue) on its own: only requests that would wait for a running slot count, from
// the engine's stats plus the requests handed over that a step has not yet looked at.
import assert from "node:assert/strict";
import { type EngineStats, STEP_TOKEN_BUCKETS } from "../../engine/protocol.ts";
import { Admission } from "../../http/admission.ts";
import { ApiError } from "../../http/errors.ts";
import { post, withFake } from "../helpers/fake_engine.ts";

const chatBody = () => ({ messages: [{ role: "user", content: "hi" }] });

const stats = (stepsTotal: number, waiting = 0, running = 0): EngineStats => ({
  running,
  waiting,
  kvBlocksUsed: 0,
  kvBlocksTotal: 64,
  promptTokensTotal: 0,
  generationTokensTotal: 0,
  preemptionsTotal: 0,
  stepsTotal,
  stepTokens: { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 },
});

const rejects = (f: () => void) => {
  let rejected: unknown = null;
  try {
    f();
  } catch (e) {
    rejected = e;
  }
  assert.ok(rejected instanceof ApiError, "not rejected");
  assert.equal(rejected.status, 429);
  assert.equal(rejected.code, "rate_limit_exceeded");
  assert.equal(rejected.headers["retry-after"], "1");
};

Deno.test("admission: without known slots, every request not yet started counts as waiting", () => {
  const a = new Admission();
  const limits = { maxQueue: 3 };
  a.admit("r1", stats(0, 1), limits);
  a.admit("r2", stats(0, 1), limits);
  // r1 and r2 are fresh and the engine lists one of them as waiting: 2 in all, not 3.
  assert.equal(a.waiting(stats(0, 1), limits), 2);
  a.admit("r3", stats(0, 1), limits);
  rejects(() => a.admit("r4", stats(0, 1), limits));
  // The rejected request took no place; a released one frees its own.
  assert.equal(a.size, 3);
  a.release("r1");
  assert.equal(a.waiting(stats(0, 1), limits), 2);
  a.admit("r4", stats(0, 1), limits);
});

Deno.test("admission: a burst that free running slots absorb is not queued", () => {
  const a = new Admission();
  const limits = { maxQueue: 4, maxSeqs: 32 };
  // The engine posts stats as each request arrives: they show as waiting until a step schedules them.
  for (let i = 0; i < 32; i++) a.admit(`r${i}`, stats(5, i), limits);
  assert.equal(a.waiting(stats(5, 32), limits), 0);
  // Once they run, the slots are taken: the next four queue, the fifth is refused.
  for (let i = 32; i < 36; i++) a.admit(`r${i}`, stats(6, i - 32, 32), limits);
  assert.equal(a.waiting(stats(6, 4, 32), limits), 4);
  rejects(() => a.admit("r36", stats(6, 4, 32), limits));
});

Deno.test("admission: requests the engine left waiting past their first steps are a real queue", () => {
  const a = new Admission();
  const limits = { maxQueue: 3, maxSeqs: 32 };
  a.admit("r1", stats(10), limits);
  a.admit("r2", stats(10), limits);
  // Slots are free but the engine kept both waiting for three steps (say, the KV pool is full).
  assert.equal(a.waiting(stats(12, 2, 1), limits), 0);
  assert.equal(a.waiting(stats(13, 2, 1), limits), 2);
  a.admit("r3", stats(13, 2, 1), limits);
  // r3 is fresh but waits behind them (scheduling is first come, first served), once the engine lists it.
  assert.equal(a.waiting(stats(13, 3, 1), limits), 3);
  rejects(() => a.admit("r4", stats(13, 3, 1), limits));
});

Deno.test("admission: sequential batching has one slot, static only while no batch runs", () => {
  const seq = new Admission();
  seq.admit("a", stats(0), { maxQueue: 1, maxSeqs: 32, batching: "sequential" });
  seq.admit("b", stats(0), { maxQueue: 1, maxSeqs: 32, batching: "sequential" });
  rejects(() => seq.admit("c", stats(0), { maxQueue: 1, maxSeqs: 32, batching: "sequential" }));
  const st = new Admission();
  const limits = { maxQueue: 1, maxSeqs: 4, batching: "static" as const };
  for (const id of ["a", "b", "c", "d", "e"]) st.admit(id, stats(0), limits);
  rejects(() => st.admit("f", stats(0), limits));
  // Once a batch decodes, newcomers wait for its end.
  const busy = new Admission();
  busy.admit("a", stats(0), limits);
  busy.admit("b", stats(0), limits);
  busy.admit("c", stats(5, 0, 2), limits);
  rejects(() => busy.admit("d", stats(5, 0, 2), limits));
});

Deno.test("admission: --max-queue 4 and --max-seqs 32, a simultaneous burst of 20 all succeed", async () => {
  await withFake({ args: ["--max-queue", "4", "--max-seqs", "32"] }, async (s, engine) => {
    const release = engine.hold();
    const burst = Array.from({ length: 20 }, () => post(`${s.baseURL}/chat/completions`, chatBody()));
    await engine.arrivals(20);
    release();
    const statuses = await Promise.all(burst.map(async (r) => {
      const res = await r;
      await res.body?.cancel();
      return res.status;
    }));
    assert.deepEqual(statuses, Array(20).fill(200));
  });
});

Deno.test("admission: --max-seqs 2 and --max-queue 2 admit four held requests and refuse the fifth", async () => {
  await withFake({ args: ["--max-queue", "2", "--max-seqs", "2"] }, async (s, engine) => {
    const release = engine.hold();
    const held = Array.from({ length: 4 }, () => post(`${s.baseURL}/completions`, { prompt: "x" }));
    await engine.arrivals(4);
    const res = await post(`${s.baseURL}/completions`, { prompt: "x" });
    assert.equal(res.status, 429);
    await res.body?.cancel();
    release();
    for (const r of held) assert.equal((await (await r).json()).object, "text_completion");
  });
});
