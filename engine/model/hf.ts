// Hugging Face model folders: config.json, safetensors weights (single or sharded), tokenizer, chat template.

import { type Json, readJsonFile } from "./json_file.ts";
import { basename, join } from "node:path";
import { chatTemplateFrom } from "./chat_template.ts";
import { llama3RopeFactors, type Llama3RopeScaling } from "./rope.ts";
import { expectedTensors } from "./manifest.ts";
import { readSafetensorsFiles } from "./safetensors.ts";
import {
  type Architecture,
  type GenerationDefaults,
  type LoadedModel,
  type LoadProgress,
  type ModelConfig,
  ModelLoadError,
  type WeightSource,
  type WeightTensor,
} from "./types.ts";
import { loadHfTokenizer, specialTokenContent } from "../tokenizer/hf_tokenizer.ts";

export interface HfLoadOptions {
  progress?: LoadProgress;
  /** Caps the context below what the model was trained for (memory). */
  maxContext?: number;
  /** Config, tokenizer and chat template only (the HTTP thread's view). */
  skipWeights?: boolean;
}

const ARCHITECTURES: Record<string, Architecture> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "mistral",
  Qwen2ForCausalLM: "qwen2",
  Qwen3ForCausalLM: "qwen3",
};

function ids(v: unknown): number[] {
  if (typeof v === "number" && Number.isInteger(v)) return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number" && Number.isInteger(x));
  return [];
}

type Bad = (msg: string) => never;
type Reader = (key: string, fallback?: number) => number;

/**
 * Maps config.json (and generation_config.json, for bos/eos) onto ModelConfig.
 * `file` is only used in error messages.
 */
export function parseHfConfig(
  raw: Json,
  generation: Json | null = null,
  file = "config.json",
  maxContext?: number,
): ModelConfig {
  const bad: Bad = (msg) => {
    throw new ModelLoadError(`${file}: ${msg}`, file);
  };
  // The checks run in this order so a config with several faults reports the same one first.
  const { architecture, archName } = hfArchitecture(raw, bad);
  const { int, num } = fieldReaders(raw, bad);
  const { hiddenSize, numHeads, numKvHeads, headDim } = hfAttentionShape(int, bad);
  const act = raw.hidden_act ?? raw.hidden_activation ?? "silu";
  if (act !== "silu") bad(`hidden_act ${String(act)} is not supported (only silu)`);
  const { ropeTheta, llama3 } = hfRope(raw, num, bad);
  const attentionBias = hfAttentionBias(raw, architecture, archName, bad);
  const context = hfContext(raw, architecture, int, maxContext);
  const { bos, eos } = hfSpecialTokens(raw, generation);

  return {
    architecture,
    vocabSize: int("vocab_size"),
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta,
    ...(llama3 ? { ropeFreqFactors: llama3RopeFactors(ropeTheta, headDim, llama3) } : {}),
    maxContext: context,
    tieEmbeddings: typeof raw.tie_word_embeddings === "boolean" ? raw.tie_word_embeddings : false,
    attentionBias,
    qkNorm: architecture === "qwen3",
    bosTokenId: bos,
    eosTokenIds: eos,
  };
}

function hfArchitecture(raw: Json, bad: Bad): { architecture: Architecture; archName: string } {
  const archs = Array.isArray(raw.architectures) ? raw.architectures as unknown[] : [];
  const archName = typeof archs[0] === "string" ? archs[0] : undefined;
  if (!archName) bad(`no "architectures" entry (supported: ${Object.keys(ARCHITECTURES).join(", ")})`);
  const architecture = ARCHITECTURES[archName!];
  if (!architecture) {
    bad(`unsupported architecture ${archName} (supported: ${Object.keys(ARCHITECTURES).join(", ")})`);
  }
  return { architecture, archName: archName! };
}

/** Positive-integer and positive-number readers; a missing field takes the fallback or fails. */
function fieldReaders(raw: Json, bad: Bad): { int: Reader; num: Reader } {
  const int = (key: string, fallback?: number): number => {
    const v = raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      bad(`missing required field "${key}"`);
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) bad(`"${key}" must be a positive integer`);
    return v as number;
  };
  const num = (key: string, fallback?: number): number => {
    const v = raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      bad(`missing required field "${key}"`);
    }
    if (typeof v !== "number" || !(v > 0)) bad(`"${key}" must be a positive number`);
    return v as number;
  };
  return { int, num };
}

function hfAttentionShape(int: Reader, bad: Bad) {
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    bad(`num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = int("head_dim", Math.floor(hiddenSize / numHeads));
  return { hiddenSize, numHeads, numKvHeads, headDim };
}

/** rope_theta and the llama3 frequency scaling, from rope_scaling and/or rope_parameters. */
function hfRope(raw: Json, num: Reader, bad: Bad): { ropeTheta: number; llama3: Llama3RopeScaling | null } {
  // Newer transformers move rope settings into rope_parameters; older ones use rope_theta + rope_scaling.
  const ropeParams = (raw.rope_parameters && typeof raw.rope_parameters === "object")
    ? raw.rope_parameters as Json
    : null;
  let ropeTheta = 10000;
  if (typeof ropeParams?.rope_theta === "number") ropeTheta = ropeParams.rope_theta;
  if (raw.rope_theta !== undefined && raw.rope_theta !== null) ropeTheta = num("rope_theta");
  let llama3: Llama3RopeScaling | null = null;
  for (
    const [key, scaling] of [["rope_scaling", raw.rope_scaling], ["rope_parameters", ropeParams]] as const
  ) {
    if (!scaling || typeof scaling !== "object") continue;
    const s = scaling as Json;
    const type = s.rope_type ?? s.type;
    if (type === "llama3") {
      llama3 = llama3Scaling(key, s, bad);
    } else if (type !== undefined && type !== "default") {
      bad(`${key} with rope_type ${String(type)} is not supported (plain RoPE and llama3 only)`);
    } else if (type === undefined && key === "rope_scaling") {
      bad(`rope_scaling ${JSON.stringify(s)} is not supported (plain RoPE and llama3 only)`);
    }
  }
  return { ropeTheta, llama3 };
}

function llama3Scaling(key: string, s: Json, bad: Bad): Llama3RopeScaling {
  const field = (name: string) => {
    const v = s[name];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      bad(`${key}.${name} must be a positive number for rope_type llama3, got ${JSON.stringify(v)}`);
    }
    return v as number;
  };
  const llama3 = {
    factor: field("factor"),
    lowFreqFactor: field("low_freq_factor"),
    highFreqFactor: field("high_freq_factor"),
    originalMaxPositions: field("original_max_position_embeddings"),
  };
  if (llama3.highFreqFactor <= llama3.lowFreqFactor) {
    bad(`${key}: high_freq_factor must exceed low_freq_factor for rope_type llama3`);
  }
  return llama3;
}

function hfAttentionBias(raw: Json, architecture: Architecture, archName: string, bad: Bad): boolean {
  // Qwen2 always has q/k/v bias; elsewhere attention_bias would also add an o_proj bias we don't model.
  let attentionBias = false;
  if (architecture === "qwen2") attentionBias = true;
  else if (raw.attention_bias === true) bad(`attention_bias: true is not supported for ${archName}`);
  if (raw.mlp_bias === true) bad(`mlp_bias: true is not supported`);
  return attentionBias;
}

function hfContext(raw: Json, architecture: Architecture, int: Reader, maxContext?: number): number {
  let context = int("max_position_embeddings", 4096);
  // Sliding-window attention equals full attention for sequences no longer than the window.
  const slidingActive = architecture === "mistral" ? true : raw.use_sliding_window === true;
  if (slidingActive && typeof raw.sliding_window === "number" && raw.sliding_window > 0) {
    context = Math.min(context, raw.sliding_window);
  }
  if (maxContext !== undefined && maxContext > 0) context = Math.min(context, maxContext);
  return context;
}

/** bos/eos: generation_config.json first (as transformers), then config.json; eos merged, deduplicated. */
function hfSpecialTokens(raw: Json, generation: Json | null): { bos: number | null; eos: number[] } {
  const gen = generation ?? {};
  const bos = ids(gen.bos_token_id)[0] ?? ids(raw.bos_token_id)[0] ?? null;
  const eos: number[] = [];
  for (const id of [...ids(gen.eos_token_id), ...ids(raw.eos_token_id)]) if (!eos.includes(id)) eos.push(id);
  return { bos, eos };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Finds the weight files and which file each tensor should be in. */
async function locateWeights(dir: string): Promise<{ files: string[]; fileOf: (name: string) => string }> {
  const single = join(dir, "model.safetensors");
  const indexPath = join(dir, "model.safetensors.index.json");
  if (await exists(indexPath)) {
    const { json } = await readJsonFile(indexPath, true);
    const map = json.weight_map;
    if (!map || typeof map !== "object") {
      throw new ModelLoadError(`${indexPath}: no "weight_map" object`, indexPath);
    }
    const weightMap = map as Record<string, unknown>;
    const shards = new Set<string>();
    for (const [name, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\")) {
        throw new ModelLoadError(`${indexPath}: bad shard name for tensor ${name}`, indexPath, name);
      }
      shards.add(shard);
    }
    const files = [...shards].sort().map((s) => join(dir, s));
    for (const f of files) {
      if (!(await exists(f))) {
        throw new ModelLoadError(`${indexPath}: shard ${basename(f)} listed in weight_map is missing`, f);
      }
    }
    return {
      files,
      fileOf: (name) =>
        typeof weightMap[name] === "string" ? join(dir, weightMap[name] as string) : indexPath,
    };
  }
  if (await exists(single)) return { files: [single], fileOf: () => single };
  const hint = (await exists(join(dir, "pytorch_model.bin")))
    ? " (only safetensors weights are supported, not pytorch_model.bin)"
    : "";
  throw new ModelLoadError(
    `${dir}: no model.safetensors or model.safetensors.index.json${hint}`,
    single,
  );
}

/**
 * The sampling fields vLLM takes from generation_config.json as request defaults. Like vLLM, do_sample
 * is not read: a file that names a temperature means it. Values a request could not carry are dropped.
 */
export function generationDefaults(gen: Json | null): GenerationDefaults {
  if (!gen) return {};
  const out: GenerationDefaults = {};
  const n = (key: string, ok: (v: number) => boolean): number | undefined => {
    const v = gen[key];
    return typeof v === "number" && Number.isFinite(v) && ok(v) ? v : undefined;
  };
  const set = <K extends keyof GenerationDefaults>(k: K, v: number | undefined) => {
    if (v !== undefined) out[k] = v;
  };
  set("temperature", n("temperature", (v) => v >= 0));
  set("topP", n("top_p", (v) => v > 0 && v <= 1));
  set("topK", n("top_k", (v) => Number.isInteger(v) && v >= -1));
  set("minP", n("min_p", (v) => v >= 0 && v <= 1));
  set("repetitionPenalty", n("repetition_penalty", (v) => v > 0));
  set("maxNewTokens", n("max_new_tokens", (v) => Number.isInteger(v) && v >= 1));
  return out;
}

async function chatTemplateSource(dir: string, tokenizerConfig: Json): Promise<string | null> {
  const t = tokenizerConfig.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    // Named templates: [{name, template}]; "default" is the chat one.
    const entries = t as { name?: unknown; template?: unknown }[];
    const pick = entries.find((e) => e.name === "default") ?? entries[0];
    if (pick && typeof pick.template === "string") return pick.template;
  }
  try {
    return await Deno.readTextFile(join(dir, "chat_template.jinja"));
  } catch {
    // fall through
  }
  const j = await readJsonFile(join(dir, "chat_template.json"), false);
  if (j && typeof j.json.chat_template === "string") return j.json.chat_template;
  return null;
}

export async function loadHfFolder(dir: string, opts: HfLoadOptions = {}): Promise<LoadedModel> {
  const configPath = join(dir, "config.json");
  const { json: rawConfig } = await readJsonFile(configPath, true);
  const gen = (await readJsonFile(join(dir, "generation_config.json"), false))?.json ?? null;
  const config = parseHfConfig(rawConfig, gen, configPath, opts.maxContext);

  const { files, fileOf } = await locateWeights(dir);
  const { weights } = opts.skipWeights
    ? { weights: noWeights(dir) }
    : await readWeights(config, files, fileOf, opts);
  return { ...(await loadTokenizerSide(dir, config, gen, opts)), weights };
}

/** The tokenizer side alone is enough for the HTTP thread, which never touches the weights. */
function noWeights(dir: string): WeightSource {
  const fail = (): never => {
    throw new Error(`${dir}: weights were not loaded (skipWeights)`);
  };
  return { get: fail, has: () => false, names: () => [] };
}

async function readWeights(
  config: ModelConfig,
  files: string[],
  fileOf: (name: string) => string,
  opts: HfLoadOptions,
): Promise<{ weights: WeightSource }> {
  const shards = await readSafetensorsFiles(files, { progress: opts.progress });
  const tensors = tensorsByName(shards);
  checkManifest(tensors, config, fileOf);
  return { weights: tensorSource(tensors, fileOf) };
}

/** All shards' tensors in one map; a name in two shards is an error. */
function tensorsByName(shards: { tensors: Map<string, WeightTensor> }[]): Map<string, WeightTensor> {
  const tensors = new Map<string, WeightTensor>();
  for (const shard of shards) {
    for (const [name, t] of shard.tensors) {
      const prev = tensors.get(name);
      if (prev) {
        throw new ModelLoadError(`tensor ${name} is in both ${prev.file} and ${t.file}`, t.file, name);
      }
      tensors.set(name, t);
    }
  }
  return tensors;
}

/** Every tensor the config implies is present with the expected shape. */
function checkManifest(
  tensors: Map<string, WeightTensor>,
  config: ModelConfig,
  fileOf: (name: string) => string,
): void {
  for (const { name, shape } of expectedTensors(config)) {
    const t = tensors.get(name);
    if (!t) {
      const file = fileOf(name);
      throw new ModelLoadError(`${file}: missing tensor ${name}`, file, name);
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(
        `${t.file}: tensor ${name} has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`,
        t.file,
        name,
      );
    }
  }
}

function tensorSource(
  tensors: Map<string, WeightTensor>,
  fileOf: (name: string) => string,
): WeightSource {
  return {
    get(name: string): WeightTensor {
      const t = tensors.get(name);
      if (!t) {
        const file = fileOf(name);
        throw new ModelLoadError(`${file}: missing tensor ${name}`, file, name);
      }
      return t;
    },
    has: (name) => tensors.has(name),
    names: () => [...tensors.keys()],
  };
}

async function loadTokenizerSide(
  dir: string,
  config: ModelConfig,
  gen: Json | null,
  opts: HfLoadOptions,
): Promise<Omit<LoadedModel, "weights">> {
  opts.progress?.({ phase: "tokenizer" });
  const tokenizer = await loadHfTokenizer(dir, {
    bosTokenId: config.bosTokenId,
    eosTokenIds: config.eosTokenIds,
  });
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new ModelLoadError(
      `${join(dir, "tokenizer.json")}: tokenizer has ${tokenizer.vocabSize} tokens but the model's ` +
        `vocab_size is ${config.vocabSize}`,
      join(dir, "tokenizer.json"),
    );
  }
  if (config.bosTokenId === null) config.bosTokenId = tokenizer.bosTokenId;
  for (const id of tokenizer.eosTokenIds) if (!config.eosTokenIds.includes(id)) config.eosTokenIds.push(id);

  const template = await chatTemplateSource(dir, tokenizer.config);
  // Like transformers: templates see the tokenizer_config tokens, or nothing when it names none.
  const chatTemplate = chatTemplateFrom(template, {
    bosToken: specialTokenContent(tokenizer.config.bos_token) ?? "",
    eosToken: specialTokenContent(tokenizer.config.eos_token) ?? "",
  });
  opts.progress?.({ phase: "done" });

  return {
    name: basename(dir.replace(/[/\\]+$/, "")) || dir,
    path: dir,
    config,
    tokenizer,
    chatTemplate,
    generation: generationDefaults(gen),
  };
}
