// An engine on the calling thread, for tests and tools: no Worker, no HTTP.

import { type EngineOptions, LLMEngine } from "./llm_engine.ts";
import type { LoadedModel } from "./model/types.ts";
import type { ActDType } from "./model/weights.ts";
import { ModelRunner } from "./model_runner.ts";
import type { GenerateEvent, SamplingParams } from "./protocol.ts";

export interface LocalEngineOptions extends Partial<EngineOptions> {
  dtype?: ActDType;
  kvCacheMb?: number;
}

export interface LocalEngine {
  engine: LLMEngine;
  runner: ModelRunner;
  model: LoadedModel;
  /** Resolves with every event of the request, the terminal one last. */
  generate(id: string, promptIds: number[], p: SamplingParams): Promise<GenerateEvent[]>;
  close(): Promise<void>;
}

export async function startLocalEngine(
  model: LoadedModel,
  opts: LocalEngineOptions = {},
): Promise<LocalEngine> {
  const runner = await ModelRunner.create(model, {
    dtype: opts.dtype ?? "f32",
    blockSize: 16,
    kvCacheMb: opts.kvCacheMb ?? 8,
    cacheDir: null,
  });
  const engine = new LLMEngine(model, runner, {
    maxBatchTokens: opts.maxBatchTokens ?? 512,
    maxSeqs: opts.maxSeqs ?? 64,
    maxChunkTokens: opts.maxChunkTokens,
    maxContext: opts.maxContext ?? model.config.maxContext,
    policy: opts.policy ?? "continuous",
    debugSteps: opts.debugSteps,
    log: opts.log,
  });
  const loop = engine.run();
  return {
    engine,
    runner,
    model,
    generate(id, promptIds, p) {
      return new Promise((resolve) => {
        const events: GenerateEvent[] = [];
        engine.add({ id, promptIds, params: p }, (ev) => {
          events.push(ev);
          if (ev.type !== "delta") resolve(events);
        });
      });
    },
    async close() {
      engine.stop();
      await loop;
      await runner.close();
    },
  };
}
