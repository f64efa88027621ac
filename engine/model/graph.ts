// Builds the ONNX graph of one engine step over a ragged batch for Llama-family models.
//
// One run = one step: the flat tokens of every scheduled sequence (prefill chunks and single decode
// tokens mixed, no padding), per-sequence metadata for com.microsoft.PagedAttention, and the rows to
// sample. The KV cache lives in engine-owned GPU buffers passed as inputs; PagedAttention writes the
// step's K/V into them in place (its cache outputs are omitted). Sampling happens on the GPU too, so
// that a decode's input token can come straight from the previous step's output without a readback:
// greedy ids in the step graph, temperature sampling in a small second graph (sampler_graph.ts)
// that runs only in steps with a sampled row.

import { GraphBuilder, TensorType } from "../onnx/builder.ts";
import type { LoadedModel, ModelConfig } from "./types.ts";
import { inverseFrequency } from "./rope.ts";
import { IO } from "./graph_io.ts";
import { type ActDType, concatRows, encodeAs, toF32, transpose } from "./weights.ts";

export interface GraphOptions {
  /** Activations and weights: f32 keeps the residual stream and matmuls in fp32 (attention is fp16 regardless). */
  dtype: ActDType;
  /** Rotary tables cover positions [0, maxPositions). */
  maxPositions: number;
  /** Initializers of at least this many bytes go to the external data blob (default 64 KiB). */
  externalMinBytes?: number;
}

export interface BuiltGraph {
  /** The model proto; its large weights refer to `data` (ONNX external data, see encodeSplit). */
  bytes: Uint8Array;
  data: Uint8Array;
  nodesPerLayer: number;
  totalNodes: number;
}

export function buildGraph(model: LoadedModel, opts: GraphOptions): BuiltGraph {
  const cfg = model.config;
  const w = model.weights;
  const g = new GraphBuilder();
  const act = opts.dtype;
  const actType = act === "f16" ? TensorType.FLOAT16 : TensorType.FLOAT;
  const H = cfg.hiddenSize, D = cfg.headDim, NH = cfg.numHeads, NKV = cfg.numKvHeads;
  const I = cfg.intermediateSize, V = cfg.vocabSize;
  const qDim = NH * D;

  const vec = (name: string) =>
    g.weight(name, actType, [w.get(name).shape[0]], encodeAs(toF32(w.get(name)), act));
  // PagedAttention on WebGPU needs head sizes that are multiples of 16: smaller heads are zero-padded
  // (see padHeadRows), which leaves dot products, rotary pairs and outputs unchanged.
  const Dp = Math.ceil(D / 16) * 16;
  const qDimP = NH * Dp, kvDimP = NKV * Dp;
  const headRows = (name: string, heads: number) => {
    const t = w.get(name);
    return padHeadRows(toF32(t), heads, D, Dp, t.shape.length > 1 ? t.shape[1] : 1);
  };
  // Linear layers are stored [out, in]; MatMul wants [in, out].
  const linear = (parts: Float32Array[], cols: number, outName: string) => {
    const joined = concatRows(parts);
    const rows = joined.length / cols;
    return g.weight(outName, actType, [cols, rows], encodeAs(transpose(joined, rows, cols), act));
  };
  const plain = (name: string) => toF32(w.get(name));

  // Inputs.
  g.input(IO.inputIds, TensorType.INT32, ["T"]);
  g.input(IO.prevIds, TensorType.INT32, ["P"]);
  g.input(IO.idSrc, TensorType.INT32, ["T"]);
  g.input(IO.cuSeqlens, TensorType.INT32, ["B1"]);
  g.input(IO.pastSeqlens, TensorType.INT32, ["B"]);
  g.input(IO.blockTable, TensorType.INT32, ["B", "M"]);
  g.input(IO.attnMeta, TensorType.INT32, [2]);
  g.input(IO.sampleRows, TensorType.INT32, ["S"]);
  for (let i = 0; i < cfg.numLayers; i++) {
    g.input(IO.keyCache(i), TensorType.FLOAT16, ["NB", "BS", NKV, Dp]);
    g.input(IO.valueCache(i), TensorType.FLOAT16, ["NB", "BS", NKV, Dp]);
  }

  // A decode's input token is either known on the CPU (input_ids) or the previous step's
  // sampled token still on the GPU (prev_ids[id_src]); id_src < 0 selects the former.
  const zeroI32 = g.constI32([0], []);
  const fromPrev = g.op1("Gather", [IO.prevIds, g.op1("Max", [IO.idSrc, zeroI32])], { axis: 0 });
  const useKnown = g.op1("Less", [IO.idSrc, zeroI32]);
  const ids = g.op1("Where", [useKnown, IO.inputIds, fromPrev]);

  const embedName = "model.embed_tokens.weight";
  const embed = g.weight(embedName, actType, [V, H], encodeAs(toF32(w.get(embedName)), act));
  const x = g.op1("Gather", [embed, ids], { axis: 0 });

  const [cos, sin] = rotaryTables(g, cfg, Dp, opts.maxPositions);
  const ms = "com.microsoft";
  const eps = { float: cfg.rmsNormEps };
  let residual = x;
  let pending: string | null = null; // output of the previous sub-block, not yet added to the residual
  let nodesPerLayer = 0;

  const addNorm = (gamma: string): string => {
    if (pending === null) {
      return g.op1("SimplifiedLayerNormalization", [residual, gamma], { axis: -1, epsilon: eps }, "");
    }
    const [normed, , , sum] = g.op("SkipSimplifiedLayerNormalization", [pending, residual, gamma], {
      epsilon: eps,
    }, {
      domain: ms,
      nOut: 4,
    });
    residual = sum;
    pending = null;
    return normed;
  };

  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const layerStart = g.nodes.length;
    const h = addNorm(vec(p + "input_layernorm.weight"));
    const sa = `${p}self_attn.`;
    const wqkv = linear(
      [
        headRows(sa + "q_proj.weight", NH),
        headRows(sa + "k_proj.weight", NKV),
        headRows(sa + "v_proj.weight", NKV),
      ],
      H,
      `${p}qkv`,
    );
    let qkv = g.op1("MatMul", [h, wqkv]);
    if (cfg.attentionBias) {
      const bias = concatRows([
        headRows(sa + "q_proj.bias", NH),
        headRows(sa + "k_proj.bias", NKV),
        headRows(sa + "v_proj.bias", NKV),
      ]);
      qkv = g.op1("Add", [qkv, g.weight(`${p}qkv_bias`, actType, [qDimP + 2 * kvDimP], encodeAs(bias, act))]);
    }
    if (act === "f32") qkv = g.op1("Cast", [qkv], { to: TensorType.FLOAT16 });
    let attnInputs: string[];
    if (cfg.qkNorm) {
      // PagedAttention on WebGPU has no q/k-norm inputs: normalise each head before it (RoPE runs inside).
      const [q, k, v] = g.op("Split", [qkv, g.constI64([qDimP, kvDimP, kvDimP])], { axis: 1 }, { nOut: 3 });
      // Padded heads average over Dp, not D: rescale gamma and epsilon so the result is unchanged.
      const fix = Math.sqrt(D / Dp);
      const headNorm = (t: string, heads: number, name: string) => {
        const gm = padHeadRows(toF32(w.get(p + name)).map((x) => x * fix), 1, D, Dp, 1);
        const gamma = g.weight(`${p}${name}16`, TensorType.FLOAT16, [Dp], encodeAs(gm, "f16"));
        const r = g.op1("Reshape", [t, g.constI64([-1, heads, Dp])]);
        const n = g.op1("SimplifiedLayerNormalization", [r, gamma], {
          axis: -1,
          epsilon: { float: cfg.rmsNormEps * D / Dp },
        });
        return g.op1("Reshape", [n, g.constI64([-1, heads * Dp])]);
      };
      attnInputs = [
        headNorm(q, NH, "self_attn.q_norm.weight"),
        headNorm(k, NKV, "self_attn.k_norm.weight"),
        v,
      ];
    } else {
      attnInputs = [qkv, "", ""];
    }
    let attn = g.op1("PagedAttention", [
      ...attnInputs,
      IO.keyCache(l),
      IO.valueCache(l),
      IO.cuSeqlens,
      IO.pastSeqlens,
      IO.blockTable,
      cos,
      sin,
      "",
      "",
      "",
      "",
      "",
      "",
      IO.attnMeta,
    ], {
      num_heads: NH,
      kv_num_heads: NKV,
      scale: { float: 1 / Math.sqrt(D) },
      do_rotary: 1,
      rotary_interleaved: 0,
    }, ms);
    if (act === "f32") attn = g.op1("Cast", [attn], { to: TensorType.FLOAT });
    // o_proj's inputs follow the padded head layout: pad its columns via a transpose round trip.
    const wo = transpose(
      padHeadRows(transpose(plain(sa + "o_proj.weight"), H, qDim), NH, D, Dp, H),
      qDimP,
      H,
    );
    pending = g.op1("MatMul", [attn, linear([wo], qDimP, `${p}o`)]);

    const m = addNorm(vec(p + "post_attention_layernorm.weight"));
    const gu = g.op1("MatMul", [
      m,
      linear([plain(p + "mlp.gate_proj.weight"), plain(p + "mlp.up_proj.weight")], H, `${p}gate_up`),
    ]);
    const [gate, up] = g.op("Split", [gu, g.constI64([I, I])], { axis: 1 }, { nOut: 2 });
    const silu = g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]);
    pending = g.op1("MatMul", [
      g.op1("Mul", [silu, up]),
      linear([plain(p + "mlp.down_proj.weight")], I, `${p}down`),
    ]);
    // The last layer is representative: the first has a plain norm instead of a fused skip-norm.
    nodesPerLayer = g.nodes.length - layerStart;
  }

  const final = addNorm(vec("model.norm.weight"));
  const rows = g.op1("Gather", [final, IO.sampleRows], { axis: 0 });
  // MatMul wants [H, V]; a tied head stores a transposed copy of the embedding table, because Gemm
  // with transB measured ~40 GFLOP/s on an H100 through WebGPU (a naive kernel).
  const headName = cfg.tieEmbeddings ? embedName : "lm_head.weight";
  const head = g.weight("lm_head_t", actType, [H, V], encodeAs(transpose(toF32(w.get(headName)), V, H), act));
  let logits = g.op1("MatMul", [rows, head]);
  if (act === "f16") logits = g.op1("Cast", [logits], { to: TensorType.FLOAT });
  g.op("Identity", [logits], {}, { name: IO.logits });
  g.output(IO.logits, TensorType.FLOAT, ["S", V]);

  greedyIds(g, IO.logits, V);
  g.output(IO.nextIds, TensorType.INT32, ["S"]);

  const { model: bytes, data } = g.encodeSplit("ragtime-step", opts.externalMinBytes ?? 64 * 1024);
  return {
    bytes,
    data,
    nodesPerLayer,
    totalNodes: g.nodes.length,
  };
}

/**
 * Maps each head's D rows into Dp rows: the first half to [0, D/2), the second half to
 * [Dp/2, Dp/2 + D/2), zeros elsewhere. Rotate-half RoPE on Dp then pairs the same dims as on D.
 */
export function padHeadRows(
  a: Float32Array,
  heads: number,
  D: number,
  Dp: number,
  cols: number,
): Float32Array {
  if (D === Dp) return a;
  const out = new Float32Array(heads * Dp * cols);
  const half = D / 2, halfP = Dp / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < D; i++) {
      const dst = h * Dp + (i < half ? i : i - half + halfP);
      out.set(a.subarray((h * D + i) * cols, (h * D + i + 1) * cols), dst * cols);
    }
  }
  return out;
}

/**
 * cos/sin tables [maxPositions, Dp/2] in fp16 for PagedAttention's fused rotary (zeros past D/2),
 * with Llama 3.1-style frequency divisors applied when the model has them.
 */
function rotaryTables(g: GraphBuilder, cfg: ModelConfig, Dp: number, maxPositions: number): [string, string] {
  const half = Dp / 2;
  const cos = new Float32Array(maxPositions * half), sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let j = 0; j < cfg.headDim / 2; j++) {
      const freq = inverseFrequency(cfg.ropeTheta, cfg.headDim, j) / (cfg.ropeFreqFactors?.[j] ?? 1);
      cos[p * half + j] = Math.cos(p * freq);
      sin[p * half + j] = Math.sin(p * freq);
    }
  }
  return [
    g.weight("rope_cos", TensorType.FLOAT16, [maxPositions, half], encodeAs(cos, "f16")),
    g.weight("rope_sin", TensorType.FLOAT16, [maxPositions, half], encodeAs(sin, "f16")),
  ];
}

/**
 * next_ids[s] = argmax(logits[s]), lowest id on ties. Measured on an H100: ArgMax's int64 output
 * sends its Cast to the CPU (a readback mid-step), so argmax is a max-reduction over a descending
 * ramp: the largest (vocab - id) among the maxima is the lowest id holding the max.
 */
function greedyIds(g: GraphBuilder, logits: string, vocab: number) {
  const axis1 = g.constI64([1]);
  const isMax = g.op1("Cast", [
    g.op1("Equal", [logits, g.op1("ReduceMax", [logits, axis1], { keepdims: 1 })]),
  ], {
    to: TensorType.FLOAT,
  });
  const ramp = g.constF32(Array.from({ length: vocab }, (_, i) => vocab - i), [vocab]);
  const best = g.op1("ReduceMax", [g.op1("Mul", [isMax, ramp]), axis1], { keepdims: 0 });
  const greedy = g.op1("Cast", [g.op1("Sub", [g.constF32([vocab], []), best])], { to: TensorType.INT32 });
  g.op("Identity", [greedy], {}, { name: IO.nextIds });
}
