// One queue.submit for a whole captured decode step instead of ~35.
//
// onnxruntime-web's WebGPU EP submits a command buffer every 16 dispatches (its
// maxNumPendingDispatches, fixed when the process's first session starts and not settable from
// onnxruntime-web 1.30's JS), so a replay of ~550 dispatches is ~35 submits, and every submit has
// a fixed CPU cost in Deno's WebGPU (on llvmpipe ~0.3-0.4 ms each: most of a captured step's CPU,
// bench/gpu/replay_cpu_probe.ts). While a batch is open, the queue's submit keeps the command
// buffers it is given and the batch's end submits them all in one call, in order. Any other queue
// operation in between first submits what is held, so the queue sees the same order as without
// batching; only the GPU's start on the step's first dispatches moves to the end of its encoding.
// A buffer destroyed while submits are held (onnxruntime frees a run's temporaries right after
// its last submit) first has the held ones submitted: it may be used by them.

type Submit = (buffers: Iterable<GPUCommandBuffer>) => undefined;

/** The queue methods whose effect is ordered against submits. */
const ORDERED = ["writeBuffer", "writeTexture", "copyExternalImageToTexture", "onSubmittedWorkDone"] as const;

const batches = new WeakMap<GPUQueue, SubmitBatch>();
/** Batches holding submits now. */
const holding = new Set<SubmitBatch>();
let destroyGuard = false;

function guardDestroy() {
  if (destroyGuard) return;
  destroyGuard = true;
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function (this: GPUBuffer) {
    for (const b of holding) b.flush();
    return destroy.call(this);
  };
}

export class SubmitBatch {
  private held: GPUCommandBuffer[] | null = null;
  private readonly submit: Submit;

  /** The queue's batcher, shared by every runner on its device (the queue is wrapped once). */
  static of(queue: GPUQueue): SubmitBatch {
    let b = batches.get(queue);
    if (!b) batches.set(queue, b = new SubmitBatch(queue));
    guardDestroy();
    return b;
  }

  /** Wraps the queue object's own methods (what every user of this device's queue calls). */
  private constructor(queue: GPUQueue) {
    const submit = queue.submit.bind(queue) as Submit;
    this.submit = submit;
    Object.defineProperty(queue, "submit", {
      configurable: true,
      value: (buffers: Iterable<GPUCommandBuffer>) => {
        if (this.held) this.held.push(...buffers);
        else submit(buffers);
      },
    });
    for (const name of ORDERED) {
      const orig = queue[name] as unknown as (...args: unknown[]) => unknown;
      if (typeof orig !== "function") continue;
      Object.defineProperty(queue, name, {
        configurable: true,
        value: (...args: unknown[]) => {
          this.flush();
          return orig.apply(queue, args);
        },
      });
    }
  }

  /** Runs f with the queue's submits held, then submits them at once (also when f throws). */
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.held) return await f(); // already inside a batch: its end submits
    this.held = [];
    holding.add(this);
    try {
      return await f();
    } finally {
      const held = this.held;
      this.held = null;
      holding.delete(this);
      if (held.length) this.submit(held);
    }
  }

  /** Submits what is held so far (the batch stays open). */
  flush() {
    if (!this.held?.length) return;
    const held = this.held;
    this.held = [];
    this.submit(held);
  }
}
