// SentencePiece-style (BPE with scores) tokenizer as stored in GGUF files, tokenizer.ggml.model "llama".
// Behaviour follows llama.cpp's SPM tokenizer, the reference implementation for GGUF files.

import type { Tokenizer } from "../model/types.ts";

/** tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
export const TokenType = {
  Normal: 1,
  Unknown: 2,
  Control: 3,
  UserDefined: 4,
  Unused: 5,
  Byte: 6,
} as const;

const SPACE_MARK = "\u2581";
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

const encoder = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF in the text instead of silently dropping it.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

// ---------------------------------------------------------------------------------------------------
// Special-token splitting, shared with the BPE tokenizer

/** Finds special-token strings in text, longest match first, so templates can embed them literally. */
export class SpecialTokenMatcher {
  private readonly byFirst = new Map<string, { text: string; id: number }[]>();

  constructor(specials: Iterable<{ text: string; id: number }>) {
    for (const s of specials) {
      if (s.text.length === 0) continue;
      const list = this.byFirst.get(s.text[0]) ?? [];
      if (!list.some((x) => x.text === s.text)) list.push(s);
      this.byFirst.set(s.text[0], list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.text.length - a.text.length);
  }

  get empty(): boolean {
    return this.byFirst.size === 0;
  }

  /** Text fragments (strings) and special token ids (numbers), in order. */
  split(text: string): (string | number)[] {
    if (this.empty) return [text];
    const out: (string | number)[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const cands = this.byFirst.get(text[i]);
      if (!cands) continue;
      const hit = cands.find((c) => text.startsWith(c.text, i));
      if (!hit) continue;
      if (i > start) out.push(text.slice(start, i));
      out.push(hit.id);
      start = i + hit.text.length;
      i = start - 1;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

/** Max-heap of candidate merges: highest score first, then leftmost. */
class BigramHeap {
  private readonly items: { left: number; right: number; score: number; len: number }[] = [];

  get size(): number {
    return this.items.length;
  }

  private before(a: number, b: number): boolean {
    const x = this.items[a], y = this.items[b];
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }

  private swap(a: number, b: number) {
    const t = this.items[a];
    this.items[a] = this.items[b];
    this.items[b] = t;
  }

  push(item: { left: number; right: number; score: number; len: number }) {
    const h = this.items;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { left: number; right: number; score: number; len: number } {
    const h = this.items;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let best = i;
        if (l < h.length && this.before(l, best)) best = l;
        if (r < h.length && this.before(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

export interface LlamaSpmOptions {
  tokens: string[];
  /** Merge priority per token (higher merges first); default 0. */
  scores?: ArrayLike<number>;
  /** TokenType per token; when absent every token is Normal except "<0xAB>" byte pieces. */
  tokenTypes?: ArrayLike<number>;
  bosTokenId: number | null;
  eosTokenIds: number[];
  unkTokenId: number | null;
  /** Prepend BOS when encode(..., addSpecial = true); default true. */
  addBos?: boolean;
  /** Append EOS when encode(..., addSpecial = true); default false. */
  addEos?: boolean;
  /** SentencePiece's dummy prefix: a space before the text (and after each special token); default true. */
  addSpacePrefix?: boolean;
}

export class LlamaSpmTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  readonly unkTokenId: number | null;
  private readonly pieces: string[];
  private readonly scores: Float64Array;
  private readonly types: Uint8Array;
  /** Pieces usable as merge results and as final symbols (normal and user-defined tokens). */
  private readonly pieceToId = new Map<string, number>();
  private readonly byteToId = new Int32Array(256).fill(-1);
  private readonly specials: SpecialTokenMatcher;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private readonly addSpacePrefix: boolean;
  private readonly pieceBytes: (Uint8Array | undefined)[];

  constructor(opts: LlamaSpmOptions) {
    const n = opts.tokens.length;
    this.vocabSize = n;
    this.pieces = opts.tokens;
    this.bosTokenId = opts.bosTokenId;
    this.eosTokenIds = [...opts.eosTokenIds];
    this.unkTokenId = opts.unkTokenId;
    this.addBos = opts.addBos ?? true;
    this.addEos = opts.addEos ?? false;
    this.addSpacePrefix = opts.addSpacePrefix ?? true;
    this.scores = new Float64Array(n);
    this.types = new Uint8Array(n);
    this.pieceBytes = new Array(n);
    const specials: { text: string; id: number }[] = [];
    for (let id = 0; id < n; id++) {
      const piece = opts.tokens[id];
      this.scores[id] = opts.scores?.[id] ?? 0;
      const byteMatch = BYTE_PIECE.exec(piece);
      const type = opts.tokenTypes?.[id] ?? (byteMatch ? TokenType.Byte : TokenType.Normal);
      this.types[id] = type;
      if (type === TokenType.Byte) {
        if (byteMatch) {
          const b = parseInt(byteMatch[1], 16);
          if (this.byteToId[b] < 0) this.byteToId[b] = id;
        }
      } else if (type === TokenType.Normal || type === TokenType.UserDefined) {
        if (!this.pieceToId.has(piece)) this.pieceToId.set(piece, id);
      }
      if (type === TokenType.Control || type === TokenType.UserDefined || type === TokenType.Unknown) {
        specials.push({ text: piece, id });
      }
    }
    this.specials = new SpecialTokenMatcher(specials);
  }

  encode(text: string, addSpecial: boolean): number[] {
    const out: number[] = [];
    if (addSpecial && this.addBos && this.bosTokenId !== null) out.push(this.bosTokenId);
    // Like llama.cpp: the dummy prefix goes before the text and after every special token.
    let prevSpecial = true;
    for (const part of this.specials.split(text)) {
      if (typeof part === "number") {
        out.push(part);
        prevSpecial = true;
        continue;
      }
      const s = this.addSpacePrefix && prevSpecial ? " " + part : part;
      this.encodeFragment(s.replaceAll(" ", SPACE_MARK), out);
      prevSpecial = false;
    }
    if (addSpecial && this.addEos && this.eosTokenIds.length > 0) out.push(this.eosTokenIds[0]);
    return out;
  }

  /** Greedy highest-score merging over a linked list of symbols, driven by a heap: O(n log n). */
  private encodeFragment(text: string, out: number[]) {
    const sym = Array.from(text);
    const n = sym.length;
    if (n === 0) return;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new BigramHeap();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const merged = sym[left] + sym[right];
      const id = this.pieceToId.get(merged);
      if (id === undefined) return;
      heap.push({ left, right, score: this.scores[id], len: merged.length });
    };
    for (let i = 0; i + 1 < n; i++) tryAdd(i, i + 1);

    while (heap.size > 0) {
      const b = heap.pop();
      // Symbols only grow, so an unchanged total length means the entry is not stale.
      if (next[b.left] !== b.right || sym[b.left].length + sym[b.right].length !== b.len) continue;
      sym[b.left] += sym[b.right];
      sym[b.right] = "";
      const after = next[b.right];
      next[b.left] = after;
      if (after >= 0) prev[after] = b.left;
      next[b.right] = -2; // dead: never adjacent to anything again
      tryAdd(prev[b.left], b.left);
      tryAdd(b.left, after);
    }

    for (let i = 0; i >= 0; i = next[i]) {
      const id = this.pieceToId.get(sym[i]);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // Unmerged symbols are single characters: fall back to their UTF-8 bytes.
      const bytes = encoder.encode(sym[i]);
      if (bytes.every((b) => this.byteToId[b] >= 0)) {
        for (const b of bytes) out.push(this.byteToId[b]);
      } else if (this.unkTokenId !== null) {
        out.push(this.unkTokenId);
      }
    }
  }

  private bytesOf(id: number): Uint8Array {
    let b = this.pieceBytes[id];
    if (b === undefined) {
      const type = this.types[id];
      const piece = this.pieces[id];
      const m = type === TokenType.Byte ? BYTE_PIECE.exec(piece) : null;
      if (m) b = Uint8Array.of(parseInt(m[1], 16));
      else if (type === TokenType.Control) b = encoder.encode(piece);
      else b = encoder.encode(piece.replaceAll(SPACE_MARK, " "));
      this.pieceBytes[id] = b;
    }
    return b;
  }

  decode(ids: number[], skipSpecial = false): string {
    const chunks: Uint8Array[] = [];
    let total = 0;
    let first = true;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) continue;
      const type = this.types[id];
      if (skipSpecial && (type === TokenType.Control || type === TokenType.Unknown)) continue;
      let b = this.bytesOf(id);
      // Undo the dummy prefix: the first piece of a sequence carries the space encode() added.
      if (
        first && this.addSpacePrefix && b[0] === 0x20 &&
        (type === TokenType.Normal || type === TokenType.UserDefined)
      ) {
        b = b.subarray(1);
      }
      first = false;
      chunks.push(b);
      total += b.length;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return decoder.decode(all);
  }

  tokenText(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return "";
    return decoder.decode(this.bytesOf(id));
  }
}
