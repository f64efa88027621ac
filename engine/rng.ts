// Counter-based randomness for sampling.
//
// The uniform used for a sequence's k-th sampled token depends only on (seed, k), never on what else
// shares the batch, how often the sequence was preempted, or whether the CPU or the GPU sampled it.
// It is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) with
//   key     = seedWords(seed)      (two u32 words)
//   counter = [k, 0, 0, 0]         (k = number of tokens this sequence has already generated)
// and u = (first output word >>> 8) * 2^-24, a multiple of 2^-24 in [0, 1) that f32 holds exactly,
// so a WGSL kernel (u32 math only) computes the same u bit for bit.
//
// How u picks a token (CPU sampler and GPU kernel alike): take the probabilities that survive the
// filters, in ascending token-id order (not sorted by probability), and choose the first id i whose
// cumulative probability p[0] + ... + p[i] is > u. Unnormalised weights work the same way against
// u * sum(weights). If rounding leaves no such id, choose the last id with non-zero weight.

const TWO_POW_32 = 4294967296;
const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;

/**
 * The seed as the Philox key: [low, high] u32 words of the truncated integer in 64-bit two's
 * complement (so -1 is [0xffffffff, 0xffffffff]). Non-finite seeds count as 0.
 */
export function seedWords(seed: number): [number, number] {
  const s = Number.isFinite(seed) ? Math.trunc(seed) : 0;
  // Division by 2^32 and floor are exact on doubles, and >>> 0 reduces mod 2^32 exactly.
  return [s >>> 0, Math.floor(s / TWO_POW_32) >>> 0];
}

/** High 32 bits of the 64-bit product of two u32, using only exact double arithmetic. */
function mulHi32(a: number, b: number): number {
  const ah = a >>> 16, al = a & 0xffff;
  const bh = b >>> 16, bl = b & 0xffff;
  const mid = ah * bl + al * bh + Math.floor((al * bl) / 65536);
  return (ah * bh + Math.floor(mid / 65536)) >>> 0;
}

/** Philox4x32-10 block: four u32 counter words and two u32 key words in, four u32 words out. */
export function philox4x32(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  let c0 = counter[0] >>> 0, c1 = counter[1] >>> 0, c2 = counter[2] >>> 0, c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const hi0 = mulHi32(PHILOX_M0, c0), lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulHi32(PHILOX_M1, c2), lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  return [c0, c1, c2, c3];
}

/**
 * Uniform in [0, 1) for the k-th sampled token (k = tokens already generated) of a sequence with
 * this seed; a multiple of 2^-24. See the top of this file for how it selects a token.
 */
export function uniform(seed: number, k: number): number {
  const [lo, hi] = seedWords(seed);
  const out = philox4x32([k >>> 0, 0, 0, 0], [lo, hi]);
  return (out[0] >>> 8) / 16777216;
}

/** A fresh non-negative safe-integer seed, drawn once per request that did not give one. */
export function randomSeed(): number {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return words[0] + (words[1] & 0x1fffff) * TWO_POW_32;
}
