// Reads a whole GPU buffer back as 16-bit words (the fp16 KV pool), for tests and probes that compare
// KV bit for bit.

export async function readBufferU16(device: GPUDevice, buf: GPUBuffer): Promise<Uint16Array> {
  const staging = device.createBuffer({
    size: buf.size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, buf.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint16Array(staging.getMappedRange().slice(0));
  staging.unmap();
  staging.destroy();
  return out;
}
