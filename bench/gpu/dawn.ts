// Preload that makes Dawn this process's WebGPU (engine/webgpu_backend.ts, as `--webgpu dawn` does in the
// engine Worker), so any probe runs on it unchanged:
//   deno run -A --preload bench/gpu/dawn.ts bench/gpu/capture_probe.ts ...
import { selectWebGpu } from "../../engine/webgpu_backend.ts";

await selectWebGpu("dawn");
console.error(`[dawn] ${(await navigator.gpu.requestAdapter())?.info.description ?? "no adapter"}`);
