// The blocks of the step graph: the residual stream with its fused norms, attention over the paged
// KV cache, the MLP, and the LM head with greedy ids. Each block registers its weights (prepared by
// step_weights.ts) where it first uses them.

import { type GraphBuilder, TensorType } from "../onnx/builder.ts";
import type { ModelConfig } from "./types.ts";
import type { ActDType } from "./weights.ts";
import { IO } from "./graph_io.ts";
import type { Initializer, LayerWeights } from "./step_weights.ts";

const MS = "com.microsoft";

/** What every block needs to know. */
export interface StepContext {
  g: GraphBuilder;
  cfg: ModelConfig;
  /** Activation dtype around attention (attention itself and the KV cache are fp16). */
  act: ActDType;
  /** Padded head size (see paddedHeadDim). */
  Dp: number;
  /** Rotary cos/sin tables. */
  rope: [string, string];
  /** Registers a model weight (an initializer, or a graph input; see GraphOptions.weightsAsInputs). */
  weight: (t: Initializer) => string;
  /** Split-K views of activations already built, by activation and split (see linear). */
  splitViews: Map<string, string>;
  /** GraphOptions.plainWideMatmuls: split layers with K <= N run as one MatMul (see linear). */
  plainWide: boolean;
}

/** The weight registration of buildGraph's `weightsAsInputs` option. */
export function weightAdder(g: GraphBuilder, asInputs: boolean): (t: Initializer) => string {
  return asInputs
    ? (t) => g.weightInput(t.name, t.type, t.dims)
    : (t) => g.weight(t.name, t.type, t.dims, t.raw());
}

/**
 * The residual stream. A sub-block's output is not added on its own: the next norm adds it with
 * SkipSimplifiedLayerNormalization, which returns both the normalised and the summed stream.
 */
export class ResidualStream {
  private pending: string | null = null;
  private readonly eps: { float: number };

  constructor(private readonly g: GraphBuilder, private residual: string, rmsNormEps: number) {
    this.eps = { float: rmsNormEps };
  }

  /** RMS-norm of the stream with the last sub-block's output folded in. */
  norm(gamma: string): string {
    if (this.pending === null) {
      return this.g.op1("SimplifiedLayerNormalization", [this.residual, gamma], {
        axis: -1,
        epsilon: this.eps,
      }, "");
    }
    const [normed, , , sum] = this.g.op(
      "SkipSimplifiedLayerNormalization",
      [
        this.pending,
        this.residual,
        gamma,
      ],
      { epsilon: this.eps },
      { domain: MS, nOut: 4 },
    );
    this.residual = sum;
    this.pending = null;
    return normed;
  }

  /** A sub-block's output, added by the next norm. */
  add(out: string): void {
    this.pending = out;
  }
}

/**
 * x [T, K] times a linear weight. A weight declared [S, K/S, N] (splitFactor) runs split-K: x viewed
 * as [S, T, K/S] (Reshape + Transpose, once per activation), one batched MatMul into S partial
 * products [S, T, N], summed by ReduceSum. onnxruntime's WebGPU MatMul spreads a few rows' work over
 * N alone; the S slices give it S times the workgroups, each over a K/S-long dot product (measured
 * on an H200 in f16 at 16 rows: 5.6-13x faster than MatMul on the 1B's shapes, and closer to the
 * float64 product). `name` names the node that computes the result (a graph output's).
 *
 * In a graph for prompt rows (c.plainWide) a split weight with K <= N is seen whole ([K, N], a
 * Reshape that aliases the same buffer) and multiplied by one MatMul: on hundreds of rows that is
 * 7-14% faster on the 1B's K = 2048 layers, while a long K over few columns (its down projection)
 * stays 3-5x faster split (docs/BENCHMARKS.md, session 14). `fewRows` (the LM head's sampled rows)
 * keeps the split. onnxruntime picks one MatMul program for every row count past 8, so a row's
 * result does not depend on the rows beside it either way.
 */
export function linear(c: StepContext, x: string, w: Initializer, name?: string, fewRows = false): string {
  const { g } = c;
  const weight = c.weight(w);
  if (w.dims.length !== 3) return g.op("MatMul", [x, weight], {}, { name })[0];
  const [S, Ks, N] = w.dims;
  if (c.plainWide && !fewRows && wideSplit(w.dims)) {
    return g.op("MatMul", [x, g.op1("Reshape", [weight, g.constI64([S * Ks, N])])], {}, { name })[0];
  }
  const key = `${x}/${S}`;
  let view = c.splitViews.get(key);
  if (!view) {
    view = g.op1("Transpose", [g.op1("Reshape", [x, g.constI64([-1, S, Ks])])], { perm: [1, 0, 2] });
    c.splitViews.set(key, view);
  }
  const parts = g.op1("MatMul", [view, weight]);
  return g.op("ReduceSum", [parts, g.constI64([0])], { keepdims: 0 }, { name })[0];
}

/** A split weight [S, K/S, N] with K <= N: one MatMul in a graph for prompt rows (see linear). */
export function wideSplit(dims: number[]): boolean {
  return dims.length === 3 && dims[0] * dims[1] <= dims[2];
}

/** Self-attention of layer `l` over the paged KV cache (RoPE runs inside PagedAttention). */
export function attention(c: StepContext, l: number, h: string, w: LayerWeights): string {
  const { g, cfg } = c;
  let qkv = linear(c, h, w.qkv);
  if (w.qkvBias) qkv = g.op1("Add", [qkv, c.weight(w.qkvBias)]);
  if (c.act === "f32") qkv = g.op1("Cast", [qkv], { to: TensorType.FLOAT16 });
  const qkvInputs = w.qkNorm ? normedHeads(c, qkv, w.qkNorm) : [qkv, "", ""];
  let attn = g.op1("PagedAttention", [
    ...qkvInputs,
    IO.keyCache(l),
    IO.valueCache(l),
    IO.cuSeqlens,
    IO.pastSeqlens,
    IO.blockTable,
    ...c.rope,
    "",
    "",
    "",
    "",
    "",
    "",
    IO.attnMeta,
  ], {
    num_heads: cfg.numHeads,
    kv_num_heads: cfg.numKvHeads,
    scale: { float: 1 / Math.sqrt(cfg.headDim) },
    do_rotary: 1,
    rotary_interleaved: 0,
  }, MS);
  if (c.act === "f32") attn = g.op1("Cast", [attn], { to: TensorType.FLOAT });
  return linear(c, attn, w.o);
}

/**
 * PagedAttention on WebGPU has no q/k-norm inputs: split q, k and v and RMS-normalise each q and k
 * head before it. Padded heads average over Dp, not D: epsilon is rescaled as gamma was.
 */
function normedHeads(c: StepContext, qkv: string, gammas: { q: Initializer; k: Initializer }): string[] {
  const { g, cfg, Dp } = c;
  const qDimP = cfg.numHeads * Dp, kvDimP = cfg.numKvHeads * Dp;
  const [q, k, v] = g.op("Split", [qkv, g.constI64([qDimP, kvDimP, kvDimP])], { axis: 1 }, { nOut: 3 });
  const headNorm = (t: string, heads: number, w: Initializer) => {
    const gamma = c.weight(w);
    const r = g.op1("Reshape", [t, g.constI64([-1, heads, Dp])]);
    const n = g.op1("SimplifiedLayerNormalization", [r, gamma], {
      axis: -1,
      epsilon: { float: cfg.rmsNormEps * cfg.headDim / Dp },
    });
    return g.op1("Reshape", [n, g.constI64([-1, heads * Dp])]);
  };
  return [headNorm(q, cfg.numHeads, gammas.q), headNorm(k, cfg.numKvHeads, gammas.k), v];
}

/** SwiGLU MLP: down(silu(gate(m)) * up(m)), gate and up in one MatMul. */
export function mlp(c: StepContext, m: string, w: LayerWeights): string {
  const { g, cfg } = c;
  const gu = linear(c, m, w.gateUp);
  const I = cfg.intermediateSize;
  const [gate, up] = g.op("Split", [gu, g.constI64([I, I])], { axis: 1 }, { nOut: 2 });
  const silu = g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]);
  return linear(c, g.op1("Mul", [silu, up]), w.down);
}

/** Final norm, logits of the sampled rows (output IO.logits, fp32) and their greedy ids (IO.nextIds). */
export function lmHead(c: StepContext, stream: ResidualStream, norm: Initializer, head: Initializer): void {
  const { g, cfg } = c;
  const final = stream.norm(c.weight(norm));
  const rows = g.op1("Gather", [final, IO.sampleRows], { axis: 0 });
  // The node that computes an output carries its name: an Identity in between would fill a bound
  // output with a buffer copy, which graph capture does not record (its replays would skip it).
  if (c.act === "f16") {
    g.op("Cast", [linear(c, rows, head, undefined, true)], { to: TensorType.FLOAT }, { name: IO.logits });
  } else {
    linear(c, rows, head, IO.logits, true);
  }
  g.output(IO.logits, TensorType.FLOAT, ["S", cfg.vocabSize]);

  greedyIds(g, IO.logits, cfg.vocabSize);
  g.output(IO.nextIds, TensorType.INT32, ["S"]);
}

/**
 * next_ids[s] = argmax(logits[s]), lowest id on ties. Measured on an H100: ArgMax's int64 output
 * sends its Cast to the CPU (a readback mid-step), so argmax is a max-reduction over a descending
 * ramp: the largest (vocab - id) among the maxima is the lowest id holding the max.
 */
export function greedyIds(g: GraphBuilder, logits: string, vocab: number) {
  const isMax = g.op1("Cast", [g.op1("Equal", [logits, rowMax(g, logits, vocab, 1)])], {
    to: TensorType.FLOAT,
  });
  const ramp = g.constF32(Array.from({ length: vocab }, (_, i) => vocab - i), [vocab]);
  const best = rowMax(g, g.op1("Mul", [isMax, ramp]), vocab, 0);
  g.op("Cast", [g.op1("Sub", [g.constF32([vocab], []), best])], { to: TensorType.INT32 }, {
    name: IO.nextIds,
  });
}

/**
 * The max of each row of x [S, vocab] ([S, 1] with keepdims 1, else [S]). onnxruntime's WebGPU
 * ReduceMax gives each output one workgroup, which walks a whole vocabulary-long row alone (H200, 16
 * rows of 49152: ~0.5 ms a ReduceMax); rows seen as [S, vocab / c, c] are reduced in two stages,
 * each over a short axis. A max is exact in any order, so the ids do not change.
 */
function rowMax(g: GraphBuilder, x: string, vocab: number, keepdims: 0 | 1): string {
  const c = [256, 128, 64, 32].find((c) => vocab % c === 0 && vocab / c > 1);
  if (!c) return g.op1("ReduceMax", [x, g.constI64([1])], { keepdims });
  const chunks = g.op1("Reshape", [x, g.constI64([0, vocab / c, c])]);
  const partial = g.op1("ReduceMax", [chunks, g.constI64([2])], { keepdims: 0 });
  return g.op1("ReduceMax", [partial, g.constI64([1])], { keepdims });
}
