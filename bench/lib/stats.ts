// Serving metrics as vLLM's `bench serve` defines them, computed from per-request timing records.

/** What one request did. Times are performance.now() milliseconds; null where it never got there. */
export interface RequestRecord {
  index: number;
  ok: boolean;
  error: string | null;
  sentAt: number | null;
  endAt: number | null;
  /** Arrival time of each chunk that carried completion text. */
  chunkTimes: number[];
  /** From the final usage event when the server sent one, else the number of content chunks. */
  outputTokens: number;
  outputTokensFrom: "usage" | "chunks";
  /** From usage, else known from the workload (token-id prompts), else null. */
  promptTokens: number | null;
  expectedOutputTokens: number;
  finishReason: string | null;
  /** usage.prompt_tokens_details.cached_tokens, where the server reported it. */
  cachedTokens?: number | null;
  /** Chat workload: the simulated user, the turn (from 1), and the answer's text (the next turn sends it). */
  user?: number;
  turn?: number;
  answer?: string;
}

export interface Summary {
  n: number;
  mean: number | null;
  std: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  min: number | null;
  max: number | null;
}

export interface Metrics {
  /** Requests that were part of the measurement (sent or not). */
  requests: number;
  completed: number;
  failed: number;
  /** Distinct error texts with how often each happened, most frequent first. */
  errors: { error: string; count: number }[];
  /** First request sent to last request finished, seconds. */
  durationS: number;
  totalInputTokens: number;
  /** False when some completed request's prompt length was neither in usage nor known up front. */
  inputTokensKnown: boolean;
  totalOutputTokens: number;
  requestThroughput: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  /** Completed requests whose output length differs from what was asked (max_tokens with ignore_eos). */
  outputLengthMismatches: number;
  /** Completed requests whose token count came from counting chunks (no usage in the stream). */
  outputTokensFromChunks: number;
  ttftMs: Summary;
  tpotMs: Summary;
  itlMs: Summary;
  e2eMs: Summary;
}

/** Percentile with linear interpolation between closest ranks (numpy's default). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new RangeError("percentile of an empty list");
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile ${p} outside [0, 100]`);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank), hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

export function summarize(values: readonly number[]): Summary {
  const n = values.length;
  if (n === 0) return { n, mean: null, std: null, p50: null, p90: null, p99: null, min: null, max: null };
  const sorted = [...values].sort((a, b) => a - b);
  let sum = 0;
  for (const v of sorted) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of sorted) sq += (v - mean) ** 2;
  return {
    n,
    mean,
    // Population standard deviation, as numpy's np.std.
    std: Math.sqrt(sq / n),
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    min: sorted[0],
    max: sorted[n - 1],
  };
}

/** Time to first token: send to the first chunk with text. */
export function ttftOf(r: RequestRecord): number | null {
  return r.sentAt === null || r.chunkTimes.length === 0 ? null : r.chunkTimes[0] - r.sentAt;
}

export function e2eOf(r: RequestRecord): number | null {
  return r.sentAt === null || r.endAt === null ? null : r.endAt - r.sentAt;
}

/** Time per output token after the first: (e2e - ttft) / (output tokens - 1); undefined below 2 tokens. */
export function tpotOf(r: RequestRecord): number | null {
  const ttft = ttftOf(r), e2e = e2eOf(r);
  if (ttft === null || e2e === null || r.outputTokens < 2) return null;
  return (e2e - ttft) / (r.outputTokens - 1);
}

/** Gaps between consecutive content chunks (a chunk may carry several tokens; the gap is per chunk). */
export function itlsOf(r: RequestRecord): number[] {
  const out: number[] = [];
  for (let i = 1; i < r.chunkTimes.length; i++) out.push(r.chunkTimes[i] - r.chunkTimes[i - 1]);
  return out;
}

export function computeMetrics(records: readonly RequestRecord[]): Metrics {
  const ok = records.filter((r) => r.ok);
  const sent = records.filter((r) => r.sentAt !== null);
  let start = Infinity, end = -Infinity;
  for (const r of sent) {
    start = Math.min(start, r.sentAt!);
    if (r.endAt !== null) end = Math.max(end, r.endAt);
  }
  const durationS = sent.length > 0 && end > start ? (end - start) / 1000 : 0;

  let totalIn = 0, totalOut = 0, inKnown = true, mismatches = 0, fromChunks = 0;
  const ttft: number[] = [], tpot: number[] = [], itl: number[] = [], e2e: number[] = [];
  for (const r of ok) {
    if (r.promptTokens === null) inKnown = false;
    else totalIn += r.promptTokens;
    totalOut += r.outputTokens;
    if (r.outputTokens !== r.expectedOutputTokens) mismatches++;
    if (r.outputTokensFrom === "chunks") fromChunks++;
    const t = ttftOf(r), p = tpotOf(r), e = e2eOf(r);
    if (t !== null) ttft.push(t);
    if (p !== null) tpot.push(p);
    if (e !== null) e2e.push(e);
    itl.push(...itlsOf(r));
  }

  const counts = new Map<string, number>();
  for (const r of records) {
    if (!r.ok) counts.set(r.error ?? "unknown error", (counts.get(r.error ?? "unknown error") ?? 0) + 1);
  }
  const errors = [...counts].map(([error, count]) => ({ error, count })).sort((a, b) => b.count - a.count);
  const per = (x: number) => (durationS > 0 ? x / durationS : 0);
  return {
    requests: records.length,
    completed: ok.length,
    failed: records.length - ok.length,
    errors,
    durationS,
    totalInputTokens: totalIn,
    inputTokensKnown: inKnown,
    totalOutputTokens: totalOut,
    requestThroughput: per(ok.length),
    outputThroughput: per(totalOut),
    totalTokenThroughput: per(totalIn + totalOut),
    outputLengthMismatches: mismatches,
    outputTokensFromChunks: fromChunks,
    ttftMs: summarize(ttft),
    tpotMs: summarize(tpot),
    itlMs: summarize(itl),
    e2eMs: summarize(e2e),
  };
}

/** Chat workload: TTFT and prompt reuse per turn, and turn 1 against every later turn. */
export interface TurnMetrics {
  turn: number;
  completed: number;
  ttftMs: Summary;
  promptTokensMean: number | null;
  /** Mean usage.prompt_tokens_details.cached_tokens; null where the server reported none. */
  cachedTokensMean: number | null;
}

export interface ChatMetrics {
  turns: TurnMetrics[];
  firstTurnTtftMs: Summary;
  laterTurnsTtftMs: Summary;
  /** Mean TTFT of turn 1 over the mean of later turns. */
  firstOverLaterTtft: number | null;
}

export function chatMetrics(records: readonly RequestRecord[]): ChatMetrics {
  const ok = records.filter((r) => r.ok && r.turn !== undefined);
  const ttfts = (rs: RequestRecord[]) => rs.map(ttftOf).filter((t): t is number => t !== null);
  const meanOf = (xs: number[]) => (xs.length > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
  const last = Math.max(0, ...records.map((r) => r.turn ?? 0));
  const turns = Array.from({ length: last }, (_, i) => {
    const rs = ok.filter((r) => r.turn === i + 1);
    return {
      turn: i + 1,
      completed: rs.length,
      ttftMs: summarize(ttfts(rs)),
      promptTokensMean: meanOf(rs.flatMap((r) => (r.promptTokens === null ? [] : [r.promptTokens]))),
      cachedTokensMean: meanOf(
        rs.flatMap((r) => (typeof r.cachedTokens === "number" ? [r.cachedTokens] : [])),
      ),
    };
  });
  const first = summarize(ttfts(ok.filter((r) => r.turn === 1)));
  const later = summarize(ttfts(ok.filter((r) => r.turn! > 1)));
  return {
    turns,
    firstTurnTtftMs: first,
    laterTurnsTtftMs: later,
    firstOverLaterTtft: first.mean !== null && later.mean ? first.mean / later.mean : null,
  };
}
