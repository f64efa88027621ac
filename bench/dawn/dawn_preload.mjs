// Swaps Deno's navigator.gpu for Dawn's (npm webgpu 0.6.2, installed by `npm ci` in bench/dawn) before any
// module runs, so unchanged project scripts can run onnxruntime-web on Dawn:
//   deno run -A --preload bench/dawn/dawn_preload.mjs bench/gpu/matmul_probe.ts ...
// DAWN_OPTS: comma-separated create() options after `backend=`, default
// "enable-dawn-features=allow_unsafe_apis|vulkan_enable_f16_on_nvidia" ('|' separates toggles).
// Includes the writeBuffer copy that works around dawn.node's SharedArrayBuffer crash (docs/dawn.md).
import { create, globals } from "./node_modules/webgpu/index.js";

const env = (
  k,
) => (typeof Deno !== "undefined" ? Deno.env.get(k) : process.env[k]);
const backend = env("DAWN_BACKEND") ?? "vulkan";
const extra = (env("DAWN_OPTS") ??
  "enable-dawn-features=allow_unsafe_apis|vulkan_enable_f16_on_nvidia")
  .split(",").filter((s) => s).map((s) => s.replaceAll("|", ","));
Object.assign(globalThis, globals);
const writeBuffer = globals.GPUQueue.prototype.writeBuffer;
globals.GPUQueue.prototype.writeBuffer = function (
  buffer,
  offset,
  data,
  ...rest
) {
  if (data instanceof SharedArrayBuffer) {
    data = new Uint8Array(data).slice().buffer;
  } else if (data.buffer instanceof SharedArrayBuffer) {
    data = data instanceof DataView
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice()
      : data.slice();
  }
  return writeBuffer.call(this, buffer, offset, data, ...rest);
};
const gpu = create([`backend=${backend}`, ...extra]);
if (typeof navigator === "undefined") globalThis.navigator = { gpu };
else {Object.defineProperty(navigator, "gpu", {
    value: gpu,
    configurable: true,
  });}
const adapter = await gpu.requestAdapter();
console.error(
  `[dawn_preload] ${adapter ? adapter.info.description || adapter.info.vendor : "NO ADAPTER"}; features: ${
    adapter ? [...adapter.features].sort().join(" ") : "-"
  }; subgroupMatrixConfigs: ${JSON.stringify(adapter?.info.subgroupMatrixConfigs ?? [])}`,
);
