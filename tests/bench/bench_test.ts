// The load generator's pure parts (workloads, arrivals, percentiles, metrics) and its request loop
// against a small fake SSE server.

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { deriveSeed, mulberry32, uniformInt } from "../../bench/lib/rng.ts";
import {
  arrivalOffsets,
  arrivalRng,
  buildChatWorkload,
  buildWorkload,
  type ChatWorkloadSpec,
  generateWorkload,
  markConstrained,
  parseRange,
  type RandomWorkloadSpec,
  toDump,
  type WorkloadItem,
} from "../../bench/lib/workload.ts";
import { computeMetrics, percentile, type RequestRecord, summarize } from "../../bench/lib/stats.ts";
import { sseEvents } from "../../bench/lib/client.ts";
import { runBenchmark, runChatBenchmark, type RunOptions } from "../../bench/lib/runner.ts";
import { withFake } from "../helpers/fake_engine.ts";
import { createProgress } from "../../bench/lib/progress.ts";
import { splitArgs } from "../../bench/lib/server.ts";
import { ratios, summarizeMode } from "../../bench/lib/report.ts";
import { niceTicks, plotFiles, svgCharts } from "../../bench/lib/plot.ts";

const close = (a: number | null, b: number, eps = 1e-9) => a !== null && Math.abs(a - b) <= eps;

const spec: RandomWorkloadSpec = {
  kind: "random",
  seed: 42,
  count: 200,
  inputLen: { min: 5, max: 40 },
  outputLen: { min: 1, max: 17 },
  idMin: 3,
  vocab: 512,
};

Deno.test("mulberry32 is deterministic, in [0, 1), and roughly uniform", () => {
  const a = mulberry32(7), b = mulberry32(7);
  let sum = 0;
  for (let i = 0; i < 10000; i++) {
    const x = a();
    assertEquals(x, b());
    assert(x >= 0 && x < 1);
    sum += x;
  }
  assert(Math.abs(sum / 10000 - 0.5) < 0.01, `mean ${sum / 10000}`);
  assert(mulberry32(8)() !== mulberry32(7)());
  assert(deriveSeed(1, 0) !== deriveSeed(1, 1) && deriveSeed(1, 0) !== deriveSeed(2, 0));
  const r = mulberry32(3);
  const seen = new Set<number>();
  for (let i = 0; i < 1000; i++) seen.add(uniformInt(r, 2, 5));
  assertEquals([...seen].sort(), [2, 3, 4, 5]);
});

Deno.test("random workload: same seed, same requests; lengths and ids within range", () => {
  const w1 = generateWorkload(spec), w2 = generateWorkload(spec);
  assertEquals(w1, w2);
  assert(JSON.stringify(generateWorkload({ ...spec, seed: 43 })) !== JSON.stringify(w1));
  const inLens = new Set<number>(), outLens = new Set<number>();
  for (const [i, it] of w1.entries()) {
    assertEquals(it.index, i);
    const ids = it.prompt as number[];
    assertEquals(ids.length, it.promptTokens);
    assert(ids.length >= 5 && ids.length <= 40, `prompt length ${ids.length}`);
    assert(it.outputTokens >= 1 && it.outputTokens <= 17, `output length ${it.outputTokens}`);
    for (const id of ids) assert(Number.isInteger(id) && id >= 3 && id < 512, `id ${id}`);
    inLens.add(ids.length);
    outLens.add(it.outputTokens);
  }
  // Both ends of each range are reachable.
  assert(inLens.has(5) && inLens.has(40) && outLens.has(1) && outLens.has(17));
  // A prefix of a longer workload is the shorter workload.
  assertEquals(generateWorkload({ ...spec, count: 10 }), w1.slice(0, 10));
});

Deno.test("warmup items come from their own stream and do not shift the measured ones", () => {
  const a = buildWorkload(spec, 0), b = buildWorkload(spec, 8);
  assertEquals(a.measured, b.measured);
  assertEquals(b.warmup.length, 8);
  assert(JSON.stringify(b.warmup[0].prompt) !== JSON.stringify(b.measured[0].prompt));
  const dump = toDump(spec, b);
  assertEquals(dump.requests.length, 200);
  assertEquals(dump.requests[3].prompt_ids, b.measured[3].prompt);
  assertEquals(dump.requests[3].output_len, b.measured[3].outputTokens);
});

Deno.test("text workload: word counts within range, deterministic", () => {
  const text = Array.from({ length: 500 }, (_, i) => `w${i}`).join(" \n ");
  const t = {
    kind: "text" as const,
    seed: 1,
    count: 50,
    inputLen: { min: 3, max: 9 },
    outputLen: { min: 2, max: 2 },
    text,
  };
  const w = generateWorkload(t);
  assertEquals(w, generateWorkload(t));
  for (const it of w) {
    const words = (it.prompt as string).split(" ");
    assert(words.length >= 3 && words.length <= 9);
    assertEquals(it.promptTokens, null);
    assertEquals(it.outputTokens, 2);
    // Slices are contiguous runs of the corpus.
    const first = Number(words[0].slice(1));
    assertEquals(words, words.map((_, k) => `w${first + k}`));
  }
  assertThrows(() => generateWorkload({ ...t, inputLen: { min: 3, max: 501 } }), /500 words/);
});

Deno.test("parseRange", () => {
  assertEquals(parseRange("16:64", "x"), { min: 16, max: 64 });
  assertEquals(parseRange("32", "x"), { min: 32, max: 32 });
  assertThrows(() => parseRange("64:16", "--input-len"), /--input-len/);
  assertThrows(() => parseRange("a:b", "x"));
});

Deno.test("Poisson arrivals have mean gap 1/rate and exponential spread; inf sends at once", () => {
  const n = 20001, rate = 10;
  const t = arrivalOffsets(n, rate, arrivalRng(5));
  assertEquals(t[0], 0);
  const gaps = t.slice(1).map((x, i) => x - t[i]);
  assert(gaps.every((g) => g >= 0));
  const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
  assert(Math.abs(mean - 100) < 3, `mean gap ${mean} ms`);
  const sd = Math.sqrt(gaps.reduce((a, g) => a + (g - mean) ** 2, 0) / gaps.length);
  assert(Math.abs(sd / mean - 1) < 0.05, `coefficient of variation ${sd / mean}`);
  assertEquals(arrivalOffsets(n, rate, arrivalRng(5)), t);
  assertEquals(arrivalOffsets(4, Infinity, arrivalRng(5)), [0, 0, 0, 0]);
  assertThrows(() => arrivalOffsets(4, 0, arrivalRng(5)));
});

Deno.test("percentile interpolates linearly between ranks (numpy default)", () => {
  assertEquals(percentile([1, 2, 3, 4], 50), 2.5);
  assert(close(percentile([1, 2, 3, 4], 90), 3.7));
  assertEquals(percentile([1, 2, 3, 4], 0), 1);
  assertEquals(percentile([1, 2, 3, 4], 100), 4);
  assertEquals(percentile([7], 99), 7);
  assert(close(percentile([0, 10], 99), 9.9));
  assertThrows(() => percentile([], 50));
  const s = summarize([4, 1, 3, 2]);
  assertEquals([s.n, s.mean, s.p50, s.min, s.max], [4, 2.5, 2.5, 1, 4]);
  assert(close(s.std, Math.sqrt(1.25)));
  assertEquals(summarize([]).mean, null);
});

function rec(over: Partial<RequestRecord>): RequestRecord {
  return {
    index: 0,
    ok: true,
    error: null,
    sentAt: 0,
    endAt: 0,
    chunkTimes: [],
    outputTokens: 0,
    outputTokensFrom: "usage",
    promptTokens: 0,
    expectedOutputTokens: 0,
    finishReason: "length",
    ...over,
  };
}

Deno.test("metrics from hand-made timing records", () => {
  const records = [
    // TTFT 100, E2E 160, TPOT (160 - 100) / 2 = 30, ITL 20 and 30.
    rec({
      index: 0,
      sentAt: 1000,
      chunkTimes: [1100, 1120, 1150],
      endAt: 1160,
      outputTokens: 3,
      expectedOutputTokens: 3,
      promptTokens: 10,
    }),
    // Two tokens per chunk: TTFT 200, E2E 260, TPOT 60 / 3 = 20, one ITL of 50; asked for 5, got 4.
    rec({
      index: 1,
      sentAt: 1010,
      chunkTimes: [1210, 1260],
      endAt: 1270,
      outputTokens: 4,
      expectedOutputTokens: 5,
      promptTokens: 20,
    }),
    rec({ index: 2, ok: false, error: "HTTP 500: boom", sentAt: 1020, endAt: 1300 }),
    rec({ index: 3, ok: false, error: "HTTP 500: boom", sentAt: 1030, endAt: 1040 }),
    rec({ index: 4, ok: false, error: "not sent: overall timeout", sentAt: null, endAt: null }),
  ];
  const m = computeMetrics(records);
  assertEquals([m.requests, m.completed, m.failed], [5, 2, 3]);
  assertEquals(m.errors, [{ error: "HTTP 500: boom", count: 2 }, {
    error: "not sent: overall timeout",
    count: 1,
  }]);
  assert(close(m.durationS, 0.3), `duration ${m.durationS}`);
  assertEquals([m.totalInputTokens, m.totalOutputTokens, m.inputTokensKnown], [30, 7, true]);
  assert(close(m.requestThroughput, 2 / 0.3, 1e-6));
  assert(close(m.outputThroughput, 7 / 0.3, 1e-6));
  assert(close(m.totalTokenThroughput, 37 / 0.3, 1e-6));
  assertEquals(m.outputLengthMismatches, 1);
  assertEquals([m.ttftMs.n, m.ttftMs.mean, m.ttftMs.p50], [2, 150, 150]);
  assert(close(m.ttftMs.p90, 190));
  assertEquals([m.tpotMs.mean, m.tpotMs.min, m.tpotMs.max], [25, 20, 30]);
  assertEquals([m.itlMs.n, m.itlMs.p50, m.itlMs.max], [3, 30, 50]);
  assert(close(m.itlMs.mean, 100 / 3));
  assertEquals([m.e2eMs.mean, m.e2eMs.min, m.e2eMs.max], [210, 160, 260]);
  // One output token: no TPOT, no ITL.
  const one = computeMetrics([
    rec({ sentAt: 0, chunkTimes: [5], endAt: 6, outputTokens: 1, expectedOutputTokens: 1 }),
  ]);
  assertEquals([one.tpotMs.n, one.itlMs.n, one.ttftMs.mean], [0, 0, 5]);
  // Nothing sent: zero duration and throughput, not NaN.
  const none = computeMetrics([records[4]]);
  assertEquals([none.durationS, none.requestThroughput], [0, 0]);
});

Deno.test("comparison ratios and the sequential-count note", () => {
  const run = (outTps: number, reqTps: number, n: number) => ({
    label: "",
    metrics: { ...computeMetrics([]), requests: n, outputThroughput: outTps, requestThroughput: reqTps },
    warmup: { requests: 0, completed: 0, failed: 0, errors: [] },
    timedOut: false,
    peakConcurrency: 0,
    records: [],
  });
  const s = [
    summarizeMode("continuous", [run(300, 3, 100), run(100, 1, 100)]),
    summarizeMode("sequential", [run(50, 0.5, 10)]),
  ];
  assertEquals([s[0].outputThroughput, s[0].outputThroughputMin, s[0].outputThroughputMax], [200, 100, 300]);
  const r = ratios(s);
  assertEquals(r.length, 1);
  assertEquals([r[0].outputThroughput, r[0].requestThroughput], [4, 4]);
  assert(r[0].note !== null && r[0].note.includes("10 prompts"));
});

Deno.test("splitArgs handles quotes and escapes", () => {
  assertEquals(splitArgs(` --max-seqs 64  --x "a b" 'c "d"' e\\ f ""`), [
    "--max-seqs",
    "64",
    "--x",
    "a b",
    'c "d"',
    "e f",
    "",
  ]);
  assertEquals(splitArgs(""), []);
  assertThrows(() => splitArgs(`"open`), /unbalanced/);
});

Deno.test("SSE parser: events split across reads, CRLF, comments, multi-line data", async () => {
  const parts = ['data: {"a"', ":1}\r\n\r\n: ping\n\nda", "ta: x\ndata: y\n\ndata: [DONE]\n\n"];
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const p of parts) c.enqueue(new TextEncoder().encode(p));
      c.close();
    },
  });
  let t = 0;
  const got: { data: string; at: number }[] = [];
  for await (const ev of sseEvents(body, () => ++t)) got.push(ev);
  assertEquals(got, [{ data: '{"a":1}', at: 2 }, { data: "x\ny", at: 3 }, { data: "[DONE]", at: 3 }]);
});

// A tiny OpenAI-style server: streams max_tokens one-token chunks. Prompt [999] fails with a 500,
// [998] never answers, [997] breaks mid-stream, [996] sends no usage.
function fakeServer(): { url: string; maxInFlight: () => number; close: () => Promise<void> } {
  let inFlight = 0, maxInFlight = 0;
  const enc = new TextEncoder();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (new URL(req.url).pathname !== "/v1/completions") return new Response("not found", { status: 404 });
    const body = await req.json();
    const first = Array.isArray(body.prompt) ? body.prompt[0] : -1;
    if (first === 999) {
      return Response.json({ error: { message: "boom", type: "server_error" } }, { status: 500 });
    }
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    const n: number = body.max_tokens;
    const stream = new ReadableStream<Uint8Array>({
      async start(c) {
        const send = (v: unknown) => c.enqueue(enc.encode(`data: ${JSON.stringify(v)}\n\n`));
        try {
          if (first === 998) {
            await new Promise((r) => setTimeout(r, 3000));
            return;
          }
          for (let i = 0; i < n; i++) {
            await new Promise((r) => setTimeout(r, 2));
            if (first === 997 && i === 1) {
              send({ error: { message: "engine died", type: "server_error" } });
              c.enqueue(enc.encode("data: [DONE]\n\n"));
              return;
            }
            send({ choices: [{ index: 0, text: "tok ", finish_reason: null }], usage: null });
          }
          send({ choices: [{ index: 0, text: "", finish_reason: "length" }], usage: null });
          if (first !== 996 && body.stream_options?.include_usage) {
            send({ choices: [], usage: { prompt_tokens: body.prompt.length, completion_tokens: n } });
          }
          c.enqueue(enc.encode("data: [DONE]\n\n"));
        } finally {
          inFlight--;
          try {
            c.close();
          } catch {
            // the client went away
          }
        }
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    maxInFlight: () => maxInFlight,
    close: () => server.shutdown(),
  };
}

function options(url: string, measured: WorkloadItem[], over: Partial<RunOptions> = {}): RunOptions {
  return {
    baseUrl: url,
    endpoint: "/v1/completions",
    headers: {},
    bodyBase: { temperature: 0, ignore_eos: true },
    measured,
    warmup: [],
    rate: Infinity,
    maxConcurrency: Infinity,
    seed: 0,
    requestTimeoutS: 10,
    timeoutS: 30,
    progress: createProgress({ enabled: false }),
    label: "test",
    ...over,
  };
}

Deno.test("runner: streams, counts tokens, caps concurrency, records failures with their text", async () => {
  const srv = fakeServer();
  try {
    const items = generateWorkload({ ...spec, count: 24, outputLen: { min: 2, max: 6 } });
    items[5] = { ...items[5], prompt: [999, 4, 5] };
    items[9] = { ...items[9], prompt: [997, 4, 5] };
    items[11] = { ...items[11], prompt: [996, 4, 5], promptTokens: 3 };
    const warm = generateWorkload({ ...spec, seed: 9, count: 3, outputLen: { min: 2, max: 2 } });
    const r = await runBenchmark(options(srv.url, items, { warmup: warm, maxConcurrency: 4 }));
    const m = r.metrics;
    assertEquals([m.requests, m.completed, m.failed], [24, 22, 2]);
    assertEquals(r.warmup.completed, 3);
    assert(
      srv.maxInFlight() <= 4 && r.peakConcurrency === 4,
      `peak ${r.peakConcurrency}/${srv.maxInFlight()}`,
    );
    assertEquals(m.errors.map((e) => e.error).sort(), ["HTTP 500: boom", "stream error: engine died"]);
    const expected = items.filter((_, i) => i !== 5 && i !== 9).reduce((a, it) => a + it.outputTokens, 0);
    assertEquals(m.totalOutputTokens, expected);
    assertEquals(m.outputLengthMismatches, 0);
    assertEquals(m.outputTokensFromChunks, 1);
    assertEquals(r.records[11].outputTokens, items[11].outputTokens);
    // One timed chunk per token: the empty finish chunk is not a token arrival.
    for (const rec of r.records.filter((x) => x.ok)) assertEquals(rec.chunkTimes.length, rec.outputTokens);
    assertEquals(m.ttftMs.n, 22);
    assertEquals(m.itlMs.n, expected - 22);
    assert(m.durationS > 0 && m.outputThroughput > 0);
  } finally {
    await srv.close();
  }
});

Deno.test("runner: Poisson arrivals are spread over time", async () => {
  const srv = fakeServer();
  try {
    const items = generateWorkload({ ...spec, count: 6, outputLen: { min: 1, max: 1 } });
    const r = await runBenchmark(options(srv.url, items, { rate: 50 }));
    const offsets = arrivalOffsets(6, 50, arrivalRng(0));
    const sent = r.records.map((x) => x.sentAt! - r.records[0].sentAt!);
    // Sends follow the schedule (timers fire late, never early).
    for (let i = 0; i < 6; i++) {
      assert(sent[i] >= offsets[i] - 1, `request ${i} sent at ${sent[i]} < ${offsets[i]}`);
    }
    assertEquals(r.metrics.completed, 6);
  } finally {
    await srv.close();
  }
});

Deno.test("runner: per-request and overall timeouts end the run", async () => {
  const srv = fakeServer();
  try {
    const items = generateWorkload({ ...spec, count: 3, outputLen: { min: 2, max: 2 } });
    items[1] = { ...items[1], prompt: [998] };
    const r = await runBenchmark(options(srv.url, items, { requestTimeoutS: 0.2 }));
    assertEquals([r.metrics.completed, r.metrics.failed], [2, 1]);
    assertEquals(r.records[1].error, "request timeout after 0.2s");
    assert(!r.timedOut);

    // Sequential sends: the hung request holds the only slot until the deadline; the rest never go out.
    const t0 = performance.now();
    const o = await runBenchmark(options(srv.url, items, { maxConcurrency: 1, timeoutS: 0.3 }));
    assert(performance.now() - t0 < 2000, "overall timeout did not stop the run");
    assert(o.timedOut);
    assertEquals([o.metrics.completed, o.metrics.failed], [1, 2]);
    assertEquals(o.records[1].error, "overall timeout after 0.3s");
    assertEquals(o.records[2].error, "not sent: overall timeout after 0.3s");
    assertEquals(o.records[2].sentAt, null);
  } finally {
    await srv.close();
  }
});

// ---- Plots (bench/lib/plot.ts) -----------------------------------------------------------------------

/** Well-formed XML with an <svg> root: every tag closed in order, attributes quoted, text escaped. */
function assertWellFormedSvg(svg: string): void {
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  const stack: string[] = [];
  let last = 0;
  let root: string | null = null;
  for (const m of svg.matchAll(tag)) {
    const text = svg.slice(last, m.index);
    assert(!/[<>]|&(?!(amp|lt|gt|quot|#\d+);)/.test(text), `bad text before ${m[0]}: ${text.slice(0, 80)}`);
    last = m.index! + m[0].length;
    if (m[1]) assertEquals(stack.pop(), m[2], `closing ${m[2]}`);
    else if (!m[4]) {
      if (stack.length === 0) {
        assertEquals(root, null, "one root element");
        root = m[2];
      }
      stack.push(m[2]);
    }
  }
  assertEquals(svg.slice(last).trim(), "");
  assertEquals(stack, []);
  assertEquals(root, "svg");
  assert(svg.includes('xmlns="http://www.w3.org/2000/svg"'));
}

Deno.test("plot: niceTicks ends at or above the maximum in round steps", () => {
  assertEquals(niceTicks(1236), [0, 500, 1000, 1500]);
  assertEquals(niceTicks(87.9), [0, 20, 40, 60, 80, 100]);
  assertEquals(niceTicks(0), [0, 1]);
});

Deno.test("plot: an SVG chart escapes text and draws one mark per value", () => {
  const svg = svgCharts([
    {
      title: "a < b & c",
      yLabel: "ms",
      kind: "bar",
      categories: ["x", "y"],
      xLabel: "m",
      series: [
        { name: "p50", values: [1, 2] },
        { name: "p99", values: [3, null] },
      ],
    },
    {
      title: "lines",
      yLabel: "ms",
      kind: "line",
      categories: ["1", "2", "4"],
      xLabel: "r",
      series: [
        { name: "s", values: [1, 4, 2] },
      ],
    },
  ]);
  assertWellFormedSvg(svg);
  assert(svg.includes("a &lt; b &amp; c"));
  assertEquals(svg.match(/<rect [^>]*><title>/g)?.length, 3, "null draws nothing");
  assertEquals(svg.match(/<circle /g)?.length, 3);
});

Deno.test("plot: committed results plot as modes (bars) and as a Poisson sweep (lines)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ragtime_plot_" });
  try {
    const R = new URL("../../bench/results/cpu-2026-11-27-b/", import.meta.url).pathname;
    const modes = await plotFiles(
      ["continuous", "static", "sequential"].map((m) => `${R}${m}.json`),
      `${dir}/m.svg`,
    );
    const svg = await Deno.readTextFile(modes);
    assertWellFormedSvg(svg);
    for (
      const s of ["Output throughput", "Time to first token", "Inter-token latency", "continuous", "static"]
    ) {
      assert(svg.includes(`>${s}<`), `${s} missing`);
    }
    for (const s of ["output tokens/s", "p50", "p90", "p99"]) assert(svg.includes(`data-name="${s}"`), s);
    // Continuous's throughput bar (186.7 tok/s) is taller than static's (130.7).
    const bars = [
      ...svg.matchAll(/height="([\d.]+)" fill="[^"]+"><title>output tokens\/s (\w+): ([\d.]+)</g),
    ];
    assertEquals(bars.map((b) => b[2]), ["continuous", "static", "sequential"]);
    assertEquals(bars.map((b) => b[3]), ["187", "131", "41.7"]);
    assert(Number(bars[0][1]) > Number(bars[1][1]) && Number(bars[1][1]) > Number(bars[2][1]));

    const sweep = await plotFiles(["4", "0.5", "2", "1"].map((r) => `${R}poisson-${r}.json`), `${dir}/p.svg`);
    const p = await Deno.readTextFile(sweep);
    assertWellFormedSvg(p);
    assertEquals(p.match(/<polyline /g)?.length, 7, "1 throughput line + 3 TTFT + 3 ITL percentiles");
    const xs = [...p.matchAll(/text-anchor="middle">(0\.5|1|2|4)</g)].map((m) => m[1]);
    assertEquals(xs.slice(0, 4), ["0.5", "1", "2", "4"], "rates in order whatever the file order");
    assert(p.includes("request rate"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: --result-json writes the plot beside it; --plot-only replots it", async () => {
  const srv = fakeServer();
  const dir = await Deno.makeTempDir({ prefix: "ragtime_bench_plot_" });
  try {
    const bench = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../../bench/bench.ts", import.meta.url).pathname, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const run = await bench([
      "--base-url",
      srv.url,
      "--num-prompts",
      "6",
      "--warmup",
      "0",
      "--output-len",
      "2:4",
      "--label",
      "fake-run",
      "--no-progress",
      "--result-json",
      `${dir}/run.json`,
    ]);
    assertEquals(run.code, 0, new TextDecoder().decode(run.stderr));
    const svg = await Deno.readTextFile(`${dir}/run.svg`);
    assertWellFormedSvg(svg);
    assert(svg.includes(">fake-run<") && svg.includes('data-name="p99"'), svg.slice(0, 400));
    const again = await bench(["--plot-only", `${dir}/run.json`, "--plot-out", `${dir}/again.svg`]);
    assertEquals(again.code, 0, new TextDecoder().decode(again.stderr));
    assertEquals(await Deno.readTextFile(`${dir}/again.svg`), svg);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--constrained-share marks round(share x n) items, seeded, leaving prompts and lengths alone", () => {
  const spec: RandomWorkloadSpec = {
    kind: "random",
    seed: 7,
    count: 40,
    inputLen: { min: 4, max: 8 },
    outputLen: { min: 4, max: 8 },
    idMin: 3,
    vocab: 512,
  };
  const items = generateWorkload(spec);
  const marked = markConstrained(items, 0.25, 1);
  assertEquals(marked.filter((it) => it.constrained).length, 10);
  assertEquals(marked.map(({ constrained: _c, ...it }) => it), items);
  assertEquals(JSON.stringify(markConstrained(items, 0.25, 1)), JSON.stringify(marked));
  assertEquals(markConstrained(items, 0, 1).filter((it) => it.constrained).length, 0);
});

const chatSpec: ChatWorkloadSpec = {
  kind: "chat",
  seed: 5,
  users: 3,
  turns: 3,
  systemLen: 60,
  userLen: { min: 3, max: 6 },
  answerLen: 12,
};

Deno.test("chat workload: deterministic, one system prompt, word counts within range, warmup apart", () => {
  const a = buildChatWorkload(chatSpec, 2), b = buildChatWorkload(chatSpec, 2);
  assertEquals(a, b);
  assertEquals(a.measured.system.split(" ").length, 60);
  assertEquals(a.measured.users.map((u) => u.messages.length), [3, 3, 3]);
  for (const u of a.measured.users) {
    for (const m of u.messages) {
      const n = m.split(" ").length;
      assert(n >= 3 && n <= 6, m);
    }
  }
  assertEquals(a.warmup.users.map((u) => u.messages.length), [1, 1]);
  assert(a.warmup.system !== a.measured.system, "warmup must not cache the measured system prompt");
});

/** The chat runner against a server, on chatSpec's workload. */
const runChat = (origin: string, w: ReturnType<typeof buildChatWorkload>, thinkMs?: number) =>
  runChatBenchmark({
    ...options(origin, []),
    endpoint: "/v1/chat/completions",
    measured: w.measured,
    warmup: w.warmup,
    answerTokens: chatSpec.answerLen,
    thinkMs,
  });

Deno.test("chat runner: each turn resends the conversation with the actual answers; TTFT and cached tokens per turn", async () => {
  // Answers name the prompt they answer, so each is distinct; the fake engine's prefill costs 0.5 ms per
  // prompt token its simulated prefix cache does not hold.
  const reply = (req: { promptIds: number[] }) => `Answer to ${req.promptIds.length} tokens.`;
  await withFake({ engine: { prefixCacheBlock: 16, prefillMsPerToken: 0.5, reply } }, async (s, engine) => {
    const w = buildChatWorkload(chatSpec, 1);
    const r = await runChat(s.origin, w);
    assertEquals([r.metrics.completed, r.metrics.failed, r.warmup.completed], [9, 0, 1]);
    const sent = engine.requests.slice(1).map((q) => engine.tokenizer.decode(q.promptIds));
    for (const u of w.measured.users) {
      const mine = r.records.filter((x) => x.user === u.user).sort((a, b) => a.turn! - b.turn!);
      assertEquals(mine.map((x) => x.turn), [1, 2, 3]);
      let expected = `<s><|system|>\n${w.measured.system}\n`;
      for (const [t, rec] of mine.entries()) {
        expected += `<|user|>\n${u.messages[t]}\n`;
        const prompt = expected + "<|assistant|>\n";
        assert(sent.includes(prompt), `user ${u.user} turn ${t + 1} not sent as ${JSON.stringify(prompt)}`);
        assertEquals(rec.answer, `Answer to ${rec.promptTokens} tokens.`.slice(0, chatSpec.answerLen));
        expected += `<|assistant|>\n${rec.answer}\n`;
        // A later turn holds the whole earlier request, so at least its full blocks are cached.
        if (t > 0) assert(rec.cachedTokens! >= Math.floor(mine[t - 1].promptTokens! / 16) * 16);
      }
    }
    const c = r.chat!;
    assertEquals(c.turns.map((t) => [t.turn, t.completed]), [[1, 3], [2, 3], [3, 3]]);
    assertEquals(c.laterTurnsTtftMs.n, 6);
    assert(c.turns[2].promptTokensMean! > c.turns[1].promptTokensMean! && c.turns[1].cachedTokensMean! > 0);
    // The first user to arrive prefilled the whole system prompt; later turns prefill only the new text.
    assert(c.firstTurnTtftMs.max! > 2 * c.laterTurnsTtftMs.mean!, JSON.stringify(c));
  });
});

Deno.test("chat runner: with thinkMs each user sends a turn only that long after its previous answer ended", async () => {
  await withFake({ engine: {} }, async (s) => {
    const w = buildChatWorkload(chatSpec, 0);
    const thinkMs = 120;
    const r = await runChat(s.origin, w, thinkMs);
    assertEquals(r.metrics.failed, 0);
    for (const u of w.measured.users) {
      const mine = r.records.filter((x) => x.user === u.user).sort((a, b) => a.turn! - b.turn!);
      for (let t = 1; t < mine.length; t++) {
        const gap = mine[t].sentAt! - mine[t - 1].endAt!;
        assert(gap >= thinkMs - 5, `user ${u.user} turn ${t + 1} sent ${gap} ms after the answer`);
      }
    }
  });
});

Deno.test("bench --workload chat: table and JSON report TTFT per turn (turn 1 and turns 2+)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ragtime_bench_chat_" });
  try {
    await withFake({ engine: { prefixCacheBlock: 16 } }, async (s) => {
      const run = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../../bench/bench.ts", import.meta.url).pathname,
          ...[
            "--base-url",
            s.origin,
            "--workload",
            "chat",
            "--users",
            "2",
            "--turns",
            "3",
            "--system-len",
            "40",
          ],
          ...["--user-len", "4", "--answer-len", "8", "--warmup", "1", "--no-progress"],
          ...["--result-json", `${dir}/chat.json`],
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(run.stdout);
      assertEquals(run.code, 0, new TextDecoder().decode(run.stderr) + out);
      for (const row of ["turn 1", "turn 2", "turn 3", "turns 2+", "TTFT turn 1 / turns 2+"]) {
        assert(out.includes(row), `${row} missing:\n${out}`);
      }
      const doc = JSON.parse(await Deno.readTextFile(`${dir}/chat.json`));
      const [entry] = doc.runs;
      assertEquals(entry.prompts, 6);
      assertEquals(entry.metrics.completed, 6);
      assertEquals(entry.chat.turns.map((t: { turn: number }) => t.turn), [1, 2, 3]);
      assertEquals(entry.chat.laterTurnsTtftMs.n, 4);
      const rows = entry.requests as { turn: number; user: number; cached_tokens: number }[];
      assertEquals(rows.map((x) => [x.user, x.turn]), [[0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [1, 3]]);
      assert(rows.filter((x) => x.turn > 1).every((x) => x.cached_tokens > 0), JSON.stringify(rows));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
