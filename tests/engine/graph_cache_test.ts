// The graph cache: entries hold the graph without weight values, are written atomically with sizes
// and SHA-256s, checked on load, and a truncated, altered or partial entry is logged and rebuilt,
// never fatal; concurrent writers of one entry leave it whole.

import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type EntryMeta,
  loadOrBuildGraph,
  readCached,
  sha256Hex,
  STALE_TEMP_MS,
} from "../../engine/graph_cache.ts";
import { ModelRunner } from "../../engine/model_runner.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { randomModel } from "../helpers/random_model.ts";
import { referenceLogits } from "../helpers/reference.ts";
import { WRITER_MODEL } from "../helpers/graph_cache_writer.ts";
import { stepInputs } from "../helpers/step_inputs.ts";

// Weights are graph inputs (the runner's setting). Constants of 256 bytes and more go to the .data file,
// so even this small model has one worth corrupting (the greedy ramp over its 96-token vocabulary).
const OPTS = { dtype: "f32", maxPositions: 64, externalMinBytes: 256, weightsAsInputs: true } as const;

const model = randomModel("llama", 3);

interface Entry {
  graph: string;
  data: string;
  meta: string;
}

/** Loads (or builds) through the cache; returns the graph and the log lines. */
async function load(dir: string, m: LoadedModel = model) {
  const logs: string[] = [];
  const graph = await loadOrBuildGraph(m, { ...OPTS, cacheDir: dir, log: (l) => logs.push(l) });
  return { graph, logs };
}

/** The cache folder's one entry (its files, which must be all there is besides nothing). */
function entryOf(dir: string): Entry {
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  const graph = names.find((n) => n.endsWith(".onnx"));
  assert(graph, `no entry in ${names}`);
  assertEquals(names, [graph, `${graph}.data`, `${graph}.json`], "the entry's three files and nothing else");
  const p = `${dir}/${graph}`;
  return { graph: p, data: `${p}.data`, meta: `${p}.json` };
}

function assertSoundEntry(e: Entry, of: LoadedModel = model) {
  const meta: EntryMeta = JSON.parse(Deno.readTextFileSync(e.meta));
  const graph = Deno.readFileSync(e.graph), data = Deno.readFileSync(e.data);
  assertEquals(meta.graph, { size: graph.length, sha256: sha256Hex(graph) });
  assertEquals(meta.data, { size: data.length, sha256: sha256Hex(data) });
  assert(data.length > 0, "no external data to check");
  // No weight values: the entry is far smaller than the model's weights.
  const weightBytes = of.weights.names().reduce((n, w) => n + of.weights.get(w).bytes.length, 0);
  assert(graph.length + data.length < weightBytes / 4, `entry of ${graph.length + data.length} bytes`);
  assert(meta.info.weights.length > 0, "weights are inputs");
}

function assertBytes(actual: Uint8Array, expected: Uint8Array, msg = "bytes") {
  assertEquals(actual.length, expected.length, `${msg}: length`);
  const i = actual.findIndex((x, i) => x !== expected[i]);
  assert(i < 0, `${msg}: differ at byte ${i}`);
}

const exists = (f: string) => Deno.lstat(f).then(() => true, () => false);
const built = (logs: string[]) => logs.some((l) => l.startsWith("graph: built"));
const fromCache = (logs: string[]) => logs.some((l) => l.startsWith("graph: cached"));

/** A runner over the cache whose first step's logits must match the float64 reference. */
function assertRunnerCorrect(dir: string): Promise<string[]> {
  return runnerLogits(dir, model);
}

/** A runner over the cache for `m` whose first step's logits must match m's float64 reference. */
async function runnerLogits(dir: string, m: LoadedModel): Promise<string[]> {
  const logs: string[] = [];
  const runner = await ModelRunner.create(m, {
    dtype: "f32",
    blockSize: 16,
    kvCacheMb: 1,
    cacheDir: dir,
    externalMinBytes: OPTS.externalMinBytes,
    log: (l) => logs.push(l),
  });
  try {
    const ids = [1, 17, 40, 5, 88, 23];
    const V = m.config.vocabSize;
    const h = await runner.run(stepInputs([{ ids, past: 0, blocks: [2] }], 1));
    const { logits } = await runner.read(h);
    const ref = referenceLogits(m, ids);
    for (let t = 0; t < ids.length; t++) {
      let diff = 0;
      for (let v = 0; v < V; v++) diff = Math.max(diff, Math.abs(logits![t * V + v] - ref[t][v]));
      assert(diff < 2e-2, `position ${t}: logits off by ${diff}`);
    }
  } finally {
    await runner.close();
  }
  return logs;
}

/**
 * A fresh cache folder holding one sound entry, stored by loadOrBuildGraph or, with `runner`, by a
 * ModelRunner (whichever graph options it passes), and that entry's files' bytes.
 */
async function freshEntry(runner = false) {
  const dir = await Deno.makeTempDir({ prefix: "graph_cache_test_" });
  const first = runner ? { logs: await assertRunnerCorrect(dir), graph: null } : await load(dir);
  assert(built(first.logs), first.logs.join("\n"));
  const e = entryOf(dir);
  assertSoundEntry(e);
  return { dir, e, graph: Deno.readFileSync(e.graph), data: Deno.readFileSync(e.data), built: first.graph };
}

Deno.test("an entry is stored with sizes and SHA-256s and loaded back verified", async () => {
  const { dir, built: g } = await freshEntry();
  try {
    assert(g);
    const again = await load(dir);
    assert(fromCache(again.logs) && !built(again.logs), again.logs.join("\n"));
    assertBytes(again.graph.bytes, g.bytes);
    assertBytes(again.graph.data, g.data);
    assertEquals([again.graph.nodesPerLayer, again.graph.totalNodes], [g.nodesPerLayer, g.totalNodes]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a truncated data file is logged and rebuilt, and the runner computes correct logits", async () => {
  const { dir, e, data } = await freshEntry(true);
  try {
    // Half the weights, then none (a crash before any data reached the disk).
    for (const size of [Math.floor(data.length / 2), 0]) {
      await Deno.truncate(e.data, size);
      const logs = await assertRunnerCorrect(dir);
      const warn = logs.find((l) => l.includes("unusable"));
      assert(warn?.includes(`data size ${size} bytes`), logs.join("\n"));
      assert(built(logs), logs.join("\n"));
      // Rebuilt over: whole again.
      assertSoundEntry(entryOf(dir));
      assertBytes(Deno.readFileSync(e.data), data);
    }
    // The next start takes it from the cache.
    const logs = await assertRunnerCorrect(dir);
    assert(fromCache(logs) && !built(logs), logs.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a flipped byte in the data or the graph is detected by its hash and rebuilt", async () => {
  const { dir, e, data, graph } = await freshEntry(true);
  try {
    for (const [file, bytes, name] of [[e.data, data, "data"], [e.graph, graph, "graph"]] as const) {
      const bad = bytes.slice();
      bad[Math.floor(bad.length * 0.7)] ^= 0x10;
      Deno.writeFileSync(file, bad);
      // The runner gets the rebuilt graph, not the altered one.
      const logs = await assertRunnerCorrect(dir);
      assert(logs.some((l) => l.includes(`unusable (${name} SHA-256`)), logs.join("\n"));
      assert(built(logs), logs.join("\n"));
      assertBytes(Deno.readFileSync(file), bytes);
      assertSoundEntry(entryOf(dir));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("missing, malformed or old-format metadata, or a missing file: rebuilt, never fatal", async () => {
  const { dir, e, data, graph } = await freshEntry();
  try {
    const cases: [string, () => void, string][] = [
      ["metadata removed", () => Deno.removeSync(e.meta), "metadata missing"],
      ["metadata cut short", () => Deno.writeTextFileSync(e.meta, '{"nodesPerLayer": 3, "gra'), "malformed"],
      [
        "metadata of the old format",
        () => Deno.writeTextFileSync(e.meta, '{"nodesPerLayer":1,"totalNodes":9}'),
        "older",
      ],
      ["metadata altered", () => {
        const text = Deno.readTextFileSync(e.meta);
        const altered = text.replace(/"totalNodes":(\d+)/, (_, n) => `"totalNodes":${Number(n) + 1}`);
        assert(altered !== text);
        Deno.writeTextFileSync(e.meta, altered);
      }, "altered"],
      ["data removed", () => Deno.removeSync(e.data), "data missing"],
      ["graph removed", () => Deno.removeSync(e.graph), "graph missing"],
    ];
    for (const [name, spoil, expected] of cases) {
      spoil();
      const { graph: g, logs } = await load(dir);
      assert(logs.some((l) => l.includes("unusable") && l.includes(expected)), `${name}: ${logs.join("\n")}`);
      assert(built(logs), name);
      assertBytes(g.data, data, name);
      assertBytes(g.bytes, graph, name);
      assertSoundEntry(entryOf(dir));
    }
    // Only the graph's two files and no metadata: a partial entry, not a plain miss.
    Deno.removeSync(e.meta);
    assertEquals((await readCached(e.graph)).problem, "metadata missing");
    // Nothing at all is a plain miss: built without a warning.
    for (const f of [e.graph, e.data]) Deno.removeSync(f);
    assertEquals(await readCached(e.graph), {});
    const { logs } = await load(dir);
    assert(built(logs) && !logs.some((l) => l.includes("unusable")), logs.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a store removes the entry's temporary files left by a writer that died, once stale", async () => {
  const { dir, e } = await freshEntry();
  try {
    const stale = `${e.data}.999999-dead.tmp`, recent = `${e.graph}.999998-busy.tmp`;
    const other = `${dir}/0123456789abcdef01234567.onnx.data.999997-dead.tmp`;
    for (const f of [stale, recent, other]) Deno.writeFileSync(f, new Uint8Array(100));
    const old = new Date(Date.now() - STALE_TEMP_MS - 60_000);
    for (const f of [stale, other]) Deno.utimeSync(f, old, old);
    Deno.removeSync(e.meta);
    const { logs } = await load(dir);
    assert(built(logs), logs.join("\n"));
    assert(logs.some((l) => l.includes("left by an interrupted store")), logs.join("\n"));
    // Only this entry's stale file: a recent one may belong to a writer still at work.
    assert(!(await exists(stale)) && await exists(recent) && await exists(other));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a cache folder that cannot be written only costs a rebuild", async () => {
  const dir = await Deno.makeTempDir({ prefix: "graph_cache_test_" });
  try {
    // A file where the folder should be: mkdir fails, the graph is still built and returned.
    const blocked = `${dir}/not-a-folder`;
    Deno.writeTextFileSync(blocked, "");
    const { graph, logs } = await load(blocked);
    assert(built(logs) && logs.some((l) => l.startsWith("graph: not cached")), logs.join("\n"));
    assert(graph.data.length > 0 && graph.weights.length > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("two processes building and storing one entry at once both end with it whole", async () => {
  const root = await Deno.makeTempDir({ prefix: "graph_cache_race_" });
  const dir = `${root}/cache`;
  const writer = new URL("../helpers/graph_cache_writer.ts", import.meta.url).pathname;
  try {
    const N = 2, ROUNDS = 20;
    const runs = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", writer, dir, String(i), String(N), String(ROUNDS)],
          stdout: "piped",
          stderr: "piped",
        }).output()),
    );
    for (const [i, r] of runs.entries()) {
      const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
      assertEquals(r.code, 0, `writer ${i}: ${out}\n${err}`);
      const s = JSON.parse(out.trim().split("\n").pop()!);
      // Every read-back while the other process kept replacing the files found a whole entry.
      assertEquals([s.whole, s.problems, s.wrong, s.finalOk], [ROUNDS, 0, 0, true], `writer ${i}: ${out}`);
    }
    // One entry, no temporary files left behind, and it loads from the cache.
    const m = randomModel("llama", 7, WRITER_MODEL.config);
    assertSoundEntry(entryOf(dir), m);
    const logs: string[] = [];
    await loadOrBuildGraph(m, { ...WRITER_MODEL.opts, cacheDir: dir, log: (l) => logs.push(l) });
    assert(fromCache(logs), logs.join("\n"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("models of one shape share an entry: weights are not in it, each runner computes its own", async () => {
  const { dir } = await freshEntry(true);
  try {
    // Same config, other weight values: the entry of the first model serves, and the logits are the
    // second model's (its weights come from its own tensors, not from the cache).
    const other = randomModel("llama", 4);
    assertEquals(other.config, model.config);
    const logs = await runnerLogits(dir, other);
    assert(fromCache(logs) && !built(logs), logs.join("\n"));
    assertEquals([...Deno.readDirSync(dir)].length, 3, "still one entry");
    // A graph with inline weights holds their values: never cached.
    const inline = await loadOrBuildGraph(other, {
      ...OPTS,
      weightsAsInputs: false,
      cacheDir: dir,
      log: () => {},
    });
    assertEquals(inline.weights, []);
    assertEquals([...Deno.readDirSync(dir)].length, 3, "inline graph not stored");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
