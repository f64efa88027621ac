// Weight preparation for the step graph: each checkpoint tensor converted to the layout its block
// consumes (fused, head-padded, transposed to [in, out]) and encoded in the activation dtype. A
// linear layer's [K, N] matrix may be declared [S, K/S, N] for a split-K matmul (splitFactor): the
// same bytes, row-major, so only its dims differ.
// Nothing here touches the graph: the blocks register these initializers where they use them, so
// the graph's initializers keep the order of its nodes. A tensor's name, type and shape are known
// at once; its bytes are converted only when asked for (raw()), one tensor at a time: a graph whose
// weights are inputs needs none of them, and the upload converts each just before it goes to the GPU.

import { TensorType } from "../onnx/builder.ts";
import type { LoadedModel, ModelConfig, WeightSource, WeightTensor } from "./types.ts";
import { inverseFrequency } from "./rope.ts";
import {
  type ActDType,
  asF32,
  concatRows,
  encodeAs,
  f16BitsOrF32,
  transpose,
  type Values,
} from "./weights.ts";

/** One initializer, for GraphBuilder.weight or weightInput (see weightAdder in step_blocks.ts). */
export interface Initializer {
  name: string;
  type: TensorType;
  dims: number[];
  /** Converts the tensor now (each call converts again: call it once, when the bytes are needed). */
  raw: () => Uint8Array;
  /** The checkpoint tensors it is a plain layout of, for conversion on the GPU (weight_upload.ts). */
  layout?: GpuLayout;
}

/**
 * How a weight is made of checkpoint tensors, where no head padding is involved. transpose: `parts`
 * are [rows_i, K] matrices stored [out, in], packed along the output and transposed into
 * [K, sum rows_i] (q/k/v, gate/up, one linear, the LM head). Otherwise one part whose elements are
 * the weight's, in order (the embedding). raw() gives the same bytes.
 */
export interface GpuLayout {
  parts: WeightTensor[];
  transpose: boolean;
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
    return {
      ...this.encoded(EMBED, [V, H], () => this.plain(EMBED)),
      layout: { parts: [this.w.get(EMBED)], transpose: false },
    };
  }

  layer(l: number): LayerWeights {
    const { hiddenSize: H, numHeads: NH, numKvHeads: NKV, intermediateSize: I } = this.cfg;
    const p = `model.layers.${l}.`, sa = `${p}self_attn.`;
    const qkvNames = (
      kind: "weight" | "bias",
    ) => [`${sa}q_proj.${kind}`, `${sa}k_proj.${kind}`, `${sa}v_proj.${kind}`];
    const qkvRows = (kind: "weight" | "bias") => {
      const [q, k, v] = qkvNames(kind);
      return [this.headRows(q, NH), this.headRows(k, NKV), this.headRows(v, NKV)];
    };
    const qkvOut = (NH + 2 * NKV) * this.Dp;
    const unpadded = this.Dp === this.cfg.headDim;
    const gate = p + "mlp.gate_proj.weight", up = p + "mlp.up_proj.weight", down = p + "mlp.down_proj.weight";
    return {
      inputNorm: this.vec(p + "input_layernorm.weight"),
      qkv: this.linear(qkvNames("weight"), () => qkvRows("weight"), H, qkvOut, `${p}qkv`, unpadded),
      qkvBias: this.cfg.attentionBias
        ? this.encoded(`${p}qkv_bias`, [qkvOut], () => concatRows(qkvRows("bias")), qkvNames("bias"))
        : null,
      qkNorm: this.cfg.qkNorm
        ? { q: this.headNorm(p, "self_attn.q_norm.weight"), k: this.headNorm(p, "self_attn.k_norm.weight") }
        : null,
      o: this.linear(
        [sa + "o_proj.weight"],
        () => [this.oProj(sa + "o_proj.weight")],
        NH * this.Dp,
        H,
        `${p}o`,
        unpadded,
      ),
      postNorm: this.vec(p + "post_attention_layernorm.weight"),
      gateUp: this.linear([gate, up], () => [this.plain(gate), this.plain(up)], H, 2 * I, `${p}gate_up`),
      down: this.linear([down], () => [this.plain(down)], I, H, `${p}down`),
    };
  }

  /**
   * Every weight the step graph takes, as buildGraph registers them: the upload's list (a graph
   * from the cache was built from the same list; its inputs are checked against it).
   */
  all(maxPositions: number): Initializer[] {
    const out = [this.embedding(), ...this.rotary(maxPositions)];
    for (let l = 0; l < this.cfg.numLayers; l++) {
      const w = this.layer(l);
      out.push(w.inputNorm, w.qkv, ...(w.qkvBias ? [w.qkvBias] : []));
      if (w.qkNorm) out.push(w.qkNorm.q, w.qkNorm.k);
      out.push(w.o, w.postNorm, w.gateUp, w.down);
    }
    out.push(this.finalNorm(), this.lmHead());
    return out;
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
    return {
      ...this.encoded("lm_head_t", this.linearDims(H, V), () => transpose(this.plain(name), V, H), [name]),
      layout: { parts: [this.w.get(name)], transpose: true },
    };
  }

  /**
   * cos/sin tables [maxPositions, Dp/2] in fp16 for PagedAttention's fused rotary (zeros past D/2),
   * with Llama 3.1-style frequency divisors applied when the model has them.
   */
  rotary(maxPositions: number): [Initializer, Initializer] {
    const cfg = this.cfg, half = this.Dp / 2;
    const table = (name: string, f: (x: number) => number): Initializer => ({
      name,
      type: TensorType.FLOAT16,
      dims: [maxPositions, half],
      raw: () => {
        const a = new Float32Array(maxPositions * half);
        for (let p = 0; p < maxPositions; p++) {
          for (let j = 0; j < cfg.headDim / 2; j++) {
            const freq = inverseFrequency(cfg.ropeTheta, cfg.headDim, j) / (cfg.ropeFreqFactors?.[j] ?? 1);
            a[p * half + j] = f(p * freq);
          }
        }
        return encodeAs(a, "f16");
      },
    });
    return [table("rope_cos", Math.cos), table("rope_sin", Math.sin)];
  }

  /**
   * An initializer in the activation dtype whose values `values` computes when asked for. The
   * checkpoint tensors it reads (`sources`) are looked up now, so a missing one fails the build.
   */
  private encoded(
    name: string,
    dims: number[],
    values: () => Values,
    sources: string[] = [],
  ): Initializer {
    for (const s of sources) this.w.get(s);
    const act = this.act;
    return {
      name,
      type: this.actType,
      dims,
      raw: () => checked(name, dims, act === "f16" ? 2 : 4, encodeAs(values(), act)),
    };
  }

  /** A checkpoint tensor's values: fp16 bits when it and the graph are fp16 (no conversion), else f32. */
  private plain(name: string): Values {
    const t = this.w.get(name);
    return this.act === "f16" ? f16BitsOrF32(t) : asF32(f16BitsOrF32(t));
  }

  private vec(name: string): Initializer {
    return this.encoded(name, [this.w.get(name).shape[0]], () => this.plain(name));
  }

  /** Rows of a per-head projection (or bias), each head padded to Dp rows. */
  private headRows(name: string, heads: number): Values {
    const t = this.w.get(name);
    return padHeadRows(
      this.plain(name),
      heads,
      this.cfg.headDim,
      this.Dp,
      t.shape.length > 1 ? t.shape[1] : 1,
    );
  }

  /**
   * Linear layers are stored [out, in] (`rows` outputs of `cols` inputs); MatMul wants [in, out].
   * `plain`: the parts are the sources as stored (no head padding), which the GPU can lay out.
   */
  private linear(
    sources: string[],
    parts: () => Values[],
    cols: number,
    rows: number,
    name: string,
    plain = true,
  ): Initializer {
    const init = this.encoded(
      name,
      this.linearDims(cols, rows),
      () => transpose(concatRows(parts()), rows, cols),
      sources,
    );
    if (!plain) return init;
    return { ...init, layout: { parts: sources.map((s) => this.w.get(s)), transpose: true } };
  }

  /** [K, N], or [S, K/S, N] where the layer is split (same bytes: K's rows in order). */
  private linearDims(K: number, N: number): number[] {
    const S = splitFactor(K, this.splitK);
    return S > 1 ? [S, K / S, N] : [K, N];
  }

  /** o_proj's inputs follow the padded head layout: pad its columns via a transpose round trip. */
  private oProj(name: string): Values {
    const { hiddenSize: H, numHeads: NH, headDim: D } = this.cfg;
    return transpose(padHeadRows(transpose(this.plain(name), H, NH * D), NH, D, this.Dp, H), NH * this.Dp, H);
  }

  /** Padded heads average over Dp, not D: gamma is rescaled (and epsilon, in the block) so the result is unchanged. */
  private headNorm(prefix: string, name: string): Initializer {
    const D = this.cfg.headDim, Dp = this.Dp;
    const fix = Math.sqrt(D / Dp);
    this.w.get(prefix + name);
    const gamma = () => padHeadRows(asF32(this.plain(prefix + name)).map((x) => x * fix), 1, D, Dp, 1);
    const out = `${prefix}${name}16`;
    return {
      name: out,
      type: TensorType.FLOAT16,
      dims: [Dp],
      raw: () => checked(out, [Dp], 2, encodeAs(gamma(), "f16")),
    };
  }
}

/** The converted bytes, if they fill exactly the shape announced before the conversion. */
function checked(name: string, dims: number[], elemBytes: number, raw: Uint8Array): Uint8Array {
  const want = dims.reduce((a, b) => a * b, elemBytes);
  if (raw.length !== want) throw new Error(`weight ${name}: ${raw.length} bytes, its shape needs ${want}`);
  return raw;
}

/**
 * Maps each head's D rows into Dp rows: the first half to [0, D/2), the second half to
 * [Dp/2, Dp/2 + D/2), zeros elsewhere. Rotate-half RoPE on Dp then pairs the same dims as on D.
 */
export function padHeadRows<T extends Values>(
  a: T,
  heads: number,
  D: number,
  Dp: number,
  cols: number,
): T {
  if (D === Dp) return a;
  const out =
    (a instanceof Float32Array
      ? new Float32Array(heads * Dp * cols)
      : new Uint16Array(heads * Dp * cols)) as T;
  const half = D / 2, halfP = Dp / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < D; i++) {
      const dst = h * Dp + (i < half ? i : i - half + halfP);
      out.set(a.subarray((h * D + i) * cols, (h * D + i + 1) * cols), dst * cols);
    }
  }
  return out;
}
