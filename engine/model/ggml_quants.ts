// Dequantization of llama.cpp's block-quantized tensor types, done once at load time.
//
// Each kernel reads whole blocks and writes their values in order into `out` (Float32Array for tests,
// Float16Array for loading: the graph runs on F16 weights). Arithmetic follows ggml's float32 order
// (Math.fround after each product), so the values match llama.cpp's own dequantization; the F16 store
// then rounds once. Block layouts are ggml's (little-endian, fields in declaration order).

import { f16BitsToF32 } from "./weights.ts";

type Out = Float32Array | Float16Array;
type Kernel = (src: Uint8Array, blocks: number, out: Out) => void;

const f32 = Math.fround;

/** The little-endian f16 at byte `at`. */
const half = (src: Uint8Array, at: number) => f16BitsToF32(src[at] | (src[at + 1] << 8));

const i8 = (b: number) => (b << 24) >> 24;

// Blocks of 32: an f16 scale d (and for *_1 types an f16 offset m), then 16 bytes holding element j
// in the low nibble and element j + 16 in the high nibble; Q5 types add 32 high bits (one per element).
function q4_0(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 18, o += 32) {
    const d = half(src, s);
    for (let j = 0; j < 16; j++) {
      const q = src[s + 2 + j];
      out[o + j] = f32(d * ((q & 15) - 8));
      out[o + j + 16] = f32(d * ((q >> 4) - 8));
    }
  }
}

function q4_1(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 20, o += 32) {
    const d = half(src, s), m = half(src, s + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[s + 4 + j];
      out[o + j] = f32(f32(d * (q & 15)) + m);
      out[o + j + 16] = f32(f32(d * (q >> 4)) + m);
    }
  }
}

function highBits(src: Uint8Array, at: number): number {
  return (src[at] | (src[at + 1] << 8) | (src[at + 2] << 16) | (src[at + 3] << 24)) >>> 0;
}

function q5_0(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 22, o += 32) {
    const d = half(src, s);
    const qh = highBits(src, s + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[s + 6 + j];
      out[o + j] = f32(d * (((q & 15) | (((qh >>> j) & 1) << 4)) - 16));
      out[o + j + 16] = f32(d * (((q >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16));
    }
  }
}

function q5_1(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 24, o += 32) {
    const d = half(src, s), m = half(src, s + 2);
    const qh = highBits(src, s + 4);
    for (let j = 0; j < 16; j++) {
      const q = src[s + 8 + j];
      out[o + j] = f32(f32(d * ((q & 15) | (((qh >>> j) & 1) << 4))) + m);
      out[o + j + 16] = f32(f32(d * ((q >> 4) | (((qh >>> (j + 16)) & 1) << 4))) + m);
    }
  }
}

function q8_0(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 34, o += 32) {
    const d = half(src, s);
    for (let j = 0; j < 32; j++) out[o + j] = f32(d * i8(src[s + 2 + j]));
  }
}

// Super-blocks of 256 (the "K" types): sub-block scales quantized against a super-block scale.

// Q2_K: 16 bytes of 4-bit scale | 4-bit min per 16 values, 64 bytes of 2-bit quants, f16 d, f16 dmin.
// Quant byte i of a 32-byte half holds four values, 32 apart, in bit pairs 0-1, 2-3, 4-5, 6-7.
function q2_K(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 84, o += 256) {
    const d = half(src, s + 80), dmin = half(src, s + 82);
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++) {
        for (let k = 0; k < 2; k++) {
          const sc = src[s + n * 8 + j * 2 + k];
          const dl = f32(d * (sc & 15)), ml = f32(dmin * (sc >> 4));
          const qBase = s + 16 + n * 32 + k * 16, oBase = o + n * 128 + j * 32 + k * 16;
          for (let l = 0; l < 16; l++) {
            out[oBase + l] = f32(f32(dl * ((src[qBase + l] >> (2 * j)) & 3)) - ml);
          }
        }
      }
    }
  }
}

// Q3_K: 32 bytes of high bits (bit p of byte l belongs to the p-th group of 32), 64 bytes of 2-bit
// quants as in Q2_K, 12 bytes packing sixteen 6-bit scales (offset by 32), f16 d.
function q3_K(src: Uint8Array, blocks: number, out: Out) {
  const scales = new Int32Array(16);
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 110, o += 256) {
    const d = half(src, s + 108);
    const sc = s + 96;
    for (let i = 0; i < 16; i++) {
      // Low 4 bits: scale bytes 0-7 (low nibbles for 0-7, high nibbles for 8-15);
      // high 2 bits: bytes 8-11, bit pair i / 4 of byte 8 + i % 4.
      const low = i < 8 ? src[sc + i] & 15 : src[sc + i - 8] >> 4;
      const high = (src[sc + 8 + (i % 4)] >> (2 * (i >> 2))) & 3;
      scales[i] = (low | (high << 4)) - 32;
    }
    let group = 0;
    for (let n = 0; n < 2; n++) {
      for (let j = 0; j < 4; j++, group++) {
        for (let k = 0; k < 2; k++) {
          const dl = f32(d * scales[n * 8 + j * 2 + k]);
          const qBase = s + 32 + n * 32 + k * 16, hBase = s + k * 16, oBase = o + n * 128 + j * 32 + k * 16;
          for (let l = 0; l < 16; l++) {
            const q = (src[qBase + l] >> (2 * j)) & 3;
            const hi = (src[hBase + l] >> group) & 1;
            out[oBase + l] = f32(dl * (q - (hi ? 0 : 4)));
          }
        }
      }
    }
  }
}

// Q4_K / Q5_K: f16 d, f16 dmin, 12 bytes packing eight 6-bit (scale, min) pairs, one per 32 values.
function scaleMinK4(src: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [src[at + j] & 63, src[at + j + 4] & 63];
  return [
    (src[at + j + 4] & 15) | ((src[at + j - 4] >> 6) << 4),
    (src[at + j + 4] >> 4) | ((src[at + j] >> 6) << 4),
  ];
}

/** Scales and mins, in ggml's float32 products, of the two 32-value halves of 64-value group g. */
function groupScalesK4(src: Uint8Array, s: number, g: number): [number, number, number, number] {
  const d = half(src, s), dmin = half(src, s + 2);
  const [sc1, m1] = scaleMinK4(src, s + 4, 2 * g);
  const [sc2, m2] = scaleMinK4(src, s + 4, 2 * g + 1);
  return [f32(d * sc1), f32(dmin * m1), f32(d * sc2), f32(dmin * m2)];
}

// Q4_K: then 128 bytes; each 32-byte run holds a 64-value group: low nibbles first, then high nibbles.
function q4_K(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 144, o += 256) {
    for (let g = 0; g < 4; g++) {
      const [d1, mm1, d2, mm2] = groupScalesK4(src, s, g);
      const q = s + 16 + g * 32, ob = o + g * 64;
      for (let l = 0; l < 32; l++) {
        out[ob + l] = f32(f32(d1 * (src[q + l] & 15)) - mm1);
        out[ob + 32 + l] = f32(f32(d2 * (src[q + l] >> 4)) - mm2);
      }
    }
  }
}

// Q5_K: as Q4_K with 32 bytes of high bits before the nibbles (bit 2g and 2g+1 of byte l for group g).
function q5_K(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 176, o += 256) {
    for (let g = 0; g < 4; g++) {
      const [d1, mm1, d2, mm2] = groupScalesK4(src, s, g);
      const q = s + 48 + g * 32, h = s + 16, ob = o + g * 64;
      for (let l = 0; l < 32; l++) {
        const hb = src[h + l];
        out[ob + l] = f32(f32(d1 * ((src[q + l] & 15) | (((hb >> (2 * g)) & 1) << 4))) - mm1);
        out[ob + 32 + l] = f32(f32(d2 * ((src[q + l] >> 4) | (((hb >> (2 * g + 1)) & 1) << 4))) - mm2);
      }
    }
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales (one per 16 values),
// f16 d. Per 128-value half: value l + 32t takes nibble (t & 1 ? ql[l+32] : ql[l]) >> (t & 2 ? 4 : 0)
// and high bits (qh[l] >> 2t) & 3, minus 32.
function q6_K(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 210, o += 256) {
    const d = half(src, s + 208);
    for (let n = 0; n < 2; n++) {
      const ql = s + n * 64, qh = s + 128 + n * 32, sc = s + 192 + n * 8, ob = o + n * 128;
      for (let l = 0; l < 32; l++) {
        const h = src[qh + l], lo = src[ql + l], lo2 = src[ql + l + 32], is = l >> 4;
        const q1 = ((lo & 15) | ((h & 3) << 4)) - 32;
        const q2 = ((lo2 & 15) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((lo >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((lo2 >> 4) | (((h >> 6) & 3) << 4)) - 32;
        out[ob + l] = f32(f32(d * i8(src[sc + is])) * q1);
        out[ob + l + 32] = f32(f32(d * i8(src[sc + is + 2])) * q2);
        out[ob + l + 64] = f32(f32(d * i8(src[sc + is + 4])) * q3);
        out[ob + l + 96] = f32(f32(d * i8(src[sc + is + 6])) * q4);
      }
    }
  }
}

// IQ4_NL / IQ4_XS: 4-bit indices into a fixed non-linear table of int8 levels.
const IQ4_LEVELS = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

function iq4_nl(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 18, o += 32) {
    const d = half(src, s);
    for (let j = 0; j < 16; j++) {
      const q = src[s + 2 + j];
      out[o + j] = f32(d * IQ4_LEVELS[q & 15]);
      out[o + j + 16] = f32(d * IQ4_LEVELS[q >> 4]);
    }
  }
}

// IQ4_XS: f16 d, u16 of high scale bits (2 per group), 4 bytes of low scale nibbles, 128 bytes of
// indices: eight groups of 32 laid out as IQ4_NL blocks, each with a 6-bit scale offset by 32.
function iq4_xs(src: Uint8Array, blocks: number, out: Out) {
  for (let b = 0, s = 0, o = 0; b < blocks; b++, s += 136, o += 256) {
    const d = half(src, s);
    const hi = src[s + 2] | (src[s + 3] << 8);
    for (let g = 0; g < 8; g++) {
      const ls = ((src[s + 4 + (g >> 1)] >> (4 * (g & 1))) & 15) | (((hi >> (2 * g)) & 3) << 4);
      const dl = f32(d * (ls - 32));
      const q = s + 8 + g * 16, ob = o + g * 32;
      for (let j = 0; j < 16; j++) {
        out[ob + j] = f32(dl * IQ4_LEVELS[src[q + j] & 15]);
        out[ob + j + 16] = f32(dl * IQ4_LEVELS[src[q + j] >> 4]);
      }
    }
  }
}

export interface GgmlTypeInfo {
  name: string;
  /** Elements per block and bytes per block; absent for types that were removed from ggml. */
  blockSize?: number;
  typeSize?: number;
}

// ggml_type ids (ggml.h). Sizes are needed to bounds-check tensors we will refuse anyway, so that a
// truncated file is reported as truncated rather than as "unsupported type".
export const GGML_TYPES: Record<number, GgmlTypeInfo> = {
  0: { name: "F32", blockSize: 1, typeSize: 4 },
  1: { name: "F16", blockSize: 1, typeSize: 2 },
  2: { name: "Q4_0", blockSize: 32, typeSize: 18 },
  3: { name: "Q4_1", blockSize: 32, typeSize: 20 },
  4: { name: "Q4_2" },
  5: { name: "Q4_3" },
  6: { name: "Q5_0", blockSize: 32, typeSize: 22 },
  7: { name: "Q5_1", blockSize: 32, typeSize: 24 },
  8: { name: "Q8_0", blockSize: 32, typeSize: 34 },
  9: { name: "Q8_1", blockSize: 32, typeSize: 36 },
  10: { name: "Q2_K", blockSize: 256, typeSize: 84 },
  11: { name: "Q3_K", blockSize: 256, typeSize: 110 },
  12: { name: "Q4_K", blockSize: 256, typeSize: 144 },
  13: { name: "Q5_K", blockSize: 256, typeSize: 176 },
  14: { name: "Q6_K", blockSize: 256, typeSize: 210 },
  15: { name: "Q8_K", blockSize: 256, typeSize: 292 },
  16: { name: "IQ2_XXS", blockSize: 256, typeSize: 66 },
  17: { name: "IQ2_XS", blockSize: 256, typeSize: 74 },
  18: { name: "IQ3_XXS", blockSize: 256, typeSize: 98 },
  19: { name: "IQ1_S", blockSize: 256, typeSize: 50 },
  20: { name: "IQ4_NL", blockSize: 32, typeSize: 18 },
  21: { name: "IQ3_S", blockSize: 256, typeSize: 110 },
  22: { name: "IQ2_S", blockSize: 256, typeSize: 82 },
  23: { name: "IQ4_XS", blockSize: 256, typeSize: 136 },
  24: { name: "I8", blockSize: 1, typeSize: 1 },
  25: { name: "I16", blockSize: 1, typeSize: 2 },
  26: { name: "I32", blockSize: 1, typeSize: 4 },
  27: { name: "I64", blockSize: 1, typeSize: 8 },
  28: { name: "F64", blockSize: 1, typeSize: 8 },
  29: { name: "IQ1_M", blockSize: 256, typeSize: 56 },
  30: { name: "BF16", blockSize: 1, typeSize: 2 },
  31: { name: "Q4_0_4_4" },
  32: { name: "Q4_0_4_8" },
  33: { name: "Q4_0_8_8" },
  34: { name: "TQ1_0", blockSize: 256, typeSize: 54 },
  35: { name: "TQ2_0", blockSize: 256, typeSize: 66 },
  36: { name: "IQ4_NL_4_4" },
  37: { name: "IQ4_NL_4_8" },
  38: { name: "IQ4_NL_8_8" },
  39: { name: "MXFP4", blockSize: 32, typeSize: 17 },
};

/** Dequantization kernels by ggml type id. */
const KERNELS: Record<number, Kernel> = {
  2: q4_0,
  3: q4_1,
  6: q5_0,
  7: q5_1,
  8: q8_0,
  10: q2_K,
  11: q3_K,
  12: q4_K,
  13: q5_K,
  14: q6_K,
  20: iq4_nl,
  23: iq4_xs,
};

/** Names of the quantized types that load (dequantized to F16). */
export const DEQUANTIZABLE: readonly string[] = Object.keys(KERNELS).map((t) => GGML_TYPES[Number(t)].name);

function kernelFor(type: number, src: Uint8Array, elements: number) {
  const run = KERNELS[type];
  const info = GGML_TYPES[type];
  if (!run) throw new Error(`GGML type ${info?.name ?? type} cannot be dequantized`);
  const blocks = elements / info.blockSize!;
  if (!Number.isInteger(blocks) || src.length < blocks * info.typeSize!) {
    throw new Error(`${info.name}: ${src.length} bytes do not hold ${elements} values`);
  }
  return { run, blocks };
}

/** Dequantizes to float32 (ggml's own values). */
export function dequantizeF32(type: number, src: Uint8Array, elements: number): Float32Array {
  const { run, blocks } = kernelFor(type, src, elements);
  const out = new Float32Array(elements);
  run(src, blocks, out);
  return out;
}

/** Dequantizes to little-endian F16 bytes, the weights the graph is built from. */
export function dequantizeF16(type: number, src: Uint8Array, elements: number): Uint8Array {
  const { run, blocks } = kernelFor(type, src, elements);
  const out = new Float16Array(elements);
  run(src, blocks, out);
  return new Uint8Array(out.buffer);
}
