// Messages between the engine client (HTTP thread) and the engine Worker.

import type { AnswerCache, EngineSettings, EngineStats, GenerateEvent, GenerateRequest } from "./protocol.ts";

export interface WorkerInit {
  modelPath: string;
  settings: EngineSettings;
}

export type ToWorker =
  | { type: "init"; options: WorkerInit }
  | { type: "generate"; request: GenerateRequest }
  | { type: "abort"; id: string }
  | { type: "predict"; id: string; ids: number[]; final: boolean }
  | { type: "close" };

export interface ReadyInfo {
  seconds: number;
  dtype: string;
  adapter: string;
  nodesPerLayer: number;
  kvBlocks: number;
  blockSize: number;
  maxContext: number;
  /** Long-query mode as resolved for the adapter (EngineSettings.longQueries). */
  longQueries: string;
  /** EngineClient.answerCache. */
  answerCache: AnswerCache;
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
