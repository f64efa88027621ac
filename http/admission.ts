// Admission: the queue limit (--max-queue) counted over the engine's waiting requests plus those
// handed to the engine since its last stats snapshot.
import type { EngineStats } from "../engine/protocol.ts";
import { ApiError } from "./errors.ts";

/**
 * Counts requests the HTTP layer handed to the engine that its stats may not show yet: a request
 * submitted at step S is surely in a snapshot from step S + 2 on (it arrives during S + 1 at worst).
 */
export class Admission {
  readonly #pending = new Map<string, number>();

  waiting(stats: EngineStats): number {
    let unseen = 0;
    for (const step of this.#pending.values()) if (stats.stepsTotal < step + 2) unseen++;
    return stats.waiting + unseen;
  }

  /** Throws 429 when the queue is full, otherwise records the request as submitted. */
  admit(id: string, stats: EngineStats, maxQueue: number): void {
    if (this.waiting(stats) >= maxQueue) {
      throw new ApiError(429, "The server is at capacity; retry shortly.", {
        code: "rate_limit_exceeded",
        headers: { "retry-after": "1" },
      });
    }
    this.#pending.set(id, stats.stepsTotal);
  }

  /** The request produced an event, so the engine has it (or it is over). */
  seen(id: string): void {
    this.#pending.delete(id);
  }
}
