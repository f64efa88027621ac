// Does an uncaptured step's CPU dispatch depend on whether its shapes were seen before? Runs prefill
// steps of one sequence on one engine runner: each token count T twice in a row (a new shape, then the
// same shape), then a ladder of new counts, timing dispatch (run()) and dispatch to readback.
//
//   deno run -A bench/dispatch_shapes.ts [--model PATH] [--counts 44,49,65] [--repeats 2]
//
// --model: a GGUF file or HF folder (default stories260K from ../shared). Shapes of a step: token rows
// T, attention items B, block-table width, sampled rows; here one item of T tokens from position 0.
import { parseArgs } from "node:util";
import { createEngine } from "../engine/local_engine.ts";
import { loadModel } from "../engine/model/load.ts";
import type { StepInputs } from "../engine/model_runner.ts";
import { singleSequenceStep } from "../engine/step_inputs.ts";
import { STORIES260K } from "../tests/helpers/fixtures.ts";

const { values: args } = parseArgs({
  options: {
    model: { type: "string" },
    counts: { type: "string", default: "16,17,18,20,24,31,40,44,49,61,63,64,65,100,200" },
    repeats: { type: "string", default: "3" },
  },
});
const model = await loadModel(args.model ?? STORIES260K);
const { runner } = await createEngine(model, {
  graphCache: null,
  maxModelLen: 512,
  graphCaptureEager: false,
});
const V = model.config.vocabSize, bs = runner.blockSize;

function inputs(T: number): StepInputs {
  const table = Int32Array.from({ length: Math.ceil(T / bs) }, (_, i) => 1 + i);
  return singleSequenceStep(Int32Array.from({ length: T }, (_, i) => 3 + ((i * 7919) % (V - 3))), 0, table);
}

console.log(`model ${args.model ?? "stories260K"}; ms per step: dispatch (run) / to readback`);
for (const T of args.counts.split(",").map(Number)) {
  const cells: string[] = [];
  for (let r = 0; r < Number(args.repeats); r++) {
    const t0 = performance.now();
    const h = await runner.run(inputs(T));
    const t1 = performance.now();
    await runner.read(h);
    cells.push(`${(t1 - t0).toFixed(1)} / ${(performance.now() - t0).toFixed(1)}`);
  }
  console.log(`T=${String(T).padStart(4)}  ${cells.join("   ")}`);
}

// Back to back: the second step dispatched while the first is still executing.
console.log("back to back (no readback between), T=44 then T=44: dispatch ms of each");
for (let r = 0; r < 3; r++) {
  const t0 = performance.now();
  const h1 = await runner.run(inputs(44));
  const t1 = performance.now();
  const h2 = await runner.run(inputs(44));
  const t2 = performance.now();
  await runner.read(h1);
  const t3 = performance.now();
  await runner.read(h2);
  const t4 = performance.now();
  console.log(
    `  first ${(t1 - t0).toFixed(1)}  second ${(t2 - t1).toFixed(1)}  read1 ${(t3 - t2).toFixed(1)}  read2 ${
      (t4 - t3).toFixed(1)
    }`,
  );
}
await runner.close();
