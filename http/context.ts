// Types shared by the app and its routes: what createApp is given, and what each request carries.
import type { Context } from "hono";
import type { EngineClient } from "../engine/protocol.ts";
import type { Metrics } from "./metrics.ts";
import type { Admission } from "./admission.ts";

/** The settings the HTTP layer reads; the process's Config (server/config.ts) is one. */
export interface HttpConfig {
  /** The model's name in the API; absent: the engine's. */
  servedModelName?: string;
  /** Context limit below the engine's, if any. */
  maxModelLen?: number;
  maxBodyKb: number;
  /** Seconds to receive a whole request body (408 beyond); 0 or absent: no limit. */
  bodyTimeoutS?: number;
  /** Waiting requests before new ones get 429. */
  maxQueue: number;
  /** Running slots (--max-seqs) and how they free up (--batching): requests that start at once do not queue. */
  maxSeqs?: number;
  batching?: "continuous" | "static" | "sequential";
  logPrompts: boolean;
  /** Bearer keys for the inference routes; none: public. */
  apiKeys: string[];
  /** Bearer key for /metrics; absent: public. */
  metricsKey?: string;
  corsOrigins: string[];
  /** No chat playground at / (absent: served). */
  noUi?: boolean;
}

export interface AppDeps {
  /** null while the model is loading. */
  engine: () => EngineClient | null;
  config: HttpConfig;
  /** True once shutdown began: new requests get 503. */
  draining: () => boolean;
  /** One structured line per request; defaults to JSON on stdout. */
  log?: (line: object) => void;
  /** Interval of SSE `: ping` comments while no token comes (default 15000). */
  keepAliveMs?: number;
  /**
   * How long a generation may run before its response starts (default 500): a non-streaming one
   * then gets 200 and a body of keep-alive whitespace, a streaming one its SSE headers. Until then
   * a departed client can go unnoticed (docs/deno-disconnect.md).
   */
  commitMs?: number;
  /** Pass one to share histograms with other code (default: a fresh one). */
  metrics?: Metrics;
}

/** What every route handler closes over. */
export interface Shared {
  deps: AppDeps;
  config: HttpConfig;
  metrics: Metrics;
  admission: Admission;
  keepAliveMs: number;
  commitMs: number;
}

/** The request's log line, filled in by handlers as facts become known. */
export interface RequestLog {
  id: string;
  method: string;
  path: string;
  status?: number;
  prompt_tokens?: number;
  /** Prompt tokens served from the prefix cache. */
  cached_tokens?: number;
  completion_tokens?: number;
  finish_reason?: string;
  /** Seconds from arrival to the first token. */
  ttft?: number;
  /** Seconds from arrival to the end of the response body. */
  duration?: number;
  error?: string;
  /** The status of an error sent inside a response that had already started with 200. */
  error_status?: number;
  /** Only with --log-prompts. */
  prompt?: unknown;
}

export type AppEnv = {
  Variables: {
    requestId: string;
    /** performance.now() at arrival. */
    startedAt: number;
    log: RequestLog;
    /** Set by streaming handlers: resolves when the body is finished, so the log line waits for it. */
    bodyDone?: Promise<void>;
  };
};

export type AppContext = Context<AppEnv>;
