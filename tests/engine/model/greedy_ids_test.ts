// The step graph's greedy ids (engine/model/step_blocks.ts greedyIds) on their own: argmax of each row,
// the lowest id among equal maxima, for vocabularies reduced in two stages and in one.

import { assertEquals } from "../../helpers/assert.ts";
import * as ort from "onnxruntime-web/webgpu";
import { GraphBuilder, TensorType } from "../../../engine/onnx/builder.ts";
import { greedyIds } from "../../../engine/model/step_blocks.ts";
import { IO } from "../../../engine/model/graph_io.ts";

function cpuArgmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

async function gpuGreedy(logits: Float32Array, rows: number, vocab: number): Promise<number[]> {
  const g = new GraphBuilder();
  g.input("x", TensorType.FLOAT, ["S", vocab]);
  // The graph's logits output is produced by a named node in the step graph; an Identity stands in.
  g.op("Identity", ["x"], {}, { name: IO.logits });
  greedyIds(g, IO.logits, vocab);
  g.output(IO.nextIds, TensorType.INT32, ["S"]);
  const session = await ort.InferenceSession.create(g.encodeSplit("greedy", Infinity).model, {
    executionProviders: ["webgpu"],
  });
  try {
    const out = await session.run({ x: new ort.Tensor("float32", logits, [rows, vocab]) });
    return [...(out[IO.nextIds].data as Int32Array)];
  } finally {
    await session.release();
  }
}

Deno.test("greedy ids: the argmax of each row, ties to the lowest id, across reduction chunks", async () => {
  let seed = 7;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  // 512 and 49152: two stages (chunks of 256); 1000: one ReduceMax over the row.
  for (const vocab of [512, 1000, 49152]) {
    const rows: Float32Array[] = [];
    const plant = (ids: number[], v = 9) => {
      const r = Float32Array.from({ length: vocab }, () => rnd() * 4 - 2);
      for (const id of ids) r[id] = v;
      rows.push(r);
    };
    plant([3]);
    plant([vocab - 1]);
    plant([5, 300 % vocab, vocab - 2]); // equal maxima in different chunks
    plant([257 % vocab, 256 % vocab]); // neighbours across a chunk edge
    rows.push(new Float32Array(vocab).fill(0.5)); // all equal: id 0
    const neg = new Float32Array(vocab).fill(-Infinity);
    neg[vocab - 3] = -1e30;
    rows.push(neg);
    for (let i = 0; i < 10; i++) plant([]);
    const flat = new Float32Array(rows.length * vocab);
    rows.forEach((r, i) => flat.set(r, i * vocab));
    assertEquals(await gpuGreedy(flat, rows.length, vocab), rows.map(cpuArgmax), `vocab ${vocab}`);
  }
});
