// Incremental detokenization: UTF-8 split across byte tokens, SentencePiece spacing, stop strings.

import { assert, assertEquals } from "../helpers/assert.ts";
import type { Tokenizer } from "../../engine/model/types.ts";
import { IncrementalDetokenizer } from "../../engine/detokenizer.ts";
import { loadGguf } from "../../engine/model/gguf.ts";
import { STORIES260K } from "../helpers/fixtures.ts";

const SPACE = "\u2581";
const utf8 = new TextEncoder();

/**
 * A small SentencePiece-like tokenizer: <unk> <s> </s>, 256 byte-fallback pieces, printable ASCII
 * and a few words with "▁" for spaces. decode strips the space the dummy prefix added to the first
 * piece, and decodes bytes with a non-fatal TextDecoder (incomplete sequences become U+FFFD).
 */
class FakeSpm implements Tokenizer {
  readonly bosTokenId = 1;
  readonly eosTokenIds = [2];
  readonly pieces: string[] = ["<unk>", "<s>", "</s>"];
  readonly #ids = new Map<string, number>();
  readonly #maxPiece: number;

  constructor(words: string[] = []) {
    for (let b = 0; b < 256; b++) this.pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    for (let c = 0x21; c < 0x7f; c++) this.pieces.push(String.fromCharCode(c));
    this.pieces.push(SPACE, ...words.map((w) => w.replaceAll(" ", SPACE)));
    this.pieces.forEach((p, id) => {
      if (id >= 259) this.#ids.set(p, id);
    });
    this.#maxPiece = Math.max(...this.pieces.map((p) => p.length));
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  byte(b: number): number {
    return 3 + b;
  }

  /** Greedy longest match, bytes for anything else; no dummy prefix, no BOS. */
  raw(text: string): number[] {
    const s = text.replaceAll(" ", SPACE);
    const out: number[] = [];
    let i = 0;
    while (i < s.length) {
      let n = Math.min(this.#maxPiece, s.length - i);
      for (; n > 0; n--) {
        const id = this.#ids.get(s.slice(i, i + n));
        if (id !== undefined) {
          out.push(id);
          break;
        }
      }
      if (n > 0) {
        i += n;
        continue;
      }
      const ch = String.fromCodePoint(s.codePointAt(i)!);
      for (const b of utf8.encode(ch)) out.push(this.byte(b));
      i += ch.length;
    }
    return out;
  }

  encode(text: string, addSpecial: boolean): number[] {
    return [...(addSpecial ? [this.bosTokenId] : []), ...this.raw(" " + text)];
  }

  decode(ids: number[], skipSpecial = false): string {
    const bytes: number[] = [];
    let first = true;
    for (const id of ids) {
      if (id < 3) {
        if (skipSpecial) continue;
        bytes.push(...utf8.encode(this.pieces[id]));
        first = false;
        continue;
      }
      if (id < 259) {
        bytes.push(id - 3);
        first = false;
        continue;
      }
      let text = this.pieces[id].replaceAll(SPACE, " ");
      if (first && text.startsWith(" ")) text = text.slice(1);
      first = false;
      bytes.push(...utf8.encode(text));
    }
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }

  tokenText(id: number): string {
    return this.pieces[id].replaceAll(SPACE, " ");
  }
}

const WORDS = [
  " the",
  " cat",
  " sat",
  " on",
  " mat",
  " caf",
  " Once",
  " upon",
  " a",
  " time",
  "EN",
  "ND",
  "END",
];
const WORDS_STOP = [...WORDS, "ENDgame", "abE", "abcd", " STOP", "ST", "OP"];

interface Run {
  pieces: string[];
  text: string;
  stopped: string | null;
}

/** Pushes every output id (stopping at a stop string), then flushes; collects every piece. */
function run(
  tok: Tokenizer,
  prompt: number[],
  output: number[],
  stop: string[] = [],
  skipSpecialTokens = true,
): Run {
  const d = new IncrementalDetokenizer(tok, prompt, { skipSpecialTokens, stop });
  const pieces: string[] = [];
  for (const id of output) {
    const step = d.push(id);
    pieces.push(step.text);
    if (step.stopped !== null) {
      assertEquals(d.stoppedBy, step.stopped);
      assertEquals(d.push(output[0] ?? 0), { text: "", stopped: null }, "nothing after a stop");
      assertEquals(d.flush(), "", "nothing to flush after a stop");
      return { pieces, text: pieces.join(""), stopped: step.stopped };
    }
  }
  pieces.push(d.flush());
  return { pieces, text: pieces.join(""), stopped: null };
}

/**
 * What the client should see: the full decode minus the prompt's decode. A prompt that ends inside
 * a character (raw ids) counts without its last 1-3 tokens, so the output carries the whole character.
 */
function expectedText(tok: Tokenizer, prompt: number[], output: number[], skip = true): string {
  const full = tok.decode([...prompt, ...output], skip);
  let read = prompt.length;
  while (read > prompt.length - 3 && read > 0 && tok.decode(prompt.slice(0, read), skip).endsWith("\uFFFD")) {
    read--;
  }
  const head = tok.decode(prompt.slice(0, read), skip);
  assert(
    full.startsWith(head),
    `test setup: ${JSON.stringify(full)} does not extend ${JSON.stringify(head)}`,
  );
  return full.slice(head.length);
}

function assertCleanPieces(pieces: string[]) {
  for (const p of pieces) {
    assert(!p.includes("\uFFFD"), `emitted U+FFFD in ${JSON.stringify(p)}`);
    assert(p.isWellFormed(), `emitted half a surrogate pair in ${JSON.stringify(p)}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// UTF-8 and spacing

Deno.test("characters split over 2-4 byte tokens are emitted whole and only once complete", () => {
  const tok = new FakeSpm(WORDS);
  const prompt = tok.encode("Once upon a time", true);
  const output = tok.raw(" café ☕ and 😀 ok ü€𐍈!");
  assert(output.filter((id) => id < 259).length >= 2 + 3 + 4 + 2 + 3 + 4, "test setup: byte fallback");
  const r = run(tok, prompt, output);
  assertCleanPieces(r.pieces);
  assertEquals(r.text, " café ☕ and 😀 ok ü€𐍈!");
  assertEquals(r.text, expectedText(tok, prompt, output));
  // The three bytes of ☕ give nothing, nothing, then the character.
  const cup = output.indexOf(tok.byte(0xe2));
  assertEquals(r.pieces.slice(cup, cup + 3), ["", "", "☕"]);
});

Deno.test("a window decode gives the spacing of the whole sequence", () => {
  const tok = new FakeSpm(WORDS);
  const prompt = tok.encode("Once upon", true);
  const r = run(tok, prompt, tok.raw(" a time the cat"));
  assertEquals(r.pieces, [" a", " time", " the", " cat", ""]);
  // No prompt at all: the first piece's space is stripped, as in decode(output).
  const bare = run(tok, [], tok.raw(" Once upon"));
  assertEquals(bare.text, "Once upon");
  // A skipped special token in the middle must not make the next piece lose its space.
  const mid = [...tok.raw(" the"), 2, 2, ...tok.raw(" cat sat")];
  assertEquals(run(tok, prompt, mid, [], true).text, " the cat sat");
  assertEquals(run(tok, prompt, mid, [], false).text, " the</s></s> cat sat");
  // Only BOS before the output, skipped or kept.
  assertEquals(
    run(tok, [1], tok.raw(" the cat"), [], true).text,
    expectedText(tok, [1], tok.raw(" the cat"), true),
  );
  assertEquals(
    run(tok, [1], tok.raw(" the cat"), [], false).text,
    expectedText(tok, [1], tok.raw(" the cat"), false),
  );
});

Deno.test("random texts: pieces concatenate to the full decode and never hold half a character", () => {
  const tok = new FakeSpm(WORDS);
  const pool = [" the", " cat", "a", "b", " ", "é", "☕", "😀", "€", "𐍈", "ü", ".", "\n", "ND", "ñ"];
  let state = 7;
  const rand = (n: number) => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) % n;
  for (let trial = 0; trial < 300; trial++) {
    const words = Array.from({ length: 1 + rand(12) }, () => pool[rand(pool.length)]);
    const all = tok.encode(words.join(""), true);
    const cut = rand(all.length);
    const prompt = all.slice(0, cut), output = all.slice(cut);
    const skip = rand(2) === 0;
    const r = run(tok, prompt, output, [], skip);
    assertEquals(r.text, expectedText(tok, prompt, output, skip), `trial ${trial}`);
    assertCleanPieces(r.pieces);
  }
});

Deno.test("a character begun in the prompt ids and finished by the output is emitted whole", () => {
  const tok = new FakeSpm(WORDS);
  const ids = tok.encode("Once café ☕", true);
  // Cut after the first byte of é, and after the first and second bytes of ☕.
  for (const cut of [ids.indexOf(tok.byte(0xc3)) + 1, ids.length - 2, ids.length - 1]) {
    const r = run(tok, ids.slice(0, cut), [...ids.slice(cut), ...tok.raw(" ok")]);
    assertCleanPieces(r.pieces);
    assertEquals(r.text, cut < ids.length - 3 ? "é ☕ ok" : "☕ ok");
  }
});

Deno.test("genuinely invalid bytes are not held forever", () => {
  const tok = new FakeSpm(WORDS);
  const prompt = tok.encode("Once", true);
  // 0xFF is never valid; a run of lone lead bytes never completes.
  const bad = [0xff, 0xe2, 0xe2, 0xe2, 0xe2, 0xe2, 0xe2].map((b) => tok.byte(b));
  const d = new IncrementalDetokenizer(tok, prompt, { skipSpecialTokens: true, stop: [] });
  const pieces = bad.map((id) => d.push(id).text);
  assert(pieces.join("").length >= 3, `released ${JSON.stringify(pieces)}`);
  const text = pieces.join("") + d.flush();
  assertEquals(text, expectedText(tok, prompt, bad));

  // An invalid byte, then a 4-byte character: released as U+FFFD, the character still whole.
  const mixed = [0xff, 0xf0, 0x9f, 0x98, 0x80].map((b) => tok.byte(b));
  const r = run(tok, prompt, [...mixed, ...tok.raw(" ok")]);
  assertEquals(r.text, "\uFFFD😀 ok");
  assert(r.pieces.every((p) => p.isWellFormed()));
  assert(r.pieces.includes("😀") || r.pieces.some((p) => p.startsWith("😀")));
});

Deno.test("flush returns a character left incomplete at the end", () => {
  const tok = new FakeSpm(WORDS);
  const d = new IncrementalDetokenizer(tok, tok.encode("Once", true), { skipSpecialTokens: true, stop: [] });
  assertEquals(d.push(tok.raw(" a")[0]).text, " a");
  assertEquals(d.push(tok.byte(0xe2)).text, "");
  assertEquals(d.push(tok.byte(0x98)).text, "");
  assertEquals(d.flush(), "\uFFFD");
  assertEquals(d.flush(), "");
});

// ---------------------------------------------------------------------------------------------------
// Stop strings

/** No emitted piece may reveal anything past the text before the stop. */
function assertNoLeak(r: Run, before: string) {
  let sent = "";
  for (const p of r.pieces) {
    sent += p;
    assert(
      before.startsWith(sent),
      `leaked: sent ${JSON.stringify(sent)}, allowed ${JSON.stringify(before)}`,
    );
  }
  assertEquals(r.text, before);
}

Deno.test("a stop string straddling tokens never reaches the client", () => {
  const tok = new FakeSpm(WORDS_STOP);
  const prompt = tok.encode("Once", true);
  const chars = [..." the cat", "E", "N", "D", ..." the mat"].flatMap((c) => tok.raw(c));
  const r = run(tok, prompt, chars, ["END"]);
  assertEquals(r.stopped, "END");
  assertNoLeak(r, " the cat");
  // "E" and "N" are held while they could start "END".
  assertEquals(r.pieces.slice(-3), ["", "", ""]);

  const pieces = [" cat", "abE", "ND", "x"].map((p) => tok.raw(p));
  assert(pieces.every((ids) => ids.length === 1), "test setup: one token each");
  const straddle = run(tok, prompt, pieces.flat(), ["END"]);
  assertEquals(straddle.pieces, [" cat", "ab", ""]);
  assertEquals(straddle.stopped, "END");
  assertNoLeak(straddle, " catab");
});

Deno.test("text after the stop string, even in the same token, is dropped", () => {
  const tok = new FakeSpm(WORDS_STOP);
  const output = [...tok.raw(" the cat"), ...tok.raw("ENDgame"), ...tok.raw(" on the mat")];
  const r = run(tok, tok.encode("Once", true), output, ["END"]);
  assertEquals(r.stopped, "END");
  assertNoLeak(r, " the cat");
  assertEquals(r.pieces.length, 3, "stops at the token that completes the stop string");
});

Deno.test("a stop string at the very start yields no text", () => {
  const tok = new FakeSpm(WORDS_STOP);
  const r = run(tok, tok.encode("Once", true), [...tok.raw("END"), ...tok.raw(" the")], ["END"]);
  assertEquals(r, { pieces: [""], text: "", stopped: "END" });
  const split = run(tok, tok.encode("Once", true), [..."END the"].flatMap((c) => tok.raw(c)), ["END"]);
  assertEquals(split, { pieces: ["", "", ""], text: "", stopped: "END" });
});

Deno.test("with several stop strings the first to complete wins", () => {
  const tok = new FakeSpm(WORDS_STOP);
  const prompt = tok.encode("Once", true);
  const output = tok.raw(" the cat sat on the mat STOP the");
  const r = run(tok, prompt, output, ["STOP", "mat", "zzz"]);
  assertEquals(r.stopped, "mat");
  assertNoLeak(r, " the cat sat on the ");
  // Completing first is what counts, whatever the list order or token split: "bc" ends before "abcd".
  const one = run(tok, prompt, tok.raw("abcd"), ["abcd", "bc"]);
  assertEquals([one.text, one.stopped], ["a", "bc"]);
  const chars = run(tok, prompt, [..."abcd"].flatMap((c) => tok.raw(c)), ["abcd", "bc"]);
  assertEquals([chars.text, chars.stopped], ["a", "bc"]);
  // Overlapping prefixes: "ENE" must not hide a later "END".
  const overlap = run(tok, prompt, [..."xENEND"].flatMap((c) => tok.raw(c)), ["END"]);
  assertEquals([overlap.text, overlap.stopped], ["xEN", "END"]);
  assertNoLeak(overlap, "xEN");
});

Deno.test("held-back text is flushed when generation ends without a stop", () => {
  const tok = new FakeSpm(WORDS_STOP);
  const prompt = tok.encode("Once", true);
  const r = run(tok, prompt, [...tok.raw(" the cat "), ...tok.raw("E"), ...tok.raw("N")], ["END", "STOP"]);
  assertEquals(r.stopped, null);
  assertEquals(r.pieces.at(-1), "EN");
  assertEquals(r.text, " the cat EN");
  // Stop strings with multi-byte characters, split over byte tokens.
  const cup = run(tok, prompt, tok.raw(" café ☕ the"), ["☕"]);
  assertEquals([cup.text, cup.stopped], [" café ", "☕"]);
  assertCleanPieces(cup.pieces);
  const near = run(tok, prompt, tok.raw(" a☕"), ["☕!"]);
  assertEquals([near.pieces.at(-1), near.text, near.stopped], ["☕", " a☕", null]);
});

// ---------------------------------------------------------------------------------------------------
// The real stories260K tokenizer (SentencePiece with byte fallback, from GGUF)

// The shared material is part of the test setup: without it this test fails, it does not skip.

Deno.test({
  name: "stories260K: byte-fallback characters and stop strings stream correctly at every split",
  fn: async () => {
    const tok = (await loadGguf(STORIES260K)).tokenizer;
    const text = "Once upon a time, Lily saw a café ☕ and 😀 in the park. She was happy.";
    const all = tok.encode(text, true);
    assert(all.some((id) => tok.tokenText(id) === "\uFFFD"), "test setup: byte-fallback tokens");
    for (let cut = 1; cut < all.length; cut++) {
      const prompt = all.slice(0, cut), output = all.slice(cut);
      for (const skip of [true, false]) {
        const r = run(tok, prompt, output, [], skip);
        assertEquals(r.text, expectedText(tok, prompt, output, skip), `cut ${cut}`);
        assertCleanPieces(r.pieces);
      }
      for (const stop of ["☕", "park", "a c"]) {
        const expected = expectedText(tok, prompt, output);
        const at = expected.indexOf(stop);
        if (at < 0) continue;
        const r = run(tok, prompt, output, [stop]);
        assertEquals(r.stopped, stop);
        assertNoLeak(r, expected.slice(0, at));
      }
    }
  },
});
