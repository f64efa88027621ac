// An in-process engine over stories260K for tests (the server runs the same engine in a Worker).

import { neutralSamplingParams } from "../../engine/protocol.ts";
import type { LLMEngine } from "../../engine/llm_engine.ts";
import * as local from "../../engine/local_engine.ts";
import type { LocalEngine, LocalEngineOptions } from "../../engine/local_engine.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import type { GenerateEvent, SamplingParams } from "../../engine/protocol.ts";
import { longQueriesEnv } from "../../engine/step_buckets.ts";
import { STORIES260K } from "./fixtures.ts";

export const PUBLISHED_GREEDY =
  `Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she said, "I'm sorry, mom. I didn't know what to do." Her mom said, "Don't worry, Lily. We can help you.`;

let cached: LoadedModel | null = null;
export async function stories(): Promise<LoadedModel> {
  cached ??= await loadModel(STORIES260K);
  return cached;
}

export const params = neutralSamplingParams;

export type Harness = LocalEngine;

/** The tests' long-query mode (RAGTIME_TEST_LONG_QUERIES; bench/gpu/invariance.sh sets it). */
export const TEST_LONG_QUERIES = longQueriesEnv("RAGTIME_TEST_LONG_QUERIES");

/**
 * Small and quick on a software adapter; the server's defaults are engine/config.ts's. Decode steps
 * replay captured sessions as the server's do, each captured on its first use rather than at start
 * (a capture costs seconds on a software adapter, and the tests start many engines).
 */
const TEST_SETTINGS: LocalEngineOptions = {
  // f16 on a GPU host checks the guarantees where the kernels round most (RAGTIME_TEST_DTYPE=f16).
  dtype: Deno.env.get("RAGTIME_TEST_DTYPE") === "f16" ? "f16" : "f32",
  // The guarantees in long-query mode too (RAGTIME_TEST_LONG_QUERIES=on|prompts; bench/gpu/invariance.sh).
  longQueries: TEST_LONG_QUERIES,
  kvCacheMb: 8,
  maxBatchTokens: 512,
  maxSeqs: 64,
  graphCache: null,
  graphCaptureEager: false,
};

/** An in-process engine with the test settings under `opts`. */
export function startLocalEngine(model: LoadedModel, opts: LocalEngineOptions = {}): Promise<Harness> {
  return local.startLocalEngine(model, { ...TEST_SETTINGS, ...opts });
}

/** stories260K (or `opts.model`) at the server tests' --max-model-len 512. */
export async function startEngine(opts: LocalEngineOptions & { model?: LoadedModel } = {}): Promise<Harness> {
  const { model, ...settings } = opts;
  return startLocalEngine(model ?? await stories(), { maxModelLen: model ? undefined : 512, ...settings });
}

export function textOf(events: GenerateEvent[]): string {
  return events.map((e) => (e.type === "delta" ? e.text : "")).join("");
}

export function idsOf(events: GenerateEvent[]): number[] {
  return events.flatMap((e) => (e.type === "delta" ? e.tokenIds : []));
}

// ---- Recording what the engine does, step by step ------------------------------------------------

/** One sequence's share of a planned step, as the scheduler formed it. */
export interface TracedItem {
  id: string;
  start: number;
  numTokens: number;
  sample: boolean;
  /** A one-token decode of a sequence whose every earlier position has KV (not a prefill chunk). */
  decode: boolean;
}

export interface TracedPlan {
  /** 1-based, in the order the plans were formed (the engine's step numbers follow the same order). */
  index: number;
  items: TracedItem[];
  prefillTokens: number;
  decodeTokens: number;
  /** KV blocks in use when the plan started to form (after any finish or abort before it). */
  blocksBefore: number;
  /** Request ids preempted while forming this plan or since the previous one. */
  preempted: string[];
}

/**
 * Records every plan the engine's scheduler forms, by wrapping its schedule(). The engine dispatches
 * each plan it gets, in order, so plan i is the engine's step i.
 */
export function tracePlans(engine: LLMEngine): TracedPlan[] {
  const plans: TracedPlan[] = [];
  const scheduler = engine.scheduler;
  const schedule = scheduler.schedule.bind(scheduler);
  scheduler.schedule = () => {
    const blocksBefore = scheduler.stats().blocksUsed;
    const plan = schedule();
    if (plan) {
      plans.push({
        index: plans.length + 1,
        items: plan.items.map((it) => ({
          id: it.seq.id,
          start: it.start,
          numTokens: it.numTokens,
          sample: it.sample,
          decode: it.numTokens === 1 && it.start >= it.seq.promptIds.length &&
            it.start === it.seq.totalLen - 1,
        })),
        prefillTokens: plan.numPrefillTokens,
        decodeTokens: plan.numDecodeTokens,
        blocksBefore,
        preempted: plan.preempted.map((s) => s.id),
      });
    }
    return plan;
  };
  return plans;
}

/** What a finished request produced, for comparing a batched run with the same request alone. */
export interface Outcome {
  ids: number[];
  text: string;
  finishReason: string | null;
  completionTokens: number | null;
}

export function outcomeOf(events: GenerateEvent[]): Outcome {
  const last = events[events.length - 1];
  return {
    ids: idsOf(events),
    text: textOf(events),
    finishReason: last?.type === "done"
      ? last.finishReason
      : last?.type === "error"
      ? `error:${last.code}`
      : null,
    completionTokens: last?.type === "done" ? last.completionTokens : null,
  };
}

export interface Submission {
  id: string;
  promptIds: number[];
  params: SamplingParams;
}

/** Runs each request with nothing else in the engine, one after the other. */
export async function runAlone(
  h: Harness,
  reqs: Submission[],
  suffix = "-alone",
): Promise<Map<string, Outcome>> {
  const out = new Map<string, Outcome>();
  for (const r of reqs) {
    if (!h.engine.scheduler.isIdle) throw new Error("runAlone needs an idle engine");
    out.set(r.id, outcomeOf(await h.generate(r.id + suffix, r.promptIds, r.params)));
  }
  return out;
}

/** Story text for building prompts of many lengths (about 400 stories260K tokens). */
export const STORY_TEXT =
  `Once upon a time, there was a little boy named Tom. Tom had a red ball that he loved very much. ` +
  `Every day he took the ball to the park and played with his friend Sue. One sunny day, the ball ` +
  `rolled into the pond. Tom was sad and began to cry. Sue said, "Don't cry, Tom. I will help you." ` +
  `She found a long stick under a big tree and pushed the ball back to the grass. Tom was so happy! ` +
  `He hugged Sue and said, "Thank you, you are my best friend." Then they went home to eat cake with ` +
  `mom. Mom smiled and gave them milk too. The next day, Tom and Sue went to the park again. They saw ` +
  `a small dog with a blue hat. The dog wanted to play with the ball. Tom threw the ball and the dog ` +
  `ran fast to get it. The dog brought the ball back and wagged its tail. Sue laughed and clapped her ` +
  `hands. They played all day until the sun went down. When it was time to go, the dog looked sad. ` +
  `Tom gave the dog a big hug and said, "We will come back tomorrow." The dog barked and ran to its ` +
  `home. Tom and Sue walked home holding hands, and they dreamed about the dog all night long.`;
