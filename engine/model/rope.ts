// RoPE frequencies: the plain ones, and Llama 3.1's frequency-dependent scaling (rope_type "llama3").
//
// Llama 3.1+ stretches RoPE for long context by dividing each inverse frequency by a factor that is
// 1 for short wavelengths, `factor` for long ones, and interpolated between (transformers'
// llama3 rule; llama.cpp stores the same divisors as the GGUF tensor rope_freqs.weight).

export interface Llama3RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

/** Inverse frequency j of a head of size headDim: theta^(-2j/headDim). */
export function inverseFrequency(theta: number, headDim: number, j: number): number {
  return Math.pow(theta, (-2 * j) / headDim);
}

/** Per-frequency divisors (headDim / 2 of them): scaled inverse frequency = inverse frequency / divisor. */
export function llama3RopeFactors(theta: number, headDim: number, s: Llama3RopeScaling): number[] {
  const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositions / s.highFreqFactor;
  return Array.from({ length: headDim / 2 }, (_, j) => {
    const inv = inverseFrequency(theta, headDim, j);
    const wavelen = (2 * Math.PI) / inv;
    if (wavelen < highWavelen) return 1;
    if (wavelen > lowWavelen) return s.factor;
    const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) /
      (s.highFreqFactor - s.lowFreqFactor);
    // scaled = (1 - smooth) * inv / factor + smooth * inv, as a divisor of inv:
    return 1 / ((1 - smooth) / s.factor + smooth);
  });
}
