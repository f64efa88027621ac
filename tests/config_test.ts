import assert from "node:assert/strict";
import { ConfigError, HelpRequested, parseConfig } from "../server/config.ts";

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
    maxChunkTokens: 31,
    maxModelLen: undefined,
    batching: "continuous",
    maxQueue: 1024,
    maxBodyKb: 1024,
    apiKeys: [],
    metricsKey: undefined,
    corsOrigins: [],
    shutdownTimeoutS: 30,
    logPrompts: false,
    debugSteps: false,
    servedModelName: undefined,
    graphCache: ".cache/graphs",
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
  [["--model", "m", "--batching", "fast"], {}, "--batching: expected one of"],
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

Deno.test("config: --help throws HelpRequested with usage text", () => {
  const err = assertThrows(() => parseConfig(["--port", "x", "--help"], env()), HelpRequested);
  assertMatch(err.message, /Usage: ragtime --model PATH/);
  for (const flag of ["--max-batch-tokens", "--api-key", "--cors-origins", "RAGTIME_MAX_QUEUE", "PORT"]) {
    assertMatch(err.message, new RegExp(flag));
  }
});
