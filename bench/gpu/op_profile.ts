// GPU time per WebGPU program of one engine step, summed per ONNX op kind, for decode and prefill steps.
//
//   deno run -A bench/gpu/op_profile.ts [--model PATH] [--dtype f16|f32] [--cases LIST] [--steps N]
//     [--warmup N] [--kv-cache-mb MB] [--split LIST] [--json FILE]
//
// --split: comma-separated matmul split-K factors (the engine's --matmul-split-k), each profiled on a
//   runner of its own, one after the other, then compared case by case (default: the engine's default).
// --model: a GGUF file or HF folder (default: SmolLM2-135M-shaped random weights, as step_probe.ts).
// --cases: comma-separated decode:B[:past] and prefill:B:q[:past] (default
//   decode:1:256,decode:128:256,prefill:16:31,prefill:1:512): B sequences of q new tokens over `past`
//   cached ones (greedy, so only the step session runs). items:B:q[:past] is prefill:B:q as the engine
//   sends it: each sequence's q tokens as attention items of at most BATCH_INVARIANT_ITEM_TOKENS.
//
// How: onnxruntime-web 1.30's WebGPU EP (the native one, compiled to wasm) profiles when the session
// option enableProfiling is set: every program then gets its own compute pass with timestamp queries at
// its start and end (the adapter needs `timestamp-query`), and session.endProfiling() prints the events
// as JSON lines on the wasm's stdout (captured by wasm_stdout.ts). This script turns profiling on by wrapping
// InferenceSession.create (the runner's own session code stays as it is), runs every case on one runner,
// captures those lines, splits the step session's GPU events into runs (each starts at the graph's first
// program) and hands them back to their cases, without the warm-up runs. A pass per program adds a little
// GPU time of its own, so the totals are an upper bound of the unprofiled step; the shares are the point.
// The ORT "Node" events give each op's CPU time (dispatch) alongside.

import { endProfiling, gpuEvents, type ProfileEvent, splitRuns } from "./ort_profile.ts";
import * as ort from "onnxruntime-web/webgpu";
import { ModelRunner, type StepInputs } from "../../engine/model_runner.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, ENGINE_DEFAULTS } from "../../engine/protocol.ts";
import { attentionItems } from "../../engine/step_inputs.ts";
import { smollm2ShapedModel } from "./probe_model.ts";

const sessions: ort.InferenceSession[] = [];
const originalCreate = ort.InferenceSession.create;
// deno-lint-ignore no-explicit-any
(ort.InferenceSession as any).create = async (...args: any[]) => {
  const last = args[args.length - 1];
  if (last && typeof last === "object" && !(last instanceof Uint8Array) && !(last instanceof ArrayBuffer)) {
    args[args.length - 1] = { ...last, enableProfiling: true };
  } else {
    args.push({ enableProfiling: true });
  }
  // deno-lint-ignore no-explicit-any
  const s = await (originalCreate as any).apply(ort.InferenceSession, args);
  sessions.push(s);
  return s;
};

interface Args {
  model: string | null;
  dtype: "f16" | "f32";
  cases: string;
  steps: number;
  warmup: number;
  kvCacheMb: number;
  splits: number[];
  json: string | null;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    model: null,
    dtype: "f16",
    cases: "decode:1:256,decode:128:256,prefill:16:31,prefill:1:512",
    steps: 3,
    warmup: 2,
    kvCacheMb: 2048,
    splits: [ENGINE_DEFAULTS.matmulSplitK],
    json: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i], v = argv[i + 1];
    const need = () => {
      if (v === undefined) throw new Error(`${k} needs a value`);
      i++;
      return v;
    };
    if (k === "--model") a.model = need();
    else if (k === "--dtype") a.dtype = need() as "f16" | "f32";
    else if (k === "--cases") a.cases = need();
    else if (k === "--steps") a.steps = Number(need());
    else if (k === "--warmup") a.warmup = Number(need());
    else if (k === "--kv-cache-mb") a.kvCacheMb = Number(need());
    else if (k === "--split") a.splits = need().split(",").map(Number);
    else if (k === "--json") a.json = need();
    else throw new Error(`unknown argument ${k}`);
  }
  if (a.dtype !== "f16" && a.dtype !== "f32") throw new Error("--dtype must be f16 or f32");
  if (!(a.steps >= 1) || !(a.warmup >= 1)) throw new Error("--steps and --warmup must be at least 1");
  if (!a.splits.length || a.splits.some((x) => !Number.isInteger(x) || x < 1)) {
    throw new Error("--split takes positive integers");
  }
  return a;
}

interface Case {
  name: string;
  B: number;
  q: number;
  past: number;
  /** Tokens per attention item (the engine's split of a long span); Infinity: one item per sequence. */
  item: number;
}

function parseCases(spec: string): Case[] {
  return spec.split(",").map((s) => {
    const [kind, ...nums] = s.trim().split(":");
    const n = nums.map(Number);
    const name = s.trim(), item = Infinity;
    if (kind === "decode" && n.length >= 1) return { name, B: n[0], q: 1, past: n[1] ?? 256, item };
    if (kind === "prefill" && n.length >= 2) return { name, B: n[0], q: n[1], past: n[2] ?? 0, item };
    if (kind === "items" && n.length >= 2) {
      return { name, B: n[0], q: n[1], past: n[2] ?? 0, item: BATCH_INVARIANT_ITEM_TOKENS };
    }
    throw new Error(`bad case "${s}" (decode:B[:past], prefill:B:q[:past] or items:B:q[:past])`);
  });
}

function stepInputs(c: Case, numBlocks: number, blockSize: number, vocab: number): StepInputs {
  const { B, q, past } = c;
  const bpS = Math.ceil((past + q) / blockSize);
  const spans = attentionItems(past, q, Math.min(c.item, q));
  const items = B * spans.length;
  const bt = new Int32Array(items * bpS);
  const cu = new Int32Array(items + 1), pastSeqlens = new Int32Array(items), sampleRows = new Int32Array(B);
  for (let b = 0, i = 0; b < B; b++) {
    // Distinct blocks per sequence while the pool lasts (block 0 stays free for the runner's padding item);
    // a sequence's items share its table.
    const table = Int32Array.from({ length: bpS }, (_, j) => 1 + ((b * bpS + j) % (numBlocks - 1)));
    for (const [start, n] of spans) {
      bt.set(table, i * bpS);
      pastSeqlens[i] = start;
      cu[i + 1] = cu[i] + n;
      i++;
    }
    sampleRows[b] = cu[i] - 1;
  }
  const T = B * q;
  return {
    inputIds: Int32Array.from({ length: T }, (_, i) => 3 + ((i * 7919) % (vocab - 3))),
    idSrc: new Int32Array(T).fill(-1),
    cuSeqlens: cu,
    pastSeqlens,
    blockTable: bt,
    maxBlocks: bpS,
    sampleRows,
    sampleU: new Float32Array(B).fill(-1),
    invTemp: new Float32Array(B).fill(1),
    sampleFilters: new Float32Array(3 * B).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits: false,
  };
}

interface Row {
  key: string;
  count: number;
  us: number;
  share: number;
}

function summarise(runs: ProfileEvent[][], key: (e: ProfileEvent) => string): Row[] {
  const acc = new Map<string, { count: number; us: number }>();
  let total = 0;
  for (const run of runs) {
    for (const e of run) {
      const k = key(e);
      const a = acc.get(k) ?? { count: 0, us: 0 };
      a.count++;
      a.us += e.dur;
      total += e.dur;
      acc.set(k, a);
    }
  }
  const n = runs.length;
  return [...acc].map(([k, a]) => ({
    key: k,
    count: a.count / n,
    us: a.us / n,
    share: total ? a.us / total : 0,
  }))
    .sort((x, y) => y.us - x.us);
}

function table(title: string, head: string, rows: Row[], limit = rows.length): string {
  const w = Math.max(head.length, ...rows.slice(0, limit).map((r) => r.key.length));
  const out = [
    title,
    `${head.padEnd(w)}  ${"count".padStart(6)}  ${"total us".padStart(10)}  ${"share".padStart(6)}`,
  ];
  for (const r of rows.slice(0, limit)) {
    out.push(
      `${r.key.padEnd(w)}  ${r.count.toFixed(0).padStart(6)}  ${r.us.toFixed(0).padStart(10)}  ${
        (100 * r.share).toFixed(1).padStart(5)
      }%`,
    );
  }
  const sum = rows.reduce((a, r) => a + r.us, 0), cnt = rows.reduce((a, r) => a + r.count, 0);
  out.push(`${"all".padEnd(w)}  ${cnt.toFixed(0).padStart(6)}  ${sum.toFixed(0).padStart(10)}  100.0%`);
  return out.join("\n");
}

const opKind = (e: ProfileEvent) => e.name.split("&")[1] ?? e.name;
const program = (e: ProfileEvent) => {
  const [, op, prog] = e.name.split("&");
  return prog && prog !== op ? `${op}/${prog}` : op ?? e.name;
};
const MATMULS = new Set(["MatMul", "MatMulNBits", "Gemm", "FusedMatMul"]);
/** Matmul-like programs by their weight's shape (which projection), the rest left out. */
const matmulShape = (e: ProfileEvent) => {
  const op = opKind(e);
  if (!MATMULS.has(op)) return "";
  const w = /inputs\[1\] = \{([0-9,]+)\}/.exec(String(e.args?.shapes ?? ""));
  return `${op} ${w ? w[1].replace(/,/g, "x") : "?"}`;
};
const nodeOp = (e: ProfileEvent) => String(e.args?.op_name ?? e.name);

interface Timing {
  dispatch: number[];
  wall: number[];
}

/**
 * One runner for every case, run in turn (warm-ups, then measured steps); the profile is read once at
 * the end and cut into runs, which go back to their cases in order.
 */
async function profileCases(model: LoadedModel, args: Args, cases: Case[], splitK: number) {
  sessions.length = 0;
  const runner = await ModelRunner.create(model, {
    dtype: args.dtype,
    blockSize: 16,
    kvCacheMb: args.kvCacheMb,
    cacheDir: Deno.env.get("GRAPH_CACHE") ?? ".cache/graphs",
    splitK,
  });
  const [step, ...others] = sessions;
  const timings: Timing[] = [];
  for (const c of cases) {
    if (c.past + c.q > runner.maxPositions) throw new Error(`${c.name}: past + q exceeds the context`);
    const inp = stepInputs(c, runner.numBlocks, runner.blockSize, model.config.vocabSize);
    const t: Timing = { dispatch: [], wall: [] };
    for (let i = 0; i < args.warmup + args.steps; i++) {
      const t0 = performance.now();
      const h = await runner.run(inp);
      const t1 = performance.now();
      await runner.read(h);
      if (i >= args.warmup) {
        t.dispatch.push(t1 - t0);
        t.wall.push(performance.now() - t0);
      }
    }
    timings.push(t);
  }
  const events = await endProfiling(step);
  for (const s of others) await endProfiling(s);
  await runner.close();

  const perCase = args.warmup + args.steps;
  const total = perCase * cases.length;
  const runs = splitRuns(gpuEvents(events));
  if (runs.length !== total) {
    throw new Error(`found ${runs.length} runs in the GPU events, expected ${total}`);
  }
  // ORT runs every node of the step graph in every run, so its CPU node events split evenly.
  const nodes = events.filter((e) => e.cat === "Node" && e.name.endsWith("_kernel_time"));
  const nodesPerRun = nodes.length / total;
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  return cases.map((c, k) => {
    const first = k * perCase + args.warmup;
    const measured = runs.slice(first, first + args.steps);
    const cpuRuns = Number.isInteger(nodesPerRun)
      ? Array.from(
        { length: args.steps },
        (_, i) => nodes.slice((first + i) * nodesPerRun, (first + i + 1) * nodesPerRun),
      )
      : [];
    return {
      case: c,
      splitK,
      steps: args.steps,
      tokens: c.B * c.q,
      gpuUs: measured.reduce((a, r) => a + r.reduce((x, e) => x + e.dur, 0), 0) / measured.length,
      programs: measured[0].length,
      dispatchMs: mean(timings[k].dispatch),
      stepMs: mean(timings[k].wall),
      byOp: summarise(measured, opKind),
      byProgram: summarise(measured, program),
      byMatmulShape: summarise(measured.map((r) => r.filter((e) => matmulShape(e))), matmulShape),
      cpuByOp: cpuRuns.length ? summarise(cpuRuns, nodeOp) : [],
    };
  });
}

type CaseResult = Awaited<ReturnType<typeof profileCases>>[number];

function printCase(r: CaseResult) {
  const c = r.case;
  console.log(
    `\n== ${c.name}, split-K ${r.splitK}: ${c.B} seq x ${c.q} new tokens over ${c.past} cached (${r.tokens} tokens); ` +
      `${r.programs} programs, GPU ${(r.gpuUs / 1000).toFixed(2)} ms per step (profiled); ` +
      `dispatch ${r.dispatchMs.toFixed(1)} ms, step ${r.stepMs.toFixed(1)} ms wall (profiled)`,
  );
  console.log(table("GPU time per op kind, per step:", "op kind", r.byOp));
  console.log(table("top programs:", "op/program", r.byProgram, 15));
  console.log(
    table(
      "matmuls by weight shape as ORT binds it (last dim in vec4 units when vectorised):",
      "op weight",
      r.byMatmulShape,
    ),
  );
  if (r.cpuByOp.length) {
    console.log(table("ORT CPU time per op (dispatch), per step:", "op", r.cpuByOp, 10));
  }
}

async function main() {
  const args = parseArgs(Deno.args);
  const cases = parseCases(args.cases);
  const model = args.model ? await loadModel(args.model) : smollm2ShapedModel();
  const cfg = model.config;
  console.log(
    `model ${
      args.model ?? "random SmolLM2-135M shape"
    }: ${cfg.architecture}, ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, ` +
      `vocab ${cfg.vocabSize}, dtype ${args.dtype}`,
  );
  const results: CaseResult[] = [];
  for (const splitK of args.splits) {
    const rs = await profileCases(model, args, cases, splitK);
    results.push(...rs);
    rs.forEach(printCase);
  }
  const adapter = (await ort.env.webgpu.device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo
    ?.description ?? "";
  if (args.splits.length > 1) {
    console.log("\nsplit-K compared (profiled GPU time and programs per step, wall time of a step):");
    for (const c of cases) {
      const line = results.filter((r) => r.case === c).map((r) =>
        `split ${r.splitK}: GPU ${(r.gpuUs / 1000).toFixed(2)} ms, ${r.programs} programs, ` +
        `step ${r.stepMs.toFixed(1)} ms`
      );
      console.log(`  ${c.name.padEnd(20)} ${line.join(" | ")}`);
    }
  }
  if (args.json) {
    await Deno.writeTextFile(
      args.json,
      JSON.stringify(
        {
          model: args.model ?? "random-smollm2-135m-shape",
          config: cfg,
          dtype: args.dtype,
          adapter,
          results,
        },
        null,
        1,
      ) + "\n",
    );
    console.log(`wrote ${args.json}`);
  }
}

await main();
