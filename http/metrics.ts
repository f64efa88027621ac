// Prometheus text exposition (format 0.0.4). Engine counters and the step-size histogram come from
// stats(), which the engine keeps as running totals; latencies are observed by the HTTP layer.
import {
  type EngineClient,
  type EngineStats,
  type FinishReason,
  type HistogramCounts,
  STEP_TOKEN_BUCKETS,
} from "../engine/protocol.ts";

const LATENCY_BUCKETS = [
  0.001,
  0.005,
  0.01,
  0.02,
  0.04,
  0.06,
  0.08,
  0.1,
  0.25,
  0.5,
  0.75,
  1,
  2.5,
  5,
  7.5,
  10,
  20,
  40,
  80,
];
const E2E_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960];

const fmt = (v: number) => (v === Infinity ? "+Inf" : v === -Infinity ? "-Inf" : String(v));

export class Histogram {
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {
    this.#counts = new Array(buckets.length).fill(0);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return;
    this.#sum += v;
    this.#count++;
    const i = this.buckets.findIndex((b) => v <= b);
    if (i >= 0) this.#counts[i]++;
  }

  get count(): number {
    return this.#count;
  }

  render(): string {
    return histogram(this.name, this.help, this.buckets, {
      counts: this.#counts,
      sum: this.#sum,
      count: this.#count,
    });
  }
}

function histogram(name: string, help: string, buckets: number[], h: HistogramCounts): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
  let cumulative = 0;
  buckets.forEach((b, i) => {
    cumulative += h.counts[i];
    lines.push(`${name}_bucket{le="${fmt(b)}"} ${cumulative}`);
  });
  lines.push(`${name}_bucket{le="+Inf"} ${h.count}`);
  lines.push(`${name}_sum ${fmt(h.sum)}`, `${name}_count ${h.count}`);
  return lines.join("\n");
}

const NO_STEPS: HistogramCounts = { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 };

function scalar(name: string, type: "gauge" | "counter", help: string, value: number): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${fmt(value)}`;
}

/** One counter split by `label`: a series per entry of `values`, in their order. */
function labelledCounter(name: string, help: string, label: string, values: [string, number][]): string {
  return [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} counter`,
    ...values.map(([k, v]) => `${name}{${label}="${k}"} ${v}`),
  ].join("\n");
}

/** The connection front's counters (server/front.ts), when it runs. */
export interface ConnectionCounts {
  open: number;
  accepted: number;
  refused: number;
  timedOut: { header: number; body: number; idle: number; send: number };
}

export class Metrics {
  /** Set by the process when a connection front runs; its series are absent otherwise. */
  connections: () => ConnectionCounts | null = () => null;
  readonly ttft = new Histogram(
    "ragtime_time_to_first_token_seconds",
    "Time from request arrival to the first generated token.",
    LATENCY_BUCKETS,
  );
  readonly itl = new Histogram(
    "ragtime_inter_token_latency_seconds",
    "Time between consecutive generated tokens of one request.",
    LATENCY_BUCKETS,
  );
  readonly e2e = new Histogram(
    "ragtime_e2e_request_latency_seconds",
    "Time from request arrival to its last token.",
    E2E_BUCKETS,
  );
  readonly #finished: Record<FinishReason, number> = { stop: 0, length: 0, abort: 0 };
  #last: EngineStats | null = null;

  observeFinish(reason: FinishReason): void {
    this.#finished[reason]++;
  }

  render(engine: EngineClient | null): string {
    // While loading there is no engine: report the last snapshot (or zeros) so series stay continuous.
    const s = engine ? (this.#last = engine.stats()) : this.#last;
    const kvRatio = s && s.kvBlocksTotal > 0 ? s.kvBlocksUsed / s.kvBlocksTotal : 0;
    return [
      scalar("ragtime_requests_running", "gauge", "Requests in the running batch.", s?.running ?? 0),
      scalar("ragtime_requests_waiting", "gauge", "Requests waiting to be scheduled.", s?.waiting ?? 0),
      scalar("ragtime_kv_cache_usage_ratio", "gauge", "Fraction of KV cache blocks in use.", kvRatio),
      scalar("ragtime_prompt_tokens_total", "counter", "Prompt tokens processed.", s?.promptTokensTotal ?? 0),
      scalar(
        "ragtime_generation_tokens_total",
        "counter",
        "Tokens generated.",
        s?.generationTokensTotal ?? 0,
      ),
      scalar(
        "ragtime_preemptions_total",
        "counter",
        "Requests preempted to free KV cache.",
        s?.preemptionsTotal ?? 0,
      ),
      scalar(
        "ragtime_prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        s?.prefixCacheQueriesTotal ?? 0,
      ),
      scalar(
        "ragtime_prefix_cache_hits_total",
        "counter",
        "Prompt tokens whose KV came from the prefix cache.",
        s?.prefixCacheHitsTotal ?? 0,
      ),
      scalar(
        "ragtime_prefix_cache_blocks",
        "gauge",
        "KV cache blocks holding cached prefix content (held or evictable).",
        s?.kvBlocksCached ?? 0,
      ),
      labelledCounter(
        "ragtime_engine_steps_total",
        "Engine steps by how they ran: replayed from a captured graph, dispatched kernel by kernel, or " +
          "split (a mixed step's decodes replayed, the rest dispatched).",
        "path",
        [
          ["captured", s?.stepsByPath?.captured ?? 0],
          ["uncaptured", s?.stepsByPath?.uncaptured ?? 0],
          ["split", s?.stepsByPath?.split ?? 0],
        ],
      ),
      labelledCounter(
        "ragtime_request_success_total",
        "Finished requests by finish reason.",
        "finished_reason",
        Object.entries(this.#finished),
      ),
      this.ttft.render(),
      this.itl.render(),
      this.e2e.render(),
      ...connectionSeries(this.connections()),
      histogram(
        "ragtime_step_batch_tokens",
        "Tokens (prefill and decode) processed per engine step.",
        STEP_TOKEN_BUCKETS,
        s?.stepTokens ?? NO_STEPS,
      ),
    ].join("\n") + "\n";
  }
}

function connectionSeries(c: ConnectionCounts | null): string[] {
  if (!c) return [];
  return [
    scalar("ragtime_connections_open", "gauge", "Client connections open.", c.open),
    scalar("ragtime_connections_accepted_total", "counter", "Client connections accepted.", c.accepted),
    scalar(
      "ragtime_connections_refused_total",
      "counter",
      "Client connections refused with 503 over --max-connections.",
      c.refused,
    ),
    labelledCounter(
      "ragtime_connections_timed_out_total",
      "Client connections closed by a timeout, by which.",
      "timeout",
      (["header", "body", "idle", "send"] as const).map((k) => [k, c.timedOut[k]]),
    ),
  ];
}
