// One of several processes storing the same graph cache entry at once (tests/engine/graph_cache_test.ts):
// loads or builds the entry as a server starting would, waits for the others, then stores it ROUNDS
// times, reading it during each store. Prints a JSON summary; exits 1 if a read ever returned
// bytes that differ from the build or the entry is not whole at the end.
//
// deno run -A tests/helpers/graph_cache_writer.ts <cacheDir> <myIndex> <processes> <rounds>

import { loadOrBuildGraph, readCached, writeCached } from "../../engine/graph_cache.ts";
import { randomModel } from "./random_model.ts";

export const WRITER_MODEL = {
  // Weights are inputs (not in the entry); the greedy ramp over 4096 tokens is its external data.
  config: {
    vocabSize: 4096,
    hiddenSize: 256,
    intermediateSize: 1024,
    numHeads: 8,
    numKvHeads: 4,
    headDim: 32,
  },
  opts: { dtype: "f32", maxPositions: 64, externalMinBytes: 1024, weightsAsInputs: true },
} as const;

if (import.meta.main) {
  const [dir, me, n, rounds] = [
    Deno.args[0],
    Number(Deno.args[1]),
    Number(Deno.args[2]),
    Number(Deno.args[3]),
  ];
  const model = randomModel("llama", 7, WRITER_MODEL.config);
  const logs: string[] = [];
  const g = await loadOrBuildGraph(model, { ...WRITER_MODEL.opts, cacheDir: dir, log: (m) => logs.push(m) });
  // Barrier: every process built before any of them stores.
  await Deno.writeTextFile(`${dir}/../ready-${me}`, "");
  for (;;) {
    const ready = await Promise.all(
      Array.from({ length: n }, (_, i) => Deno.lstat(`${dir}/../ready-${i}`).then(() => true, () => false)),
    );
    if (ready.every((x) => x)) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const entry = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".onnx"))?.name;
  const target = `${dir}/${entry ?? "missing.onnx"}`;
  let whole = 0, problems = 0, wrong = 0;
  const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);
  for (let r = 0; r < rounds; r++) {
    // Reading while this process and the other one store the entry.
    const [, got] = await Promise.all([writeCached(dir, target, g, (m) => logs.push(m)), readCached(target)]);
    if (got.graph) {
      whole++;
      if (!same(got.graph.bytes, g.bytes) || !same(got.graph.data, g.data)) wrong++;
    } else if (got.problem) problems++;
  }
  const final = await readCached(target);
  const finalOk = !!final.graph && same(final.graph.data, g.data) && same(final.graph.bytes, g.bytes);
  console.log(JSON.stringify({ me, whole, problems, wrong, finalOk, logs }));
  if (wrong > 0 || !finalOk) Deno.exit(1);
}
