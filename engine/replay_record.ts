// A captured session's replay, recorded once call by call and from then on issued by the engine itself.
//
// A replay of onnxruntime-web's captured graph is a fixed list of (pipeline, bind group, workgroups)
// over buffers the session keeps for its lifetime; onnxruntime's run() re-issues it from wasm through
// its JS WebGPU glue, 16 dispatches a command buffer. On Dawn that glue and run()'s bookkeeping were ~2 ms
// of a 6.8 ms SmolLM2-135M replay (H100; bench/gpu/replay_cpu_probe.ts --js-replay, docs/BENCHMARKS.md
// session 34). Issued from JS, the same list costs only the WebGPU calls, in one compute pass, with a
// pipeline set only where it changes.
//
// Recording watches one real replay: every command encoder created while onnxruntime runs, the
// passes and copies encoded on it, and what is submitted. Anything the list cannot repeat exactly
// (a queue write, an indirect dispatch, any other encoder command) leaves the session on onnxruntime's
// replay. The hooks are on the prototypes of the device's own objects (Deno's WebGPU or Dawn's) only
// while the replay runs.

type PassOp =
  | { pipeline: GPUComputePipeline }
  | { group: number; bindGroup: GPUBindGroup | null; offsets?: number[] }
  | { x: number; y: number; z: number };
type EncoderOp = { pass: PassOp[] } | { copy: [GPUBuffer, number, GPUBuffer, number, number] };

/** What one replay submitted, in order. */
export class ReplayRecord {
  private constructor(private readonly ops: EncoderOp[]) {}

  /** Dispatches in the record (for logs and tests). */
  get dispatches(): number {
    let n = 0;
    for (const op of this.ops) if ("pass" in op) n += op.pass.filter((p) => "x" in p).length;
    return n;
  }

  /**
   * Runs `replay` (onnxruntime replaying a captured session) while recording what it asks of `device`;
   * the record, or null where it did something a record would not repeat exactly.
   */
  static async record(device: GPUDevice, replay: () => Promise<void>): Promise<ReplayRecord | null> {
    const rec = new Recorder(device);
    try {
      await replay();
    } finally {
      rec.uninstall();
    }
    const ops = rec.result();
    return ops ? new ReplayRecord(ops) : null;
  }

  /** Encodes the record into one command buffer and submits it (the engine's submit batch may hold it). */
  issue(device: GPUDevice): void {
    const enc = device.createCommandEncoder();
    let pass: GPUComputePassEncoder | null = null;
    let pipeline: GPUComputePipeline | null = null;
    for (const op of this.ops) {
      if ("copy" in op) {
        pass?.end();
        pass = null;
        enc.copyBufferToBuffer(...op.copy);
        continue;
      }
      if (!pass) {
        pass = enc.beginComputePass();
        pipeline = null;
      }
      for (const p of op.pass) {
        if ("x" in p) pass.dispatchWorkgroups(p.x, p.y, p.z);
        else if ("pipeline" in p) {
          if (p.pipeline !== pipeline) pass.setPipeline(pipeline = p.pipeline);
        } else pass.setBindGroup(p.group, p.bindGroup, p.offsets);
      }
    }
    pass?.end();
    device.queue.submit([enc.finish()]);
  }
}

/** Hooks on the device's objects for the duration of one replay. */
class Recorder {
  private readonly encoders = new Map<object, EncoderOp[]>();
  private readonly passes = new Map<object, PassOp[]>();
  private readonly finished = new Map<object, EncoderOp[]>();
  private readonly submitted: EncoderOp[] = [];
  private readonly submittedEncoders = new Set<EncoderOp[]>();
  private unsupported: string | null = null;
  private readonly restore: (() => void)[] = [];

  constructor(device: GPUDevice) {
    const enc0 = device.createCommandEncoder(), pass0 = enc0.beginComputePass();
    pass0.end();
    enc0.finish();
    const encProto = Object.getPrototypeOf(enc0), passProto = Object.getPrototypeOf(pass0);
    this.hook(
      Object.getPrototypeOf(device),
      "createCommandEncoder",
      (_, __, enc) => this.encoders.set(enc, []),
    );
    this.hook(encProto, "beginComputePass", (enc, args, pass) => {
      if (args[0] && (args[0] as GPUComputePassDescriptor).timestampWrites) this.fail("timestamp writes");
      const ops: PassOp[] = [];
      this.passes.set(pass, ops);
      this.opsOf(enc)?.push({ pass: ops });
    });
    this.hook(encProto, "copyBufferToBuffer", (enc, args) => {
      if (args.length !== 5) this.fail("copyBufferToBuffer without offsets");
      this.opsOf(enc)?.push({ copy: args as [GPUBuffer, number, GPUBuffer, number, number] });
    });
    this.hook(encProto, "finish", (enc, _, cb) => {
      const ops = this.opsOf(enc);
      if (ops) this.finished.set(cb, ops);
    });
    for (const m of ["clearBuffer", "beginRenderPass", "copyBufferToTexture", "copyTextureToBuffer"]) {
      this.hook(encProto, m, () => this.fail(m));
    }
    for (const m of ["resolveQuerySet", "writeTimestamp", "pushDebugGroup", "insertDebugMarker"]) {
      this.hook(encProto, m, () => this.fail(m));
    }
    this.hook(passProto, "setPipeline", (pass, [pipeline]) => {
      this.passOps(pass)?.push({ pipeline: pipeline as GPUComputePipeline });
    });
    this.hook(passProto, "setBindGroup", (pass, [group, bindGroup, offsets, ...rest]) => {
      if (rest.length) this.fail("setBindGroup with a typed-array offset range");
      this.passOps(pass)?.push({
        group: group as number,
        bindGroup: bindGroup as GPUBindGroup | null,
        offsets: offsets ? [...(offsets as Iterable<number>)] : undefined,
      });
    });
    this.hook(passProto, "dispatchWorkgroups", (pass, [x, y, z]) => {
      this.passOps(pass)?.push({ x: x as number, y: (y ?? 1) as number, z: (z ?? 1) as number });
    });
    for (const m of ["dispatchWorkgroupsIndirect", "writeTimestamp", "pushDebugGroup", "insertDebugMarker"]) {
      this.hook(passProto, m, () => this.fail(m));
    }
    // The queue object itself: SubmitBatch wraps its methods there.
    const queue = device.queue;
    this.hook(queue, "submit", (_, [buffers]) => {
      for (const cb of buffers as Iterable<object>) {
        const ops = this.finished.get(cb);
        if (!ops) this.fail("a command buffer encoded before the replay");
        else if (this.submittedEncoders.has(ops)) this.fail("a command buffer submitted twice");
        else {
          this.submitted.push(...ops);
          this.submittedEncoders.add(ops);
        }
      }
    });
    for (const m of ["writeBuffer", "writeTexture", "copyExternalImageToTexture"]) {
      this.hook(queue, m, () => this.fail(m));
    }
  }

  /** The submitted commands in order; null where the replay did anything else, or left work unsubmitted. */
  result(): EncoderOp[] | null {
    if (this.unsupported || this.submitted.length === 0) return null;
    for (const ops of this.encoders.values()) if (ops.length && !this.submittedEncoders.has(ops)) return null;
    return this.submitted;
  }

  uninstall(): void {
    for (const f of this.restore.splice(0).reverse()) f();
  }

  private fail(what: string) {
    this.unsupported ??= what;
  }

  private opsOf(enc: object): EncoderOp[] | undefined {
    const ops = this.encoders.get(enc);
    if (!ops) this.fail("an encoder created before the replay");
    return ops;
  }

  private passOps(pass: object): PassOp[] | undefined {
    const ops = this.passes.get(pass);
    if (!ops) this.fail("a pass begun before the replay");
    return ops;
  }

  /** Wraps target[method] (own or inherited) until uninstall; `see` is told of each call and its result. */
  private hook(target: object, method: string, see: (self: object, args: unknown[], result: object) => void) {
    const orig = (target as Record<string, unknown>)[method];
    if (typeof orig !== "function") return;
    const own = Object.getOwnPropertyDescriptor(target, method);
    Object.defineProperty(target, method, {
      configurable: true,
      writable: true,
      value: function (this: object, ...args: unknown[]) {
        const result = orig.apply(this, args);
        see(this, args, result);
        return result;
      },
    });
    this.restore.push(() => {
      if (own) Object.defineProperty(target, method, own);
      else delete (target as Record<string, unknown>)[method];
    });
  }
}
