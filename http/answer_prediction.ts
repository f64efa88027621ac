// A chat's next prompt, predicted while its answer is generated (EngineClient.predictAnswer): the
// conversation rendered and tokenized again with the answer's text so far, as the client will send it
// back. The engine caches those tokens' KV as a prompt's, so the next turn reuses them; its sampled ids
// would not do, since the text may split into other tokens when it comes back. Until the answer is
// done only the tokens that two predictions in a row agree on are sent: the answer's last word may
// still change how its end splits, and the turn's closing marks follow it.
import type { EngineClient, GenerateEvent } from "../engine/protocol.ts";

/**
 * Answer tokens between predictions. Each costs a render and tokenization of the whole conversation
 * on the HTTP thread; fewer tokens between them leave less of the answer unsettled when the next turn
 * comes (1B chat workload, H100: 8 beat 16 and 4, docs/BENCHMARKS.md session 29).
 */
export const PREDICT_EVERY_TOKENS = 8;

/**
 * Share of the HTTP thread's time that predictions before an answer's end may take (a long
 * conversation's render costs ~1 ms per 1600 tokens): past it they are skipped until time has passed.
 */
export const PREDICT_TIME_SHARE = 0.25;
const PREDICT_CREDIT_MAX_MS = 50;
let credit = PREDICT_CREDIT_MAX_MS;
let creditAt = performance.now();

function mayPredict(): boolean {
  const now = performance.now();
  credit = Math.min(PREDICT_CREDIT_MAX_MS, credit + (now - creditAt) * PREDICT_TIME_SHARE);
  creditAt = now;
  return credit > 0;
}

export class AnswerPredictor {
  #text = "";
  #tokens = 0;
  #predictedAt = 0;
  #previous: readonly number[];
  #sent = 0;

  /** `render`: the next prompt's tokens with this answer text, up to its end; it may throw. */
  constructor(
    readonly engine: EngineClient,
    readonly id: string,
    promptIds: readonly number[],
    readonly render: (answer: string) => number[],
  ) {
    this.#previous = promptIds;
  }

  observe(ev: GenerateEvent): void {
    if (ev.type === "delta") {
      this.#text += ev.text;
      this.#tokens += ev.tokenIds.length;
      if (this.#tokens - this.#predictedAt < PREDICT_EVERY_TOKENS) return;
      this.#predictedAt = this.#tokens;
      this.#predict(false);
    } else if (ev.type === "done" && ev.finishReason !== "abort") {
      this.#predict(true);
    }
  }

  #predict(final: boolean): void {
    // The final one always goes: it is what an idle engine caches while the user reads.
    if (!final && !mayPredict()) return;
    const t0 = performance.now();
    let ids: number[];
    try {
      ids = this.render(this.#text);
      credit -= performance.now() - t0;
    } catch {
      // A template that cannot render the answer back: nothing to predict, and the engine lets go.
      if (final) this.engine.predictAnswer(this.id, [], true);
      return;
    }
    const settled = final ? ids.length : commonPrefix(ids, this.#previous);
    this.#previous = ids;
    if (!final && settled <= this.#sent) return;
    this.#sent = settled;
    this.engine.predictAnswer(this.id, ids.slice(0, settled), final);
  }
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
