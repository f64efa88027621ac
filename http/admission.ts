// Admission: the queue limit (--max-queue) counted over requests that would have to wait for a running
// slot, from the engine's latest stats snapshot plus what the HTTP side handed over since.
import type { EngineStats } from "../engine/protocol.ts";
import { ApiError } from "./errors.ts";

/** What bounds the queue: --max-queue, and the running slots that --max-seqs and --batching give. */
export interface AdmissionLimits {
  maxQueue: number;
  /** Absent: no slot is assumed free, so every request the engine has not started counts as waiting. */
  maxSeqs?: number;
  batching?: "continuous" | "static" | "sequential";
}

/**
 * A request submitted at step S may reach the engine during S + 1 and is scheduled at S + 2 at the
 * latest; until then ("fresh") the engine may list it as waiting only because no step has looked at it.
 */
const FRESH_STEPS = 3;

export class Admission {
  /** Requests handed to the engine and not yet closed, with the engine step at submission. */
  readonly #inflight = new Map<string, number>();

  /** Requests that would wait for a running slot if one more were admitted now. */
  waiting(stats: EngineStats, limits: AdmissionLimits): number {
    let fresh = 0;
    for (const step of this.#inflight.values()) if (stats.stepsTotal < step + FRESH_STEPS) fresh++;
    // Engine-side waiting beyond the fresh requests had a step to start and did not (KV pool, budget):
    // that is a real queue, and everything newer waits behind it (scheduling is FCFS).
    const stuck = Math.max(0, stats.waiting - fresh);
    // Ours that have not started; the engine's running count may already include some fresh ones.
    const starting = Math.max(0, Math.min(fresh, this.#inflight.size - stats.running));
    if (stuck > 0) return stuck + starting;
    return Math.max(0, starting - freeSlots(stats, limits));
  }

  /** Throws 429 when the queue is full, otherwise records the request as submitted. */
  admit(id: string, stats: EngineStats, limits: AdmissionLimits): void {
    if (this.waiting(stats, limits) >= limits.maxQueue) {
      throw new ApiError(429, "The server is at capacity; retry shortly.", {
        code: "rate_limit_exceeded",
        headers: { "retry-after": "1" },
      });
    }
    this.#inflight.set(id, stats.stepsTotal);
  }

  /** The request is over on the HTTP side (finished, failed or aborted): it frees its place. */
  release(id: string): void {
    this.#inflight.delete(id);
  }

  /** Requests admitted and not released; for tests and leak checks. */
  get size(): number {
    return this.#inflight.size;
  }
}

/** Running slots a new request could take at once under the batching policy. */
function freeSlots(stats: EngineStats, limits: AdmissionLimits): number {
  if (limits.maxSeqs === undefined) return 0;
  switch (limits.batching ?? "continuous") {
    case "sequential":
      return Math.max(0, 1 - stats.running);
    case "static":
      // A static batch takes new members only before it starts decoding; count slots only when idle.
      return stats.running === 0 ? limits.maxSeqs : 0;
    default:
      return Math.max(0, limits.maxSeqs - stats.running);
  }
}
