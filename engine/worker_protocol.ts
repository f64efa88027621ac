// Messages between the engine client (HTTP thread) and the engine Worker.

import type { EngineStats, GenerateEvent, GenerateRequest } from "./protocol.ts";
import type { SchedulerPolicy } from "./scheduler.ts";

export interface WorkerInit {
  modelPath: string;
  maxContext?: number;
  dtype: "auto" | "f16" | "f32";
  /** Absent: sized for maxSeqs sequences at full context, up to 1 GiB. */
  kvCacheMb?: number;
  blockSize: number;
  maxBatchTokens: number;
  maxSeqs: number;
  /** Longest prefill chunk per sequence and step (see EngineOptions.maxChunkTokens). */
  maxChunkTokens: number;
  policy: SchedulerPolicy;
  debugSteps: boolean;
  graphCache: string | null;
}

export type ToWorker =
  | { type: "init"; options: WorkerInit }
  | { type: "generate"; request: GenerateRequest }
  | { type: "abort"; id: string }
  | { type: "close" };

export interface ReadyInfo {
  seconds: number;
  dtype: string;
  adapter: string;
  nodesPerLayer: number;
  kvBlocks: number;
  blockSize: number;
  maxContext: number;
}

export type ToClient =
  | ({ type: "ready" } & ReadyInfo)
  | { type: "failed"; message: string }
  | { type: "fatal"; message: string }
  | { type: "progress"; phase: string; done?: number; total?: number }
  | { type: "log"; line: string }
  | { type: "stats"; stats: EngineStats }
  /** A step's token events travel together: one message per step, not one per token. */
  | { type: "events"; items: { id: string; ev: GenerateEvent }[] }
  | { type: "closed" };
