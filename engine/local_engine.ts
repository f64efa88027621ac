// Starting an engine: the Worker does it with createEngine; tests and tools run one on the calling
// thread (no Worker, no HTTP) with startLocalEngine, from the same settings and defaults.

import { type EngineConfig, resolveEngineConfig } from "./config.ts";
import { LLMEngine } from "./llm_engine.ts";
import type { LoadedModel, LoadProgress } from "./model/types.ts";
import { ModelRunner } from "./model_runner.ts";
import type { EngineSettings, GenerateEvent, SamplingParams } from "./protocol.ts";

export interface EngineHooks {
  log?: (line: string) => void;
  progress?: LoadProgress;
}

export interface CreatedEngine {
  config: EngineConfig;
  runner: ModelRunner;
  engine: LLMEngine;
}

/** Resolves the settings, builds the runner (step graph, sessions, KV pool), warms it up. */
export async function createEngine(
  model: LoadedModel,
  settings: EngineSettings,
  hooks: EngineHooks = {},
): Promise<CreatedEngine> {
  const config = resolveEngineConfig(settings, model);
  if (config.maxContext < model.config.maxContext && settings.maxModelLen === undefined) {
    hooks.log?.(
      `context ${config.maxContext}: what the KV pool (${config.kvCacheMb} MiB) holds, below the model's ` +
        `${model.config.maxContext} (--kv-cache-mb or --max-model-len set it)`,
    );
  }
  // The step graph covers the config's context (rotary tables; part of the graph cache key).
  const modelConfig = { ...model.config, maxContext: config.maxContext };
  const runner = await ModelRunner.create({ ...model, config: modelConfig }, {
    dtype: config.dtype,
    blockSize: config.blockSize,
    kvCacheMb: config.kvCacheMb,
    cacheDir: config.graphCache,
    splitK: config.matmulSplitK,
    promptMatmul: config.promptMatmul,
    longQueries: config.longQueries,
    maxSeqs: config.maxSeqs,
    capture: config.graphCapture,
    progress: hooks.progress,
    log: hooks.log,
  });
  const poolTokens = runner.numBlocks * runner.blockSize;
  if (poolTokens < config.maxContext) {
    hooks.log?.(
      `context ${config.maxContext}: more than the KV pool holds (${poolTokens} tokens); a request that ` +
        `needs more is refused (--kv-cache-mb sets the pool)`,
    );
  }
  hooks.progress?.({ phase: "warmup" });
  try {
    await runner.warmup();
  } catch (e) {
    // PagedAttention sizes its buffers by a step's items and context bound; the runner keeps its calls
    // within the limits known (attention_limits.ts), and an unknown one fails here in onnxruntime's words.
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(
      `${msg} (warming up steps at context ${config.maxContext}; onnxruntime's attention buffers grow with ` +
        `the context, so a lower --max-model-len may load)`,
      { cause: e },
    );
  }
  // Only config and tokenizer stay: the weights (the whole file for GGUF) are on the GPU now.
  const engine = new LLMEngine(
    { config: modelConfig, tokenizer: model.tokenizer },
    runner,
    config,
    hooks.log,
  );
  return { config, runner, engine };
}

export interface LocalEngineOptions extends EngineSettings {
  log?: (line: string) => void;
}

export interface LocalEngine {
  engine: LLMEngine;
  runner: ModelRunner;
  model: LoadedModel;
  config: EngineConfig;
  /** Resolves with every event of the request, the terminal one last. */
  generate(id: string, promptIds: number[], p: SamplingParams): Promise<GenerateEvent[]>;
  close(): Promise<void>;
}

/** An engine with its loop running on the calling thread. */
export async function startLocalEngine(
  model: LoadedModel,
  opts: LocalEngineOptions = {},
): Promise<LocalEngine> {
  const { config, runner, engine } = await createEngine(model, opts, { log: opts.log });
  const loop = engine.run();
  return {
    engine,
    runner,
    model,
    config,
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
