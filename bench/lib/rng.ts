// Seeded randomness for workloads and arrivals. mulberry32 is tiny, fast and easy to port; the
// workload itself travels as JSON (--dump-workload), so other languages never need to re-derive it.

/** A stream of uniforms in [0, 1), each a multiple of 2^-32. */
export type Rng = () => number;

/** mulberry32 (Tommy Ettinger): 32-bit state, period 2^32. The seed is taken mod 2^32. */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * An independent seed for a named purpose (prompts, warmup, arrivals), so changing one part of a
 * run (say the rate) leaves the others bit-identical.
 */
export function deriveSeed(seed: number, stream: number): number {
  // One mulberry32 step over a mix of both words is enough to decorrelate neighbouring seeds.
  return Math.floor(mulberry32((seed >>> 0) ^ Math.imul(stream + 1, 0x9e3779b9))() * 4294967296) >>> 0;
}

/** Uniform integer in [min, max], both inclusive. */
export function uniformInt(rng: Rng, min: number, max: number): number {
  if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || max < min) {
    throw new RangeError(`bad integer range [${min}, ${max}]`);
  }
  return min + Math.floor(rng() * (max - min + 1));
}

/** Exponential with the given mean; 1 - u keeps the log argument in (0, 1]. */
export function exponential(rng: Rng, mean: number): number {
  return -Math.log(1 - rng()) * mean;
}
