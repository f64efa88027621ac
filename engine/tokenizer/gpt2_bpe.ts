// Byte-level BPE tokenizer as stored in GGUF files, tokenizer.ggml.model "gpt2" (GPT-2, Llama 3, ...).
// Text is split by a pre-tokenizer regex, each piece's UTF-8 bytes are mapped to printable characters
// (GPT-2's bytes_to_unicode), then merged by rank.

import type { Tokenizer } from "../model/types.ts";
import { SpecialTokenMatcher, TokenType } from "./llama_spm.ts";

// Pre-tokenizer regexes by tokenizer.ggml.pre. Case-insensitive contractions are spelled out because
// the (?i:...) group modifier is too new to rely on.
const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const LLAMA3_PATTERN =
  /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

// Qwen2: Llama 3's, but digits one at a time.
const QWEN2_PATTERN =
  /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

const PRE_TOKENIZERS: Record<string, RegExp> = {
  default: GPT2_PATTERN,
  gpt2: GPT2_PATTERN,
  "llama-bpe": LLAMA3_PATTERN,
  llama3: LLAMA3_PATTERN,
  "llama-v3": LLAMA3_PATTERN,
  qwen2: QWEN2_PATTERN,
};

export function gpt2PreTokenizerSupported(pre: string): boolean {
  return Object.hasOwn(PRE_TOKENIZERS, pre);
}

/** GPT-2's reversible byte -> printable character map (bytes_to_unicode). */
function byteToUnicode(): string[] {
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return map;
}

const BYTE_TO_CHAR = byteToUnicode();
const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const CACHE_LIMIT = 20000;

export interface Gpt2BpeOptions {
  tokens: string[];
  /** "left right" pairs in priority order (first merges first). */
  merges: string[];
  tokenTypes?: ArrayLike<number>;
  bosTokenId: number | null;
  eosTokenIds: number[];
  addBos?: boolean;
  addEos?: boolean;
  /** tokenizer.ggml.pre; default "default" (the GPT-2 regex). */
  pre?: string;
}

export class Gpt2BpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  private readonly tokens: string[];
  private readonly types: Uint8Array;
  private readonly tokenToId = new Map<string, number>();
  private readonly ranks = new Map<string, number>();
  private readonly specials: SpecialTokenMatcher;
  private readonly pattern: RegExp;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private readonly cache = new Map<string, number[]>();

  constructor(opts: Gpt2BpeOptions) {
    const pre = opts.pre ?? "default";
    if (!gpt2PreTokenizerSupported(pre)) throw new Error(`unsupported BPE pre-tokenizer "${pre}"`);
    this.pattern = PRE_TOKENIZERS[pre];
    this.tokens = opts.tokens;
    this.vocabSize = opts.tokens.length;
    this.bosTokenId = opts.bosTokenId;
    this.eosTokenIds = [...opts.eosTokenIds];
    this.addBos = opts.addBos ?? false;
    this.addEos = opts.addEos ?? false;
    this.types = new Uint8Array(this.vocabSize);
    const specials: { text: string; id: number }[] = [];
    opts.tokens.forEach((t, id) => {
      const type = opts.tokenTypes?.[id] ?? TokenType.Normal;
      this.types[id] = type;
      if (type === TokenType.Control || type === TokenType.UserDefined) specials.push({ text: t, id });
      else if (!this.tokenToId.has(t)) this.tokenToId.set(t, id);
    });
    opts.merges.forEach((m, rank) => {
      if (!this.ranks.has(m)) this.ranks.set(m, rank);
    });
    this.specials = new SpecialTokenMatcher(specials);
  }

  encode(text: string, addSpecial: boolean): number[] {
    const out: number[] = [];
    if (addSpecial && this.addBos && this.bosTokenId !== null) out.push(this.bosTokenId);
    for (const part of this.specials.split(text)) {
      if (typeof part === "number") {
        out.push(part);
        continue;
      }
      for (const m of part.matchAll(this.pattern)) this.encodeWord(m[0], out);
    }
    if (addSpecial && this.addEos && this.eosTokenIds.length > 0) out.push(this.eosTokenIds[0]);
    return out;
  }

  private encodeWord(word: string, out: number[]) {
    const cached = this.cache.get(word);
    if (cached) {
      out.push(...cached);
      return;
    }
    let syms = Array.from(encoder.encode(word), (b) => BYTE_TO_CHAR[b]);
    // Merge the lowest-rank pair everywhere it occurs, until no pair has a rank (GPT-2's bpe()).
    while (syms.length > 1) {
      let best = Infinity;
      let pair = "";
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = syms[i] + " " + syms[i + 1];
        const r = this.ranks.get(key);
        if (r !== undefined && r < best) {
          best = r;
          pair = key;
        }
      }
      if (best === Infinity) break;
      const merged: string[] = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] + " " + syms[i + 1] === pair) {
          merged.push(syms[i] + syms[i + 1]);
          i++;
        } else {
          merged.push(syms[i]);
        }
      }
      syms = merged;
    }
    const ids: number[] = [];
    for (const s of syms) {
      const id = this.tokenToId.get(s);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      // A vocabulary without all 256 byte symbols is broken; keep whatever single bytes exist.
      for (const ch of s) {
        const b = this.tokenToId.get(ch);
        if (b !== undefined) ids.push(b);
      }
    }
    if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
    this.cache.set(word, ids);
    out.push(...ids);
  }

  private bytesOf(id: number): number[] {
    const t = this.tokens[id];
    const type = this.types[id];
    // Control and user-defined tokens are stored as plain text, not byte-mapped.
    if (type === TokenType.Control || type === TokenType.UserDefined) return [...encoder.encode(t)];
    const out: number[] = [];
    for (const ch of t) {
      const b = CHAR_TO_BYTE.get(ch);
      if (b !== undefined) out.push(b);
      else out.push(...encoder.encode(ch));
    }
    return out;
  }

  decode(ids: number[], skipSpecial = false): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) continue;
      const type = this.types[id];
      if (skipSpecial && (type === TokenType.Control || type === TokenType.Unknown)) continue;
      for (const b of this.bytesOf(id)) bytes.push(b);
    }
    return decoder.decode(Uint8Array.from(bytes));
  }

  tokenText(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return "";
    return decoder.decode(Uint8Array.from(this.bytesOf(id)));
  }
}
