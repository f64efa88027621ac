// The crash reduced: Dawn's (dawn.node) GPUQueue.writeBuffer given a view on a SharedArrayBuffer, which is
// what onnxruntime-web's WebGPU EP does (its wasm heap is a shared WebAssembly.Memory).
//   node write_buffer_sab.mjs [plain|sab|wasm-shared] [--backend vulkan|null]
//   deno run -A write_buffer_sab.mjs [plain|sab|wasm-shared] [--backend vulkan|null]
// Expected (WebGPU spec allows AllowSharedBufferSource): the bytes land in the buffer in every case.
import process from "node:process";
import { parseArgs } from "node:util";
import { create, globals } from "webgpu";

const { values: a, positionals } = parseArgs({
  options: { backend: { type: "string", default: "vulkan" } },
  allowPositionals: true,
});
const kind = positionals[0] ?? "sab";
const runtime = typeof Deno !== "undefined" ? `deno ${Deno.version.deno}` : `node ${process.version}`;
Object.assign(globalThis, globals);
const adapter = await create([`backend=${a.backend}`]).requestAdapter();
if (!adapter) throw new Error("Dawn returned no adapter");
const device = await adapter.requestDevice();
console.log(
  `${runtime}, ${adapter.info.description || adapter.info.vendor}, source: ${kind}`,
);

const bytes = 64;
const backing = kind === "plain"
  ? new ArrayBuffer(bytes)
  : kind === "sab"
  ? new SharedArrayBuffer(bytes)
  : new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true }).buffer;
const src = new Uint8Array(backing, 0, bytes);
for (let i = 0; i < bytes; i++) src[i] = i + 1;

const dst = device.createBuffer({
  size: bytes,
  usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
});
const read = device.createBuffer({
  size: bytes,
  usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
});
console.log("queue.writeBuffer ...");
// ORT's call has this exact shape: writeBuffer(buffer, offset, Uint8Array view on the heap, 0, size).
device.queue.writeBuffer(dst, 0, src, 0, bytes);
console.log("queue.writeBuffer returned");
const enc = device.createCommandEncoder();
enc.copyBufferToBuffer(dst, 0, read, 0, bytes);
device.queue.submit([enc.finish()]);
await read.mapAsync(GPUMapMode.READ);
const got = new Uint8Array(read.getMappedRange().slice(0));
const ok = a.backend === "null" || got.every((v, i) => v === i + 1);
console.log(
  `read back: ${Array.from(got.slice(0, 8)).join(",")}... -> ${ok ? "RESULT ok" : "RESULT wrong"}`,
);
device.destroy();
