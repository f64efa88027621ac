import assert from "node:assert/strict";
import { EngineConfigError, resolveEngineConfig } from "../../engine/config.ts";
import { startLocalEngine } from "../../engine/local_engine.ts";
import { loadModel } from "../../engine/model/load.ts";
import { parseHfConfig } from "../../engine/model/hf.ts";
import type { WeightDType, WeightSource } from "../../engine/model/types.ts";
import { neutralSamplingParams } from "../../engine/protocol.ts";
import { ConfigError, engineSettings, HelpRequested, parseConfig } from "../../server/config.ts";
import { randomModel } from "../helpers/random_model.ts";
import { freePort } from "../helpers/server_process.ts";
import { STORIES260K } from "../helpers/fixtures.ts";

const assertEquals = (a: unknown, b: unknown, msg = "") => assert.deepStrictEqual(a, b, msg);
const assertMatch = (s: string, re: RegExp) => assert.match(s, re);
function assertThrows<E extends Error>(fn: () => unknown, type: new (...a: never[]) => E): E {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof type, `expected ${type.name}, got ${err}`);
    return err as E;
  }
  throw new assert.AssertionError({ message: "expected an exception" });
}

const env = (vars: Record<string, string> = {}) => ({ get: (k: string) => vars[k] });

Deno.test("config: defaults", () => {
  const c = parseConfig(["--model", "m"], env());
  assertEquals(c, {
    model: "m",
    host: "127.0.0.1",
    port: 8080,
    device: "webgpu",
    dtype: "auto",
    kvCacheMb: undefined,
    maxBatchTokens: 2048,
    maxSeqs: 256,
    maxChunkTokens: undefined,
    maxModelLen: undefined,
    batching: "continuous",
    prefillOrder: "shortest",
    decodePauseSteps: 4,
    answerCache: "auto",
    maxQueue: 1024,
    maxBodyKb: 1024,
    apiKeys: [],
    metricsKey: undefined,
    corsOrigins: [],
    noUi: false,
    shutdownTimeoutS: 30,
    bodyTimeoutS: 60,
    headerTimeoutS: 20,
    idleTimeoutS: 30,
    sendTimeoutS: 60,
    maxConnections: 1024,
    front: true,
    logPrompts: false,
    debugSteps: false,
    servedModelName: undefined,
    graphCache: ".cache/graphs",
    graphCapture: true,
    // Absent: the engine's default bounds (256, 1024 below the limit).
    graphCaptureKv: undefined,
    graphCapturePromptRows: undefined,
    prefixCaching: true,
    matmulSplitK: 8,
    promptMatmul: "auto",
    webgpu: "auto",
    attentionKernels: "ragtime",
    pipelineDepth: "auto",
    longQueries: "auto",
  });
});

Deno.test("config: every flag, both spellings", () => {
  const c = parseConfig([
    "--model=/models/x",
    "--host",
    "0.0.0.0",
    "--port=9000",
    "--device",
    "webgpu",
    "--dtype",
    "f16",
    "--kv-cache-mb",
    "512",
    "--max-batch-tokens",
    "4096",
    "--max-seqs",
    "64",
    "--max-chunk-tokens",
    "512",
    "--max-model-len",
    "8192",
    "--batching",
    "static",
    "--prefill-order=arrival",
    "--decode-pause-steps=4",
    "--answer-cache",
    "auto",
    "--max-queue",
    "10",
    "--max-body-kb",
    "64",
    "--api-key",
    "k1",
    "--api-key=k2,with,commas",
    "--metrics-key",
    "mk",
    "--cors-origins",
    "https://a.example,http://localhost:3000",
    "--shutdown-timeout",
    "2.5",
    "--log-prompts",
    "--debug-steps=false",
    "--served-model-name",
    "llama",
    "--graph-cache",
    "/tmp/g",
    "--webgpu",
    "dawn",
    "--pipeline-depth",
    "2",
    "--long-queries=prompts",
  ], env());
  assertEquals(c.model, "/models/x");
  assertEquals(c.host, "0.0.0.0");
  assertEquals(c.port, 9000);
  assertEquals(c.dtype, "f16");
  assertEquals(c.kvCacheMb, 512);
  assertEquals(c.maxBatchTokens, 4096);
  assertEquals(c.maxSeqs, 64);
  assertEquals(c.maxChunkTokens, 512);
  assertEquals(c.maxModelLen, 8192);
  assertEquals(c.batching, "static");
  assertEquals(c.prefillOrder, "arrival");
  assertEquals(c.decodePauseSteps, 4);
  assertEquals(c.answerCache, "auto");
  assertEquals(c.maxQueue, 10);
  assertEquals(c.maxBodyKb, 64);
  assertEquals(c.apiKeys, ["k1", "k2,with,commas"]);
  assertEquals(c.metricsKey, "mk");
  assertEquals(c.corsOrigins, ["https://a.example", "http://localhost:3000"]);
  assertEquals(c.shutdownTimeoutS, 2.5);
  assertEquals(c.logPrompts, true);
  assertEquals(c.debugSteps, false);
  assertEquals(c.servedModelName, "llama");
  assertEquals(c.graphCache, "/tmp/g");
  assertEquals(c.webgpu, "dawn");
  assertEquals(c.pipelineDepth, 2);
  assertEquals(c.longQueries, "prompts");
});

Deno.test("config: environment twins, and flags win", () => {
  const vars = {
    RAGTIME_MODEL: "/env/model",
    PORT: "7000",
    RAGTIME_HOST: "::",
    RAGTIME_API_KEY: "a, b,,c",
    RAGTIME_CORS_ORIGINS: "https://x.example",
    RAGTIME_LOG_PROMPTS: "1",
    RAGTIME_DTYPE: "f32",
    RAGTIME_SHUTDOWN_TIMEOUT: "0",
    RAGTIME_WEBGPU: "auto",
    RAGTIME_PIPELINE_DEPTH: "1",
    RAGTIME_LONG_QUERIES: "on",
  };
  const c = parseConfig([], env(vars));
  assertEquals(c.model, "/env/model");
  assertEquals(c.port, 7000);
  assertEquals(c.host, "::");
  assertEquals(c.apiKeys, ["a", "b", "c"]);
  assertEquals(c.corsOrigins, ["https://x.example"]);
  assertEquals(c.logPrompts, true);
  assertEquals(c.dtype, "f32");
  assertEquals(c.shutdownTimeoutS, 0);
  assertEquals(c.webgpu, "auto");
  assertEquals(c.pipelineDepth, 1);
  assertEquals(c.longQueries, "on");

  const f = parseConfig(["--port", "7001", "--api-key", "flag", "--dtype", "auto"], env(vars));
  assertEquals(f.port, 7001);
  assertEquals(f.apiKeys, ["flag"]);
  assertEquals(f.dtype, "auto");
  assertEquals(f.model, "/env/model");
});

Deno.test("config: empty environment values count as unset", () => {
  const c = parseConfig(["--model", "m"], env({ PORT: "", RAGTIME_API_KEY: "" }));
  assertEquals(c.port, 8080);
  assertEquals(c.apiKeys, []);
});

const bad: Array<[string[], Record<string, string>, string]> = [
  [["--model", "m", "--port", "abc"], {}, '--port: expected an integer in [1, 65535], got "abc"'],
  [["--model", "m", "--port", "70000"], {}, '--port: expected an integer in [1, 65535], got "70000"'],
  [["--model", "m"], { PORT: "x" }, '--port (from PORT): expected an integer in [1, 65535], got "x"'],
  [["--model", "m", "--dtype", "bf16"], {}, '--dtype: expected one of "auto", "f16", "f32", got "bf16"'],
  [["--model", "m", "--device", "cuda"], {}, '--device: expected one of "webgpu", got "cuda"'],
  [
    ["--model", "m", "--webgpu", "vulkan"],
    {},
    '--webgpu: expected one of "auto", "dawn", "deno", got "vulkan"',
  ],
  [
    ["--model", "m", "--pipeline-depth", "4"],
    {},
    '--pipeline-depth: expected one of "auto", "1", "2", "3", got "4"',
  ],
  [["--model", "m", "--batching", "fast"], {}, "--batching: expected one of"],
  [
    ["--model", "m", "--prefill-order", "longest"],
    {},
    '--prefill-order: expected one of "arrival", "shortest"',
  ],
  [
    ["--model", "m", "--answer-cache", "always"],
    {},
    '--answer-cache: expected one of "auto", "on", "off"',
  ],
  [
    ["--model", "m", "--long-queries", "maybe"],
    {},
    '--long-queries: expected one of "auto", "off", "on", "prompts"',
  ],
  [["--model", "m", "--max-seqs", "0"], {}, "--max-seqs: expected an integer"],
  [["--model", "m", "--max-batch-tokens", "1.5"], {}, "--max-batch-tokens: expected an integer"],
  [["--model", "m"], { RAGTIME_MAX_CHUNK_TOKENS: "0" }, "--max-chunk-tokens (from RAGTIME_MAX_CHUNK_TOKENS)"],
  [["--model", "m", "--kv-cache-mb", "-1"], {}, "--kv-cache-mb: expected an integer"],
  [["--model", "m", "--shutdown-timeout", "soon"], {}, "--shutdown-timeout: expected a number of seconds"],
  [["--model", "m", "--log-prompts=maybe"], {}, '--log-prompts: expected true or false, got "maybe"'],
  [["--model", "m", "--api-key", ""], {}, '--api-key: expected a non-empty key, got ""'],
  [["--model", "m", "--cors-origins", "https://ok.example,evil"], {}, "--cors-origins: expected"],
  [["--model", "m", "--frobnicate"], {}, "--frobnicate: unknown option"],
  [["--model", "m", "stray"], {}, 'unexpected argument "stray"'],
  [["--model"], {}, "--model: missing value"],
  [["--model", "m", "--port", "--host", "x"], {}, "--port: missing value"],
];

Deno.test("config: --model is optional (main.ts then serves the built-in default model)", () => {
  assertEquals(parseConfig([], env({})).model, undefined);
});

for (const [args, vars, message] of bad) {
  Deno.test(`config: rejects ${JSON.stringify(args)} ${JSON.stringify(vars)}`, () => {
    const err = assertThrows(() => parseConfig(args, env(vars)), ConfigError);
    assertEquals(err.message.includes("\n"), false, "one line");
    assertEquals(err.message.startsWith(message) || err.message.includes(message), true, err.message);
  });
}

Deno.test("config: --body-timeout and --max-connections, flags over their environment twins", () => {
  const fromEnv = parseConfig(
    ["--model", "m"],
    env({ RAGTIME_BODY_TIMEOUT: "0.5", RAGTIME_MAX_CONNECTIONS: "7" }),
  );
  assertEquals([fromEnv.bodyTimeoutS, fromEnv.maxConnections], [0.5, 7]);
  const fromFlags = parseConfig(
    ["--model", "m", "--body-timeout", "0", "--max-connections=3"],
    env({ RAGTIME_BODY_TIMEOUT: "9", RAGTIME_MAX_CONNECTIONS: "9" }),
  );
  assertEquals([fromFlags.bodyTimeoutS, fromFlags.maxConnections], [0, 3]);
  assertThrows(() => parseConfig(["--model", "m", "--max-connections", "0"], env()), ConfigError);
  assertThrows(() => parseConfig(["--model", "m", "--body-timeout", "-1"], env()), ConfigError);
});

Deno.test("config: --header-timeout, --idle-timeout, --send-timeout and --front, flags over their environment twins", () => {
  const fromEnv = parseConfig(
    ["--model", "m"],
    env({ RAGTIME_HEADER_TIMEOUT: "2.5", RAGTIME_IDLE_TIMEOUT: "0", RAGTIME_FRONT: "off" }),
  );
  assertEquals([fromEnv.headerTimeoutS, fromEnv.idleTimeoutS, fromEnv.front], [2.5, 0, false]);
  const fromFlags = parseConfig(
    ["--model", "m", "--header-timeout=4", "--idle-timeout", "75", "--front", "on"],
    env({ RAGTIME_HEADER_TIMEOUT: "9", RAGTIME_IDLE_TIMEOUT: "9", RAGTIME_FRONT: "off" }),
  );
  assertEquals([fromFlags.headerTimeoutS, fromFlags.idleTimeoutS, fromFlags.front], [4, 75, true]);
  assertThrows(() => parseConfig(["--model", "m", "--idle-timeout", "x"], env()), ConfigError);
  assertThrows(() => parseConfig(["--model", "m", "--front", "maybe"], env()), ConfigError);
  assertEquals(parseConfig(["--model", "m"], env({ RAGTIME_SEND_TIMEOUT: "0" })).sendTimeoutS, 0);
  assertEquals(
    parseConfig(["--model", "m", "--send-timeout", "5"], env({ RAGTIME_SEND_TIMEOUT: "9" })).sendTimeoutS,
    5,
  );
  assertThrows(() => parseConfig(["--model", "m", "--send-timeout", "-1"], env()), ConfigError);
});

Deno.test("config: --graph-capture on|off and --graph-capture-kv, flags over their environment twins", () => {
  const fromEnv = parseConfig(
    ["--model", "m"],
    env({ RAGTIME_GRAPH_CAPTURE: "off", RAGTIME_GRAPH_CAPTURE_KV: "256, 1024" }),
  );
  assertEquals([fromEnv.graphCapture, fromEnv.graphCaptureKv], [false, [256, 1024]]);
  const fromFlags = parseConfig(
    ["--model", "m", "--graph-capture", "on", "--graph-capture-kv=128"],
    env({ RAGTIME_GRAPH_CAPTURE: "off", RAGTIME_GRAPH_CAPTURE_KV: "256" }),
  );
  assertEquals([fromFlags.graphCapture, fromFlags.graphCaptureKv], [true, [128]]);
  assertEquals(engineSettings(fromEnv).graphCapture, false);
  assertEquals(engineSettings(fromFlags).graphCaptureKv, [128]);
  assertThrows(() => parseConfig(["--model", "m", "--graph-capture", "maybe"], env()), ConfigError);
  assertThrows(() => parseConfig(["--model", "m", "--graph-capture-kv", "0"], env()), ConfigError);
  assertThrows(() => parseConfig(["--model", "m", "--graph-capture-kv", "1k"], env()), ConfigError);
  // Captured prompt steps' sizes: a list, or none; flags over the environment twin.
  const rows = (args: string[], e: Record<string, string> = {}) =>
    parseConfig(["--model", "m", ...args], env(e)).graphCapturePromptRows;
  assertEquals(rows([]), undefined);
  assertEquals(rows(["--graph-capture-prompt-rows", "128, 2048"]), [128, 2048]);
  assertEquals(rows(["--graph-capture-prompt-rows=none"], { RAGTIME_GRAPH_CAPTURE_PROMPT_ROWS: "512" }), []);
  assertEquals(rows([], { RAGTIME_GRAPH_CAPTURE_PROMPT_ROWS: "512" }), [512]);
  assertThrows(() => rows(["--graph-capture-prompt-rows", "32"]), ConfigError);
  assertThrows(() => rows(["--graph-capture-prompt-rows", "big"]), ConfigError);
});

Deno.test("config: --prefix-caching on|off, the flag over its environment twin, reaches the engine", () => {
  const model = randomModel();
  const fromEnv = parseConfig(["--model", "m"], env({ RAGTIME_PREFIX_CACHING: "off" }));
  assertEquals(fromEnv.prefixCaching, false);
  assertEquals(resolveEngineConfig(engineSettings(fromEnv), model).prefixCaching, false);
  const fromFlag = parseConfig(
    ["--model", "m", "--prefix-caching", "on"],
    env({ RAGTIME_PREFIX_CACHING: "off" }),
  );
  assertEquals(resolveEngineConfig(engineSettings(fromFlag), model).prefixCaching, true);
  assertEquals(parseConfig(["--model", "m", "--prefix-caching=off"], env()).prefixCaching, false);
  assertEquals(resolveEngineConfig({}, model).prefixCaching, true, "on by default");
  assertThrows(() => parseConfig(["--model", "m", "--prefix-caching", "maybe"], env()), ConfigError);
});

Deno.test("config: --matmul-split-k N, the flag over its environment twin, reaches the engine", () => {
  const model = randomModel();
  const fromEnv = parseConfig(["--model", "m"], env({ RAGTIME_MATMUL_SPLIT_K: "1" }));
  assertEquals(resolveEngineConfig(engineSettings(fromEnv), model).matmulSplitK, 1);
  const fromFlag = parseConfig(
    ["--model", "m", "--matmul-split-k", "4"],
    env({ RAGTIME_MATMUL_SPLIT_K: "1" }),
  );
  assertEquals(resolveEngineConfig(engineSettings(fromFlag), model).matmulSplitK, 4);
  assertEquals(resolveEngineConfig({}, model).matmulSplitK, 8, "8 by default");
  for (const bad of ["0", "65", "2.5", "eight"]) {
    assertThrows(() => parseConfig(["--model", "m", "--matmul-split-k", bad], env()), ConfigError);
  }
  assertThrows(() => resolveEngineConfig({ matmulSplitK: 0 }, model), EngineConfigError);
});

Deno.test("config: --prompt-matmul auto|split, the flag over its environment twin, reaches the engine", () => {
  const model = randomModel();
  const fromEnv = parseConfig(["--model", "m"], env({ RAGTIME_PROMPT_MATMUL: "split" }));
  assertEquals(resolveEngineConfig(engineSettings(fromEnv), model).promptMatmul, "split");
  const fromFlag = parseConfig(
    ["--model", "m", "--prompt-matmul", "auto"],
    env({ RAGTIME_PROMPT_MATMUL: "split" }),
  );
  assertEquals(resolveEngineConfig(engineSettings(fromFlag), model).promptMatmul, "auto");
  assertThrows(() => parseConfig(["--model", "m", "--prompt-matmul", "plain"], env()), ConfigError);
});

Deno.test("config: --attention-kernels ragtime|onnxruntime, the flag over its environment twin, reaches the worker", () => {
  assertEquals(engineSettings(parseConfig(["--model", "m"], env())).attentionKernels, "ragtime");
  const fromEnv = parseConfig(["--model", "m"], env({ RAGTIME_ATTENTION_KERNELS: "onnxruntime" }));
  assertEquals(engineSettings(fromEnv).attentionKernels, "onnxruntime");
  const fromFlag = parseConfig(
    ["--model", "m", "--attention-kernels", "ragtime"],
    env({ RAGTIME_ATTENTION_KERNELS: "onnxruntime" }),
  );
  assertEquals(engineSettings(fromFlag).attentionKernels, "ragtime");
  assertThrows(() => parseConfig(["--model", "m", "--attention-kernels", "ort"], env()), ConfigError);
});

Deno.test("config: --help throws HelpRequested with usage text", () => {
  const err = assertThrows(() => parseConfig(["--port", "x", "--help"], env()), HelpRequested);
  assertMatch(err.message, /Usage: deno task start \[options\]/);
  for (const flag of ["--max-batch-tokens", "--api-key", "--cors-origins", "RAGTIME_MAX_QUEUE", "PORT"]) {
    assertMatch(err.message, new RegExp(flag));
  }
});

// ---- The engine's side: settings resolved against the model (engine/config.ts) -------------------

const MINI_HF = new URL("../../models/ragtime-mini", import.meta.url).pathname;

/** Weights that only answer what the resolver asks: their names and dtypes. */
function weightsOf(dtypes: WeightDType[]): WeightSource {
  const tensors = dtypes.map((dtype, i) => ({
    name: `w${i}`,
    shape: [1],
    dtype,
    bytes: new Uint8Array(4),
    file: "memory",
  }));
  return {
    names: () => tensors.map((t) => t.name),
    get: (n) => tensors.find((t) => t.name === n)!,
    has: (n) => tensors.some((t) => t.name === n),
  };
}

Deno.test("engine config: --max-model-len lowers a GGUF model's context and may not exceed it", async () => {
  const m = await loadModel(STORIES260K);
  assertEquals(m.config.maxContext, 2048, "stories260K's context_length");
  assertEquals(resolveEngineConfig({}, m).maxContext, 2048);
  assertEquals(resolveEngineConfig({ maxModelLen: 512 }, m).maxContext, 512);
  assertEquals(resolveEngineConfig({ maxModelLen: 2048 }, m).maxContext, 2048);
  const err = assertThrows(() => resolveEngineConfig({ maxModelLen: 4096 }, m), EngineConfigError);
  assertMatch(err.message, /max model length 4096 exceeds the model's context length 2048/);
});

Deno.test("engine config: the same context rule for a Hugging Face folder", async () => {
  const m = await loadModel(MINI_HF);
  assertEquals(m.config.maxContext, 512, "ragtime-mini's max_position_embeddings");
  assertEquals(resolveEngineConfig({}, m).maxContext, 512);
  assertEquals(resolveEngineConfig({ maxModelLen: 100 }, m).maxContext, 100);
  const err = assertThrows(() => resolveEngineConfig({ maxModelLen: 513 }, m), EngineConfigError);
  assertMatch(err.message, /513 exceeds the model's context length 512/);
});

Deno.test("engine config: Mistral's sliding window is the model's context (full attention beyond it is wrong)", () => {
  const raw = {
    architectures: ["MistralForCausalLM"],
    vocab_size: 8,
    hidden_size: 8,
    intermediate_size: 8,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    max_position_embeddings: 4096,
    sliding_window: 32,
  };
  const model = { config: parseHfConfig(raw), weights: weightsOf(["f16"]) };
  assertEquals(resolveEngineConfig({}, model).maxContext, 32);
  assertEquals(resolveEngineConfig({ maxModelLen: 16 }, model).maxContext, 16);
  assertThrows(() => resolveEngineConfig({ maxModelLen: 33 }, model), EngineConfigError);
});

Deno.test("engine config: dtype auto is f32 only for an all-F32 checkpoint", async () => {
  const cfg = randomModel().config;
  const auto = (dtypes: WeightDType[]) =>
    resolveEngineConfig({}, { config: cfg, weights: weightsOf(dtypes) }).dtype;
  assertEquals(auto(["f32", "f32"]), "f32");
  assertEquals(auto(["f32", "f16"]), "f16");
  assertEquals(auto(["bf16"]), "f16");
  assertEquals(
    resolveEngineConfig({ dtype: "f32" }, { config: cfg, weights: weightsOf(["f16"]) }).dtype,
    "f32",
  );
  assertEquals(
    resolveEngineConfig({ dtype: "f16" }, { config: cfg, weights: weightsOf(["f32"]) }).dtype,
    "f16",
  );
  // The real checkpoints: stories260K's GGUF is all F32, ragtime-mini's safetensors are F16.
  assertEquals(resolveEngineConfig({}, await loadModel(STORIES260K)).dtype, "f32");
  assertEquals(resolveEngineConfig({}, await loadModel(MINI_HF)).dtype, "f16");
});

Deno.test("engine config: defaults, chunk size and explicit settings", () => {
  const model = randomModel();
  assertEquals(resolveEngineConfig({}, model), {
    dtype: "f32",
    blockSize: 16,
    // 256 sequences x 256 positions x (2 layers x K,V x 2 kv heads x 16 padded dims x 2 bytes) = 16 MiB
    kvCacheMb: 16,
    maxBatchTokens: 2048,
    maxSeqs: 256,
    // No per-request cap beyond the step budget.
    maxChunkTokens: 2048,
    maxContext: 256,
    policy: "continuous",
    // Waiting requests by the prompt tokens they have left, within arrival windows.
    prefillOrder: "shortest",
    // Up to 4 steps in a row without decodes behind a prompt backlog.
    decodePauseSteps: 4,
    // Answers cached as prompts' (long-query mode prompts) for chats that resend an assistant turn.
    answerCache: "auto",
    debugSteps: false,
    graphCache: null,
    // Decode batches 16, 32, ... up to --max-seqs (a step computes 16 rows at least), captured at startup;
    // one context bound (the limit); prompt steps of up to 128, 256, 384 and 512 rows (long-query mode
    // "prompts").
    graphCapture: {
      batchSizes: [16, 32, 64, 128, 256],
      kvCaps: [],
      promptRows: [128, 256, 384, 512],
      eager: true,
    },
    prefixCaching: true,
    matmulSplitK: 8,
    // Prompt parts on a graph of their own with wide layers unsplit (long-query mode prompts).
    promptMatmul: "auto",
    pipelineDepth: "auto",
    longQueries: "auto",
  });
  // Default context bounds 256, 1024 and 4096, those under the limit; one over it leaves the limit only.
  const long = randomModel("llama", 1, { maxContext: 2048 });
  assertEquals(resolveEngineConfig({}, long).graphCapture?.kvCaps, [256, 1024]);
  const longer = randomModel("llama", 1, { maxContext: 8192 });
  assertEquals(resolveEngineConfig({}, longer).graphCapture?.kvCaps, [256, 1024, 4096]);
  assertEquals(resolveEngineConfig({ maxModelLen: 512 }, long).graphCapture?.kvCaps, [256]);
  assertEquals(resolveEngineConfig({ graphCaptureKv: [4096] }, long).graphCapture?.kvCaps, []);
  assertEquals(
    resolveEngineConfig({ maxSeqs: 48, maxModelLen: 128, graphCaptureKv: [64, 32, 64, 128, 500] }, model)
      .graphCapture,
    { batchSizes: [16, 32, 48], kvCaps: [32, 64], promptRows: [128, 256, 384, 512], eager: true },
  );
  // Captured prompt steps no larger than a step's token budget, sorted, each once.
  assertEquals(resolveEngineConfig({ maxBatchTokens: 256 }, model).graphCapture?.promptRows, [128, 256]);
  assertEquals(
    resolveEngineConfig({ graphCapturePromptRows: [2048, 100, 2048, 9000] }, model).graphCapture?.promptRows,
    [100, 2048],
  );
  assertEquals(resolveEngineConfig({ graphCapturePromptRows: [] }, model).graphCapture?.promptRows, []);
  // Fewer sequences than a step's rows: the one captured batch is the row floor.
  assertEquals(resolveEngineConfig({ maxSeqs: 4 }, model).graphCapture?.batchSizes, [16]);
  assertEquals(
    resolveEngineConfig({ maxSeqs: 4096, maxBatchTokens: 8192 }, model).graphCapture?.batchSizes.at(-1),
    512,
  );
  const set = {
    dtype: "f16",
    kvCacheMb: 3,
    maxBatchTokens: 64,
    maxSeqs: 8,
    maxChunkTokens: 64,
    maxModelLen: 128,
    policy: "static",
    prefillOrder: "arrival",
    decodePauseSteps: 3,
    answerCache: "on",
    debugSteps: true,
    graphCache: "/tmp/g",
    prefixCaching: false,
    matmulSplitK: 2,
    promptMatmul: "split",
    pipelineDepth: 1,
    longQueries: "on",
  } as const;
  const { blockSize: _, graphCapture, ...c } = resolveEngineConfig({ ...set, graphCapture: false }, model);
  const { maxModelLen, ...rest } = set;
  assertEquals(c, { ...rest, maxContext: maxModelLen });
  assertEquals(graphCapture, null);
});

Deno.test("engine config: the default KV pool follows sequences x context, up to 1 GiB", () => {
  const model = randomModel();
  assertEquals(resolveEngineConfig({ maxSeqs: 16 }, model).kvCacheMb, 1);
  assertEquals(resolveEngineConfig({ maxSeqs: 64, maxModelLen: 128 }, model).kvCacheMb, 2);
  const big = { ...model.config, numLayers: 32, numKvHeads: 8, headDim: 128, maxContext: 8192 };
  assertEquals(resolveEngineConfig({}, { config: big, weights: weightsOf(["f16"]) }).kvCacheMb, 1024);
});

Deno.test("engine config: unasked, the context is what the KV pool holds, at most the model's", () => {
  // Llama-3.2-1B's KV shape and trained context: the default 1 GiB pool holds 2047 blocks of 16 tokens
  // beside the reserved one, and a context past the pool could never run.
  const model = randomModel();
  const l1b = { ...model.config, numLayers: 16, numKvHeads: 8, headDim: 64, maxContext: 131072 };
  const m = { config: l1b, weights: weightsOf(["f16"]) };
  const d = resolveEngineConfig({}, m);
  assertEquals([d.kvCacheMb, d.maxContext], [1024, 2047 * 16]);
  assertEquals(d.graphCapture?.kvCaps, [256, 1024, 4096]);
  assertEquals(resolveEngineConfig({ kvCacheMb: 2048 }, m).maxContext, 4095 * 16);
  assertEquals(
    resolveEngineConfig({ kvCacheMb: 8192 }, m).maxContext,
    131072,
    "a larger pool: the model's own",
  );
  assertEquals(resolveEngineConfig({ maxModelLen: 65536 }, m).maxContext, 65536, "asked: as asked");
  // A pool sized by the default for every sequence at full context leaves the model's context alone.
  assertEquals(resolveEngineConfig({}, model).maxContext, model.config.maxContext);
});

Deno.test("engine config: the flags' defaults are the engine's defaults", () => {
  const model = randomModel();
  const fromFlags = resolveEngineConfig(engineSettings(parseConfig(["--model", "m"], env())), model);
  assertEquals(fromFlags, { ...resolveEngineConfig({}, model), graphCache: ".cache/graphs" });
  const s = engineSettings(
    parseConfig(
      ["--max-model-len", "100", "--batching", "sequential"],
      env({ RAGTIME_PREFILL_ORDER: "arrival", RAGTIME_ANSWER_CACHE: "on" }),
    ),
  );
  assertEquals([s.maxModelLen, s.policy, s.prefillOrder, s.answerCache], [
    100,
    "sequential",
    "arrival",
    "on",
  ]);
});

Deno.test("engine config: the in-process engine starts from the resolved config", async () => {
  const model = await loadModel(STORIES260K);
  await assert.rejects(() => startLocalEngine(model, { maxModelLen: 4096 }), EngineConfigError);
  const h = await startLocalEngine(model, { maxSeqs: 4, maxModelLen: 256 });
  try {
    assertEquals(h.config, resolveEngineConfig({ maxSeqs: 4, maxModelLen: 256 }, model));
    assertEquals(h.runner.maxPositions, 256, "the step graph covers the resolved context");
    assertEquals(h.engine.scheduler.config.maxContext, 256);
    const ev = await h.generate("r", [1, 403], neutralSamplingParams({ maxTokens: 300 }));
    const last = ev[ev.length - 1];
    assert.ok(last.type === "error" && last.code === "context_length_exceeded", JSON.stringify(last));
  } finally {
    await h.close();
  }
});

Deno.test("engine config: a pool smaller than the model's context sets the context, or says what it refuses when asked for more", async () => {
  const model = await loadModel(STORIES260K);
  const lines: string[] = [];
  // 1 MiB holds 50 of stories260K's blocks of 16 tokens (and the reserved one): 800 of its 2048 positions.
  const h = await startLocalEngine(model, { maxSeqs: 4, kvCacheMb: 1, log: (l) => lines.push(l) });
  try {
    assertEquals([h.config.maxContext, h.runner.maxPositions, h.runner.numBlocks], [800, 800, 50]);
    assert.ok(
      lines.some((l) => /^context 800: what the KV pool \(1 MiB\) holds, below the model's 2048/.test(l)),
      lines.join("\n"),
    );
    const ev = await h.generate("r", [1, 403], neutralSamplingParams({ maxTokens: 8 }));
    const last = ev[ev.length - 1];
    assert.ok(last.type === "done", JSON.stringify(last));
    const over = await h.generate("s", [1, 403], neutralSamplingParams({ maxTokens: 799 }));
    const err = over[over.length - 1];
    assert.ok(err.type === "error" && err.code === "context_length_exceeded", JSON.stringify(err));
  } finally {
    await h.close();
  }
  // Asked for more than the pool holds: the context stays as asked, and the log says what is refused.
  lines.length = 0;
  const asked = await startLocalEngine(model, {
    maxSeqs: 4,
    kvCacheMb: 1,
    maxModelLen: 2048,
    log: (l) => lines.push(l),
  });
  try {
    assertEquals(asked.config.maxContext, 2048);
    assert.ok(
      lines.some((l) => /^context 2048: more than the KV pool holds \(800 tokens\)/.test(l)),
      lines.join("\n"),
    );
    const over = await asked.generate("s", [1, 403], neutralSamplingParams({ maxTokens: 900 }));
    const err = over[over.length - 1];
    assert.ok(err.type === "error" && err.code === "context_length_exceeded", JSON.stringify(err));
  } finally {
    await asked.close();
  }
});

Deno.test("engine config: the server refuses --max-model-len above the model's context", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "main.ts",
      "--model",
      STORIES260K,
      "--port",
      String(freePort()),
      "--max-model-len",
      "4096",
    ],
    cwd: new URL("../..", import.meta.url).pathname,
    stdin: "null",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  // Exit 1, not a crash (see the Worker teardown wait in engine/client.ts).
  assert.equal(out.code, 1, `exit ${out.code}\n${stderr}`);
  assertMatch(stderr, /failed to load .*max model length 4096 exceeds the model's context length 2048/);
});
