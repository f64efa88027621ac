// ReplayRecord (engine/replay_record.ts): what a replay submitted is issued again exactly, in order
// (several encoders, pipelines, bind groups, copies between passes), follows the data its buffers hold
// when issued, and anything a record would not repeat exactly leaves no record. The engine-level
// check, tokens of recorded replays against uncaptured steps, is engine_capture_test.ts.

import { assert, assertEquals } from "../helpers/assert.ts";
import { readBuffer } from "../helpers/gpu_read.ts";
import { ReplayRecord } from "../../engine/replay_record.ts";

const adapter = await navigator.gpu.requestAdapter();
const device = await adapter!.requestDevice();
const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

function kernel(code: string): GPUComputePipeline {
  return device.createComputePipeline({
    layout: "auto",
    compute: {
      module: device.createShaderModule({
        code: `@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(4) fn main(@builtin(global_invocation_id) g: vec3u) { ${code} }`,
      }),
      entryPoint: "main",
    },
  });
}

/** Four u32s, and a bind group of the buffer for `pipe`. */
function vec(pipe: GPUComputePipeline, init: number[]) {
  const buffer = device.createBuffer({ size: 16, usage: STORAGE });
  device.queue.writeBuffer(buffer, 0, Uint32Array.from(init));
  const group = device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer } }],
  });
  return { buffer, group };
}

/** One pass of one dispatch of `pipe` over `group`. */
function dispatch(enc: GPUCommandEncoder, pipe: GPUComputePipeline, group: GPUBindGroup) {
  const p = enc.beginComputePass();
  p.setPipeline(pipe);
  p.setBindGroup(0, group);
  p.dispatchWorkgroups(1);
  p.end();
}

const u32s = async (b: GPUBuffer) => [...new Uint32Array(await readBuffer(device, b))];

Deno.test("a recorded replay issued again repeats its work in order, over the data its buffers hold then", async () => {
  const double = kernel("v[g.x] = v[g.x] * 2u;"), inc = kernel("v[g.x] = v[g.x] + 1u;");
  const a = vec(double, [1, 2, 3, 4]), b = vec(inc, [0, 0, 0, 0]), scratch = vec(inc, [0, 0, 0, 0]);
  const createEncoder = Object.getPrototypeOf(device).createCommandEncoder;
  const ops = () => {
    // Two encoders, the second submitted separately, with a copy between passes: a -> 2a + 1 -> b.
    const e1 = device.createCommandEncoder();
    dispatch(e1, double, a.group);
    const e2 = device.createCommandEncoder();
    dispatch(e2, inc, scratch.group);
    e2.copyBufferToBuffer(a.buffer, 0, b.buffer, 0, 16);
    dispatch(e2, inc, b.group);
    device.queue.submit([e1.finish()]);
    device.queue.submit([e2.finish()]);
    return Promise.resolve();
  };
  const rec = await ReplayRecord.record(device, ops);
  assert(rec, "no record");
  assertEquals(rec.dispatches, 3);
  assertEquals(await u32s(b.buffer), [3, 5, 7, 9]);
  rec.issue(device);
  assertEquals(await u32s(a.buffer), [4, 8, 12, 16]);
  assertEquals(await u32s(b.buffer), [5, 9, 13, 17]);
  // New data written into a bound buffer before an issue is what the issue computes on.
  device.queue.writeBuffer(a.buffer, 0, Uint32Array.of(10, 20, 30, 40));
  rec.issue(device);
  assertEquals(await u32s(b.buffer), [21, 41, 61, 81]);
  assertEquals(await u32s(scratch.buffer), [3, 3, 3, 3]);
  // Recording is over: the device's methods are its own again (nothing more is recorded).
  assertEquals(Object.getPrototypeOf(device).createCommandEncoder, createEncoder);
  assertEquals(Object.hasOwn(device.queue, "submit"), false);
});

Deno.test("a replay that writes to the queue, leaves work unsubmitted or submits nothing gives no record", async () => {
  const inc = kernel("v[g.x] = v[g.x] + 1u;");
  const a = vec(inc, [0, 0, 0, 0]);
  const pass = (submit: boolean) => {
    const e = device.createCommandEncoder();
    dispatch(e, inc, a.group);
    const cb = e.finish();
    if (submit) device.queue.submit([cb]);
  };
  const withWrite = await ReplayRecord.record(device, () => {
    pass(true);
    device.queue.writeBuffer(a.buffer, 0, Uint32Array.of(5));
    return Promise.resolve();
  });
  assertEquals(withWrite, null);
  assertEquals(await ReplayRecord.record(device, () => Promise.resolve(pass(false))), null);
  assertEquals(await ReplayRecord.record(device, () => Promise.resolve()), null);
  // An encoder begun before the recording and submitted during it is not the replay's alone.
  const early = device.createCommandEncoder();
  assertEquals(
    await ReplayRecord.record(device, () => Promise.resolve(device.queue.submit([early.finish()]))),
    null,
  );
  // The hooks come off even when the replay throws.
  const thrown = await ReplayRecord.record(device, () => Promise.reject(new Error("x"))).catch((e) => e);
  assertEquals((thrown as Error).message, "x");
  assertEquals(await ReplayRecord.record(device, () => Promise.resolve(pass(true))) !== null, true);
});
