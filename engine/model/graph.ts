// Builds the ONNX graph of one engine step over a ragged batch for Llama-family models.
//
// One run = one step: the flat tokens of every scheduled sequence (prefill chunks and single decode
// tokens mixed, no padding), per-sequence metadata for com.microsoft.PagedAttention, and the rows to
// sample. The KV cache lives in engine-owned GPU buffers passed as inputs; PagedAttention writes the
// step's K/V into them in place (its cache outputs are omitted). Sampling happens on the GPU too, so
// that a decode's input token can come straight from the previous step's output without a readback:
// greedy ids in the step graph, temperature, top_k, top_p and min_p in one WGSL kernel
// (engine/gpu_sampler.ts) that runs only in steps with a sampled row.

import { GraphBuilder, TensorType, type WeightSpec } from "../onnx/builder.ts";
import { encodeGraphAddition } from "../onnx/proto.ts";
import type { LoadedModel } from "./types.ts";
import type { ActDType } from "./weights.ts";
import { IO } from "./graph_io.ts";
import { type Initializer, StepWeights } from "./step_weights.ts";
import {
  attention,
  lmHead,
  mlp,
  ResidualStream,
  type StepContext,
  weightAdder,
  wideSplit,
} from "./step_blocks.ts";

export interface GraphOptions {
  /** Activations and weights: f32 keeps the residual stream and matmuls in fp32 (attention is fp16 regardless). */
  dtype: ActDType;
  /** Rotary tables cover positions [0, maxPositions). */
  maxPositions: number;
  /** Initializers of at least this many bytes go to the external data blob (default 64 KiB). */
  externalMinBytes?: number;
  /**
   * Model weights become graph inputs (listed in BuiltGraph.weights; stepWeightTensors converts
   * their bytes) instead of initializers, so that every session over the graph can be fed one copy
   * of them on the GPU, and the graph itself holds no weight values.
   */
  weightsAsInputs?: boolean;
  /**
   * Split factor of the linear layers' K (split-K matmuls, see linear in step_blocks.ts); a layer
   * whose K does not split well stays a plain MatMul (splitFactor). Absent or 1: plain MatMuls.
   */
  splitK?: number;
  /**
   * A graph for prompt rows: split layers whose K is at most their N run as one MatMul (see linear in
   * step_blocks.ts); same weight inputs, so it is fed the same buffers as the graph without it.
   */
  plainWideMatmuls?: boolean;
}

export interface BuiltGraph {
  /**
   * The model proto without its attn_meta input: stepModel adds it as an input or as a constant.
   * Its large initializers refer to `data` (ONNX external data, see encodeSplit).
   */
  bytes: Uint8Array;
  data: Uint8Array;
  /** Weights fed as inputs (empty unless GraphOptions.weightsAsInputs): names, types and shapes. */
  weights: WeightSpec[];
  nodesPerLayer: number;
  totalNodes: number;
}

/**
 * The step model of a built graph. attn_meta null: an input (the host-side [maxQ, maxKv] bounds of
 * each step). A pair: a constant, as graph capture needs, since PagedAttention reads attn_meta on the
 * host and a captured replay reads no host input; the exact lengths still come from the GPU inputs,
 * and these are only upper bounds frozen into the session's dispatches.
 */
export function stepModel(graph: BuiltGraph, attnMeta: [number, number] | null): Uint8Array {
  const addition = attnMeta
    ? encodeGraphAddition({
      initializers: [{
        name: IO.attnMeta,
        type: TensorType.INT32,
        dims: [2],
        raw: new Uint8Array(Int32Array.from(attnMeta).buffer),
      }],
    })
    : encodeGraphAddition({ inputs: [{ name: IO.attnMeta, type: TensorType.INT32, dims: [2] }] });
  const out = new Uint8Array(graph.bytes.length + addition.length);
  out.set(graph.bytes);
  out.set(addition, graph.bytes.length);
  return out;
}

export function buildGraph(model: LoadedModel, opts: GraphOptions): BuiltGraph {
  const cfg = model.config;
  const weights = new StepWeights(model, opts.dtype, opts.splitK ?? 1);
  const g = new GraphBuilder();
  declareInputs(g, cfg.numLayers, cfg.numKvHeads, weights.Dp);
  const weight = weightAdder(g, opts.weightsAsInputs ?? false);
  const ids = tokenIds(g);
  const x = g.op1("Gather", [weight(weights.embedding()), ids], { axis: 0 });
  const [cos, sin] = weights.rotary(opts.maxPositions).map(weight);
  const c: StepContext = {
    g,
    cfg,
    act: opts.dtype,
    Dp: weights.Dp,
    rope: [cos, sin],
    weight,
    splitViews: new Map(),
    plainWide: opts.plainWideMatmuls ?? false,
  };

  const stream = new ResidualStream(g, x, cfg.rmsNormEps);
  let nodesPerLayer = 0;
  for (let l = 0; l < cfg.numLayers; l++) {
    const w = weights.layer(l);
    const layerStart = g.nodes.length;
    stream.add(attention(c, l, stream.norm(weight(w.inputNorm)), w));
    stream.add(mlp(c, stream.norm(weight(w.postNorm)), w));
    // The last layer is representative: the first has a plain norm instead of a fused skip-norm.
    nodesPerLayer = g.nodes.length - layerStart;
  }
  lmHead(c, stream, weights.finalNorm(), weights.lmHead());

  const { model: bytes, data, weights: inputs } = g.encodeSplit(
    "ragtime-step",
    opts.externalMinBytes ?? 64 * 1024,
  );
  return { bytes, data, weights: inputs, nodesPerLayer, totalNodes: g.nodes.length };
}

/**
 * Linear layers that GraphOptions.plainWideMatmuls turns into one MatMul for these options (0: the
 * graph for prompt rows would be the same graph).
 */
export function plainWideLayers(model: LoadedModel, opts: GraphOptions): number {
  const weights = new StepWeights(model, opts.dtype, opts.splitK ?? 1);
  let n = 0;
  for (let l = 0; l < model.config.numLayers; l++) {
    const w = weights.layer(l);
    n += [w.qkv, w.o, w.gateUp, w.down].filter((t) => wideSplit(t.dims)).length;
  }
  return n;
}

/**
 * The step graph's weights for these options, each converted only when its raw() is called: what
 * the runner uploads for a graph built with weightsAsInputs (cached or not).
 */
export function stepWeightTensors(model: LoadedModel, opts: GraphOptions): Initializer[] {
  return new StepWeights(model, opts.dtype, opts.splitK ?? 1).all(opts.maxPositions);
}

function declareInputs(g: GraphBuilder, numLayers: number, kvHeads: number, headDim: number) {
  g.input(IO.inputIds, TensorType.INT32, ["T"]);
  g.input(IO.prevIds, TensorType.INT32, ["P"]);
  g.input(IO.idSrc, TensorType.INT32, ["T"]);
  g.input(IO.cuSeqlens, TensorType.INT32, ["B1"]);
  g.input(IO.pastSeqlens, TensorType.INT32, ["B"]);
  g.input(IO.blockTable, TensorType.INT32, ["B", "M"]);
  // attn_meta (PagedAttention's host-side bounds) is added by stepModel, as an input or a constant.
  g.input(IO.sampleRows, TensorType.INT32, ["S"]);
  for (let i = 0; i < numLayers; i++) {
    g.input(IO.keyCache(i), TensorType.FLOAT16, ["NB", "BS", kvHeads, headDim]);
    g.input(IO.valueCache(i), TensorType.FLOAT16, ["NB", "BS", kvHeads, headDim]);
  }
}

/**
 * A decode's input token is either known on the CPU (input_ids) or the previous step's sampled
 * token still on the GPU (prev_ids[id_src]); id_src < 0 selects the former.
 */
function tokenIds(g: GraphBuilder): string {
  const zeroI32 = g.constI32([0], []);
  const fromPrev = g.op1("Gather", [IO.prevIds, g.op1("Max", [IO.idSrc, zeroI32])], { axis: 0 });
  const useKnown = g.op1("Less", [IO.idSrc, zeroI32]);
  return g.op1("Where", [useKnown, IO.inputIds, fromPrev]);
}
