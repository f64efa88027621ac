// `--help` against the code and README: every printed default is what the code uses when the flag is
// absent (the HTTP side's config and the engine's resolved config alike), the --kv-cache-mb rule holds,
// and README's flag table lists the same flags, environment twins and defaults.

import { assert, assertEquals } from "../helpers/assert.ts";
import { resolveEngineConfig } from "../../engine/config.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, ENGINE_DEFAULTS } from "../../engine/protocol.ts";
import { engineSettings, helpText, parseConfig } from "../../server/config.ts";
import { randomModel } from "../helpers/random_model.ts";

const noEnv = { get: () => undefined };

interface HelpRow {
  flag: string;
  metavar: string | null;
  text: string;
  default: string | null;
  env: string;
}

function helpRows(): HelpRow[] {
  const rows: HelpRow[] = [];
  for (const line of helpText().split("\n")) {
    const m = line.match(/^ {2}(--[a-z-]+)(?: (\S+))?\s+(.*) \((?:default: (.*?); )?env: (\w+)\)$/);
    if (m) rows.push({ flag: m[1], metavar: m[2] ?? null, text: m[3], default: m[4] ?? null, env: m[5] });
  }
  return rows;
}

Deno.test("help: every option has a row, and each printed default is the value used when absent", () => {
  const rows = helpRows();
  assertEquals(
    rows.length,
    helpText().split("\n").filter((l) => l.startsWith("  --") && !l.startsWith("  --help")).length,
  );
  assert(rows.length >= 25, `only ${rows.length} rows parsed`);
  const base = parseConfig([], noEnv);
  for (const r of rows) {
    if (r.default === null) continue;
    // Giving the printed default explicitly must change nothing.
    const given = parseConfig(r.metavar === null ? [`${r.flag}=${r.default}`] : [r.flag, r.default], noEnv);
    assertEquals(JSON.stringify(given), JSON.stringify(base), `${r.flag}: printed default ${r.default}`);
    // And through the environment twin the help names.
    const env = { get: (k: string) => (k === r.env ? r.default! : undefined) };
    assertEquals(JSON.stringify(parseConfig([], env)), JSON.stringify(base), `${r.env}=${r.default}`);
  }
});

Deno.test("help: the flags' defaults are the engine's own (resolved with and without the flags agree)", () => {
  const model = randomModel("llama", 1, { maxContext: 256 });
  const fromFlags = resolveEngineConfig(engineSettings(parseConfig([], noEnv)), model);
  const bare = resolveEngineConfig({ graphCache: ".cache/graphs" }, model);
  assertEquals(fromFlags, bare);
  const byFlag = new Map(helpRows().map((r) => [r.flag, r]));
  assertEquals(byFlag.get("--max-batch-tokens")?.default, String(ENGINE_DEFAULTS.maxBatchTokens));
  assertEquals(byFlag.get("--max-seqs")?.default, String(ENGINE_DEFAULTS.maxSeqs));
  // No printed default: it follows --max-batch-tokens.
  assertEquals(byFlag.get("--max-chunk-tokens")?.default, null);
  assertEquals(fromFlags.maxChunkTokens, fromFlags.maxBatchTokens);
  assertEquals(byFlag.get("--dtype")?.default, ENGINE_DEFAULTS.dtype);
  assertEquals(byFlag.get("--batching")?.default, ENGINE_DEFAULTS.policy);
  assertEquals(byFlag.get("--graph-capture")?.default, ENGINE_DEFAULTS.graphCapture ? "on" : "off");
  assert(byFlag.get("--max-chunk-tokens")!.text.includes(`at most ${BATCH_INVARIANT_ITEM_TOKENS} tokens`));
});

Deno.test("help: --dtype auto and --kv-cache-mb say what the resolver does", () => {
  const byFlag = new Map(helpRows().map((r) => [r.flag, r]));
  // "auto: f32 when every weight of the checkpoint is F32, f16 otherwise"
  assert(
    byFlag.get("--dtype")!.text.includes(
      "auto: f32 when every weight of the checkpoint is F32, f16 otherwise",
    ),
  );
  const f32 = randomModel("llama", 1);
  assertEquals(resolveEngineConfig({}, f32).dtype, "f32");
  const names = f32.weights.names();
  const mixed = {
    ...f32,
    weights: {
      ...f32.weights,
      get: (n: string) =>
        n === names[0] ? { ...f32.weights.get(n), dtype: "f16" as const } : f32.weights.get(n),
    },
  };
  assertEquals(resolveEngineConfig({}, mixed).dtype, "f16");

  // "room for --max-seqs sequences at full context, at most 1024"
  const kv = byFlag.get("--kv-cache-mb")!;
  assertEquals(kv.default, null, "no fixed default printed");
  const cap = Number(kv.text.match(/at most (\d+)\)/)?.[1]);
  assertEquals(cap, 1024);
  // randomModel: 2 layers, 2 KV heads of 8 (padded to 16), fp16 K and V: 256 bytes per token.
  const small = randomModel("llama", 1, { maxContext: 2048 });
  assertEquals(
    resolveEngineConfig({ maxSeqs: 1024 }, small).kvCacheMb,
    Math.ceil((1024 * 2048 * 256) / 2 ** 20),
  );
  assertEquals(resolveEngineConfig({ maxSeqs: 8, maxModelLen: 1024 }, small).kvCacheMb, 2);
  const big = randomModel("llama", 1, { maxContext: 1 << 20 });
  assertEquals(resolveEngineConfig({}, big).kvCacheMb, cap);
  assertEquals(resolveEngineConfig({ kvCacheMb: 4096 }, big).kvCacheMb, 4096, "a given size is not capped");
});

Deno.test("help: README's flag table has the same flags, environment twins and defaults", async () => {
  const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  const table = readme.split("\n").filter((l) => /^\| `--/.test(l));
  const cells = table.map((l) => l.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
  const rows = helpRows();
  const byFlag = new Map(rows.map((r) => [r.flag, r]));
  assertEquals(
    cells.map((c) => c[0].match(/^`(--[a-z-]+)/)![1]).sort(),
    rows.map((r) => r.flag).sort(),
    "README table vs --help",
  );
  for (const [flagCell, envCell, defCell] of cells) {
    const flag = flagCell.match(/^`(--[a-z-]+)/)![1];
    const r = byFlag.get(flag)!;
    assertEquals(envCell, `\`${r.env}\``, `${flag}: environment twin`);
    const literal = defCell.match(/^`([^`]+)`$/)?.[1];
    if (literal === undefined) {
      // Prose in README ("sized by engine", "none"): the help prints no fixed default either.
      assertEquals(r.default, null, `${flag}: README says ${defCell}, --help says default ${r.default}`);
    } else if (r.default !== null) {
      assertEquals(literal, r.default, `${flag}: default`);
    } else {
      assert(r.text.includes(`default: ${literal}`), `${flag}: README default ${literal} not in its help`);
    }
  }
});
