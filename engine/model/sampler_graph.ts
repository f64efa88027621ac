// The sampling graph: temperature sampling on the GPU, in a small graph of its own so that only steps
// with a sampled row pay for its ~30 dispatches (ORT runs every node of a session whatever outputs are
// fetched, and each dispatch costs CPU time in every step). Greedy ids come from the step graph.

import { GraphBuilder, TensorType } from "../onnx/builder.ts";
import { IO } from "./graph_io.ts";

/**
 * The sampling graph, run after a step with a sampled row: inputs logits [S, V] and next_ids [S]
 * (the step's greedy ids), sample_u [S], inv_temp [S]; output
 * sampled_ids[s] = next_ids[s] when sample_u[s] < 0, else inverse-CDF sampling of
 * softmax(logits[s] * inv_temp[s]) with the sequence's own uniform u (first id whose cumulative
 * probability exceeds u, ids ascending) — the CPU sampler's rule, so a seeded sequence draws from the
 * same stream wherever it runs. CumSum over a whole 49k vocabulary measured ~0.7 ms per row on an
 * H100, so the CDF is two-level (chunks of CHUNK ids, then ids within the chosen chunk).
 */
export function buildSamplerGraph(vocab: number): Uint8Array {
  const g = new GraphBuilder();
  g.input(IO.logits, TensorType.FLOAT, ["S", vocab]);
  g.input(IO.nextIds, TensorType.INT32, ["S"]);
  g.input(IO.sampleU, TensorType.FLOAT, ["S"]);
  g.input(IO.invTemp, TensorType.FLOAT, ["S"]);
  sampleIds(g, IO.logits, IO.nextIds, vocab);
  g.output(IO.sampledIds, TensorType.INT32, ["S"]);
  return g.encode("ragtime-sampler");
}

const CHUNK = 256;

function sampleIds(g: GraphBuilder, logits: string, greedy: string, vocab: number) {
  const axis1 = g.constI64([1]);
  const f = (t: string) => g.op1("Cast", [t], { to: TensorType.FLOAT });
  const i32 = (t: string) => g.op1("Cast", [t], { to: TensorType.INT32 });
  const countBelow = (cdf: string, threshold: string, max: number) =>
    g.op1("Min", [
      i32(g.op1("ReduceSum", [f(g.op1("Less", [cdf, threshold])), axis1], { keepdims: 0 })),
      g.constI32([max], []),
    ]);

  const chunks = Math.ceil(vocab / CHUNK);
  let scaled = g.op1("Mul", [logits, g.op1("Unsqueeze", [IO.invTemp, axis1])]);
  if (chunks * CHUNK !== vocab) {
    scaled = g.op1("Pad", [scaled, g.constI64([0, 0, 0, chunks * CHUNK - vocab]), g.constF32([-1e30], [])]);
  }
  const probs = g.op1("Reshape", [g.op1("Softmax", [scaled], { axis: 1 }), g.constI64([-1, chunks, CHUNK])]);
  const chunkMass = g.op1("ReduceSum", [probs, g.constI64([2])], { keepdims: 0 });
  const chunkCdf = g.op1("CumSum", [chunkMass, g.constI32([1], [])]);
  const u = g.op1("Unsqueeze", [IO.sampleU, axis1]);
  const c = countBelow(chunkCdf, u, chunks - 1); // [S]
  const c2 = g.op1("Unsqueeze", [c, axis1]); // [S,1]
  const before = g.op1("GatherElements", [g.op1("Sub", [chunkCdf, chunkMass]), c2], { axis: 1 });
  const inChunk = g.op1("GatherElements", [
    probs,
    g.op1("Expand", [g.op1("Unsqueeze", [c2, g.constI64([2])]), g.constI64([1, 1, CHUNK])]),
  ], { axis: 1 });
  const innerCdf = g.op1("CumSum", [
    g.op1("Reshape", [inChunk, g.constI64([-1, CHUNK])]),
    g.constI32([1], []),
  ]);
  const k = countBelow(innerCdf, g.op1("Sub", [u, before]), CHUNK - 1);
  const id = g.op1("Min", [
    g.op1("Add", [g.op1("Mul", [c, g.constI32([CHUNK], [])]), k]),
    g.constI32([vocab - 1], []),
  ]);
  const isGreedy = g.op1("Less", [IO.sampleU, g.constF32([0], [])]);
  g.op("Where", [isGreedy, greedy, id], {}, { name: IO.sampledIds });
}
