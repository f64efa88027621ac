// GPU timing and read-back shared by the WGSL probes (wgsl_probe.ts, tc_probe.ts).

/** `bytes` of `src` copied to the CPU. */
export async function readBack(device: GPUDevice, src: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
  const rb = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, 0, rb, 0, bytes);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = rb.getMappedRange().slice(0);
  rb.destroy();
  return out;
}

/**
 * GPU microseconds of one compute pass that `encode` fills: timestamps at its start and end, or the
 * wall time to completion where the device has no `timestamp-query`.
 */
export async function passUs(
  device: GPUDevice,
  encode: (pass: GPUComputePassEncoder) => void,
): Promise<number> {
  const enc = device.createCommandEncoder();
  if (!device.features.has("timestamp-query")) {
    const t0 = performance.now();
    const pass = enc.beginComputePass();
    encode(pass);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) * 1000;
  }
  const qs = device.createQuerySet({ type: "timestamp", count: 2 });
  const res = device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const pass = enc.beginComputePass({
    timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
  });
  encode(pass);
  pass.end();
  enc.resolveQuerySet(qs, 0, 2, res, 0);
  device.queue.submit([enc.finish()]);
  const t = new BigUint64Array(await readBack(device, res, 16));
  qs.destroy();
  res.destroy();
  return Number(t[1] - t[0]) / 1000;
}
