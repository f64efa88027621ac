// The model the GPU probes use when given none: SmolLM2-135M's shape with random weights.
import type { LoadedModel } from "../../engine/model/types.ts";
import { randomModel } from "../../tests/helpers/random_model.ts";

export const SMOLLM2_135M_SHAPE = {
  vocabSize: 49152,
  hiddenSize: 576,
  intermediateSize: 1536,
  numLayers: 30,
  numHeads: 9,
  numKvHeads: 3,
  headDim: 64,
  maxContext: 2048,
  ropeTheta: 100000,
};

export function smollm2ShapedModel(): LoadedModel {
  return randomModel("llama", 1, SMOLLM2_135M_SHAPE);
}
