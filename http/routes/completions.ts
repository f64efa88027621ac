// POST /v1/completions
import { Hono } from "hono";
import type { TokenLogprob } from "../../engine/protocol.ts";
import { readRequestJson } from "../body.ts";
import type { AppEnv, Shared } from "../context.ts";
import { type Format, generate } from "../generate.ts";
import { responseFormatGrammar } from "../structured.ts";
import { checkModel, checkTokenIds, encodeText, requestSamplingParams, requireEngine } from "../prepare.ts";
import { CompletionRequest, parseBody } from "../schemas.ts";

/** Legacy logprobs; text_offset counts characters of the completion so far, across chunks. */
export function completionFormat(): Format {
  let offset = 0;
  const logprobs = (lps: TokenLogprob[] | null) =>
    lps && {
      tokens: lps.map((lp) => lp.token),
      token_logprobs: lps.map((lp) => lp.logprob),
      top_logprobs: lps.map((lp) => Object.fromEntries(lp.top.map((t) => [t.token, t.logprob]))),
      text_offset: lps.map((lp) => {
        const at = offset;
        offset += lp.token.length;
        return at;
      }),
    };
  return {
    idPrefix: "cmpl",
    object: "text_completion",
    chunkObject: "text_completion",
    choice: (text, lps, finish) => ({ index: 0, text, logprobs: logprobs(lps), finish_reason: finish }),
    start: () => [],
    delta: (text, lps) => ({ index: 0, text, logprobs: logprobs(lps), finish_reason: null }),
    finish: (finish) => ({ index: 0, text: "", logprobs: null, finish_reason: finish }),
  };
}

export function completionRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>().post("/v1/completions", async (c) => {
    const engine = requireEngine(s);
    const req = parseBody(CompletionRequest, await readRequestJson(c.req.raw, s.config));
    checkModel(s, engine, req.model);
    if (s.config.logPrompts) c.var.log.prompt = "text" in req.prompt ? req.prompt.text : req.prompt.ids;
    const promptIds = "text" in req.prompt ? encodeText(engine, req.prompt.text, true) : req.prompt.ids;
    checkTokenIds(engine, promptIds, "prompt");
    const params = requestSamplingParams(
      s,
      engine,
      req,
      { param: "prompt", length: promptIds.length },
      req.logprobs ?? null,
    );
    const grammar = responseFormatGrammar(req.response_format);
    if (grammar) params.grammar = grammar;
    return generate(c, s, {
      engine,
      promptIds,
      params,
      promptParam: "prompt",
      stream: req.stream ?? false,
      includeUsage: req.stream_options?.include_usage ?? false,
      format: completionFormat(),
    });
  });
}
