// Readback latency of the WebGPU in use: a 4-byte write, a copy to a MAP_READ buffer, then mapAsync,
// 30 times; prints the wait's p50/min/max. Deno's own WebGPU resolves mapAsync from a polling loop
// (~11 ms a wait on llvmpipe); run it with `--preload bench/gpu/dawn.ts` for Dawn's.
//   deno run -A bench/gpu/map_latency.ts

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice();
const src = device.createBuffer({
  size: 256,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});
const dst = device.createBuffer({ size: 256, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
const waits: number[] = [];
for (let i = 0; i < 30; i++) {
  device.queue.writeBuffer(src, 0, new Uint32Array([i]));
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, 0, dst, 0, 256);
  device.queue.submit([enc.finish()]);
  const t0 = performance.now();
  await dst.mapAsync(GPUMapMode.READ);
  waits.push(performance.now() - t0);
  const got = new Uint32Array(dst.getMappedRange())[0];
  dst.unmap();
  if (got !== i) throw new Error(`read back ${got}, wrote ${i}`);
}
waits.sort((a, b) => a - b);
const f = (x: number) => x.toFixed(2);
console.log(
  `${adapter.info.description || adapter.info.vendor}: mapAsync wait p50 ${f(waits[15])} ms, ` +
    `min ${f(waits[0])}, max ${f(waits[29])}`,
);
