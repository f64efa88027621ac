// Drives one benchmark against a running server: warmup, then the measured requests on their
// arrival schedule under a concurrency cap, with per-request and overall deadlines.
import { emptyRecord, sendRequest } from "./client.ts";
import type { Progress } from "./progress.ts";
import { type ChatMetrics, chatMetrics, computeMetrics, type Metrics, type RequestRecord } from "./stats.ts";
import {
  arrivalOffsets,
  arrivalRng,
  type ChatMessage,
  type ChatWorkload,
  type WorkloadItem,
} from "./workload.ts";

export interface RunOptions {
  baseUrl: string;
  endpoint: string;
  headers: Record<string, string>;
  bodyBase: Record<string, unknown>;
  measured: WorkloadItem[];
  warmup: WorkloadItem[];
  /** Requests per second; Infinity sends all at once. */
  rate: number;
  /** Most requests in flight; Infinity for no cap. */
  maxConcurrency: number;
  seed: number;
  requestTimeoutS: number;
  /** Deadline for warmup and measurement together. */
  timeoutS: number;
  progress: Progress;
  label: string;
}

export interface RunResult {
  label: string;
  metrics: Metrics;
  warmup: { requests: number; completed: number; failed: number; errors: { error: string; count: number }[] };
  timedOut: boolean;
  /** Highest number of measured requests in flight at once. */
  peakConcurrency: number;
  records: RequestRecord[];
  /** Chat workload only: TTFT and cached tokens per turn. */
  chat?: ChatMetrics;
}

class Semaphore {
  #free: number;
  #waiters: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async acquire(signal: AbortSignal): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    signal.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const wake = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== wake);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(wake);
    });
  }
  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#free++;
  }
}

function sleepUntil(at: number, signal: AbortSignal): Promise<void> {
  const ms = at - performance.now();
  if (ms <= 0) return Promise.resolve();
  signal.throwIfAborted();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** A record for a request that was never sent (the overall deadline came first). */
function unsent(item: WorkloadItem, why: string): RequestRecord {
  return emptyRecord(item, `not sent: ${why}`);
}

interface Phase {
  records: RequestRecord[];
  peak: number;
}

/**
 * Sends one request at a time for a phase: per-request timeout, the semaphore slot (acquired by the
 * caller) released when it ends, and the in-flight / done / failed counters the progress line shows.
 */
class PhaseSender {
  readonly sem: Semaphore;
  readonly state: { total: number; done: number; failed: number; inFlight: number; outputTokens: number };
  peak = 0;
  private url: string;

  constructor(private opts: Omit<RunOptions, "measured" | "warmup">, total: number, label: string) {
    this.url = new URL(opts.endpoint, opts.baseUrl).href;
    this.sem = new Semaphore(
      opts.maxConcurrency === Infinity ? Number.MAX_SAFE_INTEGER : opts.maxConcurrency,
    );
    this.state = { total, done: 0, failed: 0, inFlight: 0, outputTokens: 0 };
    opts.progress.start(label, total);
  }

  async send(item: WorkloadItem, overall: AbortSignal): Promise<RequestRecord> {
    const { opts, state } = this;
    const perRequest = new AbortController();
    const timer = setTimeout(
      () => perRequest.abort(new Error(`request timeout after ${opts.requestTimeoutS}s`)),
      opts.requestTimeoutS * 1000,
    );
    state.inFlight++;
    this.peak = Math.max(this.peak, state.inFlight);
    opts.progress.update(state);
    const rec = await sendRequest(item, {
      url: this.url,
      headers: opts.headers,
      bodyBase: opts.bodyBase,
      signal: AbortSignal.any([overall, perRequest.signal]),
    });
    clearTimeout(timer);
    this.sem.release();
    state.inFlight--;
    if (rec.ok) {
      state.done++;
      state.outputTokens += rec.outputTokens;
    } else state.failed++;
    opts.progress.update(state);
    return rec;
  }
}

async function runPhase(
  items: WorkloadItem[],
  offsets: number[],
  opts: RunOptions,
  overall: AbortSignal,
  label: string,
): Promise<Phase> {
  const sender = new PhaseSender(opts, items.length, label);
  const records: RequestRecord[] = new Array(items.length);
  const pending: Promise<void>[] = [];
  const t0 = performance.now();
  let i = 0;
  try {
    for (; i < items.length; i++) {
      overall.throwIfAborted();
      await sleepUntil(t0 + offsets[i], overall);
      await sender.sem.acquire(overall);
      const slot = i;
      pending.push(
        sender.send(items[i], overall).then((rec) => {
          records[slot] = rec;
        }),
      );
    }
  } catch {
    // The overall deadline fired while waiting to send; what is left is recorded as unsent below.
  }
  await Promise.all(pending);
  const why = overall.aborted && overall.reason instanceof Error ? overall.reason.message : "aborted";
  for (let j = i; j < items.length; j++) records[j] = unsent(items[j], why);
  opts.progress.finish();
  return { records, peak: sender.peak };
}

/** A run's result from its warmup and measured phases; timed out if the overall deadline fired. */
function runResult(label: string, warm: Phase, run: Phase, overall: AbortSignal): RunResult {
  const wm = computeMetrics(warm.records);
  return {
    label,
    metrics: computeMetrics(run.records),
    warmup: { requests: wm.requests, completed: wm.completed, failed: wm.failed, errors: wm.errors },
    timedOut: overall.aborted,
    peakConcurrency: run.peak,
    records: run.records,
  };
}

/** Runs `run` with a signal that aborts after `timeoutS` seconds (the whole run's deadline). */
async function withDeadline<T>(timeoutS: number, run: (overall: AbortSignal) => Promise<T>): Promise<T> {
  const overall = new AbortController();
  const deadline = setTimeout(
    () => overall.abort(new Error(`overall timeout after ${timeoutS}s`)),
    timeoutS * 1000,
  );
  try {
    return await run(overall.signal);
  } finally {
    clearTimeout(deadline);
  }
}

export function runBenchmark(opts: RunOptions): Promise<RunResult> {
  return withDeadline(opts.timeoutS, async (overall) => {
    // Warmup ignores the rate: its only job is to get kernels compiled and caches allocated.
    const warm = opts.warmup.length > 0
      ? await runPhase(opts.warmup, opts.warmup.map(() => 0), opts, overall, `${opts.label} warmup`)
      : { records: [], peak: 0 };
    const offsets = arrivalOffsets(opts.measured.length, opts.rate, arrivalRng(opts.seed));
    const run = await runPhase(opts.measured, offsets, opts, overall, opts.label);
    return runResult(opts.label, warm, run, overall);
  });
}

export interface ChatRunOptions extends Omit<RunOptions, "measured" | "warmup"> {
  measured: ChatWorkload;
  warmup: ChatWorkload;
  /** max_tokens of every answer. */
  answerTokens: number;
  /** Milliseconds each user waits after an answer before sending the next turn (default 0). */
  thinkMs?: number;
}

/**
 * Chat workload: each simulated user starts at its arrival time (--rate) and holds its conversation
 * turn after turn (after thinkMs, reading), each request resending the system prompt and every earlier
 * turn with the answers the server gave. A failed turn ends that user's conversation (later turns are
 * recorded as unsent).
 */
export function runChatBenchmark(opts: ChatRunOptions): Promise<RunResult> {
  return withDeadline(opts.timeoutS, async (overall) => {
    const warm = opts.warmup.users.length > 0
      ? await runConversations(
        opts.warmup,
        opts.warmup.users.map(() => 0),
        opts,
        overall,
        `${opts.label} warmup`,
      )
      : { records: [], peak: 0 };
    const offsets = arrivalOffsets(opts.measured.users.length, opts.rate, arrivalRng(opts.seed));
    const run = await runConversations(opts.measured, offsets, opts, overall, opts.label);
    return { ...runResult(opts.label, warm, run, overall), chat: chatMetrics(run.records) };
  });
}

async function runConversations(
  w: ChatWorkload,
  offsets: number[],
  opts: ChatRunOptions,
  overall: AbortSignal,
  label: string,
): Promise<Phase> {
  const turns = Math.max(0, ...w.users.map((u) => u.messages.length));
  const sender = new PhaseSender(opts, w.users.length * turns, label);
  const records: RequestRecord[] = [];
  const t0 = performance.now();
  const item = (user: number, turn: number, prompt: ChatMessage[]): WorkloadItem => ({
    index: user * turns + turn - 1,
    prompt,
    promptTokens: null,
    outputTokens: opts.answerTokens,
    user,
    turn,
  });
  await Promise.all(w.users.map(async (u, k) => {
    const messages: ChatMessage[] = [{ role: "system", content: w.system }];
    let stopped: string | null = null;
    for (const [t, text] of u.messages.entries()) {
      messages.push({ role: "user", content: text });
      const it = item(u.user, t + 1, [...messages]);
      if (stopped === null && overall.aborted) {
        stopped = overall.reason instanceof Error ? overall.reason.message : "aborted";
      }
      if (stopped !== null) {
        records.push(unsent(it, stopped));
        continue;
      }
      try {
        if (t === 0) await sleepUntil(t0 + offsets[k], overall);
        else if ((opts.thinkMs ?? 0) > 0) await sleepUntil(performance.now() + opts.thinkMs!, overall);
        await sender.sem.acquire(overall);
      } catch {
        stopped = overall.reason instanceof Error ? overall.reason.message : "aborted";
        records.push(unsent(it, stopped));
        continue;
      }
      const rec = await sender.send(it, overall);
      records.push(rec);
      if (rec.ok) messages.push({ role: "assistant", content: rec.answer ?? "" });
      else stopped = `an earlier turn failed: ${rec.error}`;
    }
  }));
  opts.progress.finish();
  records.sort((a, b) => a.index - b.index);
  return { records, peak: sender.peak };
}
