// Continuous batching with one token budget per step: decodes first, then prefill chunks.
//
// A prefill chunk is one sequence's span of prompt (or recomputed) tokens in a step, as long as the
// budget left allows, up to maxChunkTokens (vLLM's long_prefill_token_threshold: a cap per sequence,
// so that one long prompt does not take a whole step from the prompts queued behind it). The engine
// runs a chunk as attention items of at most BATCH_INVARIANT_ITEM_TOKENS (see LLMEngine.buildInputs),
// so a long prompt is prefilled in one step when the budget allows.
//
// Waiting requests start in arrival order, or (PrefillOrder "shortest", the engine's default) the one
// with the fewest prompt tokens left past its cached prefix first, among those that arrived within
// SHORTEST_FIRST_WINDOW_MS of the oldest: the order changes when a request's first token comes, never
// its tokens.
//
// A step's shape (which sequences, how many tokens) depends only on counts, never on token values,
// so it can be formed while the previous step's samples are still on the GPU.
//
// Where the model runner replays captured sessions for prompt parts of up to capturedPrefillTokens, a
// short prefill backlog (chat turns after their cached prefixes) is cut to that size per step, so that
// it runs as a few replays instead of one uncaptured step (see #prefillCap). The first step with
// prefill while none is in flight is cut to the largest captured prompt shape (burstPrefillTokens):
// its dispatch is latency then, not hidden behind steps the device is still running.
//
// Every sequence holds blocks only for positions scheduled so far. When a decode needs a block and
// the pool is empty, the newest running sequence is preempted (blocks freed, recomputed later as a
// prefill). The oldest running sequence therefore always progresses, and `add` rejects any request
// that could not fit the pool alone, so the system cannot deadlock (cached blocks nobody holds count
// as free: taking one evicts it).
//
// Answers as prompts (AnswerCache): with splitAtPrompt an answer's blocks are cached under keys no
// prompt matches, so for a sequence with cacheAnswer its answer's full blocks are computed once more
// as a prompt's, by a transient copy (its prompt: the owner's tokens up to a block boundary) that
// shares the cached blocks before them, is planned after every real admission, samples nothing, and
// gives its blocks back to the cache as soon as its step is submitted (#planAnswers). A sequence with
// predictAnswer takes its answer's tokens from predictAnswer instead: the next turn's prompt as the
// HTTP side renders and tokenizes it, which need not split the answer's text as it was sampled.
//
// Prefix caching (BlockManager): a sequence starts at the longest run of cached blocks holding its
// first tokens and computes the rest, always at least its last token (the step must produce its
// logits). Its own blocks are committed as soon as every position in them has KV dispatched and
// every token in them is known on the CPU (a pending token's value is still on the GPU), so a
// request arriving while its twin is still prefilling already reuses the blocks done so far.
// Why reading them is safe while the steps that write them may still be in flight: every step is
// one submission to the same GPU queue, and a block is committed only after the step writing its
// last position is submitted. Any step that reads it is formed, and so submitted, later, and the
// queue runs submissions in order. A committed block is never written again (sequences write only
// positions past the cached prefix they took, and only a block nobody holds is evicted and then
// rewritten, by a step submitted after every step that read it).
// Why the KV read equals what a recompute would write, bit for bit: a token's K and V at every
// layer do not depend on how its prompt was cut into chunks, as long as every step runs the same
// attention kernel (attention items of at most BATCH_INVARIANT_ITEM_TOKENS; measured on stories260K
// with items of 1, 2, 7, 16 and 31 tokens from any offset, one or many of them per step: identical
// KV; bench/gpu/kv_probe.ts).

import type { BlockManager } from "./block_manager.ts";
import { type FinishReason, type PrefillOrder, SHORTEST_FIRST_WINDOW_MS } from "./protocol.ts";
import { Sequence } from "./sequence.ts";

export type SchedulerPolicy = "continuous" | "static" | "sequential";

export interface SchedulerConfig {
  blockManager: BlockManager;
  blockSize: number;
  /** Tokens per step, decodes and prefill chunks together. */
  maxBatchTokens: number;
  /** Running sequences at once (so also items per step). */
  maxSeqs: number;
  /** Positions a sequence may reach: prompt + maxTokens must fit. */
  maxContext: number;
  /**
   * continuous: admit whenever budget and blocks allow.
   * static: a batch forms while nothing in it has started decoding, then runs until it drains.
   * sequential: one sequence at a time.
   */
  policy: SchedulerPolicy;
  /** Which waiting request is admitted first (PrefillOrder); default: arrival. */
  prefillOrder?: PrefillOrder;
  /** Most tokens one sequence computes in a step (its prefill chunk); default: the budget. */
  maxChunkTokens?: number;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
  /**
   * Long-query mode "prompts" (LongQueries): a prompt token's KV comes from another attention kernel
   * than an output token's, so a chunk never crosses the prompt's end, and a cached block's content
   * says which of its tokens were outputs (a later prompt holding the same ids computes them anew).
   */
  splitAtPrompt?: boolean;
  /**
   * Most prefill tokens a step can hold and still replay a captured session for them (the runner's
   * largest captured prompt shape; 0 or absent: none). While all the prefill work left fits in
   * PREFILL_BACKLOG_STEPS such steps and no sequence's in PREFILL_SEQUENCE_STEPS, a step takes at
   * most that many, so that a burst of small prompts (chat turns after a cached prefix) goes as a
   * few replays of a few ms of dispatch each, not as one uncaptured step (~100 ms of dispatch on the
   * H200 whatever its size).
   */
  capturedPrefillTokens?: number;
  /**
   * Most prefill tokens a step can hold and still replay the runner's largest captured prompt
   * session, where that is more than capturedPrefillTokens (0 or absent: none). A step formed while no
   * step in flight holds prefill tokens takes at most that many: the device has little or nothing
   * queued then, so an uncaptured step's dispatch (~60-100 ms of CPU on the H200) would be time every
   * request of a burst waits; a replay's takes ~12 ms, and the next steps dispatch while it runs.
   */
  burstPrefillTokens?: number;
  /**
   * While more prompt tokens wait than one step's budget holds, up to this many steps in a row carry
   * no decodes, so that a burst of prompts is prefilled sooner; running streams pause meanwhile (0 or
   * absent: every step decodes).
   */
  decodePauseSteps?: number;
}

/** What the engine tells the scheduler about the steps it has in flight. */
export interface ScheduleContext {
  /** Whether a step dispatched and not yet completed holds prefill tokens; default true. */
  prefillInFlight?: boolean;
  /** How long the engine has had nothing in flight and nothing to run, in ms; default 0. */
  idleMs?: number;
}

/**
 * Steps of capturedPrefillTokens the prefill work left may fill for the cap to apply: past that, a
 * burst of fresh prompts, the matmuls of many rows bound a step, not its dispatch. A chat burst of 16
 * turns (~2700 tokens past their cached prefixes on the 1B) fits 8: at 4 it sometimes went as one
 * uncaptured 2048-token step, ~20% slower (H100, docs/BENCHMARKS.md, session 28).
 */
export const PREFILL_BACKLOG_STEPS = 8;

/**
 * Steps of capturedPrefillTokens one sequence's prefill left may fill for the cap to apply: each
 * replay walks the context again, so a lone prompt cut in more replays finishes later than one
 * uncaptured step would (H200, SmolLM2-135M shape: 1000 tokens 69 ms in two replays against 92 ms
 * uncaptured, 1800 tokens 109 ms in four against 91; docs/BENCHMARKS.md, session 14).
 */
export const PREFILL_SEQUENCE_STEPS = 3;

export interface PlanItem {
  seq: Sequence;
  /** First position computed. */
  start: number;
  numTokens: number;
  /** The chunk ends at the sequence's last token, so the step samples a token for it. */
  sample: boolean;
}

export interface StepPlan {
  /** Decodes first, then prefill chunks. */
  items: PlanItem[];
  /** Sequences preempted since the previous plan; their blocks are already free. */
  preempted: Sequence[];
  numPrefillTokens: number;
  numDecodeTokens: number;
}

export interface SchedulerStats {
  running: number;
  waiting: number;
  blocksUsed: number;
  blocksTotal: number;
  /** Blocks holding cached prefix content, held by a sequence or not. */
  blocksCached: number;
  preemptionsTotal: number;
  /** Tokens of new requests looked up in the prefix cache (vLLM's prefix_cache_queries). */
  prefixCacheQueries: number;
  /** Of those, tokens whose KV was found cached (vLLM's prefix_cache_hits). */
  prefixCacheHits: number;
}

export class SchedulerError extends Error {
  readonly code: "context_length_exceeded" | "invalid_request";
  constructor(code: SchedulerError["code"], message: string) {
    super(message);
    this.name = "SchedulerError";
    this.code = code;
  }
}

/**
 * Answer tokens (AnswerCache) that make a step of decodes alone take a prompt part for them: about a
 * captured prompt replay's worth, so that answers being generated add a replay every few steps, not
 * to every step. Fewer wait for a step that has prompt work anyway.
 */
export const ANSWER_BATCH_TOKENS = 256;

/**
 * Milliseconds the engine must have had nothing to run before answer copies take a step of their own
 * (ScheduleContext.idleMs): a client that sends its next turn at once computes the answer itself,
 * one whose user reads the answer first finds it cached.
 */
export const ANSWER_IDLE_MS = 250;

/** An answer's blocks still to compute as a prompt's: positions [from, upTo), block-aligned. */
interface AnswerWork {
  from: number;
  upTo: number;
  /** Predicted tokens (Sequence.predictAnswer), in place of the owner's own. */
  ids?: readonly number[];
}

/** Owners awaiting predictions (Scheduler.predictAnswer) kept at most; the oldest go first. */
const MAX_PREDICTED_OWNERS = 4096;

/** The step being formed. */
interface Draft {
  items: PlanItem[];
  planned: Set<Sequence>;
  budget: number;
  /** Prefill tokens the step may still take (the budget, or less: capturedPrefillTokens). */
  prefillBudget: number;
  numPrefillTokens: number;
  numDecodeTokens: number;
}

export class Scheduler {
  readonly config: Readonly<SchedulerConfig>;
  #blocks: BlockManager;
  #now: () => number;
  #maxChunk: number;
  #blockSize: number;
  #splitAtPrompt: boolean;
  /** Sorted by arrival order (FCFS priority). */
  #running: Sequence[] = [];
  #waiting: Sequence[] = [];
  #byId = new Map<string, Sequence>();
  #arrivalOrder = new Map<Sequence, number>();
  /** When each sequence was added, on this scheduler's clock. */
  #addedAt = new Map<Sequence, number>();
  #nextArrival = 0;
  #preemptionsTotal = 0;
  #prefixCacheQueries = 0;
  #prefixCacheHits = 0;
  #preemptedSincePlan: Sequence[] = [];
  #unsubmitted: StepPlan | null = null;
  /** Whether answers' KV differs from prompts' and can be cached as prompts' (see the header). */
  #answersOn: boolean;
  /** Owners (Sequence.cacheAnswer) with answer blocks still to compute, in the order they arose. */
  #answerWork = new Map<Sequence, AnswerWork>();
  /** How far each owner's answer has been planned as a prompt's. */
  #answerDone = new WeakMap<Sequence, number>();
  /** Copies planned and not yet submitted: they go back to the pool once submitted. */
  #answerCopies = new Set<Sequence>();
  /** Owners with predictAnswer by id, until their final prediction or abort. */
  #predicted = new Map<string, Sequence>();
  /** Steps in a row planned without decodes (decodePauseSteps). */
  #decodePauses = 0;
  /** Sequences the last submitted step samples: the only ones whose pending token is on the GPU. */
  #lastSampled = new Set<Sequence>();

  constructor(config: SchedulerConfig) {
    if (config.blockSize !== config.blockManager.blockSize) {
      throw new Error(`blockSize ${config.blockSize} != block manager's ${config.blockManager.blockSize}`);
    }
    for (const key of ["maxBatchTokens", "maxSeqs", "maxContext"] as const) {
      if (!Number.isInteger(config[key]) || config[key] < 1) throw new Error(`${key} must be >= 1`);
    }
    this.config = config;
    this.#blocks = config.blockManager;
    this.#now = config.now ?? (() => performance.now());
    this.#maxChunk = config.maxChunkTokens ?? Infinity;
    this.#blockSize = config.blockSize;
    this.#splitAtPrompt = config.splitAtPrompt ?? false;
    this.#answersOn = this.#splitAtPrompt && this.#blocks.prefixCaching;
  }

  get running(): readonly Sequence[] {
    return this.#running;
  }

  get waiting(): readonly Sequence[] {
    return this.#waiting;
  }

  get(id: string): Sequence | undefined {
    return this.#byId.get(id);
  }

  /** No sequence is running or waiting. */
  get isIdle(): boolean {
    return this.#running.length === 0 && this.#waiting.length === 0;
  }

  /** Answers wait to be computed as prompts' (AnswerCache): an idle engine runs them after ANSWER_IDLE_MS. */
  get hasAnswerWork(): boolean {
    return this.#answerWork.size > 0;
  }

  stats(): SchedulerStats {
    return {
      running: this.#running.length,
      waiting: this.#waiting.length,
      blocksUsed: this.#blocks.numUsed,
      blocksTotal: this.#blocks.numBlocks,
      blocksCached: this.#blocks.numCached,
      preemptionsTotal: this.#preemptionsTotal,
      prefixCacheQueries: this.#prefixCacheQueries,
      prefixCacheHits: this.#prefixCacheHits,
    };
  }

  /** Queues a new sequence FCFS, or throws SchedulerError if it could never run. */
  add(seq: Sequence): void {
    const prompt = seq.promptIds.length;
    const maxTokens = seq.params.maxTokens;
    const { maxContext } = this.config;
    if (this.#byId.has(seq.id)) throw new SchedulerError("invalid_request", `duplicate request id ${seq.id}`);
    if (prompt === 0) throw new SchedulerError("invalid_request", "empty prompt");
    if (!Number.isInteger(maxTokens) || maxTokens < 1) {
      throw new SchedulerError("invalid_request", `max_tokens must be >= 1, got ${maxTokens}`);
    }
    if (prompt > maxContext) {
      throw new SchedulerError(
        "context_length_exceeded",
        `prompt has ${prompt} tokens; the maximum context length is ${maxContext}`,
      );
    }
    if (prompt + maxTokens > maxContext) {
      throw new SchedulerError(
        "context_length_exceeded",
        `prompt (${prompt} tokens) + max_tokens (${maxTokens}) exceeds the maximum context length ${maxContext}`,
      );
    }
    // The last sampled token is never fed back, so it needs no KV.
    const blocksNeeded = this.#blocks.blocksFor(prompt + maxTokens - 1);
    if (blocksNeeded > this.#blocks.numBlocks) {
      throw new SchedulerError(
        "context_length_exceeded",
        `prompt (${prompt} tokens) + max_tokens (${maxTokens}) needs ${blocksNeeded} KV blocks; ` +
          `the cache has ${this.#blocks.numBlocks}`,
      );
    }
    // A prompt resending an answer not yet computed as a prompt's computes it itself (its own blocks
    // are cached as it goes), rather than beside a copy doing the same.
    for (const [owner, w] of this.#answerWork) if (resends(seq, owner, w)) this.#answerWork.delete(owner);
    if (seq.cacheAnswer && seq.predictAnswer && this.#answersOn) {
      this.#predicted.set(seq.id, seq);
      if (this.#predicted.size > MAX_PREDICTED_OWNERS) {
        this.#predicted.delete(this.#predicted.keys().next().value!);
      }
    }
    seq.status = "waiting";
    this.#byId.set(seq.id, seq);
    this.#arrivalOrder.set(seq, this.#nextArrival++);
    this.#addedAt.set(seq, this.#now());
    this.#waiting.push(seq);
  }

  /**
   * Forms the next step, or returns null when nothing can run now. Every plan returned must be
   * passed to onStepSubmitted before the next call.
   */
  schedule(context: ScheduleContext = {}): StepPlan | null {
    if (this.#unsubmitted) throw new Error("schedule() called before the previous plan was submitted");
    const draft: Draft = {
      items: [],
      planned: new Set(),
      budget: this.config.maxBatchTokens,
      prefillBudget: this.#prefillCap(context.prefillInFlight ?? true),
      numPrefillTokens: 0,
      numDecodeTokens: 0,
    };
    const preemptionsBefore = this.#preemptionsTotal;

    const pause = this.#pauseDecodes();
    if (!pause) this.#scheduleDecodes(draft);
    this.#continuePrefills(draft);
    // A step that had to preempt is short of blocks: admitting now would only thrash. With nothing
    // planned, though, admitting is the only way forward.
    const preempted = this.#preemptionsTotal !== preemptionsBefore;
    if (!preempted || draft.items.length === 0) this.#admitWaiting(draft);
    // A pause that left no prompt work to run (blocks short) lets the decodes go after all.
    if (pause && draft.numPrefillTokens === 0) this.#scheduleDecodes(draft);
    this.#decodePauses = pause && draft.numDecodeTokens === 0 ? this.#decodePauses + 1 : 0;
    // Copies never take blocks a step was short of.
    if (!preempted && this.#answerWork.size > 0) this.#planAnswers(draft, context.idleMs ?? 0);

    if (draft.items.length === 0) return null;
    const plan: StepPlan = {
      items: draft.items,
      preempted: this.#preemptedSincePlan,
      numPrefillTokens: draft.numPrefillTokens,
      numDecodeTokens: draft.numDecodeTokens,
    };
    this.#preemptedSincePlan = [];
    this.#unsubmitted = plan;
    return plan;
  }

  /** The plan's step is on the GPU: its KV is as good as written and its samples are pending. */
  onStepSubmitted(plan: StepPlan): void {
    if (plan !== this.#unsubmitted) {
      throw new Error("onStepSubmitted with a plan that was not just scheduled");
    }
    this.#lastSampled = new Set(plan.items.filter((it) => it.sample).map((it) => it.seq));
    this.#unsubmitted = null;
    for (const { seq, numTokens, sample } of plan.items) {
      seq.numComputed += numTokens;
      if (sample) seq.pending += 1;
      this.#commitFullBlocks(seq);
      if (this.#answerCopies.delete(seq)) {
        // Its KV is as good as written: its blocks stay cached for the turn that resends the answer.
        this.#blocks.free(seq.blockTable);
        seq.status = "finished";
      }
    }
  }

  /** A sampled token was read back. Ignored for finished sequences (a wasted token past a stop). */
  onTokenResolved(seq: Sequence, tokenId: number): void {
    if (seq.status === "finished") return;
    if (seq.pending < 1) throw new Error(`sequence ${seq.id} resolved a token it was not waiting for`);
    seq.pending -= 1;
    seq.outputIds.push(tokenId);
    const now = this.#now();
    seq.firstTokenTime ??= now;
    seq.lastTokenTime = now;
    this.#commitFullBlocks(seq);
    if (seq.cacheAnswer && this.#answersOn && !seq.predictAnswer) this.#noteAnswer(seq);
  }

  /**
   * The tokens that the prompt of the owner's next turn likely starts with (Sequence.predictAnswer),
   * as far as they are settled; `final` once the answer is complete. Their full blocks not yet cached
   * become answer work. Predictions are hints: blocks are cached under their own tokens, so one that
   * does not come true costs only the work done for it.
   */
  predictAnswer(id: string, ids: readonly number[], final: boolean): void {
    const owner = this.#predicted.get(id);
    if (!owner) return;
    if (final) this.#predicted.delete(id);
    const bs = this.#blockSize;
    const upTo = Math.floor(Math.min(ids.length, this.config.maxContext) / bs) * bs;
    const from = this.#blocks.lookup((p) => ids[p], upTo / bs).length * bs;
    if (from < upTo) this.#answerWork.set(owner, { from, upTo, ids });
    else this.#answerWork.delete(owner);
  }

  /** Ends a sequence wherever it is and frees its blocks, so the next plan can use them. */
  finish(seq: Sequence, reason: FinishReason): void {
    if (seq.status === "finished") return;
    this.#blocks.free(seq.blockTable);
    seq.numCommittedBlocks = 0;
    remove(this.#running, seq);
    remove(this.#waiting, seq);
    this.#byId.delete(seq.id);
    this.#arrivalOrder.delete(seq);
    this.#addedAt.delete(seq);
    // An aborted answer is not worth caching: its client is gone.
    if (reason === "abort") {
      this.#answerWork.delete(seq);
      this.#predicted.delete(seq.id);
    }
    seq.status = "finished";
    seq.finishReason = reason;
  }

  /** Aborts the request with this id, if it is still known; returns it. */
  abort(id: string): Sequence | undefined {
    const seq = this.#byId.get(id);
    if (seq) this.finish(seq, "abort");
    return seq;
  }

  // Step 1: every decode-ready running sequence gets one token, oldest first.
  #scheduleDecodes(draft: Draft): void {
    for (const seq of [...this.#running]) {
      if (draft.budget === 0) break;
      if (!seq.isDecodeReady) continue; // also skips sequences preempted earlier in this loop
      // Its input is the token the last step sampled, read on the GPU; after a step without it
      // (a decode pause) it waits until that token is read back.
      if (seq.pending > 0 && !this.#lastSampled.has(seq)) continue;
      if (!this.#makeRoom(seq, seq.numComputed + 1, draft)) {
        // It is the newest sequence left that could give way: it gives way itself.
        this.#preempt(seq);
        continue;
      }
      this.#blocks.cover(seq.blockTable, seq.numComputed + 1);
      this.#plan(draft, seq, 1, "decode");
    }
  }

  // Step 2a: running sequences in the middle of a (chunked or recomputing) prefill continue.
  #continuePrefills(draft: Draft): void {
    for (const seq of [...this.#running]) {
      if (draft.budget === 0 || draft.prefillBudget === 0) break;
      if (seq.status !== "running" || draft.planned.has(seq) || !seq.isPrefilling) continue;
      const wanted = Math.min(
        this.#chunkEnd(seq, seq.numComputed) - seq.numComputed,
        draft.budget,
        draft.prefillBudget,
        this.#maxChunk,
      );
      // Short of blocks, a smaller chunk still makes progress.
      this.#makeRoom(seq, seq.numComputed + wanted, draft);
      const chunk = Math.min(wanted, this.#blocks.capacity(seq.blockTable) - seq.numComputed);
      if (chunk <= 0) continue;
      this.#blocks.cover(seq.blockTable, seq.numComputed + chunk);
      this.#plan(draft, seq, chunk, "prefill");
    }
  }

  // Step 2b: waiting sequences are admitted in prefill order (#admissionOrder). Admission stops at
  // the first one that cannot start, so a large request is never starved by smaller ones behind it.
  #admitWaiting(draft: Draft): void {
    const room = () =>
      draft.budget > 0 && draft.prefillBudget > 0 && this.#running.length < this.config.maxSeqs &&
      this.#policyAdmits();
    // Checked before the order is formed too: it looks up every candidate's cached prefix.
    if (!room()) return;
    for (const seq of this.#admissionOrder()) {
      if (!room()) return;
      // A preempted sequence restarts only once all its tokens are known; one at its token limit
      // is about to be finished by the engine.
      if (seq.pending > 0 || seq.remainingTokens <= 0) return;
      const hit = this.#cachedPrefix(seq);
      const start = hit.length * this.#blockSize;
      const chunk = Math.min(
        this.#chunkEnd(seq, start) - start,
        draft.budget,
        draft.prefillBudget,
        this.#maxChunk,
      );
      if (!this.#blocks.canShareAndCover(hit, start + chunk)) return;
      this.#startAfter(seq, hit, start + chunk);
      if (seq.firstScheduledTime === null) {
        seq.firstScheduledTime = this.#now();
        seq.numCachedTokens = start;
        if (this.#blocks.prefixCaching) {
          this.#prefixCacheQueries += seq.totalLen;
          this.#prefixCacheHits += start;
        }
      }
      remove(this.#waiting, seq);
      this.#insertRunning(seq);
      this.#plan(draft, seq, chunk, "prefill");
    }
  }

  /** Notes the owner's answer blocks that are now full and known as work to compute as a prompt's. */
  #noteAnswer(seq: Sequence): void {
    const bs = this.#blockSize, prompt = seq.promptIds.length;
    const upTo = Math.floor(seq.knownLen / bs) * bs;
    const w = this.#answerWork.get(seq);
    // From the block holding the prompt's end: its cached copy holds answer tokens as an answer's.
    const from = w?.upTo ?? this.#answerDone.get(seq) ?? Math.floor(prompt / bs) * bs;
    if (upTo <= prompt || upTo <= from) return;
    if (w) w.upTo = upTo;
    else this.#answerWork.set(seq, { from, upTo });
  }

  // Step 3: answers' blocks as prompts' (AnswerCache), in the budget real work left, each from the
  // cached blocks before it, in whole blocks; never at the cost of a block another sequence holds.
  #planAnswers(draft: Draft, idleMs: number): void {
    let tokens = 0;
    for (const w of this.#answerWork.values()) tokens += w.upTo - w.from;
    // A step of decodes alone would run a second part for it: worth it for a replay's worth only. Not
    // as soon as an answer is done either: a client that sends its next turn at once would find that
    // step ahead of its own on the device (CPU machine, one user: 1.5 s against 0.7 s); but once the
    // engine has been idle a while, its user is reading.
    const idle = draft.items.length === 0 && idleMs >= ANSWER_IDLE_MS;
    if (draft.numPrefillTokens === 0 && tokens < ANSWER_BATCH_TOKENS && !idle) return;
    const bs = this.#blockSize;
    for (const [owner, w] of this.#answerWork) {
      const room = Math.floor(Math.min(draft.budget, draft.prefillBudget) / bs) * bs;
      // A step budget under one block leaves no room ever: drop the work rather than wait for it.
      if (room === 0 && draft.items.length === 0) this.#answerWork.clear();
      if (room === 0 || draft.items.length >= this.config.maxSeqs) return;
      const tokenAt = tokenSource(owner, w);
      const hit = this.#blocks.lookup(tokenAt, w.upTo / bs);
      const start = hit.length * bs, end = Math.min(w.upTo, start + room);
      if (start < end) {
        if (!this.#blocks.canShareAndCover(hit, end)) return;
        const ids = Array.from({ length: end }, (_, p) => tokenAt(p));
        const copy = new Sequence(`${owner.id}/answer`, ids, owner.params, owner.arrivalTime);
        this.#startAfter(copy, hit, end);
        copy.status = "running";
        this.#answerCopies.add(copy);
        this.#plan(draft, copy, end - start, "prefill", false);
      }
      this.#answerDone.set(owner, Math.max(end, start));
      if (end < w.upTo) {
        w.from = end;
        return;
      }
      this.#answerWork.delete(owner);
    }
  }

  /**
   * The waiting list in the order admission tries it: as queued (preempted sequences at the front,
   * then arrivals), or with prefill order "shortest" the preempted ones, then the others each time
   * the one with the fewest prompt tokens left past its cached prefix among those that arrived less
   * than SHORTEST_FIRST_WINDOW_MS after the oldest one left (ties: arrival).
   */
  *#admissionOrder(): Generator<Sequence> {
    const queued = [...this.#waiting];
    if (this.config.prefillOrder !== "shortest" || queued.length < 2) {
      yield* queued;
      return;
    }
    const fresh: Sequence[] = [];
    for (const seq of queued) {
      if (seq.firstScheduledTime !== null) yield seq;
      else fresh.push(seq);
    }
    const at = (seq: Sequence) => this.#addedAt.get(seq)!;
    const left = new Map<Sequence, number>();
    // The ones not yet yielded of fresh[0, next), in arrival order as fresh is: window[0] is the oldest
    // left, and a strict minimum below breaks ties by arrival.
    const window: Sequence[] = [];
    for (let next = 0; next < fresh.length || window.length > 0;) {
      const oldest = window[0] ?? fresh[next];
      while (next < fresh.length && at(fresh[next]) - at(oldest) < SHORTEST_FIRST_WINDOW_MS) {
        const seq = fresh[next++];
        left.set(seq, this.#waitingWork(seq));
        window.push(seq);
      }
      let best = 0;
      for (let i = 1; i < window.length; i++) if (left.get(window[i])! < left.get(window[best])!) best = i;
      yield window.splice(best, 1)[0];
    }
  }

  /** Tokens a waiting sequence has to compute past its cached prefix. */
  #waitingWork(seq: Sequence): number {
    return seq.totalLen - this.#cachedPrefix(seq).length * this.#blockSize;
  }

  /** The prompt work left, one sequence at a time: running prefills, then waiting sequences. */
  *#prefillWork(): Generator<number> {
    for (const seq of this.#running) if (seq.isPrefilling) yield seq.totalLen - seq.numComputed;
    for (const seq of this.#waiting) yield this.#waitingWork(seq);
  }

  /** The cached prefix a waiting sequence can reuse, short of its last token (whose logits the step needs). */
  #cachedPrefix(seq: Sequence): number[] {
    return this.#blocks.lookup(
      (p) => this.#keyAt(seq, p),
      Math.floor((seq.totalLen - 1) / this.#blockSize),
      seq,
    );
  }

  /**
   * The step's prefill budget: capturedPrefillTokens while all the prefill work left (running
   * prefills, and waiting sequences past their cached prefixes) fits in PREFILL_BACKLOG_STEPS steps
   * of it and each sequence's in PREFILL_SEQUENCE_STEPS, else unlimited; at most burstPrefillTokens
   * while no prefill is in flight.
   */
  #prefillCap(prefillInFlight: boolean): number {
    const cap = this.config.capturedPrefillTokens ?? 0, burst = this.config.burstPrefillTokens ?? 0;
    const backlogCap = this.#backlogCap(cap);
    return !prefillInFlight && burst > cap ? Math.min(backlogCap, burst) : backlogCap;
  }

  #backlogCap(cap: number): number {
    if (cap <= 0) return Infinity;
    const limit = PREFILL_BACKLOG_STEPS * cap, seqLimit = PREFILL_SEQUENCE_STEPS * cap;
    let left = 0;
    for (const n of this.#prefillWork()) {
      left += n;
      if (n > seqLimit || left > limit) return Infinity;
    }
    return cap;
  }

  /**
   * Whether this step goes without decodes (decodePauseSteps): fewer than that many steps in a row
   * have, and the prompt work waiting (running prefills, and waiting sequences past their cached
   * prefixes) is more than one step's budget.
   */
  #pauseDecodes(): boolean {
    const steps = this.config.decodePauseSteps ?? 0;
    if (this.#decodePauses >= steps) return false;
    let left = this.config.maxBatchTokens;
    for (const n of this.#prefillWork()) if ((left -= n) < 0) return true;
    return false;
  }

  #policyAdmits(): boolean {
    switch (this.config.policy) {
      case "continuous":
        return true;
      case "static":
        // The batch stays open while it is still prefilling, so chunking does not shrink it.
        return this.#running.every((s) => s.isPrefilling);
      case "sequential":
        return this.#running.length === 0;
    }
  }

  /** Gives seq's empty table the cached blocks `hit`, then fresh ones up to `end`; it computes from the hit's end. */
  #startAfter(seq: Sequence, hit: readonly number[], end: number): void {
    this.#blocks.share(seq.blockTable, hit);
    this.#blocks.cover(seq.blockTable, end);
    seq.numCommittedBlocks = hit.length;
    seq.numComputed = hit.length * this.#blockSize;
  }

  /**
   * Preempts the newest running sequences that are newer than `seq` and not in this step until
   * the pool can hold seq's positions [0, numTokens). Returns whether it can.
   */
  #makeRoom(seq: Sequence, numTokens: number, draft: Draft): boolean {
    while (!this.#blocks.canCover(seq.blockTable, numTokens)) {
      const victim = this.#newestUnplanned(draft);
      if (!victim || this.#isOlder(victim, seq) || victim === seq) return false;
      this.#preempt(victim);
    }
    return true;
  }

  #newestUnplanned(draft: Draft): Sequence | undefined {
    for (let i = this.#running.length - 1; i >= 0; i--) {
      if (!draft.planned.has(this.#running[i])) return this.#running[i];
    }
    return undefined;
  }

  /** Frees its blocks and puts it at the front of the queue; it will recompute its tokens. */
  #preempt(seq: Sequence): void {
    this.#blocks.free(seq.blockTable);
    seq.numCommittedBlocks = 0;
    seq.numComputed = 0;
    seq.status = "waiting";
    seq.numPreemptions += 1;
    this.#preemptionsTotal += 1;
    remove(this.#running, seq);
    // Victims go newest first, so the front of the queue stays oldest first.
    this.#waiting.unshift(seq);
    this.#preemptedSincePlan.push(seq);
  }

  /** Commits its blocks whose positions all have KV dispatched and whose tokens are all known. */
  #commitFullBlocks(seq: Sequence): void {
    if (!this.#blocks.prefixCaching) return;
    const bs = this.#blockSize;
    const full = Math.floor(Math.min(seq.numComputed, seq.knownLen) / bs);
    for (let i = seq.numCommittedBlocks; i < full; i++) {
      const tokens = new Array<number>(bs);
      for (let j = 0; j < bs; j++) tokens[j] = this.#keyAt(seq, i * bs + j);
      this.#blocks.commit(seq.blockTable, i, tokens);
    }
    seq.numCommittedBlocks = Math.max(seq.numCommittedBlocks, full);
  }

  /** Where a chunk from `start` may end: the sequence's end, or its prompt's (splitAtPrompt). */
  #chunkEnd(seq: Sequence, start: number): number {
    const prompt = seq.promptIds.length;
    return this.#splitAtPrompt && start < prompt ? prompt : seq.totalLen;
  }

  /** Position p's token as a cached block's content names it: an output's as ~id with splitAtPrompt. */
  #keyAt(seq: Sequence, p: number): number {
    const id = seq.tokenAt(p);
    return this.#splitAtPrompt && p >= seq.promptIds.length ? ~id : id;
  }

  #plan(
    draft: Draft,
    seq: Sequence,
    numTokens: number,
    kind: "decode" | "prefill",
    sample = seq.numComputed + numTokens === seq.totalLen,
  ): void {
    const start = seq.numComputed;
    draft.items.push({ seq, start, numTokens, sample });
    draft.planned.add(seq);
    draft.budget -= numTokens;
    if (kind === "decode") draft.numDecodeTokens += numTokens;
    else {
      draft.numPrefillTokens += numTokens;
      draft.prefillBudget -= numTokens;
    }
  }

  #insertRunning(seq: Sequence): void {
    seq.status = "running";
    let i = this.#running.length;
    while (i > 0 && this.#isOlder(seq, this.#running[i - 1])) i--;
    this.#running.splice(i, 0, seq);
  }

  #isOlder(a: Sequence, b: Sequence): boolean {
    return this.#arrivalOrder.get(a)! < this.#arrivalOrder.get(b)!;
  }
}

/** Whether seq's prompt holds owner's tokens over the answer work's positions. */
function resends(seq: Sequence, owner: Sequence, w: AnswerWork): boolean {
  if (seq.promptIds.length < w.upTo) return false;
  const tokenAt = tokenSource(owner, w);
  for (let p = w.from; p < w.upTo; p++) if (seq.promptIds[p] !== tokenAt(p)) return false;
  return true;
}

/** The tokens an answer's work computes: its predicted ones, or its owner's own. */
function tokenSource(owner: Sequence, w: AnswerWork): (p: number) => number {
  const ids = w.ids;
  return ids ? (p) => ids[p] : (p) => owner.tokenAt(p);
}

function remove<T>(list: T[], item: T): void {
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
}
