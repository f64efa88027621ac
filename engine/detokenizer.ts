// Incremental detokenization with stop strings.
//
// Text is produced by decoding a short window of ids and diffing (vLLM style): with `prefix` and
// `read` token offsets, the new text is decode(ids[prefix:]) minus decode(ids[prefix:read]). The
// context tokens ids[prefix:read] make the window decode with the same spacing as the whole
// sequence (SentencePiece strips the leading space of the first piece only, which then falls on
// the context), and both offsets only ever sit at clean character boundaries.
//
// While the window's text ends with U+FFFD, the last token(s) may be part of a multi-byte character
// (byte-fallback tokens such as <0xE2><0x98><0x95> for one character), so that text is held. After
// MAX_HELD_TOKENS tokens without a clean end the bytes are taken to be genuinely invalid and all but
// the final character is released; the final one is held until a clean end or flush(). This
// assumes decode() maps bytes to text like TextDecoder (one U+FFFD per maximal invalid run, so
// only a trailing one can still change), as LlamaSpmTokenizer does.
//
// Stop strings are matched on the decoded text, across token boundaries. Any suffix of the text
// that is the start of a stop string is held back, so no part of a stop string reaches the client.

import type { Tokenizer } from "./model/types.ts";

const REPLACEMENT = "\uFFFD";
/** Context tokens taken from the end of the prompt for the first window (as vLLM). */
const INITIAL_CONTEXT = 5;
/** A UTF-8 character spans at most 4 bytes, so at most 4 byte tokens. */
const MAX_HELD_TOKENS = 4;

export interface DetokenizerOptions {
  skipSpecialTokens: boolean;
  stop: string[];
}

export interface DetokenizerStep {
  /** Text safe to send now (may be empty). */
  text: string;
  /** The stop string that just matched; the text before it is in `text`, everything after dropped. */
  stopped: string | null;
}

export class IncrementalDetokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #skipSpecial: boolean;
  readonly #stops: string[];
  readonly #ids: number[];
  #prefix: number;
  /** Ids before this are decoded into text already sent (or prompt). */
  #read: number;
  /** Length of decode(ids[prefix:read]). */
  #contextLength: number;
  /** Characters past the context already released while the window had no clean end. */
  #released = 0;
  /** Decoded text held back because it may be the start of a stop string. */
  #pending = "";
  #stoppedBy: string | null = null;
  #finished = false;

  constructor(tokenizer: Tokenizer, promptIds: number[], opts: DetokenizerOptions) {
    this.#tokenizer = tokenizer;
    this.#skipSpecial = opts.skipSpecialTokens;
    this.#stops = opts.stop.filter((s) => s.length > 0);
    this.#ids = promptIds.slice();
    // Prompt ids may end inside a character that the output completes (a client continuing a cut
    // generation): leave those tokens unread so the whole character is emitted with the output.
    let read = promptIds.length;
    const tailStart = () => Math.max(0, read - INITIAL_CONTEXT);
    while (
      read > 0 && promptIds.length - read < MAX_HELD_TOKENS - 1 &&
      this.#decode(tailStart(), read).endsWith(REPLACEMENT)
    ) read--;
    // Start the context at a character boundary: a window opening inside a byte sequence decodes
    // its head as U+FFFD, which some decoders let spread over the following bytes.
    let prefix = tailStart();
    let context = this.#decode(prefix, read);
    while (prefix > 0 && prefix > tailStart() - MAX_HELD_TOKENS && context.startsWith(REPLACEMENT)) {
      prefix--;
      context = this.#decode(prefix, read);
    }
    this.#read = read;
    this.#prefix = prefix;
    this.#contextLength = context.length;
  }

  /** The stop string that ended the text, if any. */
  get stoppedBy(): string | null {
    return this.#stoppedBy;
  }

  /** Adds one generated token; returns the text that is now safe to emit. */
  push(tokenId: number): DetokenizerStep {
    if (this.#finished) return { text: "", stopped: null };
    this.#ids.push(tokenId);
    return this.#applyStops(this.#nextText(false), false);
  }

  /** Ends the text: returns everything still held (partial characters as U+FFFD, partial stop strings). */
  flush(): string {
    if (this.#finished) return "";
    const step = this.#applyStops(this.#nextText(true), true);
    this.#finished = true;
    return step.text;
  }

  #decode(start: number, end: number): string {
    return this.#tokenizer.decode(this.#ids.slice(start, end), this.#skipSpecial);
  }

  #nextText(final: boolean): string {
    const window = this.#decode(this.#prefix, this.#ids.length);
    const start = this.#contextLength + this.#released;
    if (final) return window.length > start ? window.slice(start) : "";

    if (window.endsWith(REPLACEMENT)) {
      if (this.#ids.length - this.#read < MAX_HELD_TOKENS) return "";
      // Only the last character can still turn into something else; earlier U+FFFD are final.
      const end = window.length - 1;
      if (end <= start) return "";
      this.#released = end - this.#contextLength;
      return window.slice(start, end);
    }

    const text = window.length > start ? window.slice(start) : "";
    // Slide: the tokens just read become the context. Keep the old context when the new one
    // decodes to nothing (skipped special tokens), or the leading-space strip would hit new text.
    const context = this.#decode(this.#read, this.#ids.length);
    if (context.length > 0) {
      this.#prefix = this.#read;
      this.#contextLength = context.length;
    } else {
      this.#contextLength = window.length;
    }
    this.#read = this.#ids.length;
    this.#released = 0;
    return text;
  }

  #applyStops(text: string, final: boolean): DetokenizerStep {
    if (this.#stops.length === 0) return { text, stopped: null };
    const buffer = this.#pending + text;
    // First stop to complete while streaming: earliest end, then earliest start. This does not
    // depend on how the text was split into tokens.
    let matchStart = -1;
    let matchEnd = Infinity;
    let matched: string | null = null;
    for (const stop of this.#stops) {
      const at = buffer.indexOf(stop);
      if (at < 0) continue;
      const end = at + stop.length;
      if (end < matchEnd || (end === matchEnd && at < matchStart)) {
        matchStart = at;
        matchEnd = end;
        matched = stop;
      }
    }
    if (matched !== null) {
      this.#pending = "";
      this.#stoppedBy = matched;
      this.#finished = true;
      return { text: buffer.slice(0, matchStart), stopped: matched };
    }
    if (final) {
      this.#pending = "";
      return { text: buffer, stopped: null };
    }
    let hold = 0;
    for (const stop of this.#stops) {
      for (let n = Math.min(stop.length - 1, buffer.length); n > hold; n--) {
        if (buffer.endsWith(stop.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    this.#pending = buffer.slice(buffer.length - hold);
    return { text: buffer.slice(0, buffer.length - hold), stopped: null };
  }
}
