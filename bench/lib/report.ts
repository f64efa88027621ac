// Human-readable tables for one run and for a side-by-side comparison of batching modes.
import type { RunResult } from "./runner.ts";
import type { Summary } from "./stats.ts";

const num = (v: number | null, digits = 2) => (v === null || !Number.isFinite(v) ? "-" : v.toFixed(digits));

function kv(rows: [string, string][]): string {
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n");
}

export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const fmt = (r: string[]) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])));
  return [
    fmt(header).join("  "),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...rows.map((r) => fmt(r).join("  ")),
  ]
    .join("\n");
}

export interface RunInfo {
  rate: number;
  maxConcurrency: number;
}

export function formatRun(r: RunResult, info: RunInfo): string {
  const m = r.metrics;
  const title = ` ${r.label} `;
  const bar = "=".repeat(Math.max(0, 30 - Math.floor(title.length / 2)));
  const lat = (
    name: string,
    s: Summary,
  ) => [name, String(s.n), num(s.mean), num(s.p50), num(s.p90), num(s.p99)];
  const lines = [
    `${bar}${title}${bar}`,
    kv([
      ["Requests (measured)", String(m.requests)],
      ["Warmup requests (ok/failed)", `${r.warmup.completed}/${r.warmup.failed}`],
      ["Request rate", info.rate === Infinity ? "inf (all at once)" : `${info.rate} req/s (Poisson)`],
      ["Max concurrency", info.maxConcurrency === Infinity ? "unlimited" : String(info.maxConcurrency)],
      ["Peak concurrency", String(r.peakConcurrency)],
      ["Successful requests", String(m.completed)],
      ["Failed requests", String(m.failed)],
      ["Duration (s)", num(m.durationS, 3)],
      ["Total input tokens", `${m.totalInputTokens}${m.inputTokensKnown ? "" : " (some unknown)"}`],
      ["Total output tokens", String(m.totalOutputTokens)],
      ["Request throughput (req/s)", num(m.requestThroughput, 3)],
      ["Output token throughput (tok/s)", num(m.outputThroughput)],
      ["Total token throughput (tok/s)", num(m.totalTokenThroughput)],
    ]),
    "",
    table(["latency (ms)", "n", "mean", "p50", "p90", "p99"], [
      lat("TTFT", m.ttftMs),
      lat("TPOT", m.tpotMs),
      lat("ITL", m.itlMs),
      lat("E2E", m.e2eMs),
    ]),
  ];
  if (r.chat) {
    const c = r.chat;
    const turnRow = (name: string, s: Summary, prompt: number | null, cached: number | null) => [
      name,
      String(s.n),
      num(s.mean),
      num(s.p50),
      num(s.p90),
      num(s.p99),
      num(prompt, 1),
      num(cached, 1),
    ];
    const later = c.turns.slice(1);
    const meanOver = (xs: (number | null)[]) => {
      const v = xs.filter((x): x is number => x !== null);
      return v.length > 0 ? v.reduce((a, b) => a + b, 0) / v.length : null;
    };
    lines.push(
      "",
      table(["TTFT by turn (ms)", "n", "mean", "p50", "p90", "p99", "prompt tok", "cached tok"], [
        ...c.turns.map((t) => turnRow(`turn ${t.turn}`, t.ttftMs, t.promptTokensMean, t.cachedTokensMean)),
        ...(later.length > 0
          ? [turnRow(
            "turns 2+",
            c.laterTurnsTtftMs,
            meanOver(later.map((t) => t.promptTokensMean)),
            meanOver(later.map((t) => t.cachedTokensMean)),
          )]
          : []),
      ]),
      `TTFT turn 1 / turns 2+ (means): x${num(c.firstOverLaterTtft)}`,
    );
  }
  const notes: string[] = [];
  if (r.timedOut) notes.push("the overall --timeout fired; unfinished requests count as failed");
  if (m.outputLengthMismatches > 0) {
    notes.push(
      `${m.outputLengthMismatches} completed requests returned a different number of tokens than asked`,
    );
  }
  if (m.outputTokensFromChunks > 0) {
    notes.push(`${m.outputTokensFromChunks} requests had no usage in the stream; tokens counted as chunks`);
  }
  for (const e of m.errors.slice(0, 10)) notes.push(`error x${e.count}: ${e.error}`);
  if (m.errors.length > 10) notes.push(`... and ${m.errors.length - 10} more distinct errors`);
  if (notes.length > 0) lines.push("", ...notes.map((n) => `! ${n}`));
  return lines.join("\n");
}

/** One mode's rounds, averaged. Latencies are the mean over rounds of each round's mean. */
export interface ModeSummary {
  mode: string;
  rounds: number;
  prompts: number;
  completed: number;
  failed: number;
  durationS: number;
  requestThroughput: number;
  outputThroughput: number;
  outputThroughputMin: number;
  outputThroughputMax: number;
  totalTokenThroughput: number;
  ttftMeanMs: number | null;
  tpotMeanMs: number | null;
  itlP99Ms: number | null;
  e2eMeanMs: number | null;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const meanOf = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length > 0 ? mean(v) : null;
};

export function summarizeMode(mode: string, runs: RunResult[]): ModeSummary {
  if (runs.length === 0) throw new Error(`no runs for ${mode}`);
  const out = runs.map((r) => r.metrics.outputThroughput);
  return {
    mode,
    rounds: runs.length,
    prompts: runs[0].metrics.requests,
    completed: runs.reduce((a, r) => a + r.metrics.completed, 0),
    failed: runs.reduce((a, r) => a + r.metrics.failed, 0),
    durationS: mean(runs.map((r) => r.metrics.durationS)),
    requestThroughput: mean(runs.map((r) => r.metrics.requestThroughput)),
    outputThroughput: mean(out),
    outputThroughputMin: Math.min(...out),
    outputThroughputMax: Math.max(...out),
    totalTokenThroughput: mean(runs.map((r) => r.metrics.totalTokenThroughput)),
    ttftMeanMs: meanOf(runs.map((r) => r.metrics.ttftMs.mean)),
    tpotMeanMs: meanOf(runs.map((r) => r.metrics.tpotMs.mean)),
    itlP99Ms: meanOf(runs.map((r) => r.metrics.itlMs.p99)),
    e2eMeanMs: meanOf(runs.map((r) => r.metrics.e2eMs.mean)),
  };
}

export interface Ratio {
  numerator: string;
  denominator: string;
  outputThroughput: number | null;
  requestThroughput: number | null;
  /** Set when the two modes ran different prompt counts (the sequential cap). */
  note: string | null;
}

export function ratios(summaries: ModeSummary[], numerator = "continuous"): Ratio[] {
  const top = summaries.find((s) => s.mode === numerator);
  if (!top) return [];
  const div = (a: number, b: number) => (b > 0 ? a / b : null);
  return summaries.filter((s) => s !== top).map((s) => ({
    numerator: top.mode,
    denominator: s.mode,
    outputThroughput: div(top.outputThroughput, s.outputThroughput),
    requestThroughput: div(top.requestThroughput, s.requestThroughput),
    note: s.prompts !== top.prompts
      ? `${s.mode} ran ${s.prompts} prompts, ${top.mode} ${top.prompts}; each throughput is over its own run`
      : null,
  }));
}

export function formatComparison(summaries: ModeSummary[], rs: Ratio[]): string {
  const rows = summaries.map((s) => [
    s.mode,
    String(s.rounds),
    String(s.prompts),
    String(s.completed),
    String(s.failed),
    num(s.durationS),
    num(s.requestThroughput, 3),
    s.rounds > 1
      ? `${num(s.outputThroughput)} [${num(s.outputThroughputMin)}-${num(s.outputThroughputMax)}]`
      : num(s.outputThroughput),
    num(s.totalTokenThroughput),
    num(s.ttftMeanMs),
    num(s.tpotMeanMs),
    num(s.itlP99Ms),
    num(s.e2eMeanMs),
  ]);
  const lines = [
    "==================== comparison ====================",
    table([
      "mode",
      "rounds",
      "prompts",
      "ok",
      "failed",
      "dur s",
      "req/s",
      "out tok/s",
      "total tok/s",
      "TTFT ms",
      "TPOT ms",
      "ITL p99",
      "E2E ms",
    ], rows),
    "(per mode: mean over rounds; out tok/s [min-max] when rounds > 1; latencies are means of round means)",
  ];
  if (rs.length > 0) lines.push("");
  for (const r of rs) {
    lines.push(
      `${r.numerator}/${r.denominator}: output tok/s x${num(r.outputThroughput)}, ` +
        `req/s x${num(r.requestThroughput)}`,
    );
    if (r.note) lines.push(`  note: ${r.note}`);
  }
  return lines.join("\n");
}
