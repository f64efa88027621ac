// The soak (bench/soak.ts) reduced for CI: a bounded, seeded run of misbehaving clients against the
// real server (stories260K), asserting the same invariants as `deno task soak`.
import assert from "node:assert/strict";
import { isOpenAiError, KINDS, rssMb, runSoak, stalledUploads } from "../../bench/soak.ts";
import { withServerProcess } from "../helpers/server_process.ts";

Deno.test("soak judges: OpenAI's error shape", () => {
  assert.ok(
    isOpenAiError({ error: { message: "m", type: "invalid_request_error", param: null, code: null } }),
  );
  assert.ok(!isOpenAiError({ error: "m" }));
  assert.ok(!isOpenAiError({ message: "m", type: "t" }));
  assert.ok(!isOpenAiError(null));
});

Deno.test("soak (reduced): clients leaving at every phase, bodies up to 1 MiB; gauges return to 0, no 5xx", async () => {
  // A short --body-timeout so the stalled uploads below end within the test's bounds.
  await withServerProcess({ args: ["--body-timeout", "3"], readyTimeoutMs: 300_000 }, async (s) => {
    const pid = s.child.pid;
    const report = await runSoak({
      origin: s.origin,
      pid,
      requests: 70,
      concurrency: 8,
      seed: 17,
      maxTokens: 8,
      timeLimitS: 40,
      headerTimeoutS: 20,
      requestTimeoutS: 30,
      idleTimeoutS: 10,
      settleS: 0,
      serverOutput: s.output,
    });
    console.log(
      `soak: ${report.requests} requests in ${report.wallS.toFixed(1)} s`,
      report.outcomes,
      report.rss,
    );
    assert.deepEqual(report.violations, [], JSON.stringify(report, null, 2));
    assert.equal(report.requests, 70, "the time limit cut the run short");
    for (const kind of KINDS) {
      assert.ok(report.byKind[kind] > 0, `no ${kind} client in ${JSON.stringify(report)}`);
    }
    assert.ok(report.outcomes.stream_ok > 0 && report.outcomes.json_ok > 0, JSON.stringify(report.outcomes));
    assert.notEqual(report.idleAfterMs, null);
    assert.ok(report.rss !== null && report.rss.afterMb > 0);

    // Uploads held one byte short of their content-length are answered 408 and let go.
    const stalled = await stalledUploads(s.origin, pid, 10, "timeout", { waitS: 15, settleS: 0 });
    assert.deepEqual(stalled.violations, []);
    assert.equal(stalled.timedOut, 10);
    assert.ok((rssMb(pid) ?? 0) > 0);
    const health = await fetch(`${s.origin}/health`);
    await health.body?.cancel();
    assert.equal(health.status, 200);
  });
});
