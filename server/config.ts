// Command-line flags with environment twins, validated with zod. Flags win over the environment.
import { z } from "zod";
import {
  BATCH_INVARIANT_ITEM_TOKENS,
  ENGINE_DEFAULTS,
  type EngineSettings,
  MAX_MATMUL_SPLIT_K,
  SHORTEST_FIRST_WINDOW_MS,
} from "../engine/protocol.ts";

/** A bad flag or environment value; the message is one line that names the flag. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Thrown by parseConfig for --help/-h; the message is the help text. */
export class HelpRequested extends Error {
  constructor() {
    super(helpText());
    this.name = "HelpRequested";
  }
}

type Raw = string | string[] | undefined;

interface Option<S extends z.ZodType> {
  flag: string;
  env: string;
  /** What a valid value looks like, for error messages ("an integer in [1, 65535]"). */
  expect: string;
  help: string;
  metavar?: string;
  kind: "value" | "bool" | "list";
  /** The flag may be given several times; values accumulate. */
  repeatable?: boolean;
  /** Which sources hold comma-separated lists (lists only); API keys split only in the environment. */
  split?: "env" | "both";
  required?: boolean;
  schema: S;
}

const positiveInt = (min: number, max: number) =>
  z.string().trim().regex(/^[+]?\d+$/).transform(Number).pipe(z.int().min(min).max(max));

const nonNegativeNumber = z.string().trim().regex(/^[+]?(\d+\.?\d*|\.\d+)$/).transform(Number).pipe(
  z.number().min(0).max(86_400),
);

const TRUE = ["1", "true", "yes", "on"];
const FALSE = ["0", "false", "no", "off"];
const bool = z.string().trim().toLowerCase().refine((v) => TRUE.includes(v) || FALSE.includes(v)).transform((
  v,
) => TRUE.includes(v));

const text = z.string().trim().min(1);
const list = z.array(z.string().trim().min(1));

const opt = <S extends z.ZodType>(o: Option<S>): Option<S> => o;

const OPTIONS = {
  model: opt({
    flag: "--model",
    env: "RAGTIME_MODEL",
    kind: "value",
    metavar: "PATH",
    expect: "a model folder or file path",
    help:
      "Model to serve (Hugging Face folder with safetensors, or a GGUF file); default: models/ragtime-mini.",
    schema: text.optional(),
  }),
  host: opt({
    flag: "--host",
    env: "RAGTIME_HOST",
    kind: "value",
    metavar: "ADDR",
    expect: "a host name or IP address",
    help: "Address to listen on.",
    schema: text.default("127.0.0.1"),
  }),
  port: opt({
    flag: "--port",
    env: "PORT",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 65535]",
    help: "TCP port.",
    schema: positiveInt(1, 65535).default(8080),
  }),
  device: opt({
    flag: "--device",
    env: "RAGTIME_DEVICE",
    kind: "value",
    metavar: "NAME",
    expect: 'one of "webgpu"',
    help: "Compute device.",
    schema: z.enum(["webgpu"]).default("webgpu"),
  }),
  dtype: opt({
    flag: "--dtype",
    env: "RAGTIME_DTYPE",
    kind: "value",
    metavar: "T",
    expect: 'one of "auto", "f16", "f32"',
    help: "Compute precision; auto: f32 when every weight of the checkpoint is F32, f16 otherwise.",
    schema: z.enum(["auto", "f16", "f32"]).default(ENGINE_DEFAULTS.dtype),
  }),
  kvCacheMb: opt({
    flag: "--kv-cache-mb",
    env: "RAGTIME_KV_CACHE_MB",
    kind: "value",
    metavar: "MB",
    expect: "an integer in [1, 1048576]",
    help: "KV cache size in MiB, lowered to what the adapter can bind in one buffer per layer (default: " +
      "room for --max-seqs sequences at full context, at most 1024).",
    schema: positiveInt(1, 1 << 20).optional(),
  }),
  maxBatchTokens: opt({
    flag: "--max-batch-tokens",
    env: "RAGTIME_MAX_BATCH_TOKENS",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 1048576]",
    help: "Most tokens (prefill + decode) in one engine step.",
    schema: positiveInt(1, 1 << 20).default(ENGINE_DEFAULTS.maxBatchTokens),
  }),
  maxSeqs: opt({
    flag: "--max-seqs",
    env: "RAGTIME_MAX_SEQS",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 65536]",
    help: "Most sequences running at once.",
    schema: positiveInt(1, 65536).default(ENGINE_DEFAULTS.maxSeqs),
  }),
  maxChunkTokens: opt({
    flag: "--max-chunk-tokens",
    env: "RAGTIME_MAX_CHUNK_TOKENS",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 1048576]",
    help: "Most prompt tokens one request prefills in one step, so a long prompt cannot hold up the " +
      "prompts behind it for a whole step (default: --max-batch-tokens, no cap). Any value keeps a " +
      `request's tokens independent of its batch: a chunk runs as attention items of at most ` +
      `${BATCH_INVARIANT_ITEM_TOKENS} tokens.`,
    schema: positiveInt(1, 1 << 20).optional(),
  }),
  maxModelLen: opt({
    flag: "--max-model-len",
    env: "RAGTIME_MAX_MODEL_LEN",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 16777216]",
    help: "Context length limit, at most the model's own (a larger value is refused; default: the model's, " +
      "or what the KV pool holds if that is less).",
    schema: positiveInt(1, 1 << 24).optional(),
  }),
  batching: opt({
    flag: "--batching",
    env: "RAGTIME_BATCHING",
    kind: "value",
    metavar: "MODE",
    expect: 'one of "continuous", "static", "sequential"',
    help: "Scheduling: continuous batching, static batches, or one request at a time.",
    schema: z.enum(["continuous", "static", "sequential"]).default(ENGINE_DEFAULTS.policy),
  }),
  prefillOrder: opt({
    flag: "--prefill-order",
    env: "RAGTIME_PREFILL_ORDER",
    kind: "value",
    metavar: "ORDER",
    expect: 'one of "arrival", "shortest"',
    help: "Which waiting request starts its prefill first: in arrival order, or the one with the fewest " +
      "prompt tokens left past its cached prefix (a request is passed only by requests that arrived less " +
      `than ${SHORTEST_FIRST_WINDOW_MS / 1000} s after it). Never changes a request's tokens.`,
    schema: z.enum(["arrival", "shortest"]).default(ENGINE_DEFAULTS.prefillOrder),
  }),
  decodePauseSteps: opt({
    flag: "--decode-pause-steps",
    env: "RAGTIME_DECODE_PAUSE_STEPS",
    kind: "value",
    metavar: "N",
    expect: "an integer in [0, 1000]",
    help: "While more prompt tokens wait than one step holds (--max-batch-tokens), up to N steps in a row " +
      "prefill prompts only, so a burst of requests gets its first tokens sooner while running streams " +
      "pause (default 4; 0: every step decodes). Never changes a request's tokens.",
    schema: positiveInt(0, 1000).default(ENGINE_DEFAULTS.decodePauseSteps),
  }),
  answerCache: opt({
    flag: "--answer-cache",
    env: "RAGTIME_ANSWER_CACHE",
    kind: "value",
    metavar: "WHICH",
    expect: 'one of "auto", "on", "off"',
    help: "In long-query mode prompts with prefix caching: whose answers are computed again as prompt KV " +
      "and cached, so that a chat's next turn does not prefill the previous answer (auto, the default: " +
      "chat requests that resend an assistant turn, on models of 500M layer weights or more; on: every " +
      "request; off: none). A chat answer is cached as the next turn will send it: the conversation " +
      "rendered and tokenized again with its text. Never changes a request's tokens.",
    schema: z.enum(["auto", "on", "off"]).default(ENGINE_DEFAULTS.answerCache),
  }),
  maxQueue: opt({
    flag: "--max-queue",
    env: "RAGTIME_MAX_QUEUE",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 1048576]",
    help: "Waiting requests before new ones get 429.",
    schema: positiveInt(1, 1 << 20).default(1024),
  }),
  maxBodyKb: opt({
    flag: "--max-body-kb",
    env: "RAGTIME_MAX_BODY_KB",
    kind: "value",
    metavar: "KB",
    expect: "an integer in [1, 1048576]",
    help: "Largest request body in KiB (413 beyond).",
    schema: positiveInt(1, 1 << 20).default(1024),
  }),
  apiKeys: opt({
    flag: "--api-key",
    env: "RAGTIME_API_KEY",
    kind: "list",
    repeatable: true,
    split: "env",
    metavar: "KEY",
    expect: "a non-empty key",
    help: "Require 'Authorization: Bearer KEY' on /v1/*, /tokenize and /detokenize (repeatable; env: " +
      "comma-separated).",
    schema: list.default([]),
  }),
  metricsKey: opt({
    flag: "--metrics-key",
    env: "RAGTIME_METRICS_KEY",
    kind: "value",
    metavar: "KEY",
    expect: "a non-empty key",
    help: "Require 'Authorization: Bearer KEY' on /metrics (default: public).",
    schema: text.optional(),
  }),
  corsOrigins: opt({
    flag: "--cors-origins",
    env: "RAGTIME_CORS_ORIGINS",
    kind: "list",
    repeatable: true,
    split: "both",
    metavar: "LIST",
    expect: "comma-separated origins such as https://app.example.com",
    help: "Browser origins allowed by CORS, comma-separated ('*' for any; default: CORS off).",
    schema: z.array(z.string().trim().regex(/^(\*|https?:\/\/[^\s/,]+)$/)).default([]),
  }),
  noUi: opt({
    flag: "--no-ui",
    env: "RAGTIME_NO_UI",
    kind: "bool",
    expect: "true or false",
    help: "Do not serve the chat playground at / (the API is unaffected).",
    schema: bool.default(false),
  }),
  shutdownTimeoutS: opt({
    flag: "--shutdown-timeout",
    env: "RAGTIME_SHUTDOWN_TIMEOUT",
    kind: "value",
    metavar: "S",
    expect: "a number of seconds in [0, 86400]",
    help: "On SIGINT/SIGTERM, wait this long for requests in flight before stopping.",
    schema: nonNegativeNumber.default(30),
  }),
  bodyTimeoutS: opt({
    flag: "--body-timeout",
    env: "RAGTIME_BODY_TIMEOUT",
    kind: "value",
    metavar: "S",
    expect: "a number of seconds in [0, 86400]",
    help: "Time to receive a whole request body, from the request's arrival (408, then the connection " +
      "is closed); the front also closes a connection whose body sends nothing for this long (0: no limit).",
    schema: nonNegativeNumber.default(60),
  }),
  headerTimeoutS: opt({
    flag: "--header-timeout",
    env: "RAGTIME_HEADER_TIMEOUT",
    kind: "value",
    metavar: "S",
    expect: "a number of seconds in [0, 86400]",
    help: "Time for a request's headers to arrive whole, from the connection's start or, on a kept-alive " +
      "connection, from the request's first byte; beyond it 408 and close (0: no limit).",
    schema: nonNegativeNumber.default(20),
  }),
  idleTimeoutS: opt({
    flag: "--idle-timeout",
    env: "RAGTIME_IDLE_TIMEOUT",
    kind: "value",
    metavar: "S",
    expect: "a number of seconds in [0, 86400]",
    help: "Close a kept-alive connection after this long with no request in flight (0: never).",
    schema: nonNegativeNumber.default(30),
  }),
  sendTimeoutS: opt({
    flag: "--send-timeout",
    env: "RAGTIME_SEND_TIMEOUT",
    kind: "value",
    metavar: "S",
    expect: "a number of seconds in [0, 86400]",
    help: "Close a connection whose client takes no response bytes for this long while the server has " +
      "some to send (a reader that stalls); its request is aborted (0: no limit).",
    schema: nonNegativeNumber.default(60),
  }),
  maxConnections: opt({
    flag: "--max-connections",
    env: "RAGTIME_MAX_CONNECTIONS",
    kind: "value",
    metavar: "N",
    expect: "an integer in [1, 1048576]",
    help: "Most open client connections (idle, streaming or not); beyond it 503 and the connection is " +
      "closed. With --front off: most requests in flight.",
    schema: positiveInt(1, 1 << 20).default(1024),
  }),
  front: opt({
    flag: "--front",
    env: "RAGTIME_FRONT",
    kind: "value",
    metavar: "on|off",
    expect: "on or off",
    help: "The connection front, which enforces --max-connections per socket and the header, body and " +
      "idle timeouts; off: Deno.serve on the port directly (only the 408 body deadline applies).",
    schema: bool.default(true),
  }),
  logPrompts: opt({
    flag: "--log-prompts",
    env: "RAGTIME_LOG_PROMPTS",
    kind: "bool",
    expect: "true or false",
    help: "Include prompt text in request logs.",
    schema: bool.default(false),
  }),
  debugSteps: opt({
    flag: "--debug-steps",
    env: "RAGTIME_DEBUG_STEPS",
    kind: "bool",
    expect: "true or false",
    help: "Log every engine step (batch composition and timings).",
    schema: bool.default(false),
  }),
  servedModelName: opt({
    flag: "--served-model-name",
    env: "RAGTIME_SERVED_MODEL_NAME",
    kind: "value",
    metavar: "NAME",
    expect: "a non-empty name",
    help: "Model name in the API (default: the model's folder or file name).",
    schema: text.optional(),
  }),
  graphCache: opt({
    flag: "--graph-cache",
    env: "RAGTIME_GRAPH_CACHE",
    kind: "value",
    metavar: "DIR",
    expect: "a directory path",
    help: "Where built step graphs are cached (safe to delete).",
    schema: text.default(".cache/graphs"),
  }),
  graphCapture: opt({
    flag: "--graph-capture",
    env: "RAGTIME_GRAPH_CAPTURE",
    kind: "value",
    metavar: "on|off",
    expect: "on or off",
    help: "Replay decode steps from graphs captured at startup (one per batch size), instead of " +
      "dispatching every kernel from the CPU.",
    schema: bool.default(ENGINE_DEFAULTS.graphCapture),
  }),
  graphCaptureKv: opt({
    flag: "--graph-capture-kv",
    env: "RAGTIME_GRAPH_CAPTURE_KV",
    kind: "list",
    repeatable: true,
    split: "both",
    metavar: "LIST",
    expect: "comma-separated token counts such as 256,1024",
    help: "Context bounds below --max-model-len for captured decode steps, each with its own sessions " +
      "(a step uses the smallest bound over its longest context; default: 256,1024,4096; a bound at or over " +
      "the limit leaves the limit only).",
    schema: z.array(z.string().trim().regex(/^[+]?\d+$/).transform(Number).pipe(z.int().min(1).max(1 << 24)))
      .optional(),
  }),
  graphCapturePromptRows: opt({
    flag: "--graph-capture-prompt-rows",
    env: "RAGTIME_GRAPH_CAPTURE_PROMPT_ROWS",
    kind: "list",
    repeatable: true,
    split: "both",
    metavar: "LIST",
    expect: "comma-separated token counts such as 128,512, or none",
    help: "Token rows of captured prompt steps in long-query mode prompts, each with its own sessions per " +
      "context bound (a step's prompt part of up to that many rows replays one; default: 128,512; none: " +
      "none; sizes over --max-batch-tokens are dropped). Larger sizes cost startup and GPU memory.",
    schema: z.array(z.string().trim()).transform((a) => a.filter((x) => x !== "none")).pipe(
      z.array(z.string().regex(/^[+]?\d+$/).transform(Number).pipe(z.int().min(64).max(1 << 20))),
    ).optional(),
  }),
  prefixCaching: opt({
    flag: "--prefix-caching",
    env: "RAGTIME_PREFIX_CACHING",
    kind: "value",
    metavar: "on|off",
    expect: "on or off",
    help: "Reuse the KV of a prompt prefix already computed (full blocks, matched by content), so a " +
      "chat's next turn or a shared system prompt skips most of its prefill.",
    schema: bool.default(ENGINE_DEFAULTS.prefixCaching),
  }),
  matmulSplitK: opt({
    flag: "--matmul-split-k",
    env: "RAGTIME_MATMUL_SPLIT_K",
    kind: "value",
    metavar: "N",
    expect: `an integer in [1, ${MAX_MATMUL_SPLIT_K}]`,
    help: "Split each matmul's inner dimension into N slices computed in parallel and summed (faster on " +
      "few rows); a layer whose slices would be under 32 long stays whole; 1: no split.",
    schema: positiveInt(1, MAX_MATMUL_SPLIT_K).default(ENGINE_DEFAULTS.matmulSplitK),
  }),
  promptMatmul: opt({
    flag: "--prompt-matmul",
    env: "RAGTIME_PROMPT_MATMUL",
    kind: "value",
    metavar: "auto|split",
    expect: 'one of "auto", "split"',
    help: "Matmuls of prompt tokens in long-query mode prompts: auto: one MatMul where a split layer's " +
      "inputs are no more than its outputs (faster prefill; not on Intel adapters); split: as decodes'.",
    schema: z.enum(["auto", "split"]).default(ENGINE_DEFAULTS.promptMatmul),
  }),
  webgpu: opt({
    flag: "--webgpu",
    env: "RAGTIME_WEBGPU",
    kind: "value",
    metavar: "auto|dawn|deno",
    expect: 'one of "auto", "dawn", "deno"',
    help: "WebGPU implementation: Dawn (npm webgpu, faster kernels on NVIDIA) or Deno's own; auto: Dawn " +
      "on an NVIDIA host when it finds an f16 adapter, else Deno's.",
    schema: z.enum(["auto", "dawn", "deno"]).default(ENGINE_DEFAULTS.webgpu),
  }),
  attentionKernels: opt({
    flag: "--attention-kernels",
    env: "RAGTIME_ATTENTION_KERNELS",
    kind: "value",
    metavar: "ragtime|onnxruntime",
    expect: 'one of "ragtime", "onnxruntime"',
    help: "Whose WebGPU kernels run attention over the KV cache: ragtime's own (the default; faster " +
      "decode and prefill) or onnxruntime's, in the same places of the same graph.",
    schema: z.enum(["ragtime", "onnxruntime"]).default(ENGINE_DEFAULTS.attentionKernels),
  }),
  longQueries: opt({
    flag: "--long-queries",
    env: "RAGTIME_LONG_QUERIES",
    kind: "value",
    metavar: "auto|off|on|prompts",
    expect: 'one of "auto", "off", "on", "prompts"',
    help: "Prompt chunks on PagedAttention's kernel for queries of 32 tokens and more (prefill several " +
      "times faster, lower TTFT): prompts: prompt tokens only; on: decodes too (padded to 32 query rows, " +
      "lower throughput under load); auto: prompts on a GPU, off on a software adapter.",
    schema: z.enum(["auto", "off", "on", "prompts"]).default(ENGINE_DEFAULTS.longQueries),
  }),
  pipelineDepth: opt({
    flag: "--pipeline-depth",
    env: "RAGTIME_PIPELINE_DEPTH",
    kind: "value",
    metavar: "auto|1|2|3",
    expect: 'one of "auto", "1", "2", "3"',
    help: "Engine steps in flight at most: more hides readback latency, fewer lets a new prompt start " +
      "sooner; auto: three while steps are short, two once a step outlasts a readback, one on a " +
      "software adapter.",
    schema: z.enum(["auto", "1", "2", "3"]).default(ENGINE_DEFAULTS.pipelineDepth)
      .transform((v) => v === "auto" ? v : Number(v) as 1 | 2 | 3),
  }),
};

type Options = typeof OPTIONS;
type Key = keyof Options;

export type Config = { [K in Key]: z.output<Options[K]["schema"]> };

const BY_FLAG = new Map<string, Key>(
  (Object.keys(OPTIONS) as Key[]).map((k) => [OPTIONS[k].flag, k]),
);

/** Human-readable usage, generated from the option table. */
export function helpText(): string {
  const rows = (Object.keys(OPTIONS) as Key[]).map((k) => {
    const o: Option<z.ZodType> = OPTIONS[k];
    const left = o.kind === "bool" ? o.flag : `${o.flag} ${o.metavar ?? "VALUE"}`;
    const def = defaultOf(o);
    const extra = [o.required ? "required" : def !== undefined ? `default: ${def}` : "", `env: ${o.env}`]
      .filter(Boolean).join("; ");
    return `  ${left.padEnd(28)} ${o.help} (${extra})`;
  });
  return [
    "ragtime: an OpenAI-compatible LLM server on WebGPU",
    "",
    "Usage: deno task start [options]  (the same as: deno run -A main.ts [options])",
    "",
    "Options:",
    ...rows,
    `  ${"--help, -h".padEnd(28)} Show this help.`,
  ].join("\n");
}

function defaultOf(o: Option<z.ZodType>): string | undefined {
  const r = o.schema.safeParse(undefined);
  if (!r.success || r.data === undefined) return undefined;
  if (Array.isArray(r.data)) return r.data.length ? r.data.join(",") : undefined;
  if (o.metavar === "on|off") return r.data ? "on" : "off";
  return String(r.data);
}

/**
 * Parses flags (`--flag value`, `--flag=value`, bare booleans) over environment values.
 * Throws ConfigError for any bad, unknown or missing value, HelpRequested for --help.
 */
export function parseConfig(args: string[], env: { get(k: string): string | undefined }): Config {
  const fromFlags = new Map<Key, Raw>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") throw new HelpRequested();
    if (!arg.startsWith("--")) {
      throw new ConfigError(`unexpected argument ${JSON.stringify(arg)} (options start with --; see --help)`);
    }
    const eq = arg.indexOf("=");
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    const key = BY_FLAG.get(flag);
    if (!key) throw new ConfigError(`${flag}: unknown option (see --help)`);
    const o: Option<z.ZodType> = OPTIONS[key];
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (o.kind === "bool") value = "true";
    else {
      const next = args[i + 1];
      if (next === undefined || next.startsWith("--")) throw new ConfigError(`${flag}: missing value`);
      value = next;
      i++;
    }
    if (o.kind === "list") {
      const items = o.split === "both" ? value.split(",") : [value];
      const prev = fromFlags.get(key);
      fromFlags.set(key, o.repeatable && Array.isArray(prev) ? [...prev, ...items] : items);
    } else {
      fromFlags.set(key, value); // the last occurrence wins
    }
  }

  const out: Record<string, unknown> = {};
  for (const key of Object.keys(OPTIONS) as Key[]) {
    const o: Option<z.ZodType> = OPTIONS[key];
    let raw: Raw = fromFlags.get(key);
    let source = o.flag;
    if (raw === undefined) {
      const e = env.get(o.env);
      if (e !== undefined && e.trim() !== "") {
        // Stray commas in the environment are harmless; an empty flag value is an error below.
        raw = o.kind === "list" ? (o.split ? e.split(",") : [e]).filter((s) => s.trim() !== "") : e;
        source = `${o.flag} (from ${o.env})`;
      }
    }
    if (raw === undefined && o.required) {
      throw new ConfigError(`${o.flag}: required (or set ${o.env})`);
    }
    const r = o.schema.safeParse(raw);
    if (!r.success) {
      const got = Array.isArray(raw) ? badItem(o, raw) : raw;
      throw new ConfigError(`${source}: expected ${o.expect}, got ${JSON.stringify(got)}`);
    }
    out[key] = r.data;
  }
  return out as Config;
}

/** The engine's share of the flags; the engine resolves them against the model (engine/config.ts). */
export function engineSettings(c: Config): EngineSettings {
  return {
    dtype: c.dtype,
    kvCacheMb: c.kvCacheMb,
    maxBatchTokens: c.maxBatchTokens,
    maxSeqs: c.maxSeqs,
    maxChunkTokens: c.maxChunkTokens,
    maxModelLen: c.maxModelLen,
    policy: c.batching,
    prefillOrder: c.prefillOrder,
    decodePauseSteps: c.decodePauseSteps,
    answerCache: c.answerCache,
    debugSteps: c.debugSteps,
    graphCache: c.graphCache || null,
    graphCapture: c.graphCapture,
    graphCaptureKv: c.graphCaptureKv,
    graphCapturePromptRows: c.graphCapturePromptRows,
    prefixCaching: c.prefixCaching,
    matmulSplitK: c.matmulSplitK,
    promptMatmul: c.promptMatmul,
    webgpu: c.webgpu,
    attentionKernels: c.attentionKernels,
    pipelineDepth: c.pipelineDepth,
    longQueries: c.longQueries,
  };
}

/** For a list, the first item that fails, so the message points at it. */
function badItem(o: Option<z.ZodType>, raw: string[]): string | string[] {
  for (const item of raw) if (!o.schema.safeParse([item]).success) return item;
  return raw;
}
