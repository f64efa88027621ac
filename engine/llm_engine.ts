// The engine loop: schedule a step, dispatch it, and read back the steps before it.
//
// Up to three steps are in flight: step N+1 and N+2 are dispatched before step N's tokens are
// used. A readback in Deno settles on a ~10 ms poll and dispatching a step costs tens of ms of
// CPU, so N's readback is requested right after N+1 is dispatched and awaited after N+2 is: the
// wait hides behind a dispatch instead of stalling the loop. Once steps take long on the device
// (a big model's prefill) two in flight keep it as busy, and the third would only be one more step
// that a newly arrived prompt waits behind. On a software adapter the device is the CPU itself: a
// queued step overlaps nothing but the loop's few ms, so one is in flight. A decoding sequence's
// input in a step is the token the step before sampled for it, fed on the GPU (see IO.prevIds). A sequence that
// ends in step N may already sit in N+1 and N+2: wasted compute, never sent to its client.
// Sequences sampled on the CPU (their next input must come back first) keep the pipeline at two.

import { BlockManager } from "./block_manager.ts";
import type { EngineConfig } from "./config.ts";
import { IncrementalDetokenizer } from "./detokenizer.ts";
import { GrammarError, GrammarHost, type Matcher } from "./grammar.ts";
import type { LoadedModel, ModelConfig } from "./model/types.ts";
import type { ModelRunner, StepHandle, StepInputs, StepPath } from "./model_runner.ts";
import {
  type AnswerCache,
  type EngineStats,
  type FinishReason,
  type GenerateEvent,
  type GenerateRequest,
  type HistogramCounts,
  STEP_TOKEN_BUCKETS,
  type TokenLogprob,
} from "./protocol.ts";
import { randomSeed, uniform } from "./rng.ts";
import { isGreedy, type SampledLogprob, sampleToken } from "./sampler.ts";
import { editsLogits } from "./logit_edits.ts";
import { ANSWER_IDLE_MS, type PlanItem, Scheduler, SchedulerError, type StepPlan } from "./scheduler.ts";
import { Sequence } from "./sequence.ts";
import { attentionItems, NO_FILTERS } from "./step_inputs.ts";

export type Emit = (ev: GenerateEvent) => void;

/** Per-request state the scheduler does not need: output side and sampling seed. */
interface Request {
  seq: Sequence;
  emit: Emit;
  detok: IncrementalDetokenizer;
  seed: number;
  /** Stop token ids, EOS included unless ignore_eos. */
  stopIds: Set<number>;
  /** Constrained decoding: masks its logits and follows its tokens. */
  matcher?: Matcher;
}

/**
 * Tokens before max_tokens (or the context) at which a constrained sequence starts checking how
 * long a forced finish of its document would take; once that fills what is left, it is forced.
 */
const FORCE_HORIZON = 64;

/** Steps in flight at most while steps are short (see the header). */
const PIPELINE_DEPTH = 3;

/**
 * Time per step (results to results, the next step already queued) beyond which "auto" keeps two
 * steps in flight instead of three: a step this long covers a readback's latency by itself, and a
 * new prompt waits behind one step fewer. On the H200 a decode step of 256 rows takes ~16-42 ms of GPU
 * time (by context), of 16 rows ~6 ms; a 1B model's 8192-token prefill step over a second. Not lower:
 * the time is measured at the depth it sets, and at two a short step also waits for the CPU's readback
 * and next dispatch, so at 12 ms the 135M shape's ~9 ms chat steps settled at two or three by chance
 * (docs/BENCHMARKS.md, session 30).
 */
const LONG_STEP_MS = 40;
/** Weight of the newest step in the running mean of the time per step. */
const STEP_TIME_ALPHA = 0.25;

interface InFlight {
  plan: StepPlan;
  handle: StepHandle;
  /** Sampling items in row order. */
  sampled: PlanItem[];
  startedAt: number;
  /** CPU time spent dispatching the step (building inputs + session.run). */
  dispatchMs: number;
}

export interface StepStats {
  step: number;
  tokens: number;
  seqs: number;
  prefillTokens: number;
  decodeTokens: number;
  /** Dispatch to results processed (overlaps the next step's dispatch). */
  stepMs: number;
  /** CPU time to build inputs and dispatch the graph. */
  dispatchMs: number;
  /** Time blocked waiting for the readback of this step's results. */
  readMs: number;
  /** CPU time to apply the results (sampling on the CPU, detokenising, emitting events). */
  processMs: number;
  blocksUsed: number;
  preemptions: number;
  /** Replayed from a captured session, run uncaptured, or both (see ModelRunner.run). */
  path: StepPath;
  /** Steps in flight at most when this one completed (see LLMEngine.depth). */
  depth: number;
}

/**
 * Weights a prompt token passes through in the layers, below which `--answer-cache auto` caches no
 * answers: a small model's cached turn is bound by step overheads, not prefill, so the copies only cost
 * (H100, session 29: the 135M shape, 106M, no lower TTFT and 20% less chat throughput; the 1B shape,
 * 973M, cached turns 3-4 26% faster for 6% less).
 */
export const ANSWER_CACHE_MIN_LAYER_WEIGHTS = 500e6;

/** Weights in a model's layers (attention and MLP projections; no embeddings). */
export function layerWeights(c: ModelConfig): number {
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  return c.numLayers * (2 * c.hiddenSize * (q + kv) + 3 * c.hiddenSize * c.intermediateSize);
}

/**
 * `--answer-cache` as it acts: off unless answers' KV differs from prompts' (long-query mode prompts)
 * and prefixes are cached; auto off on a model under ANSWER_CACHE_MIN_LAYER_WEIGHTS.
 */
export function resolveAnswerCache(
  setting: AnswerCache,
  longQueries: string,
  prefixCaching: boolean,
  model: ModelConfig,
): AnswerCache {
  if (longQueries !== "prompts" || !prefixCaching) return "off";
  return setting === "auto" && layerWeights(model) < ANSWER_CACHE_MIN_LAYER_WEIGHTS ? "off" : setting;
}

export class LLMEngine {
  readonly scheduler: Scheduler;
  private requests = new Map<string, Request>();
  /** Constrained requests whose grammar is compiling; `aborted` when abort() came meanwhile. */
  private compiling = new Map<string, { aborted: boolean }>();
  private grammarHost: Promise<GrammarHost> | null = null;
  private wake: (() => void) | null = null;
  private stopped = false;
  private counters = { prompt: 0, generation: 0, steps: 0 };
  private stepsByPath: Record<StepPath, number> = { captured: 0, uncaptured: 0, split: 0 };
  private stepTokens: HistogramCounts = { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 };
  /** Row of each sequence in the last dispatched step's sampled ids. */
  private lastRows = new Map<Sequence, number>();
  private editScratch = new Float32Array(0);
  /** Running mean of the time between two steps' results while the pipeline is busy (ms). */
  private stepEveryMs = 0;
  private lastDoneAt: number | null = null;
  /** Whose answers are cached as prompts' (EngineClient.answerCache), as resolved for this model. */
  private answers: AnswerCache;
  lastStep: StepStats | null = null;
  onStep: ((s: StepStats) => void) | null = null;

  /**
   * `model`: config and tokenizer only; holding the weights would keep them in memory for nothing.
   * `config` comes from resolveEngineConfig, and `runner` was built from it (see createEngine).
   */
  constructor(
    private model: Pick<LoadedModel, "config" | "tokenizer">,
    private runner: ModelRunner,
    private config: EngineConfig,
    private log: (line: string) => void = () => {},
  ) {
    if (config.maxContext > runner.maxPositions) {
      throw new Error(
        `context ${config.maxContext} exceeds the step graph's ${runner.maxPositions} positions`,
      );
    }
    const blocks = new BlockManager(runner.numBlocks, runner.blockSize, {
      prefixCaching: config.prefixCaching,
    });
    this.answers = resolveAnswerCache(
      config.answerCache,
      runner.longQueries,
      config.prefixCaching,
      model.config,
    );
    this.scheduler = new Scheduler({
      blockManager: blocks,
      blockSize: runner.blockSize,
      maxBatchTokens: config.maxBatchTokens,
      // Every running sequence must fit one step's decodes: a decode skipped for lack of budget
      // would lose the GPU-side link to its pending token (the next step reads the last step's ids).
      maxSeqs: Math.min(config.maxSeqs, config.maxBatchTokens),
      maxContext: config.maxContext,
      policy: config.policy,
      prefillOrder: config.prefillOrder,
      decodePauseSteps: config.decodePauseSteps,
      maxChunkTokens: config.maxChunkTokens,
      splitAtPrompt: runner.longQueries === "prompts",
      capturedPrefillTokens: runner.capturedPromptTokens,
      burstPrefillTokens: runner.burstPromptTokens,
    });
  }

  /** Queues a request; errors that make it impossible are emitted at once. */
  add(req: GenerateRequest, emit: Emit, matcher?: Matcher): void {
    const p = req.params;
    if (p.grammar && !matcher) return void this.addConstrained(req, emit);
    const seq = new Sequence(req.id, req.promptIds, p);
    const answers = this.answers;
    seq.cacheAnswer = answers === "on" || (answers === "auto" && req.continues === true);
    seq.predictAnswer = req.predictsAnswer === true;
    try {
      for (const id of req.promptIds) {
        if (!Number.isInteger(id) || id < 0 || id >= this.model.config.vocabSize) {
          throw new SchedulerError("invalid_request", `prompt token id ${id} is outside the vocabulary`);
        }
      }
      this.scheduler.add(seq);
    } catch (e) {
      const code = e instanceof SchedulerError ? e.code : "internal";
      emit({
        type: "error",
        message: (e as Error).message,
        code: code === "invalid_request" ? "invalid_request" : code,
      });
      return;
    }
    const stopIds = new Set(p.stopTokenIds);
    if (!p.ignoreEos) { for (const id of this.model.config.eosTokenIds) stopIds.add(id); }
    this.requests.set(req.id, {
      seq,
      emit,
      detok: new IncrementalDetokenizer(this.model.tokenizer, req.promptIds, {
        skipSpecialTokens: p.skipSpecialTokens,
        stop: p.stop,
      }),
      seed: p.seed ?? randomSeed(),
      stopIds,
      matcher,
    });
    this.counters.prompt += req.promptIds.length;
    this.wake?.();
  }

  /** Compiles the request's grammar (a bad one is a 400 naming its field), then queues it. */
  private async addConstrained(req: GenerateRequest, emit: Emit): Promise<void> {
    const spec = req.params.grammar!;
    const state = { aborted: false };
    this.compiling.set(req.id, state);
    let matcher: Matcher;
    try {
      this.grammarHost ??= GrammarHost.create(
        this.model.tokenizer,
        this.model.config.vocabSize,
        this.model.config.eosTokenIds,
      );
      matcher = await (await this.grammarHost).matcher(spec);
    } catch (e) {
      this.compiling.delete(req.id);
      if (e instanceof GrammarError) {
        const message = `'${spec.param}' cannot be enforced: ${e.message}`;
        return emit({ type: "error", message, code: "invalid_request", param: spec.param });
      }
      this.grammarHost = null;
      return emit({
        type: "error",
        message: `grammar engine failed: ${(e as Error).message}`,
        code: "internal",
      });
    }
    this.compiling.delete(req.id);
    if (state.aborted || this.stopped) {
      matcher.dispose();
      const zero = { promptTokens: req.promptIds.length, completionTokens: 0, queueTime: 0 };
      return emit({
        type: "done",
        finishReason: "abort",
        stopReason: null,
        ...zero,
        timeToFirstToken: 0,
        e2eTime: 0,
      });
    }
    this.add(req, emit, matcher);
  }

  /** Removes a request wherever it is; its blocks are free before the next step is formed. */
  abort(id: string): void {
    const c = this.compiling.get(id);
    if (c) c.aborted = true;
    const r = this.requests.get(id);
    if (!r) return;
    this.finish(r, "abort", null);
  }

  /** Scheduler.predictAnswer; an idle engine looks again, to run the work once idle long enough. */
  predictAnswer(id: string, ids: number[], final: boolean): void {
    this.scheduler.predictAnswer(id, ids, final);
    this.wake?.();
  }

  /** Whose answers are cached as prompts' here (EngineClient.answerCache). */
  get answerCache(): AnswerCache {
    return this.answers;
  }

  stats(): EngineStats {
    const s = this.scheduler.stats();
    return {
      running: s.running,
      waiting: s.waiting,
      kvBlocksUsed: s.blocksUsed,
      kvBlocksTotal: s.blocksTotal,
      promptTokensTotal: this.counters.prompt,
      generationTokensTotal: this.counters.generation,
      preemptionsTotal: s.preemptionsTotal,
      stepsTotal: this.counters.steps,
      stepsByPath: { ...this.stepsByPath },
      prefixCacheQueriesTotal: s.prefixCacheQueries,
      prefixCacheHitsTotal: s.prefixCacheHits,
      kvBlocksCached: s.blocksCached,
      stepTokens: { ...this.stepTokens, counts: [...this.stepTokens.counts] },
    };
  }

  stop() {
    this.stopped = true;
    this.wake?.();
  }

  /** Runs until stop(); each iteration dispatches at most one step and reads back what the depth asks. */
  async run(): Promise<void> {
    const inFlight: InFlight[] = [];
    let idleSince: number | null = null;
    while (!this.stopped) {
      const plan = this.scheduler.schedule({
        prefillInFlight: inFlight.some((f) => f.plan.numPrefillTokens > 0),
        idleMs: idleSince === null ? 0 : performance.now() - idleSince,
      });
      idleSince = null;
      if (plan) {
        inFlight.push(await this.dispatch(plan));
        if (inFlight.length >= 2) this.runner.startRead(inFlight[inFlight.length - 2].handle);
      }
      if (!plan && inFlight.length > 0) await this.complete(inFlight.shift()!);
      // Down to one below the depth, which may have just dropped: a step is dispatched next.
      while (plan && inFlight.length > 0 && inFlight.length >= this.depth(inFlight[0])) {
        await this.complete(inFlight.shift()!);
      }
      if (!plan && inFlight.length === 0 && !this.stopped && this.scheduler.isIdle) {
        idleSince = performance.now();
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          // Answers waiting to be cached as prompts' run once the engine has been idle a while.
          if (this.scheduler.hasAnswerWork) timer = setTimeout(resolve, ANSWER_IDLE_MS);
        });
        clearTimeout(timer);
        this.wake = null;
      }
    }
    while (inFlight.length > 0) await this.complete(inFlight.shift()!);
  }

  /**
   * Steps in flight at most, given the oldest one (see the header and LONG_STEP_MS). On a software
   * adapter "auto" is one: on the CPU machine (2 cores, llvmpipe, ragtime-mini) a cached chat turn's TTFT
   * was 653-687 ms at one against 833-860 ms at two (no queued ~240 ms decode step ahead of it), for ~4%
   * of saturated throughput (docs/BENCHMARKS.md, session 11).
   */
  private depth(oldest: InFlight | undefined): number {
    const d = this.config.pipelineDepth;
    const want = d !== "auto"
      ? d
      : this.runner.softwareAdapter
      ? 1
      : this.stepEveryMs > LONG_STEP_MS
      ? 2
      : PIPELINE_DEPTH;
    // A CPU-sampled sequence cannot decode again before its token is back: read at depth two.
    return oldest?.handle.logits ? Math.min(want, 2) : want;
  }

  /** Updates the time per step with a step whose results just arrived. */
  private timeStep(f: InFlight, doneAt: number): void {
    // Dispatched before the previous step's results: the device had it queued, so the interval is
    // the device's (or the loop's) time for it, not time the engine sat idle.
    if (this.lastDoneAt !== null && f.startedAt < this.lastDoneAt) {
      const ms = doneAt - this.lastDoneAt;
      this.stepEveryMs = this.stepEveryMs === 0
        ? ms
        : this.stepEveryMs + STEP_TIME_ALPHA * (ms - this.stepEveryMs);
    }
    this.lastDoneAt = doneAt;
  }

  private async dispatch(plan: StepPlan): Promise<InFlight> {
    const startedAt = performance.now();
    const { inputs, sampled } = this.buildInputs(plan);
    this.scheduler.onStepSubmitted(plan);
    const handle = await this.runner.run(inputs);
    this.lastRows = new Map(sampled.map((it, row) => [it.seq, row]));
    return { plan, handle, sampled, startedAt, dispatchMs: performance.now() - startedAt };
  }

  /**
   * The step's flat inputs. Each plan item is one sequence's span; a span longer than the runner's
   * itemTokens (BATCH_INVARIANT_ITEM_TOKENS, or no limit for prompt spans in long-query mode) goes as
   * several attention items of the same sequence (so that the step's longest query keeps PagedAttention
   * on one kernel), and only the last row of a span that reaches the sequence's end is sampled. In
   * long-query mode "prompts", prompt spans go last, from inputs.longFrom (the scheduler never lets a
   * span cross the prompt's end).
   */
  private buildInputs(plan: StepPlan): { inputs: StepInputs; sampled: PlanItem[] } {
    const isPrompt = (it: PlanItem) => it.start < it.seq.promptIds.length;
    const long = (it: PlanItem) => this.runner.longKernel(isPrompt(it));
    const split = this.runner.longQueries === "prompts";
    const items = split ? [...plan.items.filter((it) => !long(it)), ...plan.items.filter(long)] : plan.items;
    const C = (it: PlanItem) => this.runner.itemTokens(isPrompt(it));
    const T = items.reduce((n, it) => n + it.numTokens, 0);
    const B = items.reduce((n, it) => n + Math.max(1, Math.ceil(it.numTokens / C(it))), 0);
    const inputIds = new Int32Array(T), idSrc = new Int32Array(T).fill(-1);
    const cu = new Int32Array(B + 1), past = new Int32Array(B);
    const maxBlocks = Math.max(1, ...items.map((it) => it.seq.blockTable.length));
    const blockTable = new Int32Array(B * maxBlocks);
    const sampled: PlanItem[] = [];
    const rows: number[] = [], us: number[] = [], invT: number[] = [], filters: number[] = [];
    const edits: { seq: Sequence; row: number; pendingSrc: number }[] = [];
    let wantLogits = false;
    let t = 0, b = 0;
    let longFrom: number | undefined;
    for (const it of items) {
      const seq = it.seq;
      const known = seq.knownLen, prompt = seq.promptIds.length;
      if (split && long(it)) {
        longFrom ??= b;
        if (it.start + it.numTokens > prompt) throw new Error(`${seq.id}: a span crosses the prompt's end`);
      }
      for (const [start, n] of attentionItems(it.start, it.numTokens, C(it))) {
        for (let p = start; p < start + n; p++, t++) {
          if (p < known) {
            inputIds[t] = p < prompt ? seq.promptIds[p] : seq.outputIds[p - prompt];
          } else {
            // The token the previous step sampled for this sequence, still on the GPU.
            const row = this.lastRows.get(seq);
            if (row === undefined) throw new Error(`no pending token row for ${seq.id} at position ${p}`);
            idSrc[t] = row;
          }
        }
        cu[b + 1] = t;
        past[b] = start;
        blockTable.set(seq.blockTable, b * maxBlocks);
        b++;
      }
      if (it.sample) {
        sampled.push(it);
        rows.push(t - 1);
        const r = this.requests.get(seq.id)!;
        const temp = seq.params.temperature;
        if (seq.needsCpuLogits) {
          wantLogits = true;
          us.push(-1);
          invT.push(1);
          filters.push(...NO_FILTERS);
        } else {
          const edited = editsLogits(seq.params);
          if (edited) {
            // Its last token may still be on the GPU, at the row idSrc reads it from: counted there.
            const pendingSrc = seq.pending > 0 ? this.lastRows.get(seq)! : -1;
            edits.push({ seq, row: rows.length - 1, pendingSrc });
          }
          if (isGreedy(seq.params)) {
            // Greedy over edited logits is the first of the most likely ids: top_k 1, u 0.
            us.push(edited ? 0 : -1);
            invT.push(1);
            filters.push(...(edited ? [1, 1, 0] : NO_FILTERS));
          } else {
            // k counts every token sampled before this one, pending ones included.
            us.push(uniform(r.seed, seq.outputIds.length + seq.pending));
            invT.push(1 / temp);
            filters.push(Math.max(0, seq.params.topK), seq.params.topP, seq.params.minP);
          }
        }
      }
    }
    // ORT fails on a sampling head of zero rows (a step of prefill chunks only): give it one unused row.
    if (rows.length === 0) {
      rows.push(0);
      us.push(-1);
      invT.push(1);
      filters.push(...NO_FILTERS);
    }
    return {
      inputs: {
        inputIds,
        idSrc,
        cuSeqlens: cu,
        pastSeqlens: past,
        blockTable,
        maxBlocks,
        sampleRows: Int32Array.from(rows),
        sampleU: Float32Array.from(us),
        invTemp: Float32Array.from(invT),
        sampleFilters: Float32Array.from(filters),
        sampleEdits: this.stepEdits(edits),
        wantLogits,
        longFrom,
      },
      sampled,
    };
  }

  /**
   * The edited rows' logit edits, one after another (engine/logit_edits.ts), in a buffer reused from
   * step to step: a repetition penalty over long prompts sends megabytes a step, and fresh pages cost
   * more to touch than the copy. The runner has uploaded them by the time run() returns.
   */
  private stepEdits(rows: { seq: Sequence; row: number; pendingSrc: number }[]): Float32Array {
    const V = this.model.config.vocabSize;
    const each = rows.map((r) => r.seq.logitEdits(V));
    const n = each.reduce((n, e, i) => n + e.floats(rows[i].seq.outputIds, rows[i].pendingSrc), 0);
    if (this.editScratch.length < n) {
      this.editScratch = new Float32Array(Math.max(n, 2 * this.editScratch.length));
    }
    const out = this.editScratch.subarray(0, n);
    let at = 0;
    rows.forEach((r, i) => at = each[i].write(out, at, r.row, r.seq.outputIds, r.pendingSrc));
    return out;
  }

  private async complete(f: InFlight): Promise<void> {
    const readStart = performance.now();
    const result = await this.runner.read(f.handle);
    const processStart = performance.now();
    const readMs = processStart - readStart;
    this.timeStep(f, processStart);
    const V = this.model.config.vocabSize;
    for (const [row, it] of f.sampled.entries()) {
      const seq = it.seq;
      const r = this.requests.get(seq.id);
      if (!r || r.seq !== seq || seq.status === "finished") continue; // ended meanwhile: wasted token
      const logits = result.logits?.subarray(row * V, (row + 1) * V);
      // The matcher's awaits stay in this loop, under the same conditions as always, so that rows
      // without a grammar are processed without yielding to the event loop.
      if (!r.matcher) {
        const { token, logprobs } = this.chooseToken(r, result.nextIds[row], logits);
        this.acceptToken(r, token, logprobs);
        continue;
      }
      const mask = await r.matcher.mask();
      if (r.matcher.finishing) {
        this.acceptToken(r, r.matcher.forcedToken(mask), undefined);
        continue;
      }
      let { token, logprobs } = this.chooseToken(r, result.nextIds[row], maskLogits(logits!, mask));
      // A sampled token after which the shortest end of the document no longer fits is replaced
      // by the forced finish, so the document ends (and parses) within max_tokens.
      const left = this.tokensLeft(seq);
      if (left <= FORCE_HORIZON && !await r.matcher.leavesRoom(token, left)) {
        r.matcher.finishing = true;
        token = r.matcher.forcedToken(mask);
        logprobs = undefined;
      }
      this.acceptToken(r, token, logprobs);
    }
    this.counters.steps++;
    this.recordStep(this.stepStats(f, readMs, processStart));
  }

  /** The row's token: sampled here from `logits` when the sequence needs that, else the GPU's. */
  private chooseToken(
    r: Request,
    gpuToken: number,
    logits: Float32Array | undefined,
  ): { token: number; logprobs: TokenLogprob[] | undefined } {
    const seq = r.seq;
    if (!seq.needsCpuLogits) return { token: gpuToken, logprobs: undefined };
    const s = sampleToken(logits!, seq.params, {
      promptIds: seq.promptIds,
      outputIds: seq.outputIds,
      seed: r.seed,
    });
    const logprobs = s.logprob === null ? undefined : this.tokenLogprobs(s.tokenId, s.logprob, s.top);
    return { token: s.tokenId, logprobs };
  }

  /** The sampler's logprobs with each token's text, as the client sees them. */
  private tokenLogprobs(token: number, logprob: number, top: SampledLogprob[]): TokenLogprob[] {
    const tk = this.model.tokenizer;
    return [{
      tokenId: token,
      token: tk.tokenText(token),
      logprob,
      top: top.map((x) => ({
        tokenId: x.tokenId,
        token: tk.tokenText(x.tokenId),
        logprob: x.logprob,
      })),
    }];
  }

  /** Tokens the sequence may still generate: up to max_tokens, and within the context. */
  private tokensLeft(seq: Sequence): number {
    return Math.min(
      seq.params.maxTokens - seq.outputIds.length,
      this.scheduler.config.maxContext - seq.knownLen,
    );
  }

  /** Commits the row's final token: grammar, scheduler, counters, then the client's events. */
  private acceptToken(r: Request, token: number, logprobs: TokenLogprob[] | undefined): void {
    r.matcher?.accept(token);
    this.scheduler.onTokenResolved(r.seq, token);
    this.counters.generation++;
    this.onToken(r, token, logprobs);
  }

  /** What the step did and where its time went; `processStart` is when its readback arrived. */
  private stepStats(f: InFlight, readMs: number, processStart: number): StepStats {
    return {
      step: this.counters.steps,
      tokens: f.plan.numPrefillTokens + f.plan.numDecodeTokens,
      seqs: f.plan.items.length,
      prefillTokens: f.plan.numPrefillTokens,
      decodeTokens: f.plan.numDecodeTokens,
      stepMs: performance.now() - f.startedAt,
      dispatchMs: f.dispatchMs,
      readMs,
      processMs: performance.now() - processStart,
      blocksUsed: this.scheduler.stats().blocksUsed,
      preemptions: f.plan.preempted.length,
      path: f.handle.path,
      depth: this.depth(f),
    };
  }

  /** Step counters and the token histogram for stats(), then the debug log and onStep. */
  private recordStep(stats: StepStats): void {
    this.stepsByPath[stats.path]++;
    this.lastStep = stats;
    const bucket = STEP_TOKEN_BUCKETS.findIndex((b) => stats.tokens <= b);
    if (bucket >= 0) this.stepTokens.counts[bucket]++;
    this.stepTokens.sum += stats.tokens;
    this.stepTokens.count++;
    if (this.config.debugSteps) this.log(`step ${JSON.stringify(stats)}`);
    this.onStep?.(stats);
  }

  private onToken(r: Request, token: number, logprobs: TokenLogprob[] | undefined) {
    const seq = r.seq;
    // A finished document ends the sequence even where its stop token is not one (ignore_eos).
    if (r.stopIds.has(token) || r.matcher?.terminated) {
      // The stop token itself is not text; anything held back for a partial stop string is.
      const tail = r.detok.flush();
      if (tail || logprobs) r.emit({ type: "delta", text: tail, tokenIds: [token], logprobs });
      return this.finish(r, "stop", token);
    }
    const { text, stopped } = r.detok.push(token);
    if (stopped !== null) {
      r.emit({ type: "delta", text, tokenIds: [token], logprobs });
      return this.finish(r, "stop", stopped);
    }
    const atLimit = seq.outputIds.length >= seq.params.maxTokens ||
      seq.promptIds.length + seq.outputIds.length >= this.scheduler.config.maxContext;
    const flushed = atLimit ? r.detok.flush() : "";
    r.emit({ type: "delta", text: text + flushed, tokenIds: [token], logprobs });
    if (atLimit) this.finish(r, "length", null);
  }

  private finish(r: Request, reason: FinishReason, stopReason: string | number | null) {
    const seq = r.seq;
    this.scheduler.finish(seq, reason);
    this.requests.delete(seq.id);
    this.lastRows.delete(seq);
    r.matcher?.dispose();
    const now = performance.now();
    r.emit({
      type: "done",
      finishReason: reason,
      stopReason,
      promptTokens: seq.promptIds.length,
      completionTokens: seq.outputIds.length,
      cachedPromptTokens: seq.numCachedTokens,
      queueTime: ((seq.firstScheduledTime ?? now) - seq.arrivalTime) / 1000,
      timeToFirstToken: seq.firstTokenTime === null ? 0 : (seq.firstTokenTime - seq.arrivalTime) / 1000,
      e2eTime: (now - seq.arrivalTime) / 1000,
    });
    this.wake?.();
  }
}

/** A copy of the row with every token the grammar rules out at -Infinity. */
function maskLogits(logits: Float32Array, mask: Int32Array): Float32Array {
  const out = new Float32Array(logits.length);
  for (let w = 0; w < mask.length; w++) {
    const bits = mask[w], base = w << 5;
    if (bits === 0) {
      out.fill(-Infinity, base, Math.min(base + 32, out.length));
      continue;
    }
    for (let b = 0; b < 32 && base + b < out.length; b++) {
      out[base + b] = (bits >>> b) & 1 ? logits[base + b] : -Infinity;
    }
  }
  return out;
}
