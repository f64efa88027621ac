// POST /v1/chat/completions
import { Hono } from "hono";
import type { TokenLogprob } from "../../engine/protocol.ts";
import { badRequest } from "../errors.ts";
import { readRequestJson } from "../body.ts";
import type { AppEnv, Shared } from "../context.ts";
import { type Format, generate } from "../generate.ts";
import { checkModel, encodeChat, requireEngine, samplingParams } from "../prepare.ts";
import { ChatRequest, parseBody } from "../schemas.ts";
import { responseFormatGrammar } from "../structured.ts";

const bytes = (s: string) => Array.from(new TextEncoder().encode(s));

const chatLogprobs = (lps: TokenLogprob[] | null) =>
  lps && {
    content: lps.map((lp) => ({
      token: lp.token,
      logprob: lp.logprob,
      bytes: bytes(lp.token),
      top_logprobs: lp.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: bytes(t.token) })),
    })),
  };

export const chatFormat = (): Format => ({
  idPrefix: "chatcmpl",
  object: "chat.completion",
  chunkObject: "chat.completion.chunk",
  choice: (text, logprobs, finish) => ({
    index: 0,
    message: { role: "assistant", content: text },
    logprobs: chatLogprobs(logprobs),
    finish_reason: finish,
  }),
  start: () => [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }],
  delta: (text, logprobs) => ({
    index: 0,
    delta: { content: text },
    logprobs: chatLogprobs(logprobs),
    finish_reason: null,
  }),
  finish: (finish) => ({ index: 0, delta: {}, logprobs: null, finish_reason: finish }),
});

export function chatRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>().post("/v1/chat/completions", async (c) => {
    const engine = requireEngine(s);
    const req = parseBody(ChatRequest, await readRequestJson(c.req.raw, s.config));
    checkModel(s, engine, req.model);
    if (req.top_logprobs !== undefined && req.top_logprobs > 0 && !req.logprobs) {
      throw badRequest("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs");
    }
    if (s.config.logPrompts) c.var.log.prompt = req.messages;
    const promptIds = encodeChat(engine, req.messages);
    const logprobs = req.logprobs ? req.top_logprobs ?? 0 : null;
    const params = samplingParams(s, engine, req, { param: "messages", length: promptIds.length }, logprobs);
    const grammar = responseFormatGrammar(req.response_format);
    if (grammar) params.grammar = grammar;
    return generate(c, s, {
      engine,
      promptIds,
      params,
      promptParam: "messages",
      stream: req.stream ?? false,
      includeUsage: req.stream_options?.include_usage ?? false,
      format: chatFormat(),
    });
  });
}
