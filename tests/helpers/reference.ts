// A plain CPU forward pass of the Llama family in float64, for checking the GPU graph.
// Slow and simple on purpose: it is the specification, not an implementation to optimise.

import type { LoadedModel } from "../../engine/model/types.ts";
import { toF32 } from "../../engine/model/weights.ts";

export function referenceLogits(model: LoadedModel, ids: number[]): Float64Array[] {
  const c = model.config;
  const W = (n: string) => Float64Array.from(toF32(model.weights.get(n)));
  const H = c.hiddenSize, D = c.headDim, NH = c.numHeads, NKV = c.numKvHeads, T = ids.length;
  const rms = (x: Float64Array, g: Float64Array, n: number, off = 0) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += x[off + i] ** 2;
    const r = 1 / Math.sqrt(s / n + c.rmsNormEps);
    for (let i = 0; i < n; i++) x[off + i] = x[off + i] * r * g[i];
  };
  // y[out] = sum_in W[out, in] x[in]
  const lin = (w: Float64Array, x: Float64Array, out: number, inn: number, b?: Float64Array) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inn; i++) s += w[o * inn + i] * x[i];
      y[o] = s;
    }
    return y;
  };
  const rope = (v: Float64Array, heads: number, pos: number) => {
    for (let h = 0; h < heads; h++) {
      for (let j = 0; j < D / 2; j++) {
        const f = (pos * Math.pow(c.ropeTheta, (-2 * j) / D)) / (c.ropeFreqFactors?.[j] ?? 1);
        const a = v[h * D + j], b = v[h * D + j + D / 2];
        v[h * D + j] = a * Math.cos(f) - b * Math.sin(f);
        v[h * D + j + D / 2] = b * Math.cos(f) + a * Math.sin(f);
      }
    }
  };
  const emb = W("model.embed_tokens.weight");
  const xs = ids.map((id) => emb.slice(id * H, (id + 1) * H));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const [wq, wk, wv, wo] = ["q", "k", "v", "o"].map((n) => W(`${p}self_attn.${n}_proj.weight`));
    const bias = (n: string) => c.attentionBias ? W(`${p}self_attn.${n}_proj.bias`) : undefined;
    const ks: Float64Array[] = [], vs: Float64Array[] = [], qs: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const h = xs[t].slice();
      rms(h, W(p + "input_layernorm.weight"), H);
      const q = lin(wq, h, NH * D, H, bias("q")), k = lin(wk, h, NKV * D, H, bias("k"));
      if (c.qkNorm) {
        for (let i = 0; i < NH; i++) rms(q, W(p + "self_attn.q_norm.weight"), D, i * D);
        for (let i = 0; i < NKV; i++) rms(k, W(p + "self_attn.k_norm.weight"), D, i * D);
      }
      rope(q, NH, t);
      rope(k, NKV, t);
      qs.push(q);
      ks.push(k);
      vs.push(lin(wv, h, NKV * D, H, bias("v")));
    }
    for (let t = 0; t < T; t++) {
      const o = new Float64Array(NH * D);
      for (let h = 0; h < NH; h++) {
        const kh = Math.floor(h / (NH / NKV));
        const sc = [];
        for (let s = 0; s <= t; s++) {
          let d = 0;
          for (let i = 0; i < D; i++) d += qs[t][h * D + i] * ks[s][kh * D + i];
          sc.push(d / Math.sqrt(D));
        }
        const m = Math.max(...sc);
        const e = sc.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= t; s++) {
          for (let i = 0; i < D; i++) o[h * D + i] += (e[s] / z) * vs[s][kh * D + i];
        }
      }
      const a = lin(wo, o, H, NH * D);
      for (let i = 0; i < H; i++) xs[t][i] += a[i];
      const h = xs[t].slice();
      rms(h, W(p + "post_attention_layernorm.weight"), H);
      const I = c.intermediateSize;
      const gt = lin(W(p + "mlp.gate_proj.weight"), h, I, H), up = lin(W(p + "mlp.up_proj.weight"), h, I, H);
      for (let i = 0; i < I; i++) gt[i] = (gt[i] / (1 + Math.exp(-gt[i]))) * up[i];
      const dn = lin(W(p + "mlp.down_proj.weight"), gt, H, I);
      for (let i = 0; i < H; i++) xs[t][i] += dn[i];
    }
  }
  const head = c.tieEmbeddings ? emb : W("lm_head.weight");
  return xs.map((x) => {
    const h = x.slice();
    rms(h, W("model.norm.weight"), H);
    return lin(head, h, c.vocabSize, H);
  });
}
