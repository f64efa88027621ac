// Hugging Face tokenizer.json (+ tokenizer_config.json) behind the engine's Tokenizer interface.

import { readJsonFile } from "../model/json_file.ts";
import { Tokenizer as JsTokenizer } from "@huggingface/tokenizers";
import { ModelLoadError, type Tokenizer } from "../model/types.ts";

type Json = Record<string, unknown>;

export interface HfTokenizer extends Tokenizer {
  /** Special-token strings for chat templates ("" when the tokenizer has none). */
  bosToken: string;
  eosToken: string;
  /** Raw tokenizer_config.json (chat_template etc.). */
  config: Json;
  tokenToId(token: string): number | undefined;
}

export interface HfTokenizerOptions {
  /** From config.json / generation_config.json; used when tokenizer_config.json names none. */
  bosTokenId?: number | null;
  /** Stop tokens from the model config; merged with the tokenizer's eos_token. */
  eosTokenIds?: number[];
  /** For error messages. */
  file?: string;
}

/** bos_token/eos_token may be a plain string or an AddedToken-like {content}. */
export function specialTokenContent(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as Json).content === "string") {
    return (v as Json).content as string;
  }
  return null;
}

export function hfTokenizerFrom(
  tokenizerJson: unknown,
  tokenizerConfig: Json,
  opts: HfTokenizerOptions = {},
): HfTokenizer {
  const file = opts.file ?? "tokenizer.json";
  const tok = buildJsTokenizer(tokenizerJson, jsLibraryConfig(tokenizerConfig), file);
  const vocabSize = vocabSizeOf(tok);
  const decodeRaw = rawDecoder(tok, vocabSize);
  const { bosToken, eosToken, bosTokenId, eosTokenIds } = specialTokens(tok, tokenizerConfig, opts);
  const { wantBos, wantEos, usePostProcessor } = specialTokenPolicy(
    tok,
    tokenizerConfig,
    bosTokenId,
    eosTokenIds,
  );
  const eosForAppend = tokenId(tok, eosToken) ?? eosTokenIds[0];

  return {
    vocabSize,
    bosTokenId,
    eosTokenIds,
    bosToken: bosToken ?? (bosTokenId !== null ? decodeRaw([bosTokenId], false) : ""),
    eosToken: eosToken ?? (eosTokenIds.length ? decodeRaw([eosTokenIds[0]], false) : ""),
    config: tokenizerConfig,
    encode(text: string, addSpecial: boolean): number[] {
      if (!addSpecial) return tok.encode(text, { add_special_tokens: false }).ids;
      if (usePostProcessor) return tok.encode(text, { add_special_tokens: true }).ids;
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      if (wantBos && bosTokenId !== null) ids.unshift(bosTokenId);
      if (wantEos && eosForAppend !== undefined) ids.push(eosForAppend);
      return ids;
    },
    decode(ids: number[], skipSpecial = false): string {
      return decodeRaw(ids, skipSpecial);
    },
    tokenText(id: number): string {
      return decodeRaw([id], false);
    },
    tokenToId(token: string): number | undefined {
      return tok.token_to_id(token);
    },
  };
}

/** tokenizer_config.json as the JS library should see it. */
function jsLibraryConfig(tokenizerConfig: Json): Json {
  // The JS library reads some string fields directly; pass plain strings for AddedToken-like values.
  const cfg: Json = { ...tokenizerConfig };
  for (const k of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
    if (k in cfg) cfg[k] = specialTokenContent(cfg[k]);
  }
  // transformers no longer cleans up spaces unless asked; the JS library defaults to doing it.
  cfg.clean_up_tokenization_spaces = tokenizerConfig.clean_up_tokenization_spaces === true;
  if (Array.isArray(cfg.additional_special_tokens)) {
    cfg.additional_special_tokens = (cfg.additional_special_tokens as unknown[])
      .map(specialTokenContent)
      .filter((s): s is string => s !== null);
  }
  return cfg;
}

/** Any failure to build the library's tokenizer becomes a ModelLoadError naming the file. */
function buildJsTokenizer(tokenizerJson: unknown, cfg: Json, file: string): JsTokenizer {
  try {
    const tj = tokenizerJson as Json;
    if (!tj || typeof tj !== "object" || !tj.model) throw new Error('no "model" section');
    return new JsTokenizer({ added_tokens: [], ...tj }, cfg);
  } catch (e) {
    throw new ModelLoadError(`${file}: unsupported or invalid tokenizer (${(e as Error).message})`, file);
  }
}

/** One past the largest id, added tokens included (ids may have gaps). */
function vocabSizeOf(tok: JsTokenizer): number {
  let vocabSize = 0;
  for (const id of tok.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
  return vocabSize;
}

/** decode() over the ids the tokenizer knows, optionally without special tokens. */
function rawDecoder(tok: JsTokenizer, vocabSize: number): (ids: number[], skipSpecial: boolean) => string {
  const specialIds = new Set(
    Array.from(tok.get_added_tokens_decoder().values()).filter((t) => t.special).map((t) => t.id),
  );
  const valid = (id: number) =>
    Number.isInteger(id) && id >= 0 && id < vocabSize && tok.id_to_token(id) !== undefined;
  return (ids: number[], skipSpecial: boolean): string => {
    // Models often have more embedding rows than tokenizer entries; such ids decode to nothing.
    const kept = ids.filter((id) => valid(id) && !(skipSpecial && specialIds.has(id)));
    if (kept.length === 0) return "";
    return tok.decode(kept, { skip_special_tokens: skipSpecial, clean_up_tokenization_spaces: false });
  };
}

function tokenId(tok: JsTokenizer, s: string | null): number | undefined {
  return s === null ? undefined : tok.token_to_id(s);
}

/** BOS/EOS strings from tokenizer_config, and their ids merged with the model config's. */
function specialTokens(tok: JsTokenizer, tokenizerConfig: Json, opts: HfTokenizerOptions) {
  const bosToken = specialTokenContent(tokenizerConfig.bos_token);
  const eosToken = specialTokenContent(tokenizerConfig.eos_token);
  const bosTokenId = tokenId(tok, bosToken) ?? opts.bosTokenId ?? null;
  const eosTokenIds: number[] = [];
  for (const id of [...(opts.eosTokenIds ?? []), tokenId(tok, eosToken)]) {
    if (id !== undefined && id !== null && !eosTokenIds.includes(id)) eosTokenIds.push(id);
  }
  return { bosToken, eosToken, bosTokenId, eosTokenIds };
}

/**
 * Whether encode(text, true) adds BOS / EOS, and whether the post-processor already does exactly
 * that. It is probed for what it does on its own; tokenizer_config's add_bos_token / add_eos_token
 * override it (transformers rebuilds the post-processor from those flags).
 */
function specialTokenPolicy(
  tok: JsTokenizer,
  tokenizerConfig: Json,
  bosTokenId: number | null,
  eosTokenIds: number[],
): { wantBos: boolean; wantEos: boolean; usePostProcessor: boolean } {
  const { prefix, suffix } = postProcessorAdditions(tok);
  const ppAddsBos = bosTokenId !== null && prefix.includes(bosTokenId);
  const ppAddsEos = suffix.some((id) => eosTokenIds.includes(id));
  const wantBos = typeof tokenizerConfig.add_bos_token === "boolean"
    ? tokenizerConfig.add_bos_token
    : ppAddsBos;
  const wantEos = typeof tokenizerConfig.add_eos_token === "boolean"
    ? tokenizerConfig.add_eos_token
    : ppAddsEos;
  return { wantBos, wantEos, usePostProcessor: wantBos === ppAddsBos && wantEos === ppAddsEos };
}

/** The ids the post-processor puts before and after a probe text's own ids. */
function postProcessorAdditions(tok: JsTokenizer): { prefix: number[]; suffix: number[] } {
  const probePlain = tok.encode("a", { add_special_tokens: false }).ids;
  const probeSpecial = tok.encode("a", { add_special_tokens: true }).ids;
  let k = 0;
  while (
    k <= probeSpecial.length - probePlain.length && !probePlain.every((id, i) => probeSpecial[k + i] === id)
  ) k++;
  return {
    prefix: probeSpecial.slice(0, Math.min(k, probeSpecial.length)),
    suffix: probeSpecial.slice(k + probePlain.length),
  };
}

/** Loads tokenizer.json (required) and tokenizer_config.json (optional) from a model folder. */
export async function loadHfTokenizer(dir: string, opts: HfTokenizerOptions = {}): Promise<HfTokenizer> {
  const file = `${dir}/tokenizer.json`;
  const tj = (await readJsonFile(file, true)).json;
  const tc = (await readJsonFile(`${dir}/tokenizer_config.json`, false))?.json ?? {};
  return hfTokenizerFrom(tj, tc, { ...opts, file });
}
