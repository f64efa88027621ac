// /metrics renders the engine's running totals: every reader (each scrape, admission, another app
// over the same engine) sees every engine step, and reading takes nothing away.
import assert from "node:assert/strict";
import { post, startServer, withFake } from "../helpers/fake_engine.ts";

const stepHistogram = (text: string) =>
  text.split("\n").filter((l) => l.startsWith("ragtime_step_batch_tokens"));

Deno.test("metrics: two scrapes, a direct stats() read and a second app all see every step", async () => {
  await withFake({}, async (s, engine) => {
    // One prefill step of 2 tokens and three decode steps of 1.
    await (await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 3 })).body?.cancel();
    const direct = engine.stats().stepTokens;
    assert.equal(direct.count, 4);
    assert.equal(direct.sum, 5);
    assert.deepEqual(engine.stats().stepTokens, direct, "a second read sees the same histogram");

    const first = stepHistogram(await (await fetch(`${s.origin}/metrics`)).text());
    const second = stepHistogram(await (await fetch(`${s.origin}/metrics`)).text());
    assert.ok(first.includes("ragtime_step_batch_tokens_count 4"), first.join("\n"));
    assert.ok(first.includes("ragtime_step_batch_tokens_sum 5"));
    assert.ok(first.includes('ragtime_step_batch_tokens_bucket{le="1"} 3'));
    assert.deepEqual(second, first);

    // Admission reads stats too; the steps of a second request add to, never replace, the first's.
    await (await post(`${s.baseURL}/completions`, { prompt: "x", max_tokens: 2 })).body?.cancel();
    const other = startServer(engine);
    try {
      for (const origin of [s.origin, other.origin]) {
        const lines = stepHistogram(await (await fetch(`${origin}/metrics`)).text());
        assert.ok(lines.includes("ragtime_step_batch_tokens_count 7"), `${origin}: ${lines.join("\n")}`);
        assert.ok(lines.includes("ragtime_step_batch_tokens_sum 9"));
      }
    } finally {
      await other.close();
    }
  });
});

Deno.test("metrics: prefix cache queries and hits (prompt tokens) and cached blocks from the engine's stats", async () => {
  await withFake({ engine: { prefixCacheBlock: 16 } }, async (s, engine) => {
    const scrape = async () => {
      const text = await (await fetch(`${s.origin}/metrics`)).text();
      const value = (name: string) => {
        assert.ok(text.includes(`# TYPE ${name} ${name.endsWith("_total") ? "counter" : "gauge"}`), name);
        return Number(text.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1]);
      };
      return [
        value("ragtime_prefix_cache_queries_total"),
        value("ragtime_prefix_cache_hits_total"),
        value("ragtime_prefix_cache_blocks"),
      ];
    };
    assert.deepEqual(await scrape(), [0, 0, 0]);
    const prompt = Array.from({ length: 40 }, (_, i) => 1 + i);
    for (const p of [prompt, [...prompt, 99, 98]]) {
      await (await post(`${s.baseURL}/completions`, { prompt: p, max_tokens: 2 })).body?.cancel();
    }
    // 40 + 42 tokens looked up; the second found the first's two full blocks, and has no others.
    assert.deepEqual(await scrape(), [82, 32, 2]);
    const st = engine.stats();
    assert.deepEqual([st.prefixCacheQueriesTotal, st.prefixCacheHitsTotal, st.kvBlocksCached], [82, 32, 2]);
  });
});

Deno.test("metrics: an engine without a prefix cache renders the prefix cache series as 0", async () => {
  await withFake({}, async (s) => {
    const text = await (await fetch(`${s.origin}/metrics`)).text();
    for (const name of ["queries_total", "hits_total", "blocks"]) {
      assert.match(text, new RegExp(`^ragtime_prefix_cache_${name} 0$`, "m"));
    }
  });
});
