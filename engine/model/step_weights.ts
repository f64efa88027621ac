// Weight preparation for the step graph: each checkpoint tensor converted to the layout its block
// consumes (fused, head-padded, transposed to [in, out]) and encoded in the activation dtype. A
// linear layer's [K, N] matrix may be declared [S, K/S, N] for a split-K matmul (splitFactor): the
// same bytes, row-major, so only its dims differ.
// Nothing here touches the graph: the blocks register these initializers where they use them, so
// the graph's initializers keep the order of its nodes.

import { TensorType } from "../onnx/builder.ts";
import type { LoadedModel, ModelConfig, WeightSource } from "./types.ts";
import { inverseFrequency } from "./rope.ts";
import { type ActDType, concatRows, encodeAs, toF32, transpose } from "./weights.ts";

/** One initializer, ready for GraphBuilder.weight (see addWeight in step_blocks.ts). */
export interface Initializer {
  name: string;
  type: TensorType;
  dims: number[];
  raw: Uint8Array;
}

export interface LayerWeights {
  inputNorm: Initializer;
  /** q, k and v projections in one matrix [hidden, (heads + 2 kvHeads) * padded head]. */
  qkv: Initializer;
  qkvBias: Initializer | null;
  /** Per-head q/k RMS-norm gammas (Qwen3), fp16 like attention. */
  qkNorm: { q: Initializer; k: Initializer } | null;
  o: Initializer;
  postNorm: Initializer;
  /** gate and up projections in one matrix [hidden, 2 * intermediate]. */
  gateUp: Initializer;
  down: Initializer;
}

const EMBED = "model.embed_tokens.weight";

/**
 * Fewest rows of K per split: below it the matmul of each slice is too short to pay for the
 * Transpose and ReduceSum around it, and tiny models (stories260K: K = 64) keep plain MatMuls.
 */
export const MIN_SPLIT_ROWS = 32;

/**
 * The split a linear layer over K inputs gets from the split setting S: S when K divides into S
 * slices of at least MIN_SPLIT_ROWS, else 1 (a plain MatMul).
 */
export function splitFactor(K: number, S: number): number {
  return S > 1 && K % S === 0 && K / S >= MIN_SPLIT_ROWS ? S : 1;
}

/**
 * PagedAttention on WebGPU needs head sizes that are multiples of 16: smaller heads are zero-padded
 * (see padHeadRows), which leaves dot products, rotary pairs and outputs unchanged.
 */
export function paddedHeadDim(headDim: number): number {
  return Math.ceil(headDim / 16) * 16;
}

export class StepWeights {
  /** Head size after padding (paddedHeadDim). */
  readonly Dp: number;
  private readonly cfg: ModelConfig;
  private readonly w: WeightSource;
  private readonly actType: TensorType;

  /** splitK: the split setting (see splitFactor); 1 keeps every linear layer [K, N]. */
  constructor(model: LoadedModel, private readonly act: ActDType, private readonly splitK = 1) {
    this.cfg = model.config;
    this.w = model.weights;
    this.actType = act === "f16" ? TensorType.FLOAT16 : TensorType.FLOAT;
    this.Dp = paddedHeadDim(this.cfg.headDim);
  }

  embedding(): Initializer {
    const { vocabSize: V, hiddenSize: H } = this.cfg;
    return this.encoded(EMBED, [V, H], toF32(this.w.get(EMBED)));
  }

  layer(l: number): LayerWeights {
    const { hiddenSize: H, numHeads: NH, numKvHeads: NKV, intermediateSize: I } = this.cfg;
    const p = `model.layers.${l}.`, sa = `${p}self_attn.`;
    const qkvRows = (kind: "weight" | "bias") => [
      this.headRows(`${sa}q_proj.${kind}`, NH),
      this.headRows(`${sa}k_proj.${kind}`, NKV),
      this.headRows(`${sa}v_proj.${kind}`, NKV),
    ];
    const gateUp = [this.plain(p + "mlp.gate_proj.weight"), this.plain(p + "mlp.up_proj.weight")];
    return {
      inputNorm: this.vec(p + "input_layernorm.weight"),
      qkv: this.linear(qkvRows("weight"), H, `${p}qkv`),
      qkvBias: this.cfg.attentionBias
        ? this.encoded(`${p}qkv_bias`, [(NH + 2 * NKV) * this.Dp], concatRows(qkvRows("bias")))
        : null,
      qkNorm: this.cfg.qkNorm
        ? { q: this.headNorm(p, "self_attn.q_norm.weight"), k: this.headNorm(p, "self_attn.k_norm.weight") }
        : null,
      o: this.linear([this.oProj(sa + "o_proj.weight")], NH * this.Dp, `${p}o`),
      postNorm: this.vec(p + "post_attention_layernorm.weight"),
      gateUp: this.linear(gateUp, H, `${p}gate_up`),
      down: this.linear([this.plain(p + "mlp.down_proj.weight")], I, `${p}down`),
    };
  }

  finalNorm(): Initializer {
    return this.vec("model.norm.weight");
  }

  /**
   * The LM head as [H, V] for MatMul (split like any linear layer); a tied head stores a transposed
   * copy of the embedding table, because Gemm with transB measured ~40 GFLOP/s on an H100 through
   * WebGPU (a naive kernel).
   */
  lmHead(): Initializer {
    const { vocabSize: V, hiddenSize: H } = this.cfg;
    const name = this.cfg.tieEmbeddings ? EMBED : "lm_head.weight";
    return this.encoded("lm_head_t", this.linearDims(H, V), transpose(toF32(this.w.get(name)), V, H));
  }

  /**
   * cos/sin tables [maxPositions, Dp/2] in fp16 for PagedAttention's fused rotary (zeros past D/2),
   * with Llama 3.1-style frequency divisors applied when the model has them.
   */
  rotary(maxPositions: number): [Initializer, Initializer] {
    const cfg = this.cfg, half = this.Dp / 2;
    const cos = new Float32Array(maxPositions * half), sin = new Float32Array(maxPositions * half);
    for (let p = 0; p < maxPositions; p++) {
      for (let j = 0; j < cfg.headDim / 2; j++) {
        const freq = inverseFrequency(cfg.ropeTheta, cfg.headDim, j) / (cfg.ropeFreqFactors?.[j] ?? 1);
        cos[p * half + j] = Math.cos(p * freq);
        sin[p * half + j] = Math.sin(p * freq);
      }
    }
    const table = (name: string, a: Float32Array): Initializer => ({
      name,
      type: TensorType.FLOAT16,
      dims: [maxPositions, half],
      raw: encodeAs(a, "f16"),
    });
    return [table("rope_cos", cos), table("rope_sin", sin)];
  }

  private encoded(name: string, dims: number[], a: Float32Array): Initializer {
    return { name, type: this.actType, dims, raw: encodeAs(a, this.act) };
  }

  private plain(name: string): Float32Array {
    return toF32(this.w.get(name));
  }

  private vec(name: string): Initializer {
    return this.encoded(name, [this.w.get(name).shape[0]], this.plain(name));
  }

  /** Rows of a per-head projection (or bias), each head padded to Dp rows. */
  private headRows(name: string, heads: number): Float32Array {
    const t = this.w.get(name);
    return padHeadRows(toF32(t), heads, this.cfg.headDim, this.Dp, t.shape.length > 1 ? t.shape[1] : 1);
  }

  /** Linear layers are stored [out, in]; MatMul wants [in, out]. */
  private linear(parts: Float32Array[], cols: number, name: string): Initializer {
    const joined = concatRows(parts);
    const rows = joined.length / cols;
    return this.encoded(name, this.linearDims(cols, rows), transpose(joined, rows, cols));
  }

  /** [K, N], or [S, K/S, N] where the layer is split (same bytes: K's rows in order). */
  private linearDims(K: number, N: number): number[] {
    const S = splitFactor(K, this.splitK);
    return S > 1 ? [S, K / S, N] : [K, N];
  }

  /** o_proj's inputs follow the padded head layout: pad its columns via a transpose round trip. */
  private oProj(name: string): Float32Array {
    const { hiddenSize: H, numHeads: NH, headDim: D } = this.cfg;
    return transpose(padHeadRows(transpose(this.plain(name), H, NH * D), NH, D, this.Dp, H), NH * this.Dp, H);
  }

  /** Padded heads average over Dp, not D: gamma is rescaled (and epsilon, in the block) so the result is unchanged. */
  private headNorm(prefix: string, name: string): Initializer {
    const D = this.cfg.headDim, Dp = this.Dp;
    const fix = Math.sqrt(D / Dp);
    const gamma = padHeadRows(this.plain(prefix + name).map((x) => x * fix), 1, D, Dp, 1);
    return { name: `${prefix}${name}16`, type: TensorType.FLOAT16, dims: [Dp], raw: encodeAs(gamma, "f16") };
  }
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
