// Startup check of the WebGPU adapter, run in the engine Worker before onnxruntime starts: without it a
// missing adapter surfaces as onnxruntime's hint about a Chrome flag, and an adapter without shader-f16
// as a shader compile error at warmup. Neither names the fix.

/** What the check reads of navigator.gpu and an adapter (tests inject their own). */
export interface GpuLike {
  requestAdapter(): Promise<AdapterLike | null>;
}
export interface AdapterLike {
  readonly features: { has(name: string): boolean };
  readonly info?: { description?: string; vendor?: string; isFallbackAdapter?: boolean };
}

/** The adapter cannot run ragtime; the message is one line that says what to install or set. */
export class WebGpuError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebGpuError";
  }
}

export interface CheckHost {
  /** An NVIDIA driver is loaded (then a missing adapter means the loader missed its Vulkan ICD). */
  nvidia: boolean;
}

const SOFTWARE_FIX = "install Mesa's Vulkan driver and the Vulkan loader (Debian/Ubuntu: " +
  "apt-get install mesa-vulkan-drivers libvulkan1) for a CPU adapter";
const NVIDIA_FIX = "make the NVIDIA driver's Vulkan ICD visible to the loader (VK_DRIVER_FILES=" +
  "/path/to/nvidia_icd.json; in a container also NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility)";
const SEE = "see docs/deploy.md";

export function adapterName(a: AdapterLike): string {
  const name = a.info?.description || a.info?.vendor || "unknown adapter";
  return a.info?.isFallbackAdapter ? `${name} (software fallback)` : name;
}

/** Why this adapter (or none) cannot run ragtime, as one line with the fix; null when it can. */
export function adapterProblem(adapter: AdapterLike | null, host: CheckHost, error?: string): string | null {
  const fixes = host.nvidia ? `${NVIDIA_FIX}; on a machine without a GPU, ${SOFTWARE_FIX}` : (
    `${SOFTWARE_FIX}; on an NVIDIA GPU host, ${NVIDIA_FIX}`
  );
  if (!adapter) {
    const why = error ? ` (${error})` : "";
    return `WebGPU: no adapter found${why}: Deno's WebGPU needs a Vulkan driver: ${fixes}; ${SEE}`;
  }
  if (!adapter.features.has("shader-f16")) {
    // Deno falls back to an OpenGL adapter (llvmpipe through EGL) when Vulkan finds no driver.
    return `WebGPU: the adapter ${adapterName(adapter)} lacks the shader-f16 feature, which ragtime's ` +
      `kernels need (the KV cache and attention are fp16 whatever --dtype); this is usually Deno's ` +
      `OpenGL fallback when no Vulkan driver was found: ${fixes}; ${SEE}`;
  }
  return null;
}

/** An NVIDIA kernel driver is loaded: its device nodes or procfs entry exist. */
export function nvidiaHost(): boolean {
  for (const p of ["/proc/driver/nvidia/version", "/dev/nvidia0"]) {
    try {
      Deno.statSync(p);
      return true;
    } catch {
      // not this one
    }
  }
  return false;
}

/** Throws WebGpuError unless an adapter with shader-f16 is available; returns the adapter's name. */
export async function checkWebGpu(
  gpu: GpuLike | null = (navigator as { gpu?: GpuLike }).gpu ?? null,
  host: CheckHost = { nvidia: nvidiaHost() },
): Promise<string> {
  if (!gpu) {
    throw new WebGpuError("WebGPU: navigator.gpu is missing in this Deno; run ragtime with Deno 2.9.6");
  }
  let adapter: AdapterLike | null = null;
  let error: string | undefined;
  try {
    adapter = await gpu.requestAdapter();
  } catch (e) {
    error = (e as Error).message;
  }
  const problem = adapterProblem(adapter, host, error);
  if (problem) throw new WebGpuError(problem);
  return adapterName(adapter!);
}
