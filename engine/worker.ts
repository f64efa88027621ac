// The engine's Worker: loads the model, owns the GPU, and runs the step loop off the HTTP thread
// (a graph run blocks its thread while wasm works).

/// <reference lib="deno.worker" />

import "./worker_env.ts";
import type { LLMEngine } from "./llm_engine.ts";
import type { LoadProgress } from "./model/types.ts";
import type { ModelRunner } from "./model_runner.ts";
import type { GenerateEvent } from "./protocol.ts";
import type { ToClient, ToWorker, WorkerInit } from "./worker_protocol.ts";
import { checkWebGpu } from "./webgpu_check.ts";
import { selectWebGpu } from "./webgpu_backend.ts";
import { attentionKernelsReplaced, installAttentionKernels } from "./attention_kernel.ts";

let engine: LLMEngine | null = null;
let runner: ModelRunner | null = null;
let loop: Promise<void> | null = null;
const post = (m: ToClient) => self.postMessage(m);
const log = (line: string) => post({ type: "log", line });
// Events emitted in one synchronous stretch (a step's results) leave as one message.
let outbox: { id: string; ev: GenerateEvent }[] = [];
const emitEvent = (id: string, ev: GenerateEvent) => {
  if (outbox.length === 0) {
    queueMicrotask(() => {
      post({ type: "events", items: outbox });
      outbox = [];
    });
  }
  outbox.push({ id, ev });
};

async function init(o: WorkerInit) {
  const t0 = performance.now();
  // Before the model is read (minutes for a large one) and before onnxruntime, whose errors name no fix.
  const webgpu = await selectWebGpu(o.settings.webgpu ?? "auto");
  if (webgpu.note) log(webgpu.note);
  installAttentionKernels(o.settings.attentionKernels ?? "ragtime");
  await checkWebGpu();
  // Imported only now: Deno evaluates npm modules ahead of worker_env.ts in a static import graph.
  const { loadModel } = await import("./model/load.ts");
  const { createEngine } = await import("./local_engine.ts");
  let lastReport = 0;
  const progress: LoadProgress = (p) => {
    const now = performance.now();
    if (p.phase === "read" && now - lastReport < 250 && p.done !== p.total) return;
    lastReport = now;
    post({ type: "progress", phase: p.phase, done: p.done, total: p.total });
  };
  const model = await loadModel(o.modelPath, { progress });
  const created = await createEngine(model, o.settings, { log, progress });
  runner = created.runner;
  engine = created.engine;
  if (o.settings.attentionKernels !== "onnxruntime") {
    log(`attention: ragtime's kernels in ${attentionKernelsReplaced()} onnxruntime programs`);
  }
  engine.onStep = () => post({ type: "stats", stats: engine!.stats() });
  loop = engine.run().catch((e) => {
    log(`engine loop failed: ${(e as Error).stack ?? e}`);
    post({ type: "fatal", message: (e as Error).message });
  });
  post({
    type: "ready",
    seconds: (performance.now() - t0) / 1000,
    dtype: created.config.dtype,
    adapter: `${runner.adapterName} (${webgpu.backend === "dawn" ? "Dawn" : "Deno's WebGPU"})`,
    nodesPerLayer: runner.nodesPerLayer,
    kvBlocks: runner.numBlocks,
    blockSize: runner.blockSize,
    maxContext: created.config.maxContext,
    longQueries: runner.longQueries,
    answerCache: engine.answerCache,
  });
}

self.onmessage = async (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  try {
    switch (m.type) {
      case "init":
        await init(m.options);
        break;
      case "generate":
        engine!.add(m.request, (ev) => emitEvent(m.request.id, ev));
        post({ type: "stats", stats: engine!.stats() });
        break;
      case "abort":
        engine?.abort(m.id);
        post({ type: "stats", stats: engine!.stats() });
        break;
      case "predict":
        engine?.predictAnswer(m.id, m.ids, m.final);
        break;
      case "close":
        engine?.stop();
        await loop;
        await runner?.close();
        post({ type: "closed" });
        break;
    }
  } catch (err) {
    if (m.type === "init") post({ type: "failed", message: (err as Error).message });
    else if (m.type === "generate") {
      emitEvent(m.request.id, { type: "error", message: (err as Error).message, code: "internal" });
    } else log(`worker: ${(err as Error).stack ?? err}`);
  }
};
