// Minimal reproduction: onnxruntime-web 1.30's WebGPU EP on Dawn (npm `webgpu`, dawn.node) instead of the
// runtime's own WebGPU. Runs one MatMul [M,K] x [K,N] and checks it against a CPU product.
// Plain JavaScript so that Node 20 and Deno run the very same file (see docs/dawn.md):
//
//   node ort_dawn_repro.mjs [--gpu dawn|native] [--via navigator|adapter] [--backend vulkan|null]
//                           [--dtype f32|f16] [--m 4] [--k 64] [--n 32] [--toggles a,b] [--verbose]
//   deno run -A ort_dawn_repro.mjs ...   (from bench/dawn: its own deno.json, node_modules from `npm ci`)
//
// --gpu native: the runtime's navigator.gpu (Deno's wgpu; Node 20 has none). --gpu dawn (default): Dawn.
// --via navigator (default): navigator.gpu is replaced by Dawn's GPU before ORT is imported.
// --via adapter: navigator.gpu stays, Dawn's adapter is handed to ORT through ort.env.webgpu.adapter.
// --shim: wrap Dawn's GPUQueue.writeBuffer so views on a SharedArrayBuffer (ORT's wasm heap) are copied
// into a plain ArrayBuffer first: dawn.node 0.6.2 memcpy()s from a garbage pointer for those (docs/dawn.md).
// Each stage prints a line first, so a crash (segfault) shows the last stage reached.

import process from "node:process";
import { parseArgs } from "node:util";

const { values: a } = parseArgs({
  options: {
    gpu: { type: "string", default: "dawn" },
    via: { type: "string", default: "navigator" },
    backend: { type: "string", default: "vulkan" },
    dtype: { type: "string", default: "f32" },
    m: { type: "string", default: "4" },
    k: { type: "string", default: "64" },
    n: { type: "string", default: "32" },
    toggles: { type: "string", default: "allow_unsafe_apis" },
    verbose: { type: "boolean", default: false },
    shim: { type: "boolean", default: false },
  },
});
const M = Number(a.m), K = Number(a.k), N = Number(a.n);
const f16 = a.dtype === "f16";
const step = (s) => console.log(`[stage] ${s}`);
const runtime = typeof Deno !== "undefined" ? `deno ${Deno.version.deno}` : `node ${process.version}`;
step(
  `runtime ${runtime}, gpu=${a.gpu} via=${a.via} shim=${a.shim} backend=${a.backend} dtype=${a.dtype} M=${M} K=${K} N=${N}`,
);

// --- a MatMul model, protobuf-encoded by hand (onnx.proto field numbers) so the repro needs no model file
const enc = new TextEncoder();
const varint = (v) => {
  const out = [];
  while (v > 127) {
    out.push((v & 127) | 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
};
const fieldVarint = (no, v) => [...varint(no << 3), ...varint(v)];
const fieldBytes = (
  no,
  bytes,
) => [...varint((no << 3) | 2), ...varint(bytes.length), ...bytes];
const fieldStr = (no, s) => fieldBytes(no, [...enc.encode(s)]);
const elemType = f16 ? 10 : 1; // TensorProto.DataType FLOAT16 / FLOAT
const valueInfo = (name, dims) =>
  fieldStr(1, name).concat(fieldBytes(
    2,
    fieldBytes(1, [
      ...fieldVarint(1, elemType),
      ...fieldBytes(2, dims.flatMap((d) => fieldBytes(1, fieldVarint(1, d)))),
    ]),
  ));
const node = [
  ...fieldStr(1, "A"),
  ...fieldStr(1, "B"),
  ...fieldStr(2, "Y"),
  ...fieldStr(4, "MatMul"),
];
const graph = [
  ...fieldBytes(1, node),
  ...fieldStr(2, "matmul"),
  ...fieldBytes(11, valueInfo("A", [M, K])),
  ...fieldBytes(11, valueInfo("B", [K, N])),
  ...fieldBytes(12, valueInfo("Y", [M, N])),
];
const model = new Uint8Array([
  ...fieldVarint(1, 8), // ir_version
  ...fieldBytes(8, [...fieldStr(1, ""), ...fieldVarint(2, 17)]), // opset_import ai.onnx 17
  ...fieldBytes(7, graph),
]);

// --- the GPU
let dawnAdapter;
if (a.gpu === "dawn") {
  step("import webgpu (dawn.node)");
  const { create, globals } = await import("webgpu");
  Object.assign(globalThis, globals);
  if (a.shim) {
    const writeBuffer = globals.GPUQueue.prototype.writeBuffer;
    globals.GPUQueue.prototype.writeBuffer = function (
      buffer,
      offset,
      data,
      ...rest
    ) {
      const shared = typeof SharedArrayBuffer !== "undefined" &&
        (data instanceof SharedArrayBuffer ||
          data.buffer instanceof SharedArrayBuffer);
      if (shared) {
        // Keep the element type: dataOffset and size are counted in elements for typed arrays.
        data = data instanceof SharedArrayBuffer
          ? new Uint8Array(data).slice().buffer
          : data instanceof DataView
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
            .slice()
          : data.slice();
      }
      return writeBuffer.call(this, buffer, offset, data, ...rest);
    };
    step("shim: GPUQueue.writeBuffer copies SharedArrayBuffer views");
  }
  const opts = [`backend=${a.backend}`];
  if (a.toggles) opts.push(`enable-dawn-features=${a.toggles}`);
  const gpu = create(opts);
  step(`create(${JSON.stringify(opts)}) ok`);
  dawnAdapter = await gpu.requestAdapter();
  if (!dawnAdapter) {
    throw new Error(
      "Dawn returned no adapter (see docs/dawn.md: lavapipe needs Mesa >= 25)",
    );
  }
  const info = dawnAdapter.info;
  step(
    `dawn adapter: ${info.vendor} / ${info.architecture} / ${info.description}`,
  );
  step(`dawn features: ${[...dawnAdapter.features].sort().join(" ")}`);
  if (a.via === "navigator") {
    // Deno's navigator.gpu is a getter on Navigator.prototype: shadow it on the instance.
    if (typeof navigator === "undefined") globalThis.navigator = { gpu };
    else {Object.defineProperty(navigator, "gpu", {
        value: gpu,
        configurable: true,
      });}
  }
}

step("import onnxruntime-web/webgpu");
const ort = await import("onnxruntime-web/webgpu");
ort.env.wasm.numThreads = 1;
if (a.verbose) ort.env.logLevel = "verbose";
if (dawnAdapter && a.via === "adapter") ort.env.webgpu.adapter = dawnAdapter;

step("InferenceSession.create (executionProviders: webgpu)");
const session = await ort.InferenceSession.create(model, {
  executionProviders: ["webgpu"],
  logSeverityLevel: a.verbose ? 0 : 2,
});
const device = await ort.env.webgpu.device;
step(
  `session ok; ORT's device features: ${device ? [...device.features].sort().join(" ") : "(none)"}`,
);
step(
  `ORT's device is Dawn's: ${dawnAdapter ? device instanceof globalThis.GPUDevice : "n/a"}`,
);

// Small integers so that fp16 and fp32 products are exact.
const A = Float32Array.from({ length: M * K }, (_, i) => ((i * 7) % 5) - 2);
const B = Float32Array.from({ length: K * N }, (_, i) => ((i * 3) % 7) - 3);
const want = new Float64Array(M * N);
for (let i = 0; i < M; i++) {
  for (let j = 0; j < N; j++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += A[i * K + k] * B[k * N + j];
    want[i * N + j] = s;
  }
}
const tensor = (x, dims) =>
  f16 ? new ort.Tensor("float16", Float16Array.from(x), dims) : new ort.Tensor("float32", x, dims);
if (f16 && typeof Float16Array === "undefined") {
  throw new Error("--dtype f16 needs Float16Array (Deno, Node >= 24)");
}

step("session.run (first run: shader compile + dispatch + readback)");
const out = await session.run({ A: tensor(A, [M, K]), B: tensor(B, [K, N]) });
const y = out.Y.data;
let maxErr = 0;
for (let i = 0; i < M * N; i++) {
  maxErr = Math.max(maxErr, Math.abs(Number(y[i]) - want[i]));
}
step(
  `run ok: Y[0..3] = ${Array.from(y.slice(0, 4)).join(", ")}; max |err| vs CPU = ${maxErr}`,
);
await session.release();
step("done");
console.log(maxErr === 0 ? "RESULT ok" : "RESULT wrong");
