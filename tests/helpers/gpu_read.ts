// Reads a whole GPU buffer back, for tests and probes that compare GPU results (the fp16 KV pool, a
// kernel's outputs) bit for bit.

export async function readBuffer(device: GPUDevice, buf: GPUBuffer): Promise<ArrayBuffer> {
  const staging = device.createBuffer({
    size: buf.size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, buf.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = staging.getMappedRange().slice(0);
  staging.unmap();
  staging.destroy();
  return out;
}

/** The buffer as 16-bit words. */
export async function readBufferU16(device: GPUDevice, buf: GPUBuffer): Promise<Uint16Array> {
  return new Uint16Array(await readBuffer(device, buf));
}
