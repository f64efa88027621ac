// GET /health: always public; load balancers read the status code.
import { Hono } from "hono";
import type { AppEnv, Shared } from "../context.ts";

export function healthRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>().get("/health", (c) => {
    if (s.deps.draining()) return c.json({ status: "draining" }, 503);
    const engine = s.deps.engine();
    if (!engine) return c.json({ status: "loading" }, 503);
    const failure = engine.failure();
    if (failure) return c.json({ status: "failed", error: failure }, 503);
    return c.json({ status: "ok" }, 200);
  });
}
