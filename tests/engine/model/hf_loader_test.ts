// Hugging Face folders: generated tiny models load with the right config, tensors, tokenizer and chat
// template; broken folders fail with errors that name the file and the tensor.

import { assert, assertEquals, assertRejects, assertThrows } from "../../helpers/assert.ts";
import { join } from "node:path";
import { loadModel } from "../../../engine/model/load.ts";
import { loadHfFolder, parseHfConfig } from "../../../engine/model/hf.ts";
import { expectedTensors } from "../../../engine/model/manifest.ts";
import { readSafetensors, type TensorToWrite, writeSafetensors } from "../../../engine/model/safetensors.ts";
import {
  ChatTemplateError,
  chatTemplateFrom,
  DEFAULT_CHAT_TEMPLATE,
} from "../../../engine/model/chat_template.ts";
import { ModelLoadError } from "../../../engine/model/types.ts";
import { makeModel, type PresetName } from "../../../tools/make_model.ts";
import { f32ToBf16Bits, f32ToF16Bits } from "../../../engine/model/weights.ts";

const root = await Deno.makeTempDir({ prefix: "ragtime_hf_test_" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(root, { recursive: true });
  } catch {
    // already gone
  }
});

let counter = 0;
async function fresh(
  preset: PresetName,
  opts: { seed?: number; shards?: number; dtype?: "f32" | "f16" | "bf16"; set?: Record<string, unknown> } =
    {},
) {
  const dir = join(root, `${preset}-${counter++}`);
  await makeModel({ preset, out: dir, ...opts });
  return dir;
}

async function editJson(path: string, edit: (j: Record<string, unknown>) => void) {
  const j = JSON.parse(await Deno.readTextFile(path));
  edit(j);
  await Deno.writeTextFile(path, JSON.stringify(j, null, 2));
}

const ST: Record<string, string> = { f32: "F32", f16: "F16", bf16: "BF16" };

/** Rewrites model.safetensors through `edit`, keeping tensor order. */
async function editWeights(dir: string, edit: (ts: TensorToWrite[]) => TensorToWrite[]) {
  const file = join(dir, "model.safetensors");
  const st = await readSafetensors(file);
  const list: TensorToWrite[] = [...st.tensors.values()].map((t) => ({
    name: t.name,
    dtype: ST[t.dtype],
    shape: t.shape,
    data: t.bytes.slice(),
  }));
  await writeSafetensors(file, edit(list));
}

function isLoadError(e: Error): asserts e is ModelLoadError {
  assert(e instanceof ModelLoadError, `expected ModelLoadError, got ${e.name}: ${e.message}`);
}

const TEXTS = [
  "Hello world, the model is here!",
  "héllo  wörld 🤗\n\tx = 42;",
  "  leading and trailing spaces  ",
  "<|im_start|> is text unless special",
];

Deno.test("tiny-llama loads: config, tensors, tokenizer, template", async () => {
  const dir = await fresh("tiny-llama");
  const m = await loadModel(dir);
  assertEquals(m.config, {
    architecture: "llama",
    vocabSize: 512,
    hiddenSize: 64,
    intermediateSize: 128,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxContext: 1024,
    tieEmbeddings: false,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  });
  const expected = expectedTensors(m.config);
  assertEquals(m.weights.names().sort(), expected.map((t) => t.name).sort());
  for (const { name, shape } of expected) {
    const t = m.weights.get(name);
    assertEquals(t.shape, shape, name);
    assertEquals(t.dtype, "f32");
    assertEquals(t.bytes.length, shape.reduce((a, b) => a * b, 1) * 4);
  }
  assertEquals(m.weights.get("lm_head.weight").shape, [512, 64]);
  // Norm weights sit near 1, projections near 0.
  const norm = new Float32Array(m.weights.get("model.norm.weight").bytes.slice().buffer);
  assert(norm.every((x) => x > 0.4 && x < 1.6) && norm.some((x) => Math.abs(x - 1) > 0.01));

  const tok = m.tokenizer;
  assertEquals([tok.bosTokenId, tok.eosTokenIds, tok.vocabSize], [1, [2], 512]);
  for (const s of TEXTS) {
    const ids = tok.encode(s, false);
    assertEquals(tok.decode(ids), s);
    assertEquals(tok.encode(s, true), [1, ...ids], "add_bos_token prepends <s>");
    assertEquals(tok.decode([1, ...ids, 2], true), s);
    assertEquals(tok.decode([1, ...ids, 2], false), `<s>${s}</s>`);
    // Token texts concatenate back to ASCII text (multi-byte characters may split across tokens).
    if ([...s].every((ch) => ch.charCodeAt(0) < 128)) {
      assertEquals(ids.map((id) => tok.tokenText(id)).join(""), s);
    }
  }
  assertEquals(tok.tokenText(2), "</s>");
  assertEquals(tok.decode([]), "");
  assertEquals(tok.decode([9999]), "", "ids past the tokenizer decode to nothing");
  // The word list makes common words single tokens.
  assertEquals(tok.encode(" the", false).length, 1);
  assertEquals(tok.tokenText(tok.encode(" world", false)[0]), " world");

  assertEquals(
    m.chatTemplate.render([{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }], true),
    "<s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n",
  );
  assertEquals(m.generation, {});
  assertEquals(m.name.startsWith("tiny-llama-"), true);
});

Deno.test("tiny-mistral: object-form special tokens, raise_exception surfaces as ChatTemplateError", async () => {
  const m = await loadModel(await fresh("tiny-mistral"));
  assertEquals(m.config.architecture, "mistral");
  assertEquals(m.config.ropeTheta, 1000000);
  assertEquals([m.tokenizer.bosTokenId, m.tokenizer.eosTokenIds], [1, [2]]);
  assertEquals(m.tokenizer.encode("hi", true)[0], 1);
  assertEquals(
    m.chatTemplate.render([{ role: "user", content: "Hi" }, { role: "assistant", content: "Yo" }], false),
    "<s>[INST] Hi [/INST]Yo</s>",
  );
  const err = assertThrows(() => m.chatTemplate.render([{ role: "system", content: "x" }], true));
  assert(err instanceof ChatTemplateError && /Only user and assistant/.test(err.message), err.message);
});

Deno.test("tiny-qwen2: q/k/v bias, tied embeddings, eos list and sampling defaults", async () => {
  const m = await loadModel(await fresh("tiny-qwen2"));
  const c = m.config;
  assertEquals([c.architecture, c.attentionBias, c.tieEmbeddings, c.qkNorm], ["qwen2", true, true, false]);
  assertEquals([c.rmsNormEps, c.ropeTheta, c.maxContext], [1e-6, 1000000, 1024]);
  assertEquals(c.eosTokenIds, [2, 0]);
  assertEquals(m.weights.has("lm_head.weight"), false);
  assertEquals(m.weights.get("model.layers.1.self_attn.k_proj.bias").shape, [32]);
  assertEquals(m.weights.get("model.layers.0.self_attn.q_proj.bias").shape, [64]);
  assertEquals(m.generation, { temperature: 0.7, topP: 0.8, topK: 20, repetitionPenalty: 1.05 });
  // No BOS for Qwen: addSpecial adds nothing.
  assertEquals(m.tokenizer.encode("hello", true), m.tokenizer.encode("hello", false));
  assertEquals(m.tokenizer.eosTokenIds, [2, 0]);
  const ids = m.tokenizer.encode("<|im_start|>user\nhi<|im_end|>", false);
  assertEquals([ids[0], ids[ids.length - 1]], [1, 2], "special tokens in text map to their ids");
  assertEquals(
    m.chatTemplate.render([{ role: "user", content: "Hi" }], true),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
  );
});

Deno.test("tiny-qwen3: q/k norm and explicit head_dim", async () => {
  const m = await loadModel(await fresh("tiny-qwen3"));
  const c = m.config;
  assertEquals([c.architecture, c.qkNorm, c.attentionBias, c.tieEmbeddings], ["qwen3", true, false, false]);
  assertEquals([c.headDim, c.numHeads, c.numKvHeads], [32, 4, 2]);
  assertEquals(m.weights.get("model.layers.0.self_attn.q_proj.weight").shape, [128, 64]);
  assertEquals(m.weights.get("model.layers.0.self_attn.k_proj.weight").shape, [64, 64]);
  assertEquals(m.weights.get("model.layers.0.self_attn.o_proj.weight").shape, [64, 128]);
  assertEquals(m.weights.get("model.layers.1.self_attn.q_norm.weight").shape, [32]);
  assertEquals(m.weights.get("model.layers.1.self_attn.k_norm.weight").shape, [32]);
  assertEquals(m.weights.has("model.layers.0.self_attn.q_proj.bias"), false);
});

Deno.test("make-model --set: a preset's shape changed in config.json, the weights to match", async () => {
  // The variant the long-context measurements use (docs/BENCHMARKS.md, session 23).
  const set = {
    hidden_size: 2048,
    num_hidden_layers: 1,
    num_attention_heads: 32,
    max_position_embeddings: 131072,
  };
  const m = await loadModel(await fresh("tiny-llama", { dtype: "f16", set }));
  const c = m.config;
  assertEquals([c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.maxContext], [1, 32, 2, 64, 131072]);
  assertEquals(m.weights.get("model.layers.0.self_attn.q_proj.weight").shape, [2048, 2048]);
  assertEquals(m.weights.get("model.layers.0.self_attn.k_proj.weight").shape, [128, 2048]);
  assertEquals(m.weights.has("model.layers.1.self_attn.q_proj.weight"), false);
});

Deno.test("generation is deterministic per seed; the weights follow it", async () => {
  const a = await fresh("tiny-llama", { seed: 7 });
  const b = await fresh("tiny-llama", { seed: 7 });
  const c = await fresh("tiny-llama", { seed: 8 });
  for (const f of ["model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"]) {
    assertEquals(await Deno.readFile(join(a, f)), await Deno.readFile(join(b, f)), f);
  }
  const [ma, mb, mc] = await Promise.all([loadHfFolder(a), loadHfFolder(b), loadHfFolder(c)]);
  const embed = (m: typeof ma) => m.weights.get("model.embed_tokens.weight").bytes;
  assertEquals(embed(ma), embed(mb));
  assert(embed(ma).some((x, i) => x !== embed(mc)[i]));
});

Deno.test("f16 and bf16 weights load with their dtype", async () => {
  for (const dtype of ["f16", "bf16"] as const) {
    const m = await loadModel(await fresh("tiny-qwen2", { dtype }));
    const t = m.weights.get("model.embed_tokens.weight");
    assertEquals([t.dtype, t.bytes.length], [dtype, 512 * 64 * 2]);
  }
  assertEquals(
    [1, -2, 65504, 1e-8, 2 ** -24, 0.1].map(f32ToF16Bits),
    [0x3c00, 0xc000, 0x7bff, 0x0000, 0x0001, 0x2e66],
  );
  assertEquals(f32ToF16Bits(1e6), 0x7c00);
  assertEquals([1, -2, 0.1].map(f32ToBf16Bits), [0x3f80, 0xc000, 0x3dcd]);
});

Deno.test("sharded folder (index.json) loads the same tensors", async () => {
  const single = await loadModel(await fresh("tiny-qwen3", { seed: 3 }));
  const dir = await fresh("tiny-qwen3", { seed: 3, shards: 3 });
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".safetensors"))
    .sort();
  assertEquals(files, [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
  ]);
  const events: { done?: number; total?: number }[] = [];
  const sharded = await loadModel(dir, { progress: (e) => e.phase === "read" && events.push(e) });
  assertEquals(sharded.weights.names().sort(), single.weights.names().sort());
  for (const name of single.weights.names()) {
    assertEquals(sharded.weights.get(name).bytes, single.weights.get(name).bytes, name);
  }
  assert(new Set(sharded.weights.names().map((n) => sharded.weights.get(n).file)).size === 3);
  // Progress is summed over all shards and ends at the total.
  let total = 0;
  for (const f of files) total += (await Deno.stat(join(dir, f))).size;
  assertEquals(events[events.length - 1], { phase: "read", done: total, total } as typeof events[0]);
  for (let i = 1; i < events.length; i++) assert(events[i].done! >= events[i - 1].done!);
});

Deno.test("sharded folder: a tensor missing from its shard names that shard", async () => {
  const dir = await fresh("tiny-llama", { shards: 2 });
  const index = JSON.parse(await Deno.readTextFile(join(dir, "model.safetensors.index.json")));
  const name = "model.norm.weight";
  const shard = index.weight_map[name] as string;
  const file = join(dir, shard);
  const st = await readSafetensors(file);
  await writeSafetensors(
    file,
    [...st.tensors.values()].filter((t) => t.name !== name).map((t) => ({
      name: t.name,
      dtype: ST[t.dtype],
      shape: t.shape,
      data: t.bytes.slice(),
    })),
  );
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  assert(err.message.includes(shard) && err.message.includes(name), err.message);
  assertEquals([err.file, err.tensor], [file, name]);
});

Deno.test("unsupported architecture names config.json and the architecture", async () => {
  const dir = await fresh("tiny-llama");
  await editJson(join(dir, "config.json"), (j) => (j.architectures = ["GPT2LMHeadModel"]));
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  assert(/config\.json/.test(err.message) && /GPT2LMHeadModel/.test(err.message), err.message);
});

Deno.test("rope_scaling: llama3 gives per-frequency divisors, other types and bad fields are rejected", async () => {
  const dir = await fresh("tiny-llama");
  await editJson(join(dir, "config.json"), (j) => (j.rope_scaling = { rope_type: "llama3", factor: 8 }));
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  assert(/rope_scaling\.low_freq_factor/.test(err.message) && /config\.json/.test(err.message), err.message);

  const base = { architectures: ["LlamaForCausalLM"], vocab_size: 8, hidden_size: 8, intermediate_size: 8 };
  const more = {
    num_hidden_layers: 1,
    num_attention_heads: 2,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 64,
  };
  const c = parseHfConfig({ ...base, ...more, rope_parameters: { rope_type: "default", rope_theta: 5e5 } });
  assertEquals([c.ropeTheta, c.numKvHeads, c.headDim, c.tieEmbeddings], [500000, 2, 4, false]);
  assertEquals(parseHfConfig({ ...base, ...more, rope_scaling: { rope_type: "default" } }).ropeTheta, 10000);
  assertThrows(
    () => parseHfConfig({ ...base, ...more, rope_parameters: { rope_type: "yarn", factor: 4 } }),
    /yarn/,
  );
  // Llama 3.1's published setting on a 64-wide head: wavelengths under 8192/4 keep their frequency,
  // over 8192/1 are divided by 8, between are interpolated. By hand for j = 16: inverse frequency
  // 500000^(-1/2), wavelength 2*pi*707.107 = 4442.9, smooth = (8192/4442.9 - 1) / 3 = 0.28128,
  // divisor = 1 / ((1 - 0.28128) / 8 + 0.28128) = 2.6945.
  const llama31 = {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  };
  const c3 = parseHfConfig({
    ...base,
    ...more,
    hidden_size: 128,
    rope_theta: 500000,
    rope_scaling: llama31,
  });
  const f = c3.ropeFreqFactors!;
  assertEquals(f.length, 32);
  assert(f.slice(0, 15).every((x) => x === 1), `high frequencies unscaled: ${f.slice(0, 15)}`);
  assert(f.slice(18).every((x) => x === 8), `low frequencies divided by 8: ${f.slice(18)}`);
  assert(Math.abs(f[16] - 2.6945) < 1e-3, `j=16: ${f[16]}`);
  assert(f[14] < f[15] && f[15] < f[16] && f[16] < f[17] && f[17] < f[18], "monotonic between");
  assertEquals(parseHfConfig({ ...base, ...more, rope_theta: 500000 }).ropeFreqFactors, undefined);
  assertThrows(
    () => parseHfConfig({ ...base, ...more, rope_scaling: { ...llama31, high_freq_factor: 1 } }),
    /high_freq_factor/,
  );
  assertThrows(() => parseHfConfig({ ...base, num_hidden_layers: 1 }), /num_attention_heads/);
  // Mistral's sliding window caps the context (exact for prompts that fit the window); opts cap it further.
  const mistral = { ...base, ...more, architectures: ["MistralForCausalLM"], sliding_window: 32 };
  assertEquals(parseHfConfig(mistral).maxContext, 32);
  assertEquals(parseHfConfig({ ...base, ...more }, null, "config.json", 16).maxContext, 16);
});

Deno.test("missing tensor names model.safetensors and the tensor", async () => {
  const dir = await fresh("tiny-llama");
  const name = "model.layers.1.mlp.up_proj.weight";
  await editWeights(dir, (ts) => ts.filter((t) => t.name !== name));
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  assert(err.message.includes("model.safetensors") && err.message.includes(name), err.message);
  assertEquals(err.tensor, name);
});

Deno.test("shape mismatch names file, tensor, expected and actual shape", async () => {
  const dir = await fresh("tiny-qwen2");
  const name = "model.layers.0.self_attn.k_proj.weight";
  await editWeights(dir, (ts) => ts.map((t) => (t.name === name ? { ...t, shape: [64, 32] } : t)));
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  for (const part of ["model.safetensors", name, "[64, 32]", "expected [32, 64]"]) {
    assert(err.message.includes(part), `"${part}" not in: ${err.message}`);
  }
});

Deno.test("truncated safetensors names the file and the first tensor past the end", async () => {
  const dir = await fresh("tiny-llama");
  const file = join(dir, "model.safetensors");
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(file, bytes.subarray(0, bytes.length - 100));
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  // lm_head.weight is written last.
  assert(err.message.includes("model.safetensors") && err.message.includes("lm_head.weight"), err.message);
  assert(/truncated/.test(err.message), err.message);
  assertEquals(err.tensor, "lm_head.weight");
});

Deno.test("unsupported dtype names file, tensor and dtype", async () => {
  const dir = await fresh("tiny-llama");
  await editWeights(
    dir,
    (ts) => [...ts, { name: "extra.quant", dtype: "I8", shape: [4, 2], data: new Uint8Array(8) }],
  );
  const err = await assertRejects(() => loadModel(dir));
  isLoadError(err);
  for (const part of ["model.safetensors", "extra.quant", "I8"]) {
    assert(err.message.includes(part), `"${part}" not in: ${err.message}`);
  }
});

Deno.test("folder without weights, missing path, and get() of an unknown tensor", async () => {
  const dir = await fresh("tiny-llama");
  await Deno.remove(join(dir, "model.safetensors"));
  await assertRejects(() => loadModel(dir), /model\.safetensors/);
  await assertRejects(() => loadModel(join(root, "nope")), /model path not found: .*nope/);

  const m = await loadModel(await fresh("tiny-llama"));
  const err = assertThrows(() => m.weights.get("model.layers.9.mlp.up_proj.weight"));
  isLoadError(err);
  assert(err.message.includes("model.safetensors") && err.message.includes("layers.9"), err.message);
});

Deno.test("chat templates: default when none, errors are clear", async () => {
  const dir = await fresh("tiny-qwen3");
  await editJson(join(dir, "tokenizer_config.json"), (j) => delete j.chat_template);
  const m = await loadModel(dir);
  assertEquals(
    m.chatTemplate.render([{ role: "user", content: "Hi" }], false),
    "<|im_start|>user\nHi<|im_end|>\n",
  );
  const t = chatTemplateFrom(null, { bosToken: "<s>", eosToken: "</s>" });
  assertEquals(
    t.render([{ role: "user", content: "a" }], true),
    chatTemplateFrom(DEFAULT_CHAT_TEMPLATE, { bosToken: "", eosToken: "" }).render(
      [{ role: "user", content: "a" }],
      true,
    ),
  );
  const tpl = chatTemplateFrom(
    "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}",
    {
      bosToken: "<s>",
      eosToken: "</s>",
    },
  );
  assertEquals(
    tpl.render([{ role: "user", content: "x" }, { role: "assistant", content: "y" }], false),
    "<s>xy</s>",
  );
  assertThrows(() => chatTemplateFrom("{% for %}", { bosToken: "", eosToken: "" }), /chat template/);
  // A separate chat_template.jinja (newer transformers) is picked up too.
  await Deno.writeTextFile(join(dir, "chat_template.jinja"), "{{ messages[0]['content'] }}!");
  assertEquals((await loadModel(dir)).chatTemplate.render([{ role: "user", content: "yo" }], true), "yo!");
});

Deno.test("chat templates have strftime_now, as under transformers (Llama 3.x's Today Date line)", () => {
  // Llama 3.2's own construction: the current date when the template can make it, else a fixed one.
  const tpl = chatTemplateFrom(
    '{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}' +
      '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}Today Date: {{ date_string }}',
    { bosToken: "", eosToken: "" },
  );
  const out = tpl.render([], false);
  const now = new Date();
  assert(/^Today Date: \d{2} [A-Z][a-z]{2} \d{4}$/.test(out), out);
  assert(out.endsWith(String(now.getFullYear())) || out.endsWith(String(now.getUTCFullYear())), out);
});
