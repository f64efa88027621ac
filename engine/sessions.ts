// onnxruntime-web sessions over the built graphs, the WebGPU device they run on, and the GPU
// buffers fed to them. With model_runner.ts and captured_steps.ts, the only places that import
// onnxruntime.

import * as ort from "onnxruntime-web/webgpu";
import { type BuiltGraph, stepModel } from "./model/graph.ts";
import { IO } from "./model/graph_io.ts";
import type { Initializer } from "./model/step_weights.ts";
import { EXTERNAL_DATA_NAME, TensorType } from "./onnx/builder.ts";
import { WeightUploader } from "./weight_upload.ts";
import { stepBucketsOn } from "./step_buckets.ts";
import { installAttentionKernels } from "./attention_kernel.ts";

export type Session = ort.InferenceSession;
export type SessionOptions = ort.InferenceSession.SessionOptions;

/**
 * A session over the step graph, its outputs left on the GPU; attn_meta as in stepModel. `extra`
 * options go on top of the defaults, so one built graph can back several sessions that differ only
 * in their options (graph capture).
 */
export function createStepSession(
  graph: BuiltGraph,
  attnMeta: [number, number] | null,
  extra: SessionOptions = {},
): Promise<Session> {
  configureOrt();
  return ort.InferenceSession.create(stepModel(graph, attnMeta), {
    ...sessionOptions([IO.logits, IO.nextIds]),
    externalData: [{ path: EXTERNAL_DATA_NAME, data: graph.data }],
    ...extra,
  });
}

/**
 * The device the sessions run on (ORT creates it with the first WebGPU session), its adapter's name,
 * vendor and whether that adapter is a software one (llvmpipe: the device's work runs on the CPU's own cores).
 */
export async function sessionDevice(): Promise<
  { device: GPUDevice; adapterName: string; vendor: string; software: boolean }
> {
  const device = await ort.env.webgpu.device;
  const adapterInfo = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo ??
    (ort.env.webgpu.adapter as GPUAdapter | undefined)?.info;
  const adapterName = adapterInfo
    ? `${adapterInfo.description || adapterInfo.vendor}${
      adapterInfo.isFallbackAdapter ? " (software fallback)" : ""
    }`
    : "unknown";
  return {
    device,
    adapterName,
    vendor: adapterInfo?.vendor ?? "",
    software: adapterInfo?.isFallbackAdapter === true,
  };
}

/** Process-wide settings, read when the first session starts the wasm runtime. */
function configureOrt() {
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "error";
  installAttentionKernels();
}

function sessionOptions(outputsOnGpu: string[]): SessionOptions {
  return {
    executionProviders: [{ name: "webgpu", ...defaultEpOptions(), ...envEpOptions() }],
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
function defaultEpOptions(): Record<string, string> {
  return {
    // ORT's own checks on every dispatch cost CPU, the bound of a step; the graph is fixed and tested.
    validationMode: "disabled",
    // Released buffers kept by exact size and reused: the default size classes cache nothing over
    // 160 MB, so long prefill steps create (and zero-fill) their largest buffers every time. Only
    // with bucketed steps, which keep the number of distinct sizes small (step_buckets.ts).
    ...(stepBucketsOn() ? { storageBufferCacheMode: "simple" } : {}),
  };
}

function envEpOptions(): Record<string, string> {
  const raw = Deno.env.get("RAGTIME_ORT_EP");
  return raw ? JSON.parse(raw) : {};
}

const ORT_TYPES = { [TensorType.FLOAT]: "float32", [TensorType.FLOAT16]: "float16" } as const;

/**
 * The graph's weight inputs, uploaded once into buffers that every session over the graph is fed.
 * Each is laid out from the checkpoint's bytes (`tensors`, see stepWeightTensors) on the GPU where
 * it can be (weight_upload.ts), else converted on the CPU just before its upload and dropped after
 * it: the host holds one tensor's staging at a time, not a second copy of the model.
 */
export async function uploadWeights(
  device: GPUDevice,
  graph: BuiltGraph,
  tensors: Initializer[],
  log: (line: string) => void = () => {},
): Promise<{ feeds: Feeds; buffers: GPUBuffer[]; counts: { gpu: number; cpu: number } }> {
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const feeds: Feeds = {};
  const buffers: GPUBuffer[] = [];
  // RAGTIME_WEIGHT_UPLOAD=cpu: every weight converted on the CPU (to compare the two paths).
  const uploader = new WeightUploader(device, {
    cpuOnly: Deno.env.get("RAGTIME_WEIGHT_UPLOAD") === "cpu",
    log,
  });
  try {
    for (const w of graph.weights) {
      const t = byName.get(w.name);
      // A cached graph whose inputs are not these tensors: a GRAPH_VERSION that was not bumped.
      if (!t || t.type !== w.type || t.dims.join() !== w.dims.join()) {
        throw new Error(`weight ${w.name}: the graph's input does not match the model's tensor`);
      }
      const dataType = ORT_TYPES[w.type as keyof typeof ORT_TYPES];
      if (!dataType) throw new Error(`weight ${w.name}: unsupported tensor type ${w.type}`);
      const buffer = pinGpuBuffer(await uploader.upload(t));
      buffers.push(buffer);
      feeds[w.name] = ort.Tensor.fromGpuBuffer(buffer, { dataType, dims: w.dims });
    }
    await device.queue.onSubmittedWorkDone();
  } catch (e) {
    buffers.forEach((b) => b.destroy());
    throw e;
  } finally {
    uploader.destroy();
  }
  return { feeds, buffers, counts: uploader.counts };
}

export type Feeds = Record<string, ort.Tensor>;

interface SessionHandler {
  run(feeds: Feeds, fetches: Feeds, options: object): Promise<Feeds>;
}

/**
 * Runs a graph-capture session whose inputs were bound by an earlier run, without passing them
 * again. Once a captured session's IO binding is made (its first run), onnxruntime-web replays
 * from the bound inputs and ignores the feeds of later runs, but run() still wraps every feed in a
 * wasm tensor, registers its buffer and releases both (~250 inputs a step: the weights are inputs).
 * InferenceSession.run insists on every input, so this calls its handler (onnxruntime-web 1.30's
 * wasm handler, which maps feeds by name) with none. Null where the handler is not there.
 */
export function runBound(session: Session, fetches: Feeds): Promise<Feeds> | null {
  const handler = (session as unknown as { handler?: Partial<SessionHandler> }).handler;
  if (typeof handler?.run !== "function") return null;
  return (handler as SessionHandler).run({}, fetches, {});
}

/**
 * Keeps a GPU buffer registered with onnxruntime-web for good. Every run() registers the buffers it
 * is fed (a WGPUBuffer handle in the wasm runtime) and releases them when it returns; a captured
 * session's IO binding, made once on its first run, keeps that run's handles, and from the second
 * run on its outputs are looked up through them (webgpuGetBuffer). A released handle may then name
 * nothing (a TypeError setting Symbol(gpuBufferMetadata)) or, reused, another buffer. A pinned
 * buffer's registration count never drops to zero, so its handle lives as long as the buffer.
 * The count sits under a private symbol that onnxruntime-web sets on the buffer object; a trap on
 * GPUBuffer's prototype chain sees the first assignment and starts the count at 2.
 */
export function pinGpuBuffer(buffer: GPUBuffer): GPUBuffer {
  installPinTrap();
  pinned.add(buffer);
  return buffer;
}

const pinned = new WeakSet<GPUBuffer>();
let pinTrap = false;

function installPinTrap() {
  if (pinTrap) return;
  pinTrap = true;
  const base = Object.getPrototypeOf(GPUBuffer.prototype);
  Object.setPrototypeOf(
    GPUBuffer.prototype,
    new Proxy(base, {
      set(target, key, value, receiver) {
        if (typeof key === "symbol" && key.description === "gpuBufferMetadata" && Array.isArray(value)) {
          if (pinned.has(receiver) && value[1] === 1) value[1] = 2;
          return Reflect.defineProperty(receiver, key, { value, writable: true, configurable: true });
        }
        return Reflect.set(target, key, value, receiver);
      },
    }),
  );
}
