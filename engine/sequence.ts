// One request's state as the scheduler sees it: counts, not token values.
//
// Token accounting under pipelining (two steps in flight):
//   knownLen  = prompt + outputs read back to the CPU
//   totalLen  = knownLen + pending, where pending tokens were sampled by submitted steps but still
//               live on the GPU (normally 0 or 1)
//   numComputed = positions whose KV is written, or will be by a submitted step
// While decoding, numComputed == totalLen - 1: every token but the last has KV, and the last is
// the next step's input. Its value may be pending: the runner then feeds the token the previous
// step sampled for this sequence (position >= knownLen at planning time).

import type { FinishReason, SamplingParams } from "./protocol.ts";
import { needsCpuLogits } from "./sampler.ts";
import { hasPenalties, LogitEdits } from "./logit_edits.ts";

export { needsCpuLogits };

export type SequenceStatus = "waiting" | "running" | "finished";

export class Sequence {
  readonly id: string;
  readonly promptIds: readonly number[];
  /** Tokens read back to the CPU, in order. */
  readonly outputIds: number[] = [];
  readonly params: SamplingParams;
  status: SequenceStatus = "waiting";
  blockTable: number[] = [];
  /** Leading blocks of blockTable committed to the prefix cache (or shared from it). */
  numCommittedBlocks = 0;
  numComputed = 0;
  /**
   * Prompt tokens whose KV came from the prefix cache when it was first scheduled (OpenAI's
   * usage.prompt_tokens_details.cached_tokens); a recompute after preemption does not change it.
   */
  numCachedTokens = 0;
  pending = 0;
  finishReason: FinishReason | null = null;
  /** Its logits row is read back and sampled on the CPU (logprobs, a JSON schema). */
  needsCpuLogits: boolean;
  /**
   * Most tokens it may have pending when it decodes: none when it is sampled on the CPU (which needs
   * every token so far), one with penalties (the GPU counts only the token the last step sampled,
   * engine/logit_edits.ts), else no limit.
   */
  readonly maxPending: number;
  numPreemptions = 0;
  /**
   * Its answer's full blocks are to be computed again as prompt KV and cached, for a later turn that
   * resends them (AnswerCache; the scheduler does it only where an answer's KV differs from a prompt's).
   */
  cacheAnswer = false;
  /**
   * With cacheAnswer: the tokens to compute come from predictions of the next turn's prompt
   * (Scheduler.predictAnswer: the conversation rendered and tokenized again with the answer's text),
   * not from its sampled ids, which a later prompt's tokenizer may split differently.
   */
  predictAnswer = false;
  // Milliseconds on the scheduler's clock, for queue time, TTFT and inter-token latency.
  readonly arrivalTime: number;
  firstScheduledTime: number | null = null;
  firstTokenTime: number | null = null;
  lastTokenTime: number | null = null;

  constructor(
    id: string,
    promptIds: readonly number[],
    params: SamplingParams,
    arrivalTime = performance.now(),
  ) {
    this.id = id;
    this.promptIds = promptIds;
    this.params = params;
    this.arrivalTime = arrivalTime;
    this.needsCpuLogits = needsCpuLogits(params);
    this.maxPending = this.needsCpuLogits ? 0 : hasPenalties(params) ? 1 : Infinity;
  }

  #logitEdits: LogitEdits | null = null;
  /** Its logit_bias and penalty entries (for the GPU's edit kernel), kept up to date between steps. */
  logitEdits(vocab: number): LogitEdits {
    return this.#logitEdits ??= new LogitEdits(this.params, this.promptIds, vocab);
  }

  get knownLen(): number {
    return this.promptIds.length + this.outputIds.length;
  }

  get totalLen(): number {
    return this.knownLen + this.pending;
  }

  /** The token at position p, which must be known (p < knownLen). */
  tokenAt(p: number): number {
    const prompt = this.promptIds.length;
    return p < prompt ? this.promptIds[p] : this.outputIds[p - prompt];
  }

  /** Tokens it may still sample, counting those already in flight. */
  get remainingTokens(): number {
    return this.params.maxTokens - this.outputIds.length - this.pending;
  }

  /**
   * More than its last token lacks KV: it needs a prefill chunk, not a decode. That includes the
   * prompt's own last token (its first sample is a prefill) and recomputation after preemption.
   */
  get isPrefilling(): boolean {
    return this.numComputed < this.promptIds.length || this.numComputed < this.totalLen - 1;
  }

  /** Can take one decode token now: only the last token lacks KV and nothing blocks sampling. */
  get isDecodeReady(): boolean {
    return this.status === "running" && !this.isPrefilling && this.numComputed === this.totalLen - 1 &&
      this.remainingTokens > 0 && this.pending <= this.maxPending;
  }
}
