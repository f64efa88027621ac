// Grammar-constrained decoding with @mlc-ai/web-xgrammar (wasm), in the engine's Worker: compiled
// grammars and their matchers live in the thread that samples (see docs in
// ../shared/notes/grammar-in-deno.md for the measured facts this follows).
//
// Loading: the package is a UMD script that Deno takes for ESM; it needs `require` and `__filename`
// while its wasm initialises, and leaves its exports on globalThis. Any bad input aborts the wasm
// and leaves the instance unusable (later compiles fail at random), so after an abort the instance
// is replaced by a fresh evaluation of the same script.

import type * as XG from "@mlc-ai/web-xgrammar";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import type { GrammarSpec, Tokenizer } from "./protocol.ts";

type XGrammar = typeof XG;

/** Where the wasm's console.error lines go while a compile runs (it binds console.error at init). */
let errorSink: ((line: string) => void) | null = null;

async function withShims<T>(
  f: (req: ReturnType<typeof createRequire>, filename: string) => Promise<T>,
): Promise<T> {
  const g = globalThis as Record<string, unknown>;
  const req = createRequire(import.meta.url);
  const filename = fileURLToPath(import.meta.url);
  g.require = req;
  g.__filename = filename;
  const consoleError = console.error;
  console.error = (...a: unknown[]) => errorSink ? errorSink(a.map(String).join(" ")) : consoleError(...a);
  try {
    return await f(req, filename);
  } finally {
    console.error = consoleError;
    delete g.require;
    delete g.__filename;
  }
}

let imported = false;

/**
 * The first instance comes from the import (which also makes Deno install the package); the import
 * runs the script once per thread, so later ones (another engine in this thread) are fresh instances.
 */
async function importInstance(): Promise<XGrammar> {
  if (imported) return await freshInstance();
  imported = true;
  const xg = await withShims(async () => {
    await import("@mlc-ai/web-xgrammar");
    const g = globalThis as Record<string, unknown>;
    const xg = g.xgrammar as XGrammar;
    delete g.xgrammar;
    // The wasm initialises lazily: do it while the shims exist.
    (await xg.Grammar.builtinJSONGrammar()).dispose();
    return xg;
  });
  return xg;
}

/** A fresh, independent instance: the package's script evaluated again in a function scope. */
async function freshInstance(): Promise<XGrammar> {
  return await withShims(async (req, filename) => {
    const path = req.resolve("@mlc-ai/web-xgrammar");
    const source = await Deno.readTextFile(path);
    const mod = { exports: {} as Record<string, unknown> };
    new Function("module", "exports", "require", "__filename", source)(mod, mod.exports, req, filename);
    const xg = mod.exports as unknown as XGrammar;
    (await xg.Grammar.builtinJSONGrammar()).dispose();
    return xg;
  });
}

/** A grammar that cannot be compiled (bad schema); the request gets a 400. */
export class GrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GrammarError";
  }
}

/**
 * Token texts as xgrammar's "raw" vocabulary: what each token decodes to. Tokens that are part of a
 * UTF-8 sequence (U+FFFD in their text), tokens with control characters and special tokens (empty
 * with special tokens skipped) get "" and are then never allowed; stop tokens are handled by id.
 */
export function grammarVocabulary(tokenizer: Tokenizer): string[] {
  const tokens: string[] = [];
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const text = tokenizer.tokenText(id);
    const special = text !== "" && tokenizer.decode([id], true) === "";
    // xgrammar's JSON strings let raw control characters through, which JSON.parse rejects; compact
    // JSON never needs them outside strings either.
    // deno-lint-ignore no-control-regex
    const control = /[\u0000-\u001f]/.test(text);
    tokens.push(special || control || text.includes("\uFFFD") ? "" : text);
  }
  return tokens;
}

const MAX_CACHED = 64;

/** One constrained sequence's matcher, with what the forced finish needs. */
export class Matcher {
  /** Once set, every token is forced towards the shortest completion (see forcedToken). */
  finishing = false;
  constructor(private host: GrammarHost, private m: XG.GrammarMatcher, readonly generation: number) {}

  /** Bit set = allowed; ceil(V / 32) words. */
  async mask(): Promise<Int32Array> {
    return await this.m.getNextTokenBitmask();
  }

  accept(token: number): boolean {
    return this.m.acceptToken(token);
  }

  get terminated(): boolean {
    return this.m.isTerminated();
  }

  /**
   * A token that heads for the end of the document: a stop token, the forced text, a closing quote
   * or bracket, "0", ",", else the shortest allowed token. Random weights can otherwise stay inside
   * a string or number until max_tokens cuts the document.
   */
  forcedToken(mask: Int32Array): number {
    const h = this.host;
    const ok = (id: number) => id >= 0 && (mask[id >> 5] >>> (id & 31) & 1) === 1;
    for (const id of h.stopIds) if (ok(id)) return id;
    const jump = this.m.findJumpForwardString();
    if (jump !== "") {
      let best = -1;
      for (let len = Math.min(jump.length, h.longest); len > 0 && best < 0; len--) {
        const id = h.byText.get(jump.slice(0, len));
        if (id !== undefined && ok(id)) best = id;
      }
      if (best >= 0) return best;
    }
    for (const id of h.preferred) if (ok(id)) return id;
    for (const id of h.byLength) if (ok(id)) return id;
    return h.stopIds[0] ?? 0;
  }

  /** Whether, after `token`, the forced finish still ends the document within `left - 1` tokens. */
  async leavesRoom(token: number, left: number): Promise<boolean> {
    if (this.host.stopIds.includes(token)) return true;
    if (!this.m.acceptToken(token)) return false;
    try {
      return await this.forcedLength(left) <= left - 1;
    } finally {
      this.m.rollBack(1);
    }
  }

  /** Tokens the forced finish would take from here (at most `limit`); the state is kept. */
  async forcedLength(limit: number): Promise<number> {
    let n = 0;
    try {
      while (n < limit) {
        const mask = await this.mask();
        const id = this.forcedToken(mask);
        if (this.host.stopIds.includes(id)) return n + 1;
        if (!this.m.acceptToken(id)) return limit;
        n++;
      }
      return limit;
    } finally {
      if (n > 0) this.m.rollBack(n);
    }
  }

  dispose(): void {
    // A matcher of a replaced instance belongs to dead wasm memory.
    if (this.generation === this.host.generation) this.m.dispose();
  }
}

/** The xgrammar instance of one engine: tokenizer info, compiler, a bounded cache of grammars. */
export class GrammarHost {
  generation = 0;
  readonly stopIds: number[];
  /** Token id by text, for the forced finish; the longest text's length. */
  readonly byText = new Map<string, number>();
  longest = 1;
  /** Closing tokens (longest first), then "0", ",", ":"; then every token by length. */
  readonly preferred: number[] = [];
  readonly byLength: number[];
  private info!: XG.TokenizerInfo;
  private compiler!: XG.GrammarCompiler;
  private cache = new Map<string, XG.CompiledGrammar>();
  /** The replacement of an aborted instance, under way. */
  private replacing: Promise<void> | null = null;

  private constructor(
    private xg: XGrammar,
    private tokens: string[],
    private vocabSize: number,
    stopIds: number[],
  ) {
    this.stopIds = [...stopIds];
    tokens.forEach((t, id) => {
      if (t === "" || this.byText.has(t)) return;
      this.byText.set(t, id);
      this.longest = Math.max(this.longest, t.length);
    });
    const closers = [...this.byText.entries()].filter(([t]) => /^["}\]]+$/.test(t))
      .sort((a, b) => b[0].length - a[0].length || a[1] - b[1]).map(([, id]) => id);
    this.preferred.push(...closers);
    for (const t of ["0", ",", ":"]) {
      const id = this.byText.get(t);
      if (id !== undefined) this.preferred.push(id);
    }
    this.byLength = [...this.byText.entries()].sort((a, b) => a[0].length - b[0].length || a[1] - b[1])
      .map(([, id]) => id);
  }

  static async create(tokenizer: Tokenizer, vocabSize: number, stopIds: number[]): Promise<GrammarHost> {
    const host = new GrammarHost(await importInstance(), grammarVocabulary(tokenizer), vocabSize, stopIds);
    await host.init();
    return host;
  }

  private async init(): Promise<void> {
    this.info = await this.xg.TokenizerInfo.createTokenizerInfo(
      this.tokens,
      "raw",
      false,
      this.vocabSize,
      this.stopIds,
    );
    this.compiler = await this.xg.GrammarCompiler.createGrammarCompiler(this.info, false);
  }

  /** Compiles (or finds cached) the grammar of a spec; GrammarError for input xgrammar rejects. */
  async compile(spec: GrammarSpec): Promise<XG.CompiledGrammar> {
    const key = JSON.stringify(spec);
    if (this.replacing) await this.replacing;
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    const errors: string[] = [];
    // The wasm writes its reason to console.error before aborting.
    errorSink = (line) => errors.push(line);
    let compiled: XG.CompiledGrammar;
    try {
      compiled = await this.compileNow(spec);
    } catch (e) {
      errorSink = null;
      const why = errors.map((l) => l.replace(/^\[FATAL\] \S+: /, "")).filter((l) => !/^Aborted/.test(l))
        .join("; ") || (e as Error).message;
      // The request's 400 need not wait for the new instance; the next compile does.
      this.replacing = this.replace().finally(() => this.replacing = null);
      throw new GrammarError(why);
    } finally {
      errorSink = null;
    }
    this.cache.set(key, compiled);
    if (this.cache.size > MAX_CACHED) {
      const [oldest, g] = this.cache.entries().next().value!;
      this.cache.delete(oldest);
      g.dispose();
    }
    return compiled;
  }

  private async compileNow(spec: GrammarSpec): Promise<XG.CompiledGrammar> {
    switch (spec.type) {
      case "json_object":
        // JSON text with no whitespace between tokens, starting at an object.
        return await this.compiler.compileJSONSchema('{"type": "object"}', false, -1, [",", ":"], false);
      case "json_schema":
        return await this.compiler.compileJSONSchema(spec.schema, false, -1, [",", ":"], true);
      case "structural_tag": {
        const tag = JSON.parse(spec.tag);
        await this.compactSchemas(tag);
        return await this.compiler.compileStructuralTag(tag);
      }
    }
  }

  /**
   * A structural tag's json_schema parts allow free whitespace (random weights then loop on spaces):
   * each becomes the grammar of its schema with compact separators, as response_format's.
   */
  private async compactSchemas(node: unknown): Promise<void> {
    if (typeof node !== "object" || node === null) return;
    const n = node as Record<string, unknown>;
    if (n.type === "json_schema" && "json_schema" in n) {
      const g = await this.xg.Grammar.fromJSONSchema(
        JSON.stringify(n.json_schema),
        false,
        -1,
        [",", ":"],
        true,
      );
      n.type = "grammar";
      n.grammar = g.toString();
      delete n.json_schema;
      g.dispose();
      return;
    }
    for (const v of Object.values(n)) await this.compactSchemas(v);
  }

  /** A new instance after an abort: the old one's memory is not to be trusted again. */
  private async replace(): Promise<void> {
    this.xg = await freshInstance();
    this.generation++;
    this.cache.clear();
    await this.init();
  }

  async matcher(spec: GrammarSpec): Promise<Matcher> {
    const compiled = await this.compile(spec);
    if (this.replacing) await this.replacing;
    return new Matcher(this, await this.xg.GrammarMatcher.createGrammarMatcher(compiled), this.generation);
  }
}
