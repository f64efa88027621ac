// onnxruntime-web sessions over the built graphs, and the WebGPU device they run on. With
// model_runner.ts, the only place that imports onnxruntime.

import * as ort from "onnxruntime-web/webgpu";
import type { BuiltGraph } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import { buildSamplerGraph } from "./model/sampler_graph.ts";
import { EXTERNAL_DATA_NAME } from "./onnx/builder.ts";

export type Session = ort.InferenceSession;
export type SessionOptions = ort.InferenceSession.SessionOptions;

/** The step session and the sampler's (see sampler_graph.ts). */
export async function createSessions(
  graph: BuiltGraph,
  vocab: number,
): Promise<{ step: Session; sampler: Session }> {
  const step = await createStepSession(graph);
  const sampler = await ort.InferenceSession.create(
    buildSamplerGraph(vocab),
    sessionOptions([IO.sampledIds]),
  );
  return { step, sampler };
}

/**
 * A session over the step graph, its outputs left on the GPU. `extra` options go on top of the
 * defaults, so one built graph can back several sessions that differ only in their options.
 */
export function createStepSession(graph: BuiltGraph, extra: SessionOptions = {}): Promise<Session> {
  configureOrt();
  return ort.InferenceSession.create(graph.bytes, {
    ...sessionOptions([IO.logits, IO.nextIds]),
    externalData: [{ path: EXTERNAL_DATA_NAME, data: graph.data }],
    ...extra,
  });
}

/** The device the sessions run on (ORT creates it with the first WebGPU session) and its adapter's name. */
export async function sessionDevice(): Promise<{ device: GPUDevice; adapterName: string }> {
  const device = await ort.env.webgpu.device;
  const adapterInfo = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo ??
    (ort.env.webgpu.adapter as GPUAdapter | undefined)?.info;
  const adapterName = adapterInfo
    ? `${adapterInfo.description || adapterInfo.vendor}${
      adapterInfo.isFallbackAdapter ? " (software fallback)" : ""
    }`
    : "unknown";
  return { device, adapterName };
}

/** Process-wide settings, read when the first session starts the wasm runtime. */
function configureOrt() {
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "error";
}

function sessionOptions(outputsOnGpu: string[]): SessionOptions {
  return {
    executionProviders: [{ name: "webgpu", ...DEFAULT_EP_OPTIONS, ...envEpOptions() }],
    // RAGTIME_ORT_LOG=1 logs every WebGPU program ORT starts (what a step dispatches).
    logSeverityLevel: Number(Deno.env.get("RAGTIME_ORT_LOG") ?? 3) as 0 | 1 | 2 | 3 | 4,
    preferredOutputLocation: Object.fromEntries(outputsOnGpu.map((o) => [o, "gpu-buffer"])),
  };
}

/**
 * WebGPU EP options. They must go in the execution provider entry: onnxruntime-web hands session
 * `extra` entries to ORT only after the EP (and its process-wide WebGPU context) exists.
 * RAGTIME_ORT_EP (JSON) overrides them for experiments.
 */
const DEFAULT_EP_OPTIONS: Record<string, string> = {
  // ORT's own checks on every dispatch cost CPU, the bound of a step; the graph is fixed and tested.
  validationMode: "disabled",
};

function envEpOptions(): Record<string, string> {
  const raw = Deno.env.get("RAGTIME_ORT_EP");
  return raw ? JSON.parse(raw) : {};
}
