// Logit edits: what logit_bias and the three penalties change in a sampled row, as a short list of
// (token, change) entries instead of a pass over the vocabulary. The GPU's edit kernel
// (gpu_sampler.ts) applies them in place before sampling; applyEdits is the same rule on the CPU.
//
// A row's entries, EDIT_FLOATS floats each:
// - header `[row, -2, repetition, 1 / repetition, frequency, presence, pendingSrc, entries]`, first:
//   the row (its index among the step's sampled rows), its settings and how many entries follow.
//   `pendingSrc` is the row of the previous step's ids that holds the sequence's last token while it
//   is still on the GPU (pipelining), else -1.
// - token `[0, id, bias, count, inPrompt, back, 0, 0]`: a token the bias or a penalty changes, `count`
//   its occurrences in the output so far, `back` how many entries of the row precede it.
// - pending `[0, -1, 0, 0, 0, back, 0, 0]`, last, with a pendingSrc: the pending token, edited as a
//   token of count 1 unless a token entry of the row is its own (which then counts it once more).
// So a token edits the logits alike whether it is known on the CPU or still pending on the GPU.

import type { SamplingParams } from "./protocol.ts";

/** Floats per entry. */
export const EDIT_FLOATS = 8;
/** Second float of a row's header and of its pending-token entry (a token entry's is its id). */
export const EDIT_HEADER = -2, EDIT_PENDING = -1;

export function hasPenalties(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.frequencyPenalty !== 0 || p.presencePenalty !== 0;
}

/** Whether the request's logits change by token before sampling: logit_bias or a penalty. */
export function editsLogits(params: SamplingParams): boolean {
  return Object.keys(params.logitBias).length > 0 || hasPenalties(params);
}

/**
 * One sequence's token entries, kept between steps: the bias and prompt part is built once and each
 * output token read back is folded in once, so a step copies the entries instead of rebuilding them
 * (a repetition penalty over a long prompt has thousands). Output tokens only ever append.
 */
export class LogitEdits {
  private entries = new Float32Array(0);
  private size = 0;
  private readonly index = new Map<number, number>();
  private counted = 0;
  private readonly penalised: boolean;

  /** `promptIds` are read here, and only with a repetition penalty (repeats mark one entry). */
  constructor(
    private readonly params: SamplingParams,
    promptIds: ArrayLike<number>,
    private readonly vocab: number,
  ) {
    this.penalised = hasPenalties(params);
    for (const [key, bias] of Object.entries(params.logitBias)) {
      const id = Number(key);
      if (Number.isInteger(id) && id >= 0 && id < vocab) this.entry(id)[2] += bias;
    }
    if (params.repetitionPenalty !== 1) {
      for (let i = 0, n = promptIds.length; i < n; i++) {
        const id = promptIds[i];
        if (id >= 0 && id < vocab) this.entry(id)[4] = 1;
      }
    }
  }

  /** Floats the row takes in a step (see write). */
  floats(outputIds: ArrayLike<number>, pendingSrc: number): number {
    this.sync(outputIds);
    return (1 + this.size + (this.pending(pendingSrc) ? 1 : 0)) * EDIT_FLOATS;
  }

  /** Writes the row's entries at `out[at]`; returns the offset after them. */
  write(
    out: Float32Array,
    at: number,
    row: number,
    outputIds: ArrayLike<number>,
    pendingSrc: number,
  ): number {
    this.sync(outputIds);
    const p = this.params, pending = this.pending(pendingSrc);
    out.set([row, EDIT_HEADER, p.repetitionPenalty, 1 / p.repetitionPenalty], at);
    out.set(
      [p.frequencyPenalty, p.presencePenalty, pending ? pendingSrc : -1, this.size + (pending ? 1 : 0)],
      at + 4,
    );
    at += EDIT_FLOATS;
    out.set(this.entries.subarray(0, this.size * EDIT_FLOATS), at);
    at += this.size * EDIT_FLOATS;
    if (pending) {
      out.fill(0, at, at + EDIT_FLOATS);
      out[at + 1] = EDIT_PENDING;
      out[at + 5] = this.size + 1;
      at += EDIT_FLOATS;
    }
    return at;
  }

  /** The row's entries in a new array (the CPU sampler's applyEdits: row 0, nothing pending). */
  rowEdits(outputIds: ArrayLike<number>, row = 0, pendingSrc = -1): Float32Array {
    const out = new Float32Array(this.floats(outputIds, pendingSrc));
    this.write(out, 0, row, outputIds, pendingSrc);
    return out;
  }

  /** Penalties count a pending token; a bias alone does not need it. */
  private pending(pendingSrc: number): boolean {
    return this.penalised && pendingSrc >= 0;
  }

  private sync(outputIds: ArrayLike<number>): void {
    if (!this.penalised) return;
    for (; this.counted < outputIds.length; this.counted++) {
      const t = outputIds[this.counted];
      if (t >= 0 && t < this.vocab) this.entry(t)[3]++;
    }
  }

  /** The entry of token `id` (a view of its floats), added if new. */
  private entry(id: number): Float32Array {
    let i = this.index.get(id);
    if (i === undefined) {
      if ((this.size + 1) * EDIT_FLOATS > this.entries.length) {
        const grown = new Float32Array(Math.max(64, 2 * this.entries.length));
        grown.set(this.entries);
        this.entries = grown;
      }
      i = this.size++;
      this.index.set(id, i);
      const e = this.entries.subarray(i * EDIT_FLOATS, (i + 1) * EDIT_FLOATS);
      e[1] = id;
      e[5] = i + 1;
    }
    return this.entries.subarray(i * EDIT_FLOATS, (i + 1) * EDIT_FLOATS);
  }
}

/** One row's entries as a new array: LogitEdits built for one use (tests, the CPU sampler). */
export function logitEdits(
  row: number,
  params: SamplingParams,
  promptIds: ArrayLike<number>,
  outputIds: ArrayLike<number>,
  vocab: number,
  pendingSrc = -1,
): Float32Array {
  return new LogitEdits(params, promptIds, vocab).rowEdits(outputIds, row, pendingSrc);
}

/** Rows' entries one after another. */
export function concatEdits(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Entries applied to one row's logits in place, as the GPU's edit kernel does: each operation rounded
 * to f32. `pending`: the token of the row's pending entry, if it has one.
 */
export function applyEdits(row: Float32Array, edits: Float32Array, pending = -1): void {
  const f = Math.fround, E = EDIT_FLOATS;
  let rep = 1, invRep = 1, freq = 0, pres = 0;
  const own = new Set<number>();
  for (let o = 0; o < edits.length; o += E) {
    if (edits[o + 1] === EDIT_HEADER) {
      [rep, invRep, freq, pres] = edits.subarray(o + 2, o + 6);
      own.clear();
      continue;
    }
    const isPending = edits[o + 1] === EDIT_PENDING;
    if (isPending && (pending < 0 || pending >= row.length || own.has(pending))) continue;
    const id = isPending ? pending : edits[o + 1];
    own.add(id);
    const n = edits[o + 3] + (id === pending ? 1 : 0);
    let y = f(row[id] + edits[o + 2]);
    if (rep !== 1 && (edits[o + 4] !== 0 || n > 0)) y = f(y > 0 ? y * invRep : y * rep);
    if (n > 0) y = f(f(y - f(n * freq)) - pres);
    row[id] = y;
  }
}

/** The entries of sampled rows [r0, r1), renumbered from r0 (a step cut into parts). */
export function sliceEdits(edits: Float32Array, r0: number, r1: number): Float32Array {
  const parts: Float32Array[] = [];
  for (let o = 0; o < edits.length;) {
    const end = o + (1 + edits[o + 7]) * EDIT_FLOATS, r = edits[o];
    if (r >= r0 && r < r1) {
      const group = edits.slice(o, end);
      group[0] = r - r0;
      parts.push(group);
    }
    o = end;
  }
  return concatEdits(parts);
}
