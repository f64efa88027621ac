import { createHash } from "node:crypto";
import { loadGguf } from "../../../engine/model/gguf.ts";
import { parseGguf } from "../../../engine/model/gguf_file.ts";
import { loadModel } from "../../../engine/model/load.ts";
import { f16BitsToF32 as f16ToF32, f32ToF16Bits as f32ToF16 } from "../../../engine/model/weights.ts";
import { ModelLoadError } from "../../../engine/model/types.ts";
import { assert, assertEquals, assertRejects } from "../../helpers/assert.ts";
import {
  f32Bytes,
  GT,
  meta,
  rowValues,
  tinyLlamaGguf,
  type TinyLlamaOptions,
  writeGguf,
} from "../../helpers/gguf_writer.ts";
import { STORIES260K } from "../../helpers/fixtures.ts";

const STORIES_SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";

async function withTempFile<T>(bytes: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "gguf_test_" });
  const path = `${dir}/model.gguf`;
  try {
    await Deno.writeFile(path, bytes);
    return await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const loadTiny = (o: TinyLlamaOptions = {}) => withTempFile(tinyLlamaGguf(o), (p) => loadGguf(p));

async function expectLoadError(bytes: Uint8Array, pattern: RegExp, tensor?: string): Promise<string> {
  return await withTempFile(bytes, async (path) => {
    const err = await assertRejects(() => loadGguf(path), pattern);
    assert(err instanceof ModelLoadError, `expected ModelLoadError, got ${err.name}`);
    assert(err.message.includes(path), `message should name the file: ${err.message}`);
    assertEquals(err.file, path);
    if (tensor !== undefined) {
      assertEquals(err.tensor, tensor);
      assert(err.message.includes(tensor), `message should name the tensor: ${err.message}`);
    }
    return err.message;
  });
}

function f32Rows(bytes: Uint8Array, cols: number): number[][] {
  const v = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const rows: number[][] = [];
  for (let r = 0; r < v.length / cols; r++) rows.push(Array.from(v.subarray(r * cols, (r + 1) * cols)));
  return rows;
}

function f16Rows(bytes: Uint8Array, cols: number): number[][] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const rows: number[][] = [];
  for (let r = 0; r < bytes.byteLength / 2 / cols; r++) {
    const row: number[] = [];
    for (let c = 0; c < cols; c++) row.push(f16ToF32(dv.getUint16((r * cols + c) * 2, true)));
    rows.push(row);
  }
  return rows;
}

/** HF row -> GGUF row inside heads of size d (the inverse of llama.cpp's q/k permutation). */
function ggufRowOf(hfRow: number, d: number): number {
  const h = Math.floor(hfRow / d), i = hfRow % d;
  const t = Math.floor(i / (d / 2)), j = i % (d / 2);
  return h * d + 2 * j + t;
}

// ---------------------------------------------------------------------------------------------------
// stories260K (real file)

Deno.test("stories260K: config from GGUF metadata", async () => {
  const m = await loadGguf(STORIES260K);
  assertEquals(m.config, {
    architecture: "llama",
    vocabSize: 512,
    hiddenSize: 64,
    intermediateSize: 172,
    numLayers: 5,
    numHeads: 8,
    numKvHeads: 4,
    headDim: 8,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxContext: 2048,
    // output.weight in this file is a byte-identical copy of token_embd.weight.
    tieEmbeddings: true,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  });
  assertEquals(m.name, "stories260K");
  assertEquals(m.path, STORIES260K);
  // The fixture is the published file (its other values below are pinned to it).
  assertEquals(createHash("sha256").update(await Deno.readFile(STORIES260K)).digest("hex"), STORIES_SHA256);
  assertEquals(m.tokenizer.vocabSize, 512);
  assertEquals(m.tokenizer.encode("Once upon a time", true), [1, 403, 407, 261, 378]);
});

Deno.test("stories260K: maxContext option overrides the file's context_length", async () => {
  const m = await loadGguf(STORIES260K, { maxContext: 512 });
  assertEquals(m.config.maxContext, 512);
});

Deno.test("stories260K: weights in HF names, shapes and dtypes", async () => {
  const m = await loadGguf(STORIES260K);
  const names = m.weights.names();
  assertEquals(names.length, 2 + 5 * 9);
  assert(!m.weights.has("lm_head.weight"), "tied: no separate lm_head");
  const expect: [string, number[]][] = [
    ["model.embed_tokens.weight", [512, 64]],
    ["model.norm.weight", [64]],
    ["model.layers.4.input_layernorm.weight", [64]],
    ["model.layers.4.self_attn.q_proj.weight", [64, 64]],
    ["model.layers.4.self_attn.k_proj.weight", [32, 64]],
    ["model.layers.4.self_attn.v_proj.weight", [32, 64]],
    ["model.layers.4.self_attn.o_proj.weight", [64, 64]],
    ["model.layers.4.post_attention_layernorm.weight", [64]],
    ["model.layers.4.mlp.gate_proj.weight", [172, 64]],
    ["model.layers.4.mlp.up_proj.weight", [172, 64]],
    ["model.layers.4.mlp.down_proj.weight", [64, 172]],
  ];
  for (const [name, shape] of expect) {
    const w = m.weights.get(name);
    assertEquals(w.shape, shape, name);
    assertEquals(w.dtype, "f32", name);
    assertEquals(w.name, name);
    assertEquals(w.file, STORIES260K);
    assertEquals(w.bytes.byteLength, shape.reduce((a, b) => a * b, 1) * 4, name);
  }
  const err = (() => {
    try {
      m.weights.get("model.layers.9.mlp.up_proj.weight");
    } catch (e) {
      return e as ModelLoadError;
    }
  })();
  assert(err instanceof ModelLoadError && err.message.includes("model.layers.9.mlp.up_proj.weight"));
  assertEquals(err.tensor, "model.layers.9.mlp.up_proj.weight");
});

Deno.test("stories260K: q/k rows are un-permuted, other tensors are the file's bytes", async () => {
  const bytes = await Deno.readFile(STORIES260K);
  const g = parseGguf(bytes, STORIES260K);
  const raw = (name: string) => {
    const t = g.tensors.find((x) => x.name === name)!;
    return bytes.subarray(t.offset, t.offset + t.byteLength!);
  };
  const m = await loadGguf(STORIES260K);
  for (const [gg, hf, rows] of [["attn_q", "q_proj", 64], ["attn_k", "k_proj", 32]] as const) {
    const fileRows = f32Rows(raw(`blk.2.${gg}.weight`), 64);
    const hfRows = f32Rows(m.weights.get(`model.layers.2.self_attn.${hf}.weight`).bytes, 64);
    assertEquals(hfRows.length, rows);
    for (let r = 0; r < rows; r++) assertEquals(hfRows[r], fileRows[ggufRowOf(r, 8)], `${hf} row ${r}`);
    assert(JSON.stringify(hfRows) !== JSON.stringify(fileRows), "permutation must change the order");
  }
  assertEquals(
    Array.from(m.weights.get("model.layers.2.self_attn.v_proj.weight").bytes),
    Array.from(raw("blk.2.attn_v.weight")),
  );
  assertEquals(
    Array.from(m.weights.get("model.embed_tokens.weight").bytes),
    Array.from(raw("token_embd.weight")),
  );
});

Deno.test("stories260K: progress reports reading in bytes, then parse", async () => {
  const events: { phase: string; done?: number; total?: number }[] = [];
  await loadGguf(STORIES260K, { progress: (e) => events.push(e) });
  const reads = events.filter((e) => e.phase === "read");
  assert(reads.length >= 2, "at least a start and an end event");
  assert(reads.every((e) => e.total === 1185376));
  assertEquals(reads[reads.length - 1].done, 1185376);
  for (let i = 1; i < reads.length; i++) assert(reads[i].done! >= reads[i - 1].done!, "monotonic");
  assertEquals(events[events.length - 1].phase, "parse");
});

Deno.test("stories260K: metadata parse (all keys, typed arrays, header)", async () => {
  const g = parseGguf(await Deno.readFile(STORIES260K), STORIES260K);
  assertEquals(g.version, 3);
  assertEquals(g.alignment, 32);
  assertEquals(g.dataOffset % 32, 0);
  assertEquals(g.tensors.length, 48);
  assertEquals(g.metadata.get("general.architecture"), "llama");
  assertEquals(g.metadata.get("llama.block_count"), 5);
  const tokens = g.metadata.get("tokenizer.ggml.tokens") as string[];
  assertEquals(tokens.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
  assert(g.metadata.get("tokenizer.ggml.scores") instanceof Float32Array);
  assert(g.metadata.get("tokenizer.ggml.token_type") instanceof Int32Array);
  const emb = g.tensors.find((t) => t.name === "token_embd.weight")!;
  assertEquals(emb.dims, [64, 512]);
  assertEquals(emb.typeName, "F32");
});

// ---------------------------------------------------------------------------------------------------
// Bad files

Deno.test("error: truncated file names the file and the first tensor past the end", async () => {
  const bytes = (await Deno.readFile(STORIES260K)).slice(0, 1_100_000);
  const msg = await expectLoadError(bytes, /truncated/, "blk.4.ffn_down.weight");
  assert(msg.includes("1100000"), msg);
});

Deno.test("error: file truncated inside the metadata", async () => {
  const bytes = (await Deno.readFile(STORIES260K)).slice(0, 3000);
  await expectLoadError(bytes, /truncated GGUF file/);
});

Deno.test("error: wrong magic", async () => {
  const bytes = tinyLlamaGguf();
  bytes.set(new TextEncoder().encode("GGML"), 0);
  await expectLoadError(bytes, /not a GGUF file/);
  await expectLoadError(new Uint8Array(0), /not a GGUF file/);
});

Deno.test("error: unsupported GGUF version", async () => {
  await expectLoadError(writeGguf([], [], { version: 1 }), /unsupported GGUF version 1/);
  await expectLoadError(writeGguf([], [], { version: 4 }), /unsupported GGUF version 4/);
});

Deno.test("error: missing tensor names the file and the tensor", async () => {
  const msg = await expectLoadError(
    tinyLlamaGguf({ omit: ["blk.0.ffn_up.weight"] }),
    /missing tensor/,
    "blk.0.ffn_up.weight",
  );
  assert(msg.includes("model.layers.0.mlp.up_proj.weight"), msg);
});

Deno.test("error: wrong shape names the tensor, expected and actual shape", async () => {
  const data = f32Bytes(new Array(32 * 60).fill(0));
  const msg = await expectLoadError(
    tinyLlamaGguf({ override: { "blk.0.ffn_gate.weight": { dims: [32, 60], data } } }),
    /shape/,
    "blk.0.ffn_gate.weight",
  );
  assert(msg.includes("[60, 32]") && msg.includes("[64, 32]"), msg);
});

Deno.test("error: unsupported tensor type names the tensor and the type", async () => {
  // ffn_down is [hidden=32, ffn=256] in HF order: 32 rows of one IQ2_XXS block (66 bytes) each.
  const msg = await expectLoadError(
    tinyLlamaGguf({
      ffn: 256,
      override: { "blk.0.ffn_down.weight": { type: GT.IQ2_XXS, data: new Uint8Array(32 * 66) } },
    }),
    /unsupported type IQ2_XXS/,
    "blk.0.ffn_down.weight",
  );
  assert(msg.includes("Q8_0") && msg.includes("Q4_K"), "lists the supported types: " + msg);
});

Deno.test("synthetic: Q4_K and Q6_K tensors load as F16 of llama.cpp's dequantized values", async () => {
  const fx = JSON.parse(await Deno.readTextFile(new URL("../../fixtures/gguf_quants.json", import.meta.url)));
  const b64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  // ffn_down is [32, 256] in HF order, one 256-value block per row: the fixture's 4 blocks, 8 times.
  for (const name of ["Q4_K", "Q6_K"] as const) {
    const f = fx.types[name];
    const blocks = b64(f.blocks), values = new Float32Array(b64(f.values).buffer);
    const data = new Uint8Array(blocks.length * 8);
    for (let i = 0; i < 8; i++) data.set(blocks, i * blocks.length);
    const m = await loadTiny({ ffn: 256, override: { "blk.0.ffn_down.weight": { type: GT[name], data } } });
    const w = m.weights.get("model.layers.0.mlp.down_proj.weight");
    assertEquals([w.dtype, ...w.shape], ["f16", 32, 256]);
    const got = new Float16Array(w.bytes.buffer, w.bytes.byteOffset, w.bytes.length / 2);
    for (let i = 0; i < got.length; i++) {
      const want = new Float16Array([values[i % values.length]])[0];
      assert(Object.is(got[i], want), `${name} element ${i}: ${got[i]} vs ${want}`);
    }
  }
});

Deno.test("error: unsupported architecture names the file and architecture", async () => {
  await expectLoadError(tinyLlamaGguf({ arch: "gemma" }), /unsupported architecture "gemma"/);
});

Deno.test("Llama 3.1-style RoPE frequency factors (rope_freqs.weight) are read; a wrong shape is an error", async () => {
  const extraTensors = [{ name: "rope_freqs.weight", dims: [4], type: GT.F32, data: f32Bytes([1, 1, 2, 8]) }];
  const m = await loadTiny({ extraTensors });
  assertEquals(m.config.ropeFreqFactors, [1, 1, 2, 8]);
  const wrong = [{ name: "rope_freqs.weight", dims: [3], type: GT.F32, data: f32Bytes([1, 2, 8]) }];
  await expectLoadError(tinyLlamaGguf({ extraTensors: wrong }), /rope_freqs\.weight.*F32 \[4\]/);
});

Deno.test("error: tensor data offset inside the file but length past its end", async () => {
  const bytes = tinyLlamaGguf();
  const cut = bytes.slice(0, bytes.length - 4);
  await expectLoadError(cut, /past the end of the file/, "output_norm.weight");
});

Deno.test("error: missing file", async () => {
  const err = await assertRejects(() => loadGguf("/nonexistent/dir/model.gguf"), /not found/);
  assert(err instanceof ModelLoadError && err.message.includes("/nonexistent/dir/model.gguf"));
});

// ---------------------------------------------------------------------------------------------------
// Synthetic files: layouts, types, metadata

Deno.test("synthetic: q/k un-permutation gives HF rotate-half row order (F32)", async () => {
  // hidden 32, 4 heads (q: 32 rows), 2 KV heads (k: 16 rows), head dim 8.
  const m = await loadTiny();
  const q = f32Rows(m.weights.get("model.layers.0.self_attn.q_proj.weight").bytes, 32);
  const k = f32Rows(m.weights.get("model.layers.0.self_attn.k_proj.weight").bytes, 32);
  // File row r holds r * 1000 + c; within each head HF wants GGUF rows 0,2,4,6,1,3,5,7.
  const order = (heads: number) =>
    Array.from({ length: heads }, (_, h) => [0, 2, 4, 6, 1, 3, 5, 7].map((i) => h * 8 + i)).flat();
  assertEquals(q.map((row) => row[0] / 1000), order(4));
  assertEquals(k.map((row) => row[0] / 1000), order(2));
  assertEquals(q[5], Array.from({ length: 32 }, (_, c) => 3000 + c));
  // v and o are not permuted.
  const v = f32Rows(m.weights.get("model.layers.0.self_attn.v_proj.weight").bytes, 32);
  assertEquals(v.map((row) => row[0] / 1000), Array.from({ length: 16 }, (_, i) => i));
  assertEquals(m.config.numHeads, 4);
  assertEquals(m.config.numKvHeads, 2);
  assertEquals(m.config.headDim, 8);
  assertEquals(m.config.ropeTheta, 500000);
  assertEquals(m.config.rmsNormEps, 1e-6);
});

Deno.test("synthetic: qwen2 keeps q/k rows as stored and loads the q/k/v biases", async () => {
  // hidden 32, 4 heads of 8, 2 KV heads: q bias [32], k/v bias [16].
  const bias = (n: number, base: number) => f32Bytes(Array.from({ length: n }, (_, i) => base + i));
  const biases = [
    { name: "blk.0.attn_q.bias", dims: [32], type: GT.F32, data: bias(32, 100) },
    { name: "blk.0.attn_k.bias", dims: [16], type: GT.F32, data: bias(16, 200) },
    { name: "blk.0.attn_v.bias", dims: [16], type: GT.F32, data: bias(16, 300) },
  ];
  const m = await loadTiny({ arch: "qwen2", extraTensors: biases });
  assertEquals([m.config.architecture, m.config.attentionBias], ["qwen2", true]);
  // The writer's element (r, c) is r * 1000 + c in the file's order: unchanged rows for qwen2.
  const q = f32Rows(m.weights.get("model.layers.0.self_attn.q_proj.weight").bytes, 32);
  for (let r = 0; r < 32; r++) assertEquals(q[r][0], r * 1000, `q row ${r}`);
  const kb = m.weights.get("model.layers.0.self_attn.k_proj.bias");
  assertEquals(
    Array.from(new Float32Array(kb.bytes.slice().buffer)),
    Array.from({ length: 16 }, (_, i) => 200 + i),
  );
  await expectLoadError(
    tinyLlamaGguf({ arch: "qwen2", extraTensors: biases.slice(1) }),
    /missing tensor "blk\.0\.attn_q\.bias"/,
    "blk.0.attn_q.bias",
  );
});

Deno.test("synthetic: F16 q and Q8_0 k are un-permuted too; Q8_0 dequantizes to F16", async () => {
  const f16 = (vals: number[]) => {
    const b = new Uint8Array(vals.length * 2);
    const dv = new DataView(b.buffer);
    vals.forEach((v, i) => dv.setUint16(i * 2, f32ToF16(v), true));
    return b;
  };
  // q: 32 rows x 32 in, value row + c/64 (exact in f16).
  const qData = f16(rowValues(32, 32, (r, c) => r + c / 64));
  // k: 16 rows, each one Q8_0 block: scale 0.5, quant (r * 8 - 64 + c).
  const kData = new Uint8Array(16 * 34);
  const kdv = new DataView(kData.buffer);
  for (let r = 0; r < 16; r++) {
    kdv.setUint16(r * 34, f32ToF16(0.5), true);
    for (let c = 0; c < 32; c++) kdv.setInt8(r * 34 + 2 + c, r * 8 - 64 + c);
  }
  const m = await loadTiny({
    override: {
      "blk.0.attn_q.weight": { type: GT.F16, data: qData },
      "blk.0.attn_k.weight": { type: GT.Q8_0, data: kData },
    },
  });
  const q = m.weights.get("model.layers.0.self_attn.q_proj.weight");
  const k = m.weights.get("model.layers.0.self_attn.k_proj.weight");
  assertEquals(q.dtype, "f16");
  assertEquals(k.dtype, "f16");
  assertEquals(k.shape, [16, 32]);
  assertEquals(k.bytes.byteLength, 16 * 32 * 2);
  const qRows = f16Rows(q.bytes, 32);
  const kRows = f16Rows(k.bytes, 32);
  for (let r = 0; r < 32; r++) {
    const g = ggufRowOf(r, 8);
    assertEquals(qRows[r], Array.from({ length: 32 }, (_, c) => g + c / 64), `q row ${r}`);
  }
  for (let r = 0; r < 16; r++) {
    const g = ggufRowOf(r, 8);
    assertEquals(kRows[r], Array.from({ length: 32 }, (_, c) => 0.5 * (g * 8 - 64 + c)), `k row ${r}`);
  }
});

Deno.test("synthetic: Q8_0 dequantization rounds d*q to the nearest F16", async () => {
  // Scale 0.1 (f16 0x2E66 = 0.0999755859375): products need rounding back to f16.
  const data = new Uint8Array(32 * 34);
  const dv = new DataView(data.buffer);
  for (let r = 0; r < 32; r++) {
    dv.setUint16(r * 34, 0x2e66, true);
    for (let c = 0; c < 32; c++) dv.setInt8(r * 34 + 2 + c, ((r * 32 + c) % 256) - 128);
  }
  const m = await loadTiny({ override: { "blk.0.attn_output.weight": { type: GT.Q8_0, data } } });
  const w = m.weights.get("model.layers.0.self_attn.o_proj.weight");
  const out = new DataView(w.bytes.buffer, w.bytes.byteOffset, w.bytes.byteLength);
  const d = f16ToF32(0x2e66);
  for (let i = 0; i < 1024; i++) {
    const exact = d * ((i % 256) - 128);
    const got = f16ToF32(out.getUint16(i * 2, true));
    // Within half an f16 ulp of the exact product (ulp at |x| <= 16 is at most 2^-6).
    const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(exact), 2 ** -14))) - 10);
    assert(Math.abs(got - exact) <= ulp / 2, `element ${i}: ${got} vs ${exact}`);
  }
});

Deno.test("synthetic: BF16 is passed through; untied output becomes lm_head", async () => {
  const bf16 = new Uint8Array(64);
  for (let i = 0; i < 32; i++) bf16[i * 2 + 1] = 0x3f; // 0x3F00 = 0.5
  const m = await loadTiny({
    untied: true,
    override: { "blk.0.attn_norm.weight": { type: GT.BF16, data: bf16 } },
  });
  const n = m.weights.get("model.layers.0.input_layernorm.weight");
  assertEquals(n.dtype, "bf16");
  assertEquals(Array.from(n.bytes), Array.from(bf16));
  assertEquals(m.config.tieEmbeddings, false);
  const head = m.weights.get("lm_head.weight");
  assertEquals(head.shape, [8, 32]);
  assertEquals(f32Rows(head.bytes, 32)[3][1], -3001);
});

Deno.test("parse: GGUF v2, custom alignment, nested arrays, 64-bit values", () => {
  const v2 = writeGguf(
    [
      ["general.architecture", meta.str("llama")],
      ["general.alignment", meta.u32(64)],
      ["nested", meta.arrays([meta.strs(["x", "y"]), meta.i32s([1, -2, 3])])],
      ["big", meta.u64(2n ** 60n)],
    ],
    [{ name: "t", dims: [3], type: GT.F32, data: f32Bytes([1, 2, 3]) }],
    { version: 2, alignment: 64 },
  );
  const p = parseGguf(v2, "v2.gguf");
  assertEquals(p.version, 2);
  assertEquals(p.alignment, 64);
  assertEquals(p.dataOffset % 64, 0);
  const nested = p.metadata.get("nested") as unknown[];
  assertEquals(nested[0], ["x", "y"]);
  assertEquals(Array.from(nested[1] as Int32Array), [1, -2, 3]);
  assert(p.metadata.get("big") === 2n ** 60n, "u64 beyond 2^53 stays exact as a bigint");
  assertEquals(Array.from(new Float32Array(v2.slice(p.tensors[0].offset, p.tensors[0].offset + 12).buffer)), [
    1,
    2,
    3,
  ]);
});

Deno.test("synthetic: missing head_count_kv defaults to head_count, missing freq_base to 10000", async () => {
  // Write the file directly so those keys are truly absent.
  const full = tinyLlamaGguf({ kvHeads: 4 });
  const src = parseGguf(full, "src.gguf");
  const drop = new Set(["llama.attention.head_count_kv", "llama.rope.freq_base"]);
  const kv = [...src.metadata.entries()].filter(([k]) => !drop.has(k)).map(([k, v]) => {
    if (typeof v === "string") return [k, meta.str(v)] as const;
    if (typeof v === "number") return [k, Number.isInteger(v) ? meta.u32(v) : meta.f32(v)] as const;
    if (v instanceof Float32Array) return [k, meta.f32s(Array.from(v))] as const;
    if (v instanceof Int32Array) return [k, meta.i32s(Array.from(v))] as const;
    return [k, meta.strs(v as string[])] as const;
  });
  const tensors = src.tensors.map((t) => ({
    name: t.name,
    dims: t.dims,
    type: t.type,
    data: full.slice(t.offset, t.offset + t.byteLength!),
  }));
  const m = await withTempFile(writeGguf(kv.map(([k, v]) => [k, v]), tensors), (p) => loadGguf(p));
  assertEquals(m.config.numKvHeads, 4);
  assertEquals(m.config.ropeTheta, 10000);
  assertEquals(m.weights.get("model.layers.0.self_attn.k_proj.weight").shape, [32, 32]);
});

Deno.test("header-only load (skipWeights) reads the tokenizer and config without the weights", async () => {
  const full = await loadGguf(STORIES260K);
  const head = await loadGguf(STORIES260K, { skipWeights: true });
  // Only tieEmbeddings may differ: spotting an output.weight that copies token_embd takes its bytes.
  assertEquals({ ...head.config, tieEmbeddings: null }, { ...full.config, tieEmbeddings: null });
  assertEquals(head.tokenizer.encode("Once upon a time", true), [1, 403, 407, 261, 378]);
  assertEquals(head.weights.names(), []);
  // The header knows where every tensor ends, so a file cut in its data fails either way.
  const bytes = await Deno.readFile(STORIES260K);
  const cut = await Deno.makeTempFile({ suffix: ".gguf" });
  await Deno.writeFile(cut, bytes.subarray(0, bytes.length - 1000));
  try {
    await assertRejects(() => loadGguf(cut), /truncated/);
    await assertRejects(() => loadGguf(cut, { skipWeights: true }), /truncated/);
  } finally {
    await Deno.remove(cut);
  }
});

Deno.test("a GGUF file without the .gguf extension (an Ollama blob) loads by its magic; other files do not", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const blob = `${dir}/sha256-0123abcd`;
    await Deno.copyFile(STORIES260K, blob);
    const m = await loadModel(blob, { skipWeights: true });
    assertEquals([m.config.numLayers, m.config.vocabSize], [5, 512]);
    const other = `${dir}/notes.txt`;
    await Deno.writeTextFile(other, "GGU");
    const err = await assertRejects(() => loadModel(other));
    assert(err instanceof ModelLoadError && /not a model/.test(err.message), err.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
