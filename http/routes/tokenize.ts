// POST /tokenize and /detokenize, in vLLM's shapes.
import { Hono } from "hono";
import { readRequestJson } from "../body.ts";
import type { AppEnv, Shared } from "../context.ts";
import {
  checkModel,
  checkTokenIds,
  contextLimit,
  encodeChat,
  encodeText,
  requireEngine,
} from "../prepare.ts";
import { DetokenizeRequest, parseBody, TokenizeRequest } from "../schemas.ts";

export function tokenizeRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>()
    .post("/tokenize", async (c) => {
      const engine = requireEngine(s);
      const req = parseBody(TokenizeRequest, await readRequestJson(c.req.raw, s.config));
      checkModel(s, engine, req.model);
      // Chat defaults to what /v1/chat/completions would feed the engine.
      const tokens = "messages" in req
        ? encodeChat(engine, req.messages, req.add_generation_prompt ?? true, req.add_special_tokens)
        : encodeText(engine, req.prompt, req.add_special_tokens ?? true);
      return c.json({ tokens, count: tokens.length, max_model_len: contextLimit(s, engine) });
    })
    .post("/detokenize", async (c) => {
      const engine = requireEngine(s);
      const req = parseBody(DetokenizeRequest, await readRequestJson(c.req.raw, s.config));
      checkModel(s, engine, req.model);
      checkTokenIds(engine, req.tokens, "tokens");
      return c.json({ prompt: engine.tokenizer.decode(req.tokens, false) });
    });
}
