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

/** Dawn's create() options: f16 on NVIDIA is behind a toggle in Dawn's Vulkan backend. */
const DAWN_OPTIONS = ["backend=vulkan", "enable-dawn-features=vulkan_enable_f16_on_nvidia"];

let installed: WebGpuBackend | null = null;

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
  pumpWhileWaiting(globals);
  Object.defineProperty(navigator, "gpu", { value: gpu, configurable: true });
}

interface DawnClasses {
  GPUAdapter: { prototype: GPUAdapter };
  GPUBuffer: { prototype: GPUBuffer };
  GPUQueue: { prototype: GPUQueue };
}

/**
 * dawn.node settles its promises from a chain of setImmediate callbacks that process Dawn's events; under
 * Deno that chain sometimes stalls, and a readback then waits seconds (3 s on llvmpipe, 24-33 s on the
 * H200, measured) or never ends. While a mapAsync or onSubmittedWorkDone is pending, a 1 ms timer asks
 * every device's queue for onSubmittedWorkDone, which has Dawn process its events again.
 */
function pumpWhileWaiting(classes: DawnClasses) {
  const devices: GPUDevice[] = [];
  const requestDevice = classes.GPUAdapter.prototype.requestDevice;
  classes.GPUAdapter.prototype.requestDevice = async function (this: GPUAdapter, ...a: unknown[]) {
    const device = await (requestDevice as (...a: unknown[]) => Promise<GPUDevice>).apply(this, a);
    devices.push(device);
    device.lost.then(() => devices.splice(devices.indexOf(device), 1));
    return device;
  };
  const workDone = classes.GPUQueue.prototype.onSubmittedWorkDone;
  let waiting = 0;
  let timer: ReturnType<typeof setInterval> | undefined;
  const poke = () => {
    for (const d of devices) workDone.call(d.queue).catch(() => {});
  };
  const pumped = <A extends unknown[]>(f: (...a: A) => Promise<undefined>) =>
    async function (this: unknown, ...a: A): Promise<undefined> {
      if (waiting++ === 0) timer = setInterval(poke, 1);
      try {
        return await f.apply(this, a);
      } finally {
        if (--waiting === 0) clearInterval(timer);
      }
    };
  classes.GPUBuffer.prototype.mapAsync = pumped(classes.GPUBuffer.prototype.mapAsync);
  classes.GPUQueue.prototype.onSubmittedWorkDone = pumped(workDone);
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
