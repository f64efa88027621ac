import { loadGguf } from "../../../engine/model/gguf.ts";
import { parseGguf } from "../../../engine/model/gguf_file.ts";
import { LlamaSpmTokenizer, TokenType } from "../../../engine/tokenizer/llama_spm.ts";
import { Gpt2BpeTokenizer } from "../../../engine/tokenizer/gpt2_bpe.ts";
import type { Tokenizer } from "../../../engine/model/types.ts";
import { assert, assertEquals } from "../../helpers/assert.ts";
import { STORIES260K } from "../../helpers/fixtures.ts";

// The README's published greedy output for "Once upon a time" (first paragraph).
const STORY =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n" +
  `Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. ` +
  `She said, "I want to play with your ball, but I can't find it."`;

let cached: Tokenizer | undefined;
async function stories(): Promise<Tokenizer> {
  cached ??= (await loadGguf(STORIES260K)).tokenizer;
  return cached;
}

/** stories260K's vocabulary, for the reference implementation below. */
async function storiesVocab() {
  const g = parseGguf(await Deno.readFile(STORIES260K), STORIES260K);
  return {
    tokens: g.metadata.get("tokenizer.ggml.tokens") as string[],
    scores: g.metadata.get("tokenizer.ggml.scores") as Float32Array,
    types: g.metadata.get("tokenizer.ggml.token_type") as Int32Array,
  };
}

/** Straightforward O(n^2) SentencePiece merge loop, to check the heap-based encoder against. */
function referenceEncode(text: string, v: { tokens: string[]; scores: Float32Array; types: Int32Array }) {
  const id = new Map<string, number>();
  v.tokens.forEach((t, i) => {
    if (v.types[i] === TokenType.Normal && !id.has(t)) id.set(t, i);
  });
  const syms = Array.from(("\u2581" + text).replaceAll(" ", "\u2581"));
  for (;;) {
    let best = -1, bestScore = -Infinity;
    for (let i = 0; i + 1 < syms.length; i++) {
      const t = id.get(syms[i] + syms[i + 1]);
      if (t !== undefined && v.scores[t] > bestScore) [best, bestScore] = [i, v.scores[t]];
    }
    if (best < 0) break;
    syms.splice(best, 2, syms[best] + syms[best + 1]);
  }
  const out: number[] = [];
  for (const s of syms) {
    const t = id.get(s);
    if (t !== undefined) out.push(t);
    else {for (const b of new TextEncoder().encode(s)) {
        out.push(v.tokens.indexOf(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`));
      }}
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// stories260K's SentencePiece tokenizer

Deno.test("spm: 'Once upon a time' encodes to the published ids", async () => {
  const tok = await stories();
  assertEquals(tok.encode("Once upon a time", true), [1, 403, 407, 261, 378]);
  assertEquals(tok.encode("Once upon a time", false), [403, 407, 261, 378]);
  assertEquals(tok.bosTokenId, 1);
  assertEquals(tok.eosTokenIds, [2]);
  assertEquals(tok.vocabSize, 512);
});

Deno.test("spm: the README's greedy story round-trips and its continuation decodes alone", async () => {
  const tok = await stories();
  const ids = tok.encode(STORY, true);
  assertEquals(ids.slice(0, 5), [1, 403, 407, 261, 378]);
  assertEquals(tok.decode(ids, true), STORY);
  assertEquals(tok.decode(ids), "<s> " + STORY);
  // The generated part starts with "," so it carries no dummy-prefix space.
  assert(
    tok.decode(ids.slice(5), true).startsWith(", there was a little girl named Lily. She loved to play"),
    tok.decode(ids.slice(5), true),
  );
  // Streaming by decoding growing prefixes reproduces the text.
  let text = "";
  for (let n = 1; n <= ids.length; n++) {
    const full = tok.decode(ids.slice(0, n), true);
    assert(full.startsWith(text), `prefix ${n}`);
    text = full;
  }
  assertEquals(text, STORY);
});

Deno.test("spm: round trips (ASCII, punctuation, UTF-8 via bytes, spaces, newlines)", async () => {
  const tok = await stories();
  const cases = [
    "Hello world",
    'Tom\'s dog said: "Wow!" (really?) -- yes; 100% [ok] {x} <tag> a/b\\c @#$^&*_+=|~`',
    "café ☕ 日本",
    "emoji 🙂👍🏽 and ñ",
    " leading space",
    "   three leading spaces",
    "multiple   inner    spaces",
    "trailing space ",
    "line one\nline two\n\nline four\n",
    "\n\nstarts with newlines",
    "tabs\tand\r\nCRLF",
    " ",
  ];
  for (const text of cases) {
    const ids = tok.encode(text, true);
    assertEquals(tok.decode(ids, true), text, JSON.stringify(text));
    assertEquals(tok.decode(ids.slice(1)), text, "without BOS: " + JSON.stringify(text));
  }
  assertEquals(tok.encode("", true), [1]);
  assertEquals(tok.encode("", false), []);
  assertEquals(tok.decode([]), "");
});

Deno.test("spm: characters outside the vocabulary fall back to their UTF-8 byte tokens", async () => {
  const tok = await stories();
  // ☕ is E2 98 95: byte tokens are <0x00>.. at ids 3..258, so id = byte + 3.
  const ids = tok.encode("☕", false);
  assertEquals(ids.slice(-3), [0xe2 + 3, 0x98 + 3, 0x95 + 3]);
  assertEquals(tok.decode(ids), "☕");
  // A partial sequence decodes to U+FFFD rather than throwing.
  assertEquals(tok.decode([0xe2 + 3, 0x98 + 3]), "\uFFFD");
  assertEquals(tok.decode([0xe2 + 3, 0x98 + 3, 0x95 + 3, 0xe2 + 3]), "☕\uFFFD");
  assertEquals(tok.tokenText(0x0a + 3), "\n");
  assertEquals(tok.tokenText(0xe2 + 3), "\uFFFD");
});

Deno.test("spm: special tokens: skipped on request, parsed when written in text", async () => {
  const tok = await stories();
  const ids = [1, 403, 407, 2];
  assertEquals(tok.decode(ids), "<s> Once upon</s>");
  assertEquals(tok.decode(ids, true), "Once upon");
  assertEquals(tok.tokenText(1), "<s>");
  assertEquals(tok.tokenText(403), " Once");
  // Written-out control tokens become the token itself (templates render "<s>"), with the dummy prefix after.
  assertEquals(tok.encode("<s>Once upon</s>", false), [1, 403, 407, 2]);
  assertEquals(tok.decode(tok.encode("a<s>b", false)), "a<s> b");
});

Deno.test("spm: heap-based merging matches the O(n^2) reference", async () => {
  const tok = await stories();
  const vocab = await storiesVocab();
  const samples = [
    STORY,
    "the the the thethe th e",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbb",
    "Once upon a time, Lily's café had 日本 tea.",
    "zzzqqq xylophone quokka",
  ];
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const alphabet = "abcdefghijklmnopqrstuvwxyz  .,'!\né";
  for (let n = 0; n < 30; n++) {
    let s = "";
    const len = 1 + Math.floor(rand() * 80);
    for (let i = 0; i < len; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
    samples.push(s);
  }
  for (const s of samples) assertEquals(tok.encode(s, false), referenceEncode(s, vocab), JSON.stringify(s));
});

Deno.test("spm: long prompts encode quickly (no quadratic rescans)", async () => {
  const tok = await stories();
  const long = Array.from({ length: 100 }, () => STORY).join("\n"); // ~38K characters
  const t0 = performance.now();
  const ids = tok.encode(long, true);
  const ms = performance.now() - t0;
  assertEquals(tok.decode(ids, true), long);
  assert(ms < 2000, `encoding ${long.length} characters took ${ms.toFixed(0)} ms`);
  // Whole-story repetitions tokenize identically (after the first, which starts the text).
  const one = tok.encode(STORY, false).length;
  assert(ids.length < long.length / 2 && ids.length > one * 100 * 0.9, `${ids.length} tokens`);
});

// ---------------------------------------------------------------------------------------------------
// Synthetic SentencePiece vocabularies

function spm(
  tokens: [string, number, number?][],
  extra: Partial<ConstructorParameters<typeof LlamaSpmTokenizer>[0]> = {},
) {
  return new LlamaSpmTokenizer({
    tokens: tokens.map((t) => t[0]),
    scores: tokens.map((t) => t[1]),
    tokenTypes: tokens.map((t) => t[2] ?? TokenType.Normal),
    bosTokenId: 1,
    eosTokenIds: [2],
    unkTokenId: 0,
    ...extra,
  });
}

const BASE: [string, number, number?][] = [
  ["<unk>", 0, TokenType.Unknown],
  ["<s>", 0, TokenType.Control],
  ["</s>", 0, TokenType.Control],
  ["\u2581", -1],
  ["a", -1],
  ["b", -1],
];

Deno.test("spm: equal scores merge leftmost first; higher scores win anywhere", () => {
  const tie = spm([...BASE, ["ab", -5], ["ba", -5]], { addSpacePrefix: false });
  assertEquals(tie.encode("aba", false), [6, 4]); // "ab" "a"
  assertEquals(tie.encode("bab", false), [7, 5]); // "ba" "b"
  const right = spm([...BASE, ["ab", -5], ["ba", -4]], { addSpacePrefix: false });
  assertEquals(right.encode("aba", false), [4, 7]); // "a" "ba"
});

Deno.test("spm: no byte tokens means unknown characters become <unk>; add_bos/add_eos flags", () => {
  const tok = spm([...BASE, ["\u2581a", -2]], { addEos: true });
  assertEquals(tok.encode("a z", true), [1, 6, 3, 0, 2]);
  assertEquals(tok.decode([1, 6, 3, 0, 2], true), "a ");
  const noBos = spm(BASE, { addBos: false });
  assertEquals(noBos.encode("a", true), [3, 4]);
});

Deno.test("spm: add_space_prefix false keeps text as is", () => {
  const tok = spm([...BASE, ["\u2581a", -2]], { addSpacePrefix: false });
  assertEquals(tok.encode("a a", false), [4, 6]);
  assertEquals(tok.decode([6, 6]), " a a");
});

// ---------------------------------------------------------------------------------------------------
// GPT-2 byte-level BPE (synthetic vocabulary)

function gpt2Tokenizer(pre?: string) {
  // The 256 byte symbols in GPT-2's order, then merges, then a control token.
  const bytes: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    bytes.push(String.fromCodePoint(printable ? b : 256 + extra++));
  }
  const merges = ["\u0120 t", "h e", "\u0120t he", "l l", "ll o", "he llo", "1 2", "12 3"];
  const tokens = [...bytes, "\u0120t", "he", "\u0120the", "ll", "llo", "hello", "12", "123", "<|eot|>"];
  const types = tokens.map((_, i) => (i === tokens.length - 1 ? TokenType.Control : TokenType.Normal));
  return new Gpt2BpeTokenizer({
    tokens,
    merges,
    tokenTypes: types,
    bosTokenId: null,
    eosTokenIds: [tokens.length - 1],
    pre,
  });
}

Deno.test("gpt2 bpe: merges by rank inside pre-tokenized words, byte-level round trip", () => {
  const tok = gpt2Tokenizer();
  const id = (s: string) => tok.encode(s, false);
  assertEquals(id(" the"), [258]);
  assertEquals(id("hello the"), [261, 258]);
  assertEquals(tok.tokenText(258), " the");
  // "hellothe" is one pre-token: "h e" merges at both places before "l l".
  assertEquals(id("hellothe"), [261, 0x74, 257]);
  assertEquals(id("hello"), [261]);
  assertEquals(id("hell"), [257, 259]);
  for (const s of ["café ☕ 日本", "  two  spaces\n\nnewlines\t", "it's 12345 ok?!", "🙂"]) {
    assertEquals(tok.decode(id(s)), s, JSON.stringify(s));
  }
  // Space is byte 0x20 -> "Ġ" (U+0120); "é" is two bytes, each its own symbol.
  assertEquals(id("é").length, 2);
  assertEquals(tok.decode([id("é")[0]]), "\uFFFD");
});

Deno.test("gpt2 bpe: control tokens in text, skipSpecial, and the digit splits of llama3's and qwen2's regexes", () => {
  const tok = gpt2Tokenizer();
  const eot = tok.vocabSize - 1;
  assertEquals(tok.encode("hello<|eot|>", false), [261, eot]);
  assertEquals(tok.decode([261, eot]), "hello<|eot|>");
  assertEquals(tok.decode([261, eot], true), "hello");
  // GPT-2 keeps digit runs together, llama3's regex splits them in threes ("231" "23").
  assertEquals(tok.encode("23123", false), [0x32, 0x33, 263]);
  const l3 = gpt2Tokenizer("llama-bpe");
  assertEquals(l3.encode("23123", false), [0x32, 0x33, 0x31, 0x32, 0x33]);
  assertEquals(l3.decode(l3.encode("It'S 2024, ok\n\n  x", false)), "It'S 2024, ok\n\n  x");
  // Qwen2's regex is Llama 3's with digits one at a time: "123" is one piece (merged) for Llama 3 only.
  const q2 = gpt2Tokenizer("qwen2");
  assertEquals(l3.encode("123", false), [263]);
  assertEquals(q2.encode("123", false), [0x31, 0x32, 0x33]);
  assertEquals(q2.encode(" the hello", false), l3.encode(" the hello", false));
});
