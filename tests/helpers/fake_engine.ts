// A scripted EngineClient for HTTP tests, plus startServer() and an SSE reader. The helpers take
// any EngineClient, so the same assertions can run against the real engine.
import {
  type AnswerCache,
  type EngineClient,
  type EngineStats,
  type GenerateEvent,
  type GenerateRequest,
  type HistogramCounts,
  type ModelInfo,
  STEP_TOKEN_BUCKETS,
  type TokenLogprob,
} from "../../engine/protocol.ts";
import type { ChatMessage, ChatTemplate, Tokenizer } from "../../engine/model/types.ts";
import { createApp } from "../../http/app.ts";
import { type Config, parseConfig } from "../../server/config.ts";
import { type RunningServer, serve } from "../../server/serve.ts";

export const BOS = 256;
export const EOS = 257;
const SPECIALS: Record<number, string> = { [BOS]: "<s>", [EOS]: "</s>" };

/** One token per UTF-8 byte, plus <s> and </s>, which are recognised in text like HF tokenizers do. */
export class ByteTokenizer implements Tokenizer {
  readonly vocabSize = 258;
  readonly bosTokenId = BOS;
  readonly eosTokenIds = [EOS];

  encode(text: string, addSpecial: boolean): number[] {
    const ids = addSpecial ? [BOS] : [];
    for (const part of text.split(/(<s>|<\/s>)/)) {
      if (part === "<s>") ids.push(BOS);
      else if (part === "</s>") ids.push(EOS);
      else ids.push(...new TextEncoder().encode(part));
    }
    return ids;
  }

  decode(ids: number[], skipSpecial = false): string {
    let out = "";
    let bytes: number[] = [];
    const flush = () => {
      out += new TextDecoder().decode(new Uint8Array(bytes));
      bytes = [];
    };
    for (const id of ids) {
      if (id < 256) bytes.push(id);
      else {
        flush();
        if (!skipSpecial) out += SPECIALS[id] ?? "";
      }
    }
    flush();
    return out;
  }

  tokenText(id: number): string {
    return SPECIALS[id] ?? new TextDecoder().decode(new Uint8Array([id]));
  }
}

/** `<s><|role|>\ncontent\n...<|assistant|>\n`; throws on an empty conversation like real templates. */
export const fakeTemplate: ChatTemplate = {
  render(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    if (messages.some((m) => m.content.includes("RAISE"))) throw new Error("roles must alternate");
    return "<s>" + messages.map((m) => `<|${m.role}|>\n${m.content}\n`).join("") +
      (addGenerationPrompt ? "<|assistant|>\n" : "");
  },
};

export interface FakeEngineOptions {
  name?: string;
  maxContext?: number;
  /** The text generated for a request (default: a fixed sentence); one token per byte. */
  reply?: (req: GenerateRequest) => string;
  /** Tokens per delta event. */
  tokensPerDelta?: number;
  firstTokenDelayMs?: number;
  tokenDelayMs?: number;
  /** Emit this error as the first event. */
  failBeforeStart?: { message: string; code: "context_length_exceeded" | "invalid_request" | "internal" };
  /** Emit an internal error after this many deltas. */
  failAfterDeltas?: number;
  /**
   * Simulates prefix caching in blocks of this many tokens: a prompt reuses the full blocks it shares
   * with an earlier prompt (short of its last token), reported in stats and the done event.
   */
  prefixCacheBlock?: number;
  /** Added to the first token's delay per prompt token not served from the simulated cache. */
  prefillMsPerToken?: number;
  /** EngineClient.answerCache (default "off"). */
  answerCache?: AnswerCache;
}

export const DEFAULT_REPLY = "Hello! I am a fake engine.";

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });

export class FakeEngine implements EngineClient {
  readonly tokenizer = new ByteTokenizer();
  readonly chatTemplate = fakeTemplate;
  readonly info: ModelInfo;
  /** Every request, in arrival order. */
  readonly requests: GenerateRequest[] = [];
  /** Ids of requests whose signal fired before they finished. */
  readonly aborted: string[] = [];
  /** Every predictAnswer call, in order. */
  readonly predictions: { id: string; ids: number[]; final: boolean }[] = [];
  /** Added to stats().waiting, to simulate an engine-side queue. */
  extraWaiting = 0;
  running = 0;
  closed = false;
  /** Set to simulate a dead engine (its loop or Worker failed). */
  failed: string | null = null;
  #gate: Promise<void> | null = null;
  #openGate: (() => void) | null = null;
  #counters = { prompt: 0, generated: 0, steps: 0 };
  #stepTokens: HistogramCounts = { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 };
  #arrivals: Array<() => void> = [];
  #prefix = { queries: 0, hits: 0, seen: [] as number[][] };

  constructor(readonly opts: FakeEngineOptions = {}) {
    this.info = {
      name: opts.name ?? "fake-model",
      maxContext: opts.maxContext ?? 512,
      vocabSize: this.tokenizer.vocabSize,
      eosTokenIds: [EOS],
      bosTokenId: BOS,
    };
  }

  /** Holds every request before its first token until the returned function is called. */
  hold(): () => void {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#gate = promise;
    this.#openGate = () => {
      this.#gate = null;
      resolve();
    };
    return this.#openGate;
  }

  /** Resolves once `n` requests in total have arrived. */
  arrivals(n: number): Promise<void> {
    if (this.requests.length >= n) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.requests.length >= n) resolve();
        else this.#arrivals.push(check);
      };
      this.#arrivals.push(check);
    });
  }

  get answerCache(): AnswerCache {
    return this.opts.answerCache ?? "off";
  }

  predictAnswer(id: string, ids: number[], final: boolean): void {
    this.predictions.push({ id, ids: [...ids], final });
  }

  failure(): string | null {
    return this.failed;
  }

  stats(): EngineStats {
    return {
      running: this.running,
      waiting: this.extraWaiting,
      kvBlocksUsed: this.running,
      kvBlocksTotal: 64,
      promptTokensTotal: this.#counters.prompt,
      generationTokensTotal: this.#counters.generated,
      preemptionsTotal: 0,
      stepsTotal: this.#counters.steps,
      stepTokens: { ...this.#stepTokens, counts: [...this.#stepTokens.counts] },
      ...(this.opts.prefixCacheBlock
        ? {
          prefixCacheQueriesTotal: this.#prefix.queries,
          prefixCacheHitsTotal: this.#prefix.hits,
          kvBlocksCached: new Set(
            this.#prefix.seen.flatMap((ids) =>
              Array.from(
                { length: Math.floor(ids.length / this.opts.prefixCacheBlock!) },
                (_, b) => ids.slice(0, (b + 1) * this.opts.prefixCacheBlock!).join(","),
              )
            ),
          ).size,
        }
        : {}),
    };
  }

  /** The simulated cache's hit for a prompt: its full blocks shared with an earlier prompt. */
  #cachedTokens(ids: number[]): number {
    const block = this.opts.prefixCacheBlock!;
    let best = 0;
    for (const seen of this.#prefix.seen) {
      let n = 0;
      while (n < seen.length && n < ids.length - 1 && seen[n] === ids[n]) n++;
      best = Math.max(best, n);
    }
    return Math.floor(best / block) * block;
  }

  /** One engine step of `tokens` tokens, as the real engine counts it. */
  #step(tokens: number): void {
    this.#counters.steps++;
    const bucket = STEP_TOKEN_BUCKETS.findIndex((b) => tokens <= b);
    if (bucket >= 0) this.#stepTokens.counts[bucket]++;
    this.#stepTokens.sum += tokens;
    this.#stepTokens.count++;
  }

  generate(req: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateEvent> {
    this.requests.push(req);
    for (const check of this.#arrivals.splice(0)) check();
    return this.#run(req, signal);
  }

  async *#run(req: GenerateRequest, signal: AbortSignal): AsyncGenerator<GenerateEvent> {
    const { params } = req;
    const t0 = performance.now();
    let completion = 0;
    let cached = 0;
    const done = (finishReason: "stop" | "length" | "abort", stopReason: string | number | null) =>
      ({
        type: "done",
        finishReason,
        stopReason,
        promptTokens: req.promptIds.length,
        completionTokens: completion,
        ...(this.opts.prefixCacheBlock ? { cachedPromptTokens: cached } : {}),
        queueTime: 0,
        timeToFirstToken: 0,
        e2eTime: (performance.now() - t0) / 1000,
      }) as const;
    const onAbort = () => this.aborted.push(req.id);
    signal.addEventListener("abort", onAbort, { once: true });
    let started = false;
    try {
      if (this.opts.failBeforeStart) {
        yield { type: "error", ...this.opts.failBeforeStart };
        return;
      }
      while (this.#gate && !signal.aborted) await Promise.race([this.#gate, sleep(3600_000, signal)]);
      if (this.opts.prefixCacheBlock) {
        cached = this.#cachedTokens(req.promptIds);
        this.#prefix.queries += req.promptIds.length;
        this.#prefix.hits += cached;
        this.#prefix.seen.push(req.promptIds);
      }
      const prefillMs = (this.opts.prefillMsPerToken ?? 0) * (req.promptIds.length - cached);
      await sleep((this.opts.firstTokenDelayMs ?? 0) + prefillMs, signal);
      if (signal.aborted) return yield done("abort", null);
      started = true;
      this.running++;
      this.#counters.prompt += req.promptIds.length;
      this.#step(req.promptIds.length);

      let text = (this.opts.reply ?? (() => DEFAULT_REPLY))(req);
      let stopReason: string | number | null = params.ignoreEos ? null : EOS;
      for (const s of params.stop) {
        const at = text.indexOf(s);
        if (at >= 0) {
          text = text.slice(0, at);
          stopReason = s;
        }
      }
      const ids = [...new TextEncoder().encode(text)];
      const per = this.opts.tokensPerDelta ?? 1;
      let deltas = 0;
      for (let i = 0; i < ids.length; i += per) {
        if (i > 0) await sleep(this.opts.tokenDelayMs ?? 0, signal);
        if (signal.aborted) return yield done("abort", null);
        if (this.opts.failAfterDeltas !== undefined && deltas === this.opts.failAfterDeltas) {
          yield { type: "error", message: "fake engine failure", code: "internal" };
          return;
        }
        const room = params.maxTokens - completion;
        const chunk = ids.slice(i, i + Math.min(per, room));
        completion += chunk.length;
        this.#counters.generated += chunk.length;
        this.#step(chunk.length);
        deltas++;
        yield {
          type: "delta",
          text: this.tokenizer.decode(chunk),
          tokenIds: chunk,
          logprobs: params.logprobs === null
            ? undefined
            : chunk.map((id) => this.#logprob(id, params.logprobs!)),
        };
        if (completion >= params.maxTokens) return yield done("length", null);
      }
      yield done("stop", stopReason);
    } finally {
      signal.removeEventListener("abort", onAbort);
      if (started) this.running--;
    }
  }

  #logprob(id: number, n: number): TokenLogprob {
    const token = this.tokenizer.tokenText(id);
    const alternatives = [id, 32, 101, 116, 97, 111].filter((x, i, a) => a.indexOf(x) === i).slice(0, n);
    return {
      tokenId: id,
      token,
      logprob: -0.25,
      top: alternatives.map((t, i) => ({
        tokenId: t,
        token: this.tokenizer.tokenText(t),
        logprob: -0.25 * (i + 1),
      })),
    };
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

export interface TestServer {
  baseURL: string;
  origin: string;
  config: Config;
  logs: Record<string, unknown>[];
  server: RunningServer;
  draining: boolean;
  setEngine(engine: EngineClient | null): void;
  close(): Promise<void>;
}

export interface StartOptions {
  /** Extra CLI flags, parsed exactly as main.ts would. */
  args?: string[];
  keepAliveMs?: number;
}

/** Serves createApp on 127.0.0.1 with a free port; `engine` may be null to simulate loading. */
export function startServer(engine: EngineClient | null, opts: StartOptions = {}): TestServer {
  const config = parseConfig(["--model", "fake", "--shutdown-timeout", "5", ...(opts.args ?? [])], {
    get: () => undefined,
  });
  let current = engine;
  const logs: Record<string, unknown>[] = [];
  const state = { draining: false };
  const app = createApp({
    engine: () => current,
    config,
    draining: () => state.draining,
    log: (line) => logs.push(line as Record<string, unknown>),
    keepAliveMs: opts.keepAliveMs,
  });
  const server = serve({
    app,
    host: "127.0.0.1",
    port: 0,
    shutdownTimeoutS: config.shutdownTimeoutS,
    handleSignals: false,
    onDrainStart: () => state.draining = true,
  });
  const origin = `http://127.0.0.1:${server.addr.port}`;
  return {
    baseURL: `${origin}/v1`,
    origin,
    config,
    logs,
    server,
    get draining() {
      return state.draining;
    },
    setEngine: (e) => current = e,
    close: async () => {
      await server.drain();
      await server.finished;
    },
  };
}

export interface SseRead {
  /** Raw `data:` payloads in order, including "[DONE]". */
  data: string[];
  /** JSON payloads (everything but [DONE]). */
  events: Record<string, unknown>[];
  pings: number;
  raw: string;
}

/** Reads a whole SSE body, checking the framing: every event ends with a blank line. */
export async function readSse(res: Response): Promise<SseRead> {
  const raw = await res.text();
  if (!raw.endsWith("\n\n")) {
    throw new Error(`SSE body does not end with a blank line: ${JSON.stringify(raw)}`);
  }
  const out: SseRead = { data: [], events: [], pings: 0, raw };
  for (const block of raw.slice(0, -2).split("\n\n")) {
    if (block === ": ping") out.pings++;
    else if (block.startsWith("data: ") && !block.includes("\n")) {
      const payload = block.slice(6);
      out.data.push(payload);
      if (payload !== "[DONE]") out.events.push(JSON.parse(payload));
    } else throw new Error(`unexpected SSE block: ${JSON.stringify(block)}`);
  }
  return out;
}

export const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

/** Runs `fn` against a fresh fake engine and server, and always shuts the server down. */
export async function withFake(
  opts: { engine?: FakeEngineOptions } & StartOptions,
  fn: (s: TestServer, engine: FakeEngine) => Promise<void>,
): Promise<void> {
  const engine = new FakeEngine(opts.engine);
  const s = startServer(engine, opts);
  try {
    await fn(s, engine);
  } finally {
    await s.close();
  }
}

/** OpenAI-style error assertion data: status plus the error object. */
export async function readError(res: Response): Promise<{ status: number; error: Record<string, unknown> }> {
  const body = await res.json();
  return { status: res.status, error: body.error };
}
