// Load generator for OpenAI-compatible servers: streams /v1/completions requests from a seeded
// workload (or multi-turn /v1/chat/completions conversations) and reports vLLM-style serving metrics. With --compare it starts one ragtime server per
// batching mode and runs the same workload against each. `deno task bench --help` lists the flags.
import { plotFiles } from "./lib/plot.ts";
import { createProgress } from "./lib/progress.ts";
import { formatComparison, formatRun, type ModeSummary, ratios, summarizeMode } from "./lib/report.ts";
import { runBenchmark, runChatBenchmark, type RunResult } from "./lib/runner.ts";
import { splitArgs, startServer } from "./lib/server.ts";
import { ttftOf } from "./lib/stats.ts";
import {
  buildChatWorkload,
  buildWorkload,
  type ChatWorkloadSpec,
  markConstrained,
  parseRange,
  type Range,
  toDump,
  type WorkloadItem,
  type WorkloadSpec,
} from "./lib/workload.ts";

const ROOT = decodeURIComponent(new URL("..", import.meta.url).pathname).replace(/\/$/, "");
const MODES = ["continuous", "static", "sequential"];

interface Flag {
  help: string;
  metavar?: string;
  def?: string;
  bool?: boolean;
}

const FLAGS: Record<string, Flag> = {
  "--base-url": { metavar: "URL", help: "Server to load (default http://127.0.0.1:8080 unless --compare)." },
  "--endpoint": {
    metavar: "PATH",
    help: "Endpoint path (default /v1/completions; /v1/chat/completions for --workload chat).",
  },
  "--served-model": { metavar: "NAME", help: "'model' field of each request (default: omitted)." },
  "--api-key": {
    metavar: "KEY",
    help: "Sends 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY if set).",
  },
  "--workload": {
    metavar: "KIND",
    def: "random",
    help: "random (token-id prompts), text (corpus slices) or chat (multi-turn conversations).",
  },
  "--users": { metavar: "N", def: "8", help: "chat: simulated users, each holding one conversation." },
  "--turns": { metavar: "N", def: "4", help: "chat: turns per conversation (each resends all before it)." },
  "--system-len": { metavar: "N", def: "256", help: "chat: words of the system prompt all users share." },
  "--user-len": { metavar: "MIN:MAX", def: "16:32", help: "chat: words per user message, uniform." },
  "--answer-len": { metavar: "N", def: "32", help: "chat: tokens per answer (max_tokens)." },
  "--think-ms": {
    metavar: "MS",
    def: "0",
    help: "chat: each user's pause between an answer and their next turn (reading it; 0: at once).",
  },
  "--input-len": {
    metavar: "MIN:MAX",
    def: "32:128",
    help: "Prompt length, uniform (tokens; words for text).",
  },
  "--output-len": { metavar: "MIN:MAX", def: "32:128", help: "Output length, uniform; sent as max_tokens." },
  "--id-min": { metavar: "N", def: "3", help: "Smallest token id in random prompts (skips special ids)." },
  "--vocab": { metavar: "N", def: "512", help: "Token ids are drawn below this." },
  "--text-file": {
    metavar: "PATH",
    help: "Corpus for --workload text (default ../shared/corpus/prideprejudice.txt from the repo root).",
  },
  "--num-prompts": { metavar: "N", def: "100", help: "Measured requests (chat: --users x --turns)." },
  "--warmup": {
    metavar: "K",
    def: "4",
    help: "Warmup requests sent (all at once) before measuring; not counted.",
  },
  "--seed": { metavar: "N", def: "0", help: "Workload and arrival seed." },
  "--rate": {
    metavar: "R|inf",
    def: "inf",
    help: "Requests per second (Poisson arrivals; chat: users starting per second); inf sends all at once.",
  },
  "--constrained-share": {
    metavar: "F",
    def: "0",
    help: "Share of requests sent with a response_format json_schema (grammar-constrained), e.g. 0.25.",
  },
  "--max-concurrency": { metavar: "N", help: "Most requests in flight (default: no cap)." },
  "--temperature": { metavar: "T", def: "0", help: "Sampling temperature." },
  "--no-ignore-eos": { bool: true, help: "Let requests stop at EOS (output lengths are then not exact)." },
  "--extra-body": { metavar: "JSON", help: "Object merged into every request body." },
  "--request-timeout": { metavar: "S", def: "600", help: "Per-request timeout, seconds." },
  "--timeout": { metavar: "S", def: "3600", help: "Deadline for each run (warmup + measurement), seconds." },
  "--result-json": { metavar: "PATH", help: "Write config, metrics and per-request records here." },
  "--detailed": { bool: true, help: "Also store every chunk arrival time in --result-json." },
  "--plot-only": {
    metavar: "FILES",
    help: "Plot existing --result-json files (comma list; several rates make a sweep) and exit.",
  },
  "--plot-out": { metavar: "PATH", help: "SVG path (default: beside the (first) JSON, .json -> .svg)." },
  "--dump-workload": {
    metavar: "PATH",
    help: "Write the workload as JSON (for bench/peer/hf_cb.py) and exit.",
  },
  "--label": { metavar: "NAME", help: "Name of the run in reports (default: the base URL)." },
  "--compare": { metavar: "MODES", help: "Comma list of batching modes: start a ragtime server for each." },
  "--model": { metavar: "PATH", help: "Model for the servers --compare starts." },
  "--server-args": {
    metavar: "ARGS",
    def: "",
    help: "Extra flags for those servers (one shell-quoted string).",
  },
  "--rounds": { metavar: "N", def: "1", help: "Repeat the comparison, alternating the mode order." },
  "--num-prompts-sequential": { metavar: "N", help: "Run only the first N prompts in sequential mode." },
  "--server-timeout": { metavar: "S", def: "600", help: "Wait this long for a started server's /health." },
  "--server-log-dir": { metavar: "DIR", def: "bench/results/tmp", help: "Logs of started servers." },
  "--no-progress": { bool: true, help: "No progress output on stderr." },
  "--progress-interval": { metavar: "S", def: "10", help: "Seconds between progress lines when not a TTY." },
  "--help": { bool: true, help: "Show this help." },
};

function helpText(): string {
  const rows = Object.entries(FLAGS).map(([name, f]) => {
    const left = f.bool ? name : `${name} ${f.metavar ?? "VALUE"}`;
    return `  ${left.padEnd(32)} ${f.help}${f.def ? ` [${f.def}]` : ""}`;
  });
  return [
    "usage: deno task bench [flags]",
    "  deno task bench --base-url http://127.0.0.1:8080 --num-prompts 200 --rate 8",
    "  deno task bench --compare continuous,static,sequential --model PATH --num-prompts-sequential 20",
    "  deno task bench --workload chat --users 8 --turns 4 --system-len 256 --answer-len 32",
    "  deno task bench --dump-workload bench/results/tmp/workload.json --num-prompts 256",
    "  deno task bench --plot-only OUT/poisson-1.json,OUT/poisson-2.json --plot-out OUT/poisson.svg",
    "",
    ...rows,
  ].join("\n");
}

export function parseFlags(argv: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const f = FLAGS[name];
    if (!f) throw new Error(`${name}: unknown flag (see --help)`);
    if (f.bool) {
      if (eq > 0) throw new Error(`${name} takes no value`);
      out.set(name, "true");
      continue;
    }
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    // --server-args values start with "--" by nature; other flags reject that as a forgotten value.
    if (value === undefined || (eq < 0 && value.startsWith("--") && name !== "--server-args")) {
      throw new Error(`${name}: missing value`);
    }
    out.set(name, value);
  }
  return out;
}

function intFlag(flags: Map<string, string>, name: string, min: number): number {
  const s = flags.get(name) ?? FLAGS[name].def;
  if (s === undefined || !/^\d+$/.test(s.trim())) throw new Error(`${name}: expected an integer, got "${s}"`);
  const v = Number(s);
  if (!Number.isSafeInteger(v) || v < min) throw new Error(`${name}: must be an integer >= ${min}`);
  return v;
}

function numFlag(flags: Map<string, string>, name: string, min: number, allowInf = false): number {
  const s = (flags.get(name) ?? FLAGS[name].def ?? "").trim();
  if (allowInf && /^inf(inity)?$/i.test(s)) return Infinity;
  const v = Number(s);
  if (s === "" || !Number.isFinite(v) || v < min) {
    throw new Error(`${name}: expected a number >= ${min}, got "${s}"`);
  }
  return v;
}

const str = (flags: Map<string, string>, name: string) => flags.get(name) ?? FLAGS[name].def;

interface Config {
  argv: string[];
  baseUrl: string | null;
  endpoint: string;
  servedModel: string | null;
  apiKey: string | null;
  workload: "random" | "text" | "chat";
  chat: { users: number; turns: number; systemLen: number; userLen: Range; answerLen: number } | null;
  /** chat: milliseconds between an answer and the user's next turn. */
  thinkMs: number;
  inputLen: Range;
  outputLen: Range;
  idMin: number;
  vocab: number;
  textFile: string | null;
  numPrompts: number;
  warmup: number;
  seed: number;
  rate: number;
  maxConcurrency: number;
  constrainedShare: number;
  temperature: number;
  ignoreEos: boolean;
  extraBody: Record<string, unknown>;
  requestTimeoutS: number;
  timeoutS: number;
  resultJson: string | null;
  detailed: boolean;
  dumpWorkload: string | null;
  label: string | null;
  compare: string[] | null;
  model: string | null;
  serverArgs: string[];
  rounds: number;
  numPromptsSequential: number | null;
  serverTimeoutS: number;
  serverLogDir: string;
  progress: boolean;
  progressIntervalS: number;
}

function buildConfig(argv: string[]): Config {
  const f = parseFlags(argv);
  const workload = str(f, "--workload");
  if (workload !== "random" && workload !== "text" && workload !== "chat") {
    throw new Error(`--workload: random, text or chat, got "${workload}"`);
  }
  let extraBody: Record<string, unknown> = {};
  if (f.has("--extra-body")) {
    const v = JSON.parse(f.get("--extra-body")!);
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new Error("--extra-body: not a JSON object");
    }
    extraBody = v;
  }
  const compare = f.has("--compare")
    ? f.get("--compare")!.split(",").map((m) => m.trim()).filter(Boolean)
    : null;
  if (compare) {
    if (compare.length === 0) throw new Error("--compare: no modes given");
    for (const m of compare) if (!MODES.includes(m)) throw new Error(`--compare: unknown mode "${m}"`);
    if (!f.has("--model")) throw new Error("--compare needs --model PATH");
    if (f.has("--base-url")) throw new Error("--compare starts its own servers; drop --base-url");
  }
  const cfg: Config = {
    argv,
    baseUrl: f.get("--base-url") ?? (compare ? null : "http://127.0.0.1:8080"),
    endpoint: f.get("--endpoint") ?? (workload === "chat" ? "/v1/chat/completions" : "/v1/completions"),
    servedModel: f.get("--served-model") ?? null,
    apiKey: f.get("--api-key") ?? Deno.env.get("OPENAI_API_KEY") ?? null,
    workload,
    chat: workload === "chat"
      ? {
        users: intFlag(f, "--users", 1),
        turns: intFlag(f, "--turns", 1),
        systemLen: intFlag(f, "--system-len", 0),
        userLen: parseRange(str(f, "--user-len")!, "--user-len"),
        answerLen: intFlag(f, "--answer-len", 1),
      }
      : null,
    thinkMs: intFlag(f, "--think-ms", 0),
    inputLen: parseRange(str(f, "--input-len")!, "--input-len"),
    outputLen: parseRange(str(f, "--output-len")!, "--output-len"),
    idMin: intFlag(f, "--id-min", 0),
    vocab: intFlag(f, "--vocab", 1),
    textFile: workload === "text"
      ? f.get("--text-file") ?? `${ROOT}/../shared/corpus/prideprejudice.txt`
      : null,
    numPrompts: intFlag(f, "--num-prompts", 1),
    warmup: intFlag(f, "--warmup", 0),
    seed: intFlag(f, "--seed", 0),
    rate: numFlag(f, "--rate", Number.MIN_VALUE, true),
    maxConcurrency: f.has("--max-concurrency") ? intFlag(f, "--max-concurrency", 1) : Infinity,
    constrainedShare: numFlag(f, "--constrained-share", 0),
    temperature: numFlag(f, "--temperature", 0),
    ignoreEos: !f.has("--no-ignore-eos"),
    extraBody,
    requestTimeoutS: numFlag(f, "--request-timeout", 0.001),
    timeoutS: numFlag(f, "--timeout", 0.001),
    resultJson: f.get("--result-json") ?? null,
    detailed: f.has("--detailed"),
    dumpWorkload: f.get("--dump-workload") ?? null,
    label: f.get("--label") ?? null,
    compare,
    model: f.get("--model") ?? null,
    serverArgs: splitArgs(str(f, "--server-args")!),
    rounds: intFlag(f, "--rounds", 1),
    numPromptsSequential: f.has("--num-prompts-sequential")
      ? intFlag(f, "--num-prompts-sequential", 1)
      : null,
    serverTimeoutS: numFlag(f, "--server-timeout", 1),
    serverLogDir: f.get("--server-log-dir") ?? `${ROOT}/bench/results/tmp`,
    progress: !f.has("--no-progress"),
    progressIntervalS: numFlag(f, "--progress-interval", 0.1),
  };
  if (cfg.inputLen.min < 1) throw new Error("--input-len: prompts need at least 1 token");
  if (cfg.outputLen.min < 1) throw new Error("--output-len: max_tokens must be at least 1");
  if (cfg.chat && cfg.chat.userLen.min < 1) throw new Error("--user-len: user messages need at least 1 word");
  if (cfg.chat && (cfg.constrainedShare > 0 || cfg.dumpWorkload)) {
    throw new Error("--workload chat: --constrained-share and --dump-workload are not supported");
  }
  return cfg;
}

function chatSpec(cfg: Config): ChatWorkloadSpec {
  return { kind: "chat", seed: cfg.seed, ...cfg.chat! };
}

function workloadSpec(cfg: Config): WorkloadSpec {
  if (cfg.workload === "chat") throw new Error("chat workloads have no fixed request list");
  const base = { seed: cfg.seed, count: cfg.numPrompts, inputLen: cfg.inputLen, outputLen: cfg.outputLen };
  if (cfg.workload === "random") return { kind: "random", ...base, idMin: cfg.idMin, vocab: cfg.vocab };
  return { kind: "text", ...base, text: Deno.readTextFileSync(cfg.textFile!) };
}

/** Per-request rows for the JSON; chunk times only with --detailed (they dominate the size). */
function requestRows(r: RunResult, detailed: boolean) {
  const t0 = Math.min(...r.records.map((x) => x.sentAt ?? Infinity));
  const rel = (t: number | null) => (t === null || !Number.isFinite(t0) ? null : +(t - t0).toFixed(3));
  return r.records.map((x) => ({
    index: x.index,
    ok: x.ok,
    error: x.error,
    prompt_tokens: x.promptTokens,
    output_tokens: x.outputTokens,
    expected_output_tokens: x.expectedOutputTokens,
    output_tokens_from: x.outputTokensFrom,
    finish_reason: x.finishReason,
    sent_ms: rel(x.sentAt),
    end_ms: rel(x.endAt),
    ttft_ms: ttftOf(x),
    ...(x.turn === undefined ? {} : { user: x.user, turn: x.turn }),
    ...(x.cachedTokens === undefined ? {} : { cached_tokens: x.cachedTokens }),
    chunks: x.chunkTimes.length,
    ...(detailed ? { chunk_ms: x.chunkTimes.map((t) => rel(t)) } : {}),
  }));
}

interface RunEntry {
  label: string;
  mode: string | null;
  round: number | null;
  baseUrl: string | null;
  prompts: number;
  serverLog: string | null;
  error: string | null;
  result: RunResult | null;
}

async function runOne(
  cfg: Config,
  baseUrl: string,
  label: string,
  items: WorkloadItem[],
  warm: WorkloadItem[],
) {
  const headers: Record<string, string> = {};
  if (cfg.apiKey) headers.authorization = `Bearer ${cfg.apiKey}`;
  const bodyBase: Record<string, unknown> = {
    ...(cfg.servedModel ? { model: cfg.servedModel } : {}),
    temperature: cfg.temperature,
    ...(cfg.ignoreEos ? { ignore_eos: true } : {}),
    ...cfg.extraBody,
  };
  const common = {
    baseUrl,
    endpoint: cfg.endpoint,
    headers,
    bodyBase,
    rate: cfg.rate,
    maxConcurrency: cfg.maxConcurrency,
    seed: cfg.seed,
    requestTimeoutS: cfg.requestTimeoutS,
    timeoutS: cfg.timeoutS,
    progress: createProgress({ enabled: cfg.progress, intervalS: cfg.progressIntervalS }),
    label,
  };
  let result: RunResult;
  if (cfg.chat) {
    const w = buildChatWorkload(chatSpec(cfg), cfg.warmup);
    result = await runChatBenchmark({
      ...common,
      ...w,
      answerTokens: cfg.chat.answerLen,
      thinkMs: cfg.thinkMs,
    });
  } else {
    result = await runBenchmark({ ...common, measured: items, warmup: warm });
  }
  console.log(formatRun(result, { rate: cfg.rate, maxConcurrency: cfg.maxConcurrency }));
  console.log();
  return result;
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(helpText());
    return 0;
  }
  const plotOnly = parseFlags(argv).get("--plot-only");
  if (plotOnly !== undefined) {
    const files = plotOnly.split(",").map((f) => f.trim()).filter(Boolean);
    if (files.length === 0) throw new Error("--plot-only: no files given");
    console.error(`wrote ${await plotFiles(files, parseFlags(argv).get("--plot-out"))}`);
    return 0;
  }
  const cfg = buildConfig(argv);
  // Chat conversations are built per run (their requests depend on the answers): none here.
  const spec = cfg.chat ? null : workloadSpec(cfg);
  const built = spec ? buildWorkload(spec, cfg.warmup) : { measured: [], warmup: [] };
  const w = cfg.constrainedShare > 0
    ? {
      measured: markConstrained(built.measured, cfg.constrainedShare, cfg.seed),
      warmup: markConstrained(built.warmup, cfg.constrainedShare, cfg.seed + 1),
    }
    : built;

  if (cfg.dumpWorkload && spec) {
    await Deno.writeTextFile(cfg.dumpWorkload, JSON.stringify(toDump(spec, w)) + "\n");
    console.log(
      `wrote ${w.measured.length} requests and ${w.warmup.length} warmup requests to ${cfg.dumpWorkload}`,
    );
    return 0;
  }

  const startedAt = new Date().toISOString();
  const entries: RunEntry[] = [];
  let summaries: ModeSummary[] = [];

  if (cfg.compare) {
    await Deno.mkdir(cfg.serverLogDir, { recursive: true });
    for (let round = 0; round < cfg.rounds; round++) {
      // Alternating the order spreads warm-cache and thermal effects over the modes.
      const order = round % 2 === 0 ? cfg.compare : [...cfg.compare].reverse();
      for (const mode of order) {
        const items = mode === "sequential" && cfg.numPromptsSequential !== null
          ? w.measured.slice(0, cfg.numPromptsSequential)
          : w.measured;
        const label = cfg.rounds > 1 ? `${mode} (round ${round + 1})` : mode;
        const logPath = `${cfg.serverLogDir}/server-${mode}-r${round + 1}.log`;
        const entry: RunEntry = {
          label,
          mode,
          round: round + 1,
          baseUrl: null,
          prompts: cfg.chat ? cfg.chat.users * cfg.chat.turns : items.length,
          serverLog: logPath,
          error: null,
          result: null,
        };
        entries.push(entry);
        console.error(`starting ragtime --batching ${mode} (log: ${logPath})`);
        let server;
        try {
          server = await startServer({
            root: ROOT,
            model: cfg.model!,
            batching: mode,
            extraArgs: cfg.serverArgs,
            logPath,
            startTimeoutS: cfg.serverTimeoutS,
            stopTimeoutS: 30,
          });
        } catch (err) {
          entry.error = (err as Error).message;
          console.error(entry.error);
          continue;
        }
        entry.baseUrl = server.baseUrl;
        try {
          entry.result = await runOne(cfg, server.baseUrl, label, items, w.warmup);
        } catch (err) {
          entry.error = (err as Error).message;
          console.error(`${label}: ${entry.error}`);
        } finally {
          await server.stop();
        }
      }
    }
    summaries = cfg.compare.flatMap((mode) => {
      const runs = entries.filter((e) => e.mode === mode && e.result).map((e) => e.result!);
      return runs.length > 0 ? [summarizeMode(mode, runs)] : [];
    });
  } else {
    const label = cfg.label ?? cfg.baseUrl!;
    const entry: RunEntry = {
      label,
      mode: null,
      round: null,
      baseUrl: cfg.baseUrl,
      prompts: cfg.chat ? cfg.chat.users * cfg.chat.turns : w.measured.length,
      serverLog: null,
      error: null,
      result: null,
    };
    entries.push(entry);
    entry.result = await runOne(cfg, cfg.baseUrl!, label, w.measured, w.warmup);
  }

  const rs = ratios(summaries);
  if (cfg.compare) {
    console.log(formatComparison(summaries, rs));
    for (const e of entries) if (e.error) console.log(`! ${e.label}: ${e.error.split("\n")[0]}`);
  }

  if (cfg.resultJson) {
    // The key stays out of result files, which get shared.
    const { argv: _argv, apiKey, ...config } = cfg;
    const doc = {
      tool: "ragtime-bench",
      version: 1,
      started_at: startedAt,
      finished_at: new Date().toISOString(),
      argv: cfg.argv,
      config: {
        ...config,
        apiKey: apiKey ? "(set)" : null,
        rate: cfg.rate === Infinity ? "inf" : cfg.rate,
        maxConcurrency: finiteOr(cfg.maxConcurrency),
      },
      environment: { deno: Deno.version.deno, os: Deno.build.os, arch: Deno.build.arch },
      runs: entries.map((e) => ({
        label: e.label,
        mode: e.mode,
        round: e.round,
        base_url: e.baseUrl,
        prompts: e.prompts,
        server_log: e.serverLog,
        error: e.error,
        timed_out: e.result?.timedOut ?? null,
        peak_concurrency: e.result?.peakConcurrency ?? null,
        warmup: e.result?.warmup ?? null,
        metrics: e.result?.metrics ?? null,
        ...(e.result?.chat ? { chat: e.result.chat } : {}),
        requests: e.result ? requestRows(e.result, cfg.detailed) : [],
      })),
      comparison: cfg.compare ? { summaries, ratios: rs } : null,
    };
    const dir = cfg.resultJson.replace(/\/[^/]*$/, "");
    if (dir !== cfg.resultJson && dir !== "") await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(cfg.resultJson, JSON.stringify(doc, null, 2) + "\n");
    console.error(`wrote ${cfg.resultJson}`);
    if (entries.some((e) => e.result)) {
      const svg = await plotFiles([cfg.resultJson], parseFlags(argv).get("--plot-out"));
      console.error(`wrote ${svg}`);
    }
  }

  const broken = entries.some((e) =>
    e.error !== null || (e.result !== null && e.result.metrics.completed === 0)
  );
  return broken ? 1 : 0;
}

const finiteOr = (v: number) => (Number.isFinite(v) ? v : null);

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    console.error(`bench: ${(err as Error).message}`);
    Deno.exit(2);
  }
}
