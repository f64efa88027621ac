// One streaming /v1/completions (or, for chat workloads, /v1/chat/completions) request, timed chunk by chunk.
import type { RequestRecord } from "./stats.ts";
import { type ChatMessage, CONSTRAINED_SCHEMA, type WorkloadItem } from "./workload.ts";

export interface RequestOptions {
  url: string;
  headers: Record<string, string>;
  /** Fields merged into every body (model, temperature, extra fields); the prompt and lengths are set here. */
  bodyBase: Record<string, unknown>;
  signal: AbortSignal;
}

/** Events of an SSE stream: the data of each event, with the time its last byte arrived. */
export async function* sseEvents(
  body: ReadableStream<Uint8Array>,
  now: () => number = () => performance.now(),
): AsyncGenerator<{ data: string; at: number }> {
  const decoder = new TextDecoder();
  let buf = "";
  let data: string[] = [];
  for await (const bytes of body) {
    const at = now();
    buf += decoder.decode(bytes, { stream: true });
    let nl: number;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length > 0) yield { data: data.join("\n"), at };
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      // Comments (": ping") and other fields (event:, id:, retry:) carry nothing we time.
    }
  }
  if (data.length > 0) yield { data: data.join("\n"), at: now() };
}

function errorText(v: unknown): string | null {
  if (typeof v !== "object" || v === null || !("error" in v)) return null;
  const e = (v as { error: unknown }).error;
  if (typeof e === "string") return e;
  if (typeof e === "object" && e !== null && "message" in e) {
    return String((e as { message: unknown }).message);
  }
  return JSON.stringify(e);
}

const oneLine = (s: string, max = 300) => {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 3)}...` : t;
};

/** Describes why a fetch or read failed, naming our own timeouts rather than a bare AbortError. */
export function describeFailure(err: unknown, signal: AbortSignal): string {
  if (signal.aborted) {
    const reason = signal.reason;
    if (reason instanceof Error) return oneLine(reason.message);
    return oneLine(String(reason));
  }
  if (!(err instanceof Error)) return oneLine(String(err));
  return oneLine(err.name === "Error" ? err.message : `${err.name}: ${err.message}`);
}

/** The record of a request before anything happened to it (error: why it was not sent, if so). */
export function emptyRecord(item: WorkloadItem, error: string | null = null): RequestRecord {
  return {
    index: item.index,
    ok: false,
    error,
    sentAt: null,
    endAt: null,
    chunkTimes: [],
    outputTokens: 0,
    outputTokensFrom: "chunks",
    promptTokens: item.promptTokens,
    expectedOutputTokens: item.outputTokens,
    finishReason: null,
    ...(item.turn === undefined ? {} : { user: item.user, turn: item.turn }),
  };
}

const isChat = (p: WorkloadItem["prompt"]): p is ChatMessage[] =>
  Array.isArray(p) && p.length > 0 && typeof p[0] === "object";

/** Sends one request and returns its record; never throws. */
export async function sendRequest(item: WorkloadItem, opts: RequestOptions): Promise<RequestRecord> {
  const rec = emptyRecord(item);
  const chat = isChat(item.prompt);
  const body = {
    ...opts.bodyBase,
    ...(chat ? { messages: item.prompt } : { prompt: item.prompt }),
    max_tokens: item.outputTokens,
    stream: true,
    stream_options: { include_usage: true },
    // A document ends at its grammar's end, so EOS must be allowed to stop it.
    ...(item.constrained
      ? {
        response_format: { type: "json_schema", json_schema: { name: "bench", schema: CONSTRAINED_SCHEMA } },
        ignore_eos: false,
      }
      : {}),
  };
  let usageOut: number | null = null;
  let sawDone = false;
  let answer = "";
  try {
    rec.sentAt = performance.now();
    const res = await fetch(opts.url, {
      method: "POST",
      headers: { "content-type": "application/json", ...opts.headers },
      body: JSON.stringify(body),
      signal: opts.signal,
    });
    if (!res.ok || res.body === null) {
      const text = await res.text().catch(() => "");
      let detail = text;
      try {
        detail = errorText(JSON.parse(text)) ?? text;
      } catch {
        // not JSON; keep the raw text
      }
      rec.endAt = performance.now();
      rec.error = oneLine(`HTTP ${res.status}${detail ? `: ${detail}` : ""}`);
      return rec;
    }
    for await (const ev of sseEvents(res.body)) {
      if (ev.data === "[DONE]") {
        sawDone = true;
        continue;
      }
      let msg: unknown;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        throw new Error(`bad SSE data: ${oneLine(ev.data, 80)}`);
      }
      const err = errorText(msg);
      if (err !== null) throw new Error(`stream error: ${err}`);
      const m = msg as {
        choices?: { text?: unknown; delta?: { content?: unknown }; finish_reason?: unknown }[];
        usage?: {
          prompt_tokens?: unknown;
          completion_tokens?: unknown;
          prompt_tokens_details?: { cached_tokens?: unknown } | null;
        } | null;
      };
      const choice = m.choices?.[0];
      if (choice) {
        const text = chat ? choice.delta?.content : choice.text;
        // Chunks without text (the finish chunk, held-back partial UTF-8) are not token arrivals.
        if (typeof text === "string" && text !== "") {
          rec.chunkTimes.push(ev.at);
          if (chat) answer += text;
        }
        if (typeof choice.finish_reason === "string") rec.finishReason = choice.finish_reason;
      }
      if (m.usage) {
        if (typeof m.usage.completion_tokens === "number") usageOut = m.usage.completion_tokens;
        if (typeof m.usage.prompt_tokens === "number") rec.promptTokens = m.usage.prompt_tokens;
        const cached = m.usage.prompt_tokens_details?.cached_tokens;
        if (typeof cached === "number") rec.cachedTokens = cached;
      }
    }
    rec.endAt = performance.now();
    if (!sawDone && rec.finishReason === null) {
      throw new Error("stream ended without finish_reason or [DONE]");
    }
    if (usageOut !== null) {
      rec.outputTokens = usageOut;
      rec.outputTokensFrom = "usage";
    } else {
      rec.outputTokens = rec.chunkTimes.length;
    }
    if (chat) rec.answer = answer;
    rec.ok = true;
  } catch (err) {
    rec.endAt ??= performance.now();
    rec.error = describeFailure(err, opts.signal);
    rec.ok = false;
  }
  return rec;
}
