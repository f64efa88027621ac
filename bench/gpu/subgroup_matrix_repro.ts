// Minimal reproduction: a compute pipeline that uses Dawn's subgroup matrices (WGSL extension
// chromium_experimental_subgroup_matrix, i.e. tensor cores) ends Deno with SIGFPE (exit 136) on the
// H100 (NVIDIA 580.159.04, npm webgpu 0.6.2), right after createComputePipeline returns: one 16x16x16
// multiply-accumulate, f16 or i8 (docs/dawn.md, "Tensor cores from our own WGSL").
//
//   RAGTIME_DAWN_FEATURES=allow_unsafe_apis deno run -A --preload bench/gpu/dawn.ts \
//     bench/gpu/subgroup_matrix_repro.ts [f16|f16-const|f16-wg|f16-res16|i8] [nosubgroups]
//
// Prints C[0..4] = 16 (f16: ones times ones over K = 16) or 32 (i8: K = 32) where it works.

const [kind = "f16", ...flags] = Deno.args;
const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no adapter");
const info = adapter.info as unknown as Record<string, unknown>;
console.log(`${adapter.info.description}; subgroup sizes ${info.subgroupMinSize}-${info.subgroupMaxSize}`);
const features = ["shader-f16", "chromium-experimental-subgroup-matrix"];
if (!flags.includes("nosubgroups")) features.push("subgroups");
const device = await adapter.requestDevice({ requiredFeatures: features as GPUFeatureName[] });

const i8 = kind === "i8";
const code = i8
  ? `enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> A: array<i32>;
@group(0) @binding(1) var<storage, read> B: array<i32>;
@group(0) @binding(2) var<storage, read_write> C: array<i32>;
@compute @workgroup_size(32)
fn main() {
  let a = subgroupMatrixLoad<subgroup_matrix_left<i8, 32, 16>, row_major>(&A, 0u, 32u);
  let b = subgroupMatrixLoad<subgroup_matrix_right<i8, 16, 32>, row_major>(&B, 0u, 16u);
  let c = subgroupMatrixMultiplyAccumulate(a, b, subgroup_matrix_result<i32, 16, 16>());
  subgroupMatrixStore<row_major>(&C, 0u, c, 16u);
}`
  : f16Kernel(kind);

/**
 * f16 variants, to find what crashes: `f16` loads A and B from storage, `f16-const` multiplies
 * constant matrices (no f16 loads), `f16-wg` loads them through workgroup memory, `f16-res16`
 * accumulates in f16 (into an f32 array, converted by hand).
 */
function f16Kernel(kind: string): string {
  const res = kind === "f16-res16" ? "f16" : "f32";
  const load = (side: string, buf: string) =>
    `subgroupMatrixLoad<subgroup_matrix_${side}<f16, 16, 16>, row_major>(&${buf}, 0u, 16u)`;
  const body = kind === "f16-const"
    ? `let a = subgroup_matrix_left<f16, 16, 16>(1.0h);
  let b = subgroup_matrix_right<f16, 16, 16>(1.0h);`
    : kind === "f16-wg"
    ? `for (var i = li; i < 256u; i += 32u) { wA[i] = A[i]; wB[i] = B[i]; }
  workgroupBarrier();
  let a = ${load("left", "wA")};
  let b = ${load("right", "wB")};`
    : `let a = ${load("left", "A")};
  let b = ${load("right", "B")};`;
  const store = res === "f16"
    ? `subgroupMatrixStore<row_major>(&wC, 0u, c, 16u);
  workgroupBarrier();
  for (var i = li; i < 256u; i += 32u) { C[i] = f32(wC[i]); }`
    : `subgroupMatrixStore<row_major>(&C, 0u, c, 16u);`;
  return `enable f16;
enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> A: array<f16>;
@group(0) @binding(1) var<storage, read> B: array<f16>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
var<workgroup> wA: array<f16, 256>;
var<workgroup> wB: array<f16, 256>;
var<workgroup> wC: array<f16, 256>;
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) li: u32) {
  ${body}
  let c = subgroupMatrixMultiplyAccumulate(a, b, subgroup_matrix_result<${res}, 16, 16>());
  ${store}
}`;
}
const module = device.createShaderModule({ code });
console.log("compiled:", (await module.getCompilationInfo()).messages.map((m) => m.message));
const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
console.log("pipeline created");
const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const [A, B, C] = [512, 512, 1024].map((size) => device.createBuffer({ size, usage: S }));
// All ones: 16-bit halves of 1.0, or bytes of 1.
const ones = i8 ? new Int8Array(512).fill(1) : new Float16Array(256).fill(1);
device.queue.writeBuffer(A, 0, ones);
device.queue.writeBuffer(B, 0, ones);
const bind = device.createBindGroup({
  layout: pipeline.getBindGroupLayout(0),
  // Constant operands leave A and B out of the "auto" layout.
  entries: [A, B, C].map((buffer, binding) => ({ binding, resource: { buffer } }))
    .filter((e) => kind !== "f16-const" || e.binding === 2),
});
const read = device.createBuffer({ size: 1024, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
const enc = device.createCommandEncoder();
const pass = enc.beginComputePass();
pass.setPipeline(pipeline);
pass.setBindGroup(0, bind);
pass.dispatchWorkgroups(1);
pass.end();
enc.copyBufferToBuffer(C, 0, read, 0, 1024);
device.queue.submit([enc.finish()]);
await read.mapAsync(GPUMapMode.READ);
const out = i8 ? new Int32Array(read.getMappedRange()) : new Float32Array(read.getMappedRange());
console.log("C[0..4]:", Array.from(out.slice(0, 4)), `(${i8 ? 32 : 16} expected)`);
