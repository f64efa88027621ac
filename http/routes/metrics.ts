// GET /metrics: Prometheus text exposition.
import { Hono } from "hono";
import type { AppEnv, Shared } from "../context.ts";

export function metricsRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>().get("/metrics", (c) =>
    c.body(s.metrics.render(s.deps.engine()), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    }));
}
