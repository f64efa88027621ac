// Which WebGPU implementation runs the model. onnxruntime-web takes whatever `navigator.gpu` is when it
// creates its device, so the choice is made once per process (the engine Worker) before onnxruntime
// starts. "deno" is Deno's own WebGPU (wgpu; WGSL compiled to SPIR-V by Naga). "dawn" is Chrome's
// implementation through the npm package `webgpu` (a native addon; WGSL compiled by Tint): on the H200
// the same kernels run 1.5-4.6x faster there (docs/BENCHMARKS.md, session 7). Dawn needs a Vulkan
// driver it accepts (NVIDIA's, or Mesa >= 25's lavapipe); "auto" takes it on an NVIDIA host when it
// gives an adapter with shader-f16 and Deno's otherwise.

import { nvidiaHost } from "./webgpu_check.ts";

export type WebGpuChoice = "auto" | "dawn" | "deno";
export type WebGpuBackend = "dawn" | "deno";

/**
 * Dawn's create() options: f16 on NVIDIA is behind a toggle in Dawn's Vulkan backend. Probes may add
 * toggles through RAGTIME_DAWN_FEATURES (comma-separated), e.g. allow_unsafe_apis, which exposes
 * chromium-experimental-subgroup-matrix (on the H200 none of its configurations is one onnxruntime's
 * kernels take: docs/dawn.md).
 */
const DAWN_FEATURES = [
  "vulkan_enable_f16_on_nvidia",
  ...(Deno.env.get("RAGTIME_DAWN_FEATURES") ?? "").split(","),
];
const DAWN_OPTIONS = ["backend=vulkan", `enable-dawn-features=${DAWN_FEATURES.filter(Boolean).join(",")}`];

let installed: WebGpuBackend | null = null;

/** The WebGPU this process selected, or null before selectWebGpu (tests and probes: Deno's). */
export function webGpuInUse(): WebGpuBackend | null {
  return installed;
}

/**
 * Makes `choice` this process's WebGPU; returns what is in use and, when "auto" fell back to Deno's,
 * why. Throws when "dawn" was asked for and cannot be had. Call before onnxruntime creates its device.
 */
export async function selectWebGpu(
  choice: WebGpuChoice,
  nvidia = nvidiaHost(),
): Promise<{ backend: WebGpuBackend; note?: string }> {
  if (installed) return { backend: installed };
  if (choice === "deno" || (choice === "auto" && !nvidia)) return { backend: installed = "deno" };
  try {
    await useDawn();
    return { backend: installed = "dawn" };
  } catch (e) {
    if (choice === "dawn") throw e;
    return { backend: installed = "deno", note: `Dawn not used: ${(e as Error).message}` };
  }
}

/** Replaces navigator.gpu and the WebGPU globals with Dawn's, once it has shown an f16 adapter. */
async function useDawn(): Promise<void> {
  let mod: { create(options: string[]): GPU; globals: object };
  try {
    mod = await import("webgpu");
  } catch (e) {
    throw new Error(`the npm package webgpu (Dawn) did not load: ${(e as Error).message}`);
  }
  const gpu = mod.create(DAWN_OPTIONS);
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error("Dawn found no Vulkan adapter (Mesa's lavapipe needs version 25 or later)");
  if (!adapter.features.has("shader-f16")) throw new Error("Dawn's adapter lacks shader-f16");
  const globals = mod.globals as DawnClasses;
  Object.assign(globalThis, globals);
  copySharedWrites(globals.GPUQueue);
  immediatesOnTimers();
  Object.defineProperty(navigator, "gpu", { value: gpu, configurable: true });
}

interface DawnClasses {
  GPUQueue: { prototype: GPUQueue };
}

/**
 * dawn.node settles its promises (mapAsync, onSubmittedWorkDone, pipeline creation) from a chain of
 * `setImmediate` callbacks that process Dawn's events, and under Deno those callbacks sometimes run
 * seconds late: a readback then waits as long (measured: up to 4 s on llvmpipe, 9-34 s on the H200;
 * docs/BENCHMARKS.md, session 8). A MessageChannel task, or a timer racing the late immediate, stalls
 * the same way; a chain of 0 ms timers does not. dawn.node looks `setImmediate` up on the global each
 * time it schedules, so this process's immediates become 0 ms timers (nothing else here uses them).
 */
function immediatesOnTimers() {
  const g = globalThis as unknown as {
    setImmediate: (f: (...a: unknown[]) => void, ...a: unknown[]) => ReturnType<typeof setTimeout>;
    clearImmediate: (id: ReturnType<typeof setTimeout>) => void;
  };
  g.setImmediate = (f, ...a) => setTimeout(f, 0, ...a);
  g.clearImmediate = (id) => clearTimeout(id);
}

/**
 * dawn.node reads a garbage pointer when writeBuffer's data is a view on a SharedArrayBuffer (Node-API
 * gives no access to shared memory), and onnxruntime-web's wasm heap is one: such data is copied first.
 */
function copySharedWrites(queueClass: DawnClasses["GPUQueue"]) {
  const write = queueClass.prototype.writeBuffer;
  queueClass.prototype.writeBuffer = function (
    this: GPUQueue,
    buffer: GPUBuffer,
    offset: number,
    data: AllowSharedBufferSource,
    ...rest: number[]
  ) {
    if (data instanceof SharedArrayBuffer) data = data.slice(0);
    else if (data instanceof DataView && data.buffer instanceof SharedArrayBuffer) {
      data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    } else if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
      // The same element type: writeBuffer's dataOffset and size count elements.
      data = (data as Uint8Array).slice();
    }
    return (write as (...a: unknown[]) => undefined).call(this, buffer, offset, data, ...rest);
  };
}
