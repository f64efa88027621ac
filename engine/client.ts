// The HTTP thread's handle on the engine Worker: requests out, events and stats back.

import { loadModel } from "./model/load.ts";
import type { ChatTemplate, Tokenizer } from "./model/types.ts";
import {
  type EngineClient,
  type EngineStats,
  type GenerateEvent,
  type GenerateRequest,
  type ModelInfo,
  STEP_TOKEN_BUCKETS,
} from "./protocol.ts";
import type { ReadyInfo, ToClient, ToWorker, WorkerInit } from "./worker_protocol.ts";

export interface EngineClientOptions extends WorkerInit {
  servedName?: string;
  log?: (line: string) => void;
  progress?: (m: { phase: string; done?: number; total?: number }) => void;
}

const EMPTY_STATS: EngineStats = {
  running: 0,
  waiting: 0,
  kvBlocksUsed: 0,
  kvBlocksTotal: 0,
  promptTokensTotal: 0,
  generationTokensTotal: 0,
  preemptionsTotal: 0,
  stepsTotal: 0,
  stepTokens: { counts: STEP_TOKEN_BUCKETS.map(() => 0), sum: 0, count: 0 },
};

class WorkerEngineClient implements EngineClient {
  private listeners = new Map<string, (ev: GenerateEvent) => void>();
  private latest: EngineStats = EMPTY_STATS;
  private fatal: string | null = null;
  private closed: (() => void) | null = null;

  constructor(
    private worker: Worker,
    readonly info: ModelInfo,
    readonly tokenizer: Tokenizer,
    readonly chatTemplate: ChatTemplate,
    readonly ready: ReadyInfo,
    private log: (line: string) => void,
  ) {
    worker.onmessage = (e: MessageEvent<ToClient>) => this.onMessage(e.data);
    // A crashed Worker sends nothing more: fail what is in flight instead of leaving it hanging.
    worker.onerror = (e) => {
      e.preventDefault();
      this.onMessage({ type: "fatal", message: `engine worker crashed: ${e.message}` });
    };
  }

  failure(): string | null {
    return this.fatal;
  }

  private onMessage(m: ToClient) {
    switch (m.type) {
      case "events":
        for (const { id, ev } of m.items) this.listeners.get(id)?.(ev);
        break;
      case "stats":
        this.latest = m.stats;
        break;
      case "log":
        this.log(m.line);
        break;
      case "fatal":
        // The step loop died: fail everything in flight, and every later request, loudly.
        this.fatal = m.message;
        for (const l of this.listeners.values()) {
          l({ type: "error", message: `engine failed: ${m.message}`, code: "internal" });
        }
        break;
      case "closed":
        this.closed?.();
        break;
    }
  }

  private send(m: ToWorker) {
    this.worker.postMessage(m);
  }

  stats(): EngineStats {
    return this.latest;
  }

  get answerCache() {
    return this.ready.answerCache;
  }

  predictAnswer(id: string, ids: number[], final: boolean): void {
    this.send({ type: "predict", id, ids, final });
  }

  async *generate(req: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateEvent> {
    if (this.fatal) {
      yield { type: "error", message: `engine failed: ${this.fatal}`, code: "internal" };
      return;
    }
    const queue: GenerateEvent[] = [];
    let notify: (() => void) | null = null;
    let ended = false;
    this.listeners.set(req.id, (ev) => {
      queue.push(ev);
      notify?.();
    });
    const onAbort = () => this.send({ type: "abort", id: req.id });
    signal.addEventListener("abort", onAbort, { once: true });
    this.send({ type: "generate", request: req });
    if (signal.aborted) onAbort();
    try {
      while (true) {
        while (queue.length > 0) {
          const ev = queue.shift()!;
          if (ev.type !== "delta") ended = true;
          yield ev;
          if (ended) return;
        }
        await new Promise<void>((resolve) => (notify = resolve));
        notify = null;
      }
    } finally {
      this.listeners.delete(req.id);
      signal.removeEventListener("abort", onAbort);
      // The consumer stopped early (client gone): the engine must not keep generating for nobody.
      if (!ended) this.send({ type: "abort", id: req.id });
    }
  }

  async close(keepWorker = false): Promise<void> {
    const done = new Promise<void>((resolve) => (this.closed = resolve));
    this.send({ type: "close" });
    await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]);
    if (!keepWorker) this.worker.terminate();
  }
}

/** Starts the Worker, loads the model there (and its tokenizer here), resolves when ready. */
export async function createEngineClient(
  opts: EngineClientOptions,
): Promise<EngineClient & { ready: ReadyInfo }> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
  const readyP = new Promise<ReadyInfo>((resolve, reject) => {
    worker.onmessage = (e: MessageEvent<ToClient>) => {
      const m = e.data;
      if (m.type === "ready") resolve(m);
      else if (m.type === "failed") reject(new Error(m.message));
      else if (m.type === "progress") opts.progress?.(m);
      else if (m.type === "log") log(m.line);
    };
    worker.onerror = (e) => {
      e.preventDefault();
      reject(new Error(`engine worker crashed: ${e.message}`));
    };
  });
  const { modelPath, settings } = opts;
  const init: WorkerInit = { modelPath, settings };
  worker.postMessage({ type: "init", options: init } satisfies ToWorker);
  try {
    // The HTTP thread tokenizes and renders chat templates itself; it never needs the weights.
    const [model, ready] = await Promise.all([
      loadModel(modelPath, { skipWeights: true }),
      readyP,
    ]);
    const info: ModelInfo = {
      name: opts.servedName ?? model.name,
      maxContext: ready.maxContext,
      vocabSize: model.config.vocabSize,
      eosTokenIds: model.config.eosTokenIds,
      bosTokenId: model.config.bosTokenId,
      generation: model.generation,
    };
    const client = new WorkerEngineClient(worker, info, model.tokenizer, model.chatTemplate, ready, log);
    return Object.assign(client, { ready });
  } catch (e) {
    worker.terminate();
    // The Worker's thread tears its WebGPU objects down after terminate() returns, and a process that
    // exits meanwhile (a refused start) crashed with SIGSEGV: 7 of 32 starts on Deno's OpenGL fallback
    // on a quiet machine (Deno 2.9.6, 2026-12-02), none of 140 with a wait of 100-500 ms (40 of them under load).
    await new Promise((r) => setTimeout(r, WORKER_TEARDOWN_MS));
    throw e;
  }
}

/** How long a failed start waits for the terminated Worker's thread to release the GPU. */
const WORKER_TEARDOWN_MS = 500;
