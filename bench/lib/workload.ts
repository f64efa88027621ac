// Workload definitions: what each request asks for, and when it is sent. Everything here is a pure
// function of the seed and the flags, so two runs (or two servers) see the same requests.
import { deriveSeed, exponential, mulberry32, type Rng, uniformInt } from "./rng.ts";

/** An inclusive integer range from "MIN:MAX" (or "N" for N:N). */
export interface Range {
  min: number;
  max: number;
}

/** A chat message as the chat endpoint takes it. */
export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface WorkloadItem {
  index: number;
  /** Token ids (random workload), text (text workload) or the conversation so far (chat workload). */
  prompt: number[] | string | ChatMessage[];
  /** Prompt length in tokens when known up front (token-id prompts); text prompts learn it from usage. */
  promptTokens: number | null;
  /** max_tokens; with ignore_eos the server should produce exactly this many tokens. */
  outputTokens: number;
  /** Sent with a response_format json_schema (--constrained-share); absent: free text. */
  constrained?: boolean;
  /** Chat workload: the simulated user and the turn (from 1) this request is. */
  user?: number;
  turn?: number;
}

export interface RandomWorkloadSpec {
  kind: "random";
  seed: number;
  count: number;
  inputLen: Range;
  outputLen: Range;
  /** Token ids are drawn in [idMin, vocab). */
  idMin: number;
  vocab: number;
}

export interface TextWorkloadSpec {
  kind: "text";
  seed: number;
  count: number;
  /** Prompt length in words (whitespace-separated), a rough stand-in for tokens. */
  inputLen: Range;
  outputLen: Range;
  text: string;
}

export type WorkloadSpec = RandomWorkloadSpec | TextWorkloadSpec;

/** Seed streams, fixed forever: changing them changes every published workload. */
export const STREAM = { measured: 0, warmup: 1, arrivals: 2, constrained: 3 } as const;

export interface ChatWorkloadSpec {
  kind: "chat";
  seed: number;
  users: number;
  turns: number;
  /** Lengths in words (a rough stand-in for tokens); answers in tokens (max_tokens). */
  systemLen: number;
  userLen: Range;
  answerLen: number;
}

/** One simulated user: the user messages of each turn; answers come from the server as it runs. */
export interface ChatUser {
  user: number;
  messages: string[];
}

export interface ChatWorkload {
  /** The system prompt every conversation starts with. */
  system: string;
  users: ChatUser[];
}

// Plain English words, so any tokenizer splits them as it splits ordinary text.
const WORDS = (
  "the a little big happy sad dog cat bird tree house garden river sun moon star day night friend mother " +
  "father girl boy ball toy book cake apple flower park school road car boat fish water rain snow wind " +
  "play run jump sing read walk look find give take make help like love want see went said was is had " +
  "and then but so because when after before with for to in on under over near far very always never " +
  "green red blue small warm cold kind brave quiet loud funny gentle bright dark old new good best"
).split(" ");

function words(rng: Rng, n: number): string {
  const out = Array.from({ length: n }, () => WORDS[uniformInt(rng, 0, WORDS.length - 1)]);
  return out.length > 0 ? out[0][0].toUpperCase() + out.join(" ").slice(1) + "." : "";
}

/**
 * The system prompt, then per user and turn a user message, from one mulberry32 stream. A turn's
 * request is the system prompt and every earlier turn (user message, then the server's actual answer).
 */
export function generateChatWorkload(spec: ChatWorkloadSpec): ChatWorkload {
  const rng = mulberry32(spec.seed);
  const system = words(rng, spec.systemLen);
  const users = Array.from({ length: spec.users }, (_, user) => ({
    user,
    messages: Array.from(
      { length: spec.turns },
      () => words(rng, uniformInt(rng, spec.userLen.min, spec.userLen.max)),
    ),
  }));
  return { system, users };
}

/** Measured conversations and single-turn warmup ones, with their own system prompt (warmup caches nothing measured). */
export function buildChatWorkload(
  spec: ChatWorkloadSpec,
  warmup: number,
): { measured: ChatWorkload; warmup: ChatWorkload } {
  return {
    measured: generateChatWorkload({ ...spec, seed: deriveSeed(spec.seed, STREAM.measured) }),
    warmup: generateChatWorkload({
      ...spec,
      seed: deriveSeed(spec.seed, STREAM.warmup),
      users: warmup,
      turns: 1,
    }),
  };
}

/** The schema of constrained requests: small, with the features tool arguments use. */
export const CONSTRAINED_SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string" },
    age: { type: "integer", minimum: 0, maximum: 120 },
    tags: { type: "array", items: { type: "string" }, maxItems: 3 },
    color: { type: "string", enum: ["red", "green", "blue"] },
  },
  required: ["name", "age", "tags", "color"],
  additionalProperties: false,
};

/**
 * Marks round(share * n) items as constrained, chosen by a seeded shuffle from its own stream so the
 * prompts and lengths stay those of the unconstrained workload.
 */
export function markConstrained(items: WorkloadItem[], share: number, seed: number): WorkloadItem[] {
  if (!(share >= 0 && share <= 1)) throw new Error(`constrained share must be in [0, 1] (got ${share})`);
  const n = Math.round(share * items.length);
  const order = items.map((_, i) => i);
  const rng = mulberry32(deriveSeed(seed, STREAM.constrained));
  for (let i = order.length - 1; i > 0; i--) {
    const j = uniformInt(rng, 0, i);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const chosen = new Set(order.slice(0, n));
  return items.map((it, i) => chosen.has(i) ? { ...it, constrained: true } : it);
}

export function parseRange(s: string, name: string): Range {
  const m = /^\s*(\d+)\s*(?::\s*(\d+)\s*)?$/.exec(s);
  if (!m) throw new Error(`${name}: expected N or MIN:MAX with non-negative integers, got "${s}"`);
  const min = Number(m[1]), max = m[2] === undefined ? min : Number(m[2]);
  if (max < min) throw new Error(`${name}: MIN (${min}) is above MAX (${max})`);
  return { min, max };
}

/**
 * Draws `spec.count` items. Per item, in this order: prompt length, output length, then the prompt
 * (token ids one by one, or a start word for text), all from one mulberry32 stream.
 */
export function generateWorkload(spec: WorkloadSpec): WorkloadItem[] {
  const rng = mulberry32(spec.seed);
  if (spec.kind === "random") {
    if (spec.idMin < 0 || spec.vocab <= spec.idMin) {
      throw new Error(`token ids need 0 <= id-min < vocab (got ${spec.idMin}, ${spec.vocab})`);
    }
    return Array.from({ length: spec.count }, (_, index) => {
      const inLen = uniformInt(rng, spec.inputLen.min, spec.inputLen.max);
      const outLen = uniformInt(rng, spec.outputLen.min, spec.outputLen.max);
      const ids = Array.from({ length: inLen }, () => uniformInt(rng, spec.idMin, spec.vocab - 1));
      return { index, prompt: ids, promptTokens: inLen, outputTokens: outLen };
    });
  }
  const words = spec.text.split(/\s+/).filter((w) => w !== "");
  if (words.length < spec.inputLen.max) {
    throw new Error(`text has ${words.length} words; --input-len asks for up to ${spec.inputLen.max}`);
  }
  return Array.from({ length: spec.count }, (_, index) => {
    const inLen = uniformInt(rng, spec.inputLen.min, spec.inputLen.max);
    const outLen = uniformInt(rng, spec.outputLen.min, spec.outputLen.max);
    const start = uniformInt(rng, 0, words.length - inLen);
    return {
      index,
      prompt: words.slice(start, start + inLen).join(" "),
      promptTokens: null,
      outputTokens: outLen,
    };
  });
}

/** The measured items and the warmup items, from independent seed streams of one base seed. */
export function buildWorkload(
  spec: WorkloadSpec,
  warmup: number,
): { measured: WorkloadItem[]; warmup: WorkloadItem[] } {
  return {
    measured: generateWorkload({ ...spec, seed: deriveSeed(spec.seed, STREAM.measured) }),
    warmup: generateWorkload({ ...spec, seed: deriveSeed(spec.seed, STREAM.warmup), count: warmup }),
  };
}

/**
 * Send times in ms from the start, one per request. rate = Infinity sends everything at 0; else a
 * Poisson process: exponential gaps with mean 1000 / rate ms, the first request at 0.
 */
export function arrivalOffsets(count: number, rate: number, rng: Rng): number[] {
  if (!(rate > 0)) throw new Error(`rate must be > 0 (got ${rate})`);
  const out = new Array<number>(count).fill(0);
  if (rate === Infinity) return out;
  for (let i = 1; i < count; i++) out[i] = out[i - 1] + exponential(rng, 1000 / rate);
  return out;
}

export function arrivalRng(seed: number): Rng {
  return mulberry32(deriveSeed(seed, STREAM.arrivals));
}

/** What --dump-workload writes and bench/peer/hf_cb.py reads. */
export interface WorkloadDump {
  format: "ragtime-bench-workload";
  version: 1;
  spec: Record<string, unknown>;
  warmup: DumpItem[];
  requests: DumpItem[];
}

export interface DumpItem {
  index: number;
  /** Exactly one of prompt_ids / prompt is present. */
  prompt_ids?: number[];
  prompt?: string;
  output_len: number;
}

export function toDump(
  spec: WorkloadSpec,
  w: { measured: WorkloadItem[]; warmup: WorkloadItem[] },
): WorkloadDump {
  const item = (it: WorkloadItem): DumpItem =>
    typeof it.prompt === "string"
      ? { index: it.index, prompt: it.prompt, output_len: it.outputTokens }
      : { index: it.index, prompt_ids: it.prompt as number[], output_len: it.outputTokens };
  // The corpus itself stays out; its prompts are in the items.
  const described = spec.kind === "text" ? { ...spec, text: undefined } : { ...spec };
  return {
    format: "ragtime-bench-workload",
    version: 1,
    spec: described,
    warmup: w.warmup.map(item),
    requests: w.measured.map(item),
  };
}
