// Times single engine steps of a SmolLM2-135M-shaped random model: dispatch (CPU) and readback.
// deno run -A bench/gpu/step_probe.ts [dtype]
import { ModelRunner, type StepInputs } from "../../engine/model_runner.ts";
import { randomModel } from "../../tests/helpers/random_model.ts";

const dtype = (Deno.args[0] ?? "f16") as "f16" | "f32";
const model = randomModel("llama", 1, {
  vocabSize: 49152,
  hiddenSize: 576,
  intermediateSize: 1536,
  numLayers: 30,
  numHeads: 9,
  numKvHeads: 3,
  headDim: 64,
  maxContext: 2048,
  ropeTheta: 100000,
});
const t0 = performance.now();
const runner = await ModelRunner.create(model, {
  dtype,
  blockSize: 16,
  kvCacheMb: 2048,
  cacheDir: null,
  log: console.log,
});
console.log(
  `runner ready in ${
    ((performance.now() - t0) / 1000).toFixed(1)
  } s; nodes/layer ${runner.nodesPerLayer}, total ${runner.totalNodes}`,
);

function inputs(B: number, q: number, past: number, sample = false): StepInputs {
  const bpS = Math.ceil((past + q) / 16);
  const T = B * q;
  const bt = new Int32Array(B * bpS);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < bpS; j++) bt[b * bpS + j] = (b * bpS + j) % runner.numBlocks;
  }
  const cu = new Int32Array(B + 1);
  for (let b = 0; b < B; b++) cu[b + 1] = cu[b] + q;
  const rows = Int32Array.from({ length: B }, (_, b) => cu[b + 1] - 1);
  return {
    inputIds: Int32Array.from({ length: T }, (_, i) => (i * 31) % 49152),
    idSrc: new Int32Array(T).fill(-1),
    cuSeqlens: cu,
    pastSeqlens: new Int32Array(B).fill(past),
    blockTable: bt,
    maxBlocks: bpS,
    sampleRows: rows,
    sampleU: new Float32Array(B).fill(sample ? 0.5 : -1),
    invTemp: new Float32Array(B).fill(1),
    wantLogits: false,
  };
}

const all: [number, number, number, boolean][] = [
  [1, 1, 100, false],
  [64, 1, 300, false],
  [256, 1, 300, false],
  [256, 1, 300, true],
  [64, 31, 0, false],
  [256, 31, 0, false],
];
// QUICK=1: the cases that decide the reference workload's step time.
const cases = Deno.env.get("QUICK") ? all.filter(([B]) => B === 256) : all;
console.log(`ORT extra: ${Deno.env.get("RAGTIME_ORT_EXTRA") ?? "{}"}`);
for (const [B, q, past, sample] of cases) {
  const inp = inputs(B, q, past, sample);
  // warm-up (shader compilation)
  await runner.read(await runner.run(inp));
  await runner.read(await runner.run(inp));
  const N = 10;
  let dispatch = 0;
  const tA = performance.now();
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    const h = await runner.run(inp);
    dispatch += performance.now() - t;
    await runner.read(h);
  }
  const serial = (performance.now() - tA) / N;
  // Pipelined: dispatch step i+1 before reading step i.
  const tB = performance.now();
  let prev = await runner.run(inp);
  for (let i = 0; i < N; i++) {
    const h = await runner.run(inp);
    await runner.read(prev);
    prev = h;
  }
  await runner.read(prev);
  const piped = (performance.now() - tB) / (N + 1);
  console.log(
    `B=${B} q=${q} past=${past}${sample ? " sampled" : ""}: dispatch ${
      (dispatch / N).toFixed(2)
    } ms, serial step ${serial.toFixed(2)} ms, ` +
      `pipelined step ${piped.toFixed(2)} ms (${((B * 1000) / piped).toFixed(0)} rows/s)`,
  );
}
await runner.close();
