// GET /v1/models and /v1/models/:model
import { Hono } from "hono";
import type { EngineClient } from "../../engine/protocol.ts";
import type { AppEnv, Shared } from "../context.ts";
import { checkModel, contextLimit, requireEngine, servedName } from "../prepare.ts";

export function modelRoutes(s: Shared): Hono<AppEnv> {
  const created = Math.floor(Date.now() / 1000);
  const card = (engine: EngineClient) => ({
    id: servedName(s, engine),
    object: "model",
    created,
    owned_by: "ragtime",
    max_model_len: contextLimit(s, engine),
  });
  // Answers while draining too: listing models starts no work.
  return new Hono<AppEnv>()
    .get("/v1/models", (c) => {
      const engine = requireEngine(s, { allowDraining: true });
      return c.json({ object: "list", data: [card(engine)] });
    })
    .get("/v1/models/:model{.+}", (c) => {
      const engine = requireEngine(s, { allowDraining: true });
      checkModel(s, engine, c.req.param("model"));
      return c.json(card(engine));
    });
}
