// POST /v1/chat/completions
import { Hono } from "hono";
import type { TokenLogprob } from "../../engine/protocol.ts";
import { badRequest } from "../errors.ts";
import { readRequestJson } from "../body.ts";
import type { AppEnv, Shared } from "../context.ts";
import { type Format, generate } from "../generate.ts";
import { checkModel, encodeChat, requestSamplingParams, requireEngine } from "../prepare.ts";
import { ChatRequest, parseBody } from "../schemas.ts";
import { responseFormatGrammar } from "../structured.ts";
import { checkTools, ToolCallParser, type ToolEvent, toolGrammar } from "../tools.ts";

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

/** A finish after tool calls is "tool_calls"; one cut by max_tokens stays "length". */
const toolFinish = (parser: ToolCallParser, finish: string) =>
  parser.calls.length > 0 && finish === "stop" ? "tool_calls" : finish;

/** Chat's format when tools may be called: the text goes through a ToolCallParser. */
export function toolChatFormat(parser: ToolCallParser): Format {
  const plain = chatFormat();
  const deltas = (events: ToolEvent[], logprobs: TokenLogprob[] | null) => {
    const out = events.map((e, i) => ({
      index: 0,
      delta: e.type === "content" ? { content: e.text } : {
        tool_calls: [
          e.type === "call"
            ? { index: e.index, id: e.id, type: "function", function: { name: e.name, arguments: "" } }
            : { index: e.index, function: { arguments: e.text } },
        ],
      },
      logprobs: i === 0 ? chatLogprobs(logprobs) : null,
      finish_reason: null,
    }));
    if (out.length === 0 && logprobs && logprobs.length > 0) {
      out.push({ index: 0, delta: { content: "" }, logprobs: chatLogprobs(logprobs), finish_reason: null });
    }
    return out;
  };
  return {
    ...plain,
    choice: (text, logprobs, finish) => {
      const events = [...parser.push(text), ...parser.end()];
      const content = events.flatMap((e) => e.type === "content" ? [e.text] : []).join("");
      const calls = parser.calls;
      return {
        index: 0,
        message: calls.length === 0 ? { role: "assistant", content } : {
          role: "assistant",
          content: content.trim() === "" ? null : content,
          tool_calls: calls.map((c) => ({
            id: c.id,
            type: "function",
            function: { name: c.name, arguments: c.arguments },
          })),
        },
        logprobs: chatLogprobs(logprobs),
        finish_reason: toolFinish(parser, finish),
      };
    },
    delta: (text, logprobs) => deltas(parser.push(text), logprobs),
    finish: (finish) => [
      ...deltas(parser.end(), null),
      { index: 0, delta: {}, logprobs: null, finish_reason: toolFinish(parser, finish) },
    ],
  };
}

export function chatRoutes(s: Shared): Hono<AppEnv> {
  return new Hono<AppEnv>().post("/v1/chat/completions", async (c) => {
    const engine = requireEngine(s);
    const req = parseBody(ChatRequest, await readRequestJson(c.req.raw, s.config));
    checkModel(s, engine, req.model);
    if (req.top_logprobs !== undefined && req.top_logprobs > 0 && !req.logprobs) {
      throw badRequest("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs");
    }
    if (s.config.logPrompts) c.var.log.prompt = req.messages;
    checkTools(req.tools, req.tool_choice);
    // OpenAI's default: auto when tools are given.
    const choice = req.tools && req.tools.length > 0 ? req.tool_choice ?? "auto" : "none";
    const tools = choice === "none" ? undefined : req.tools;
    const promptIds = encodeChat(engine, req.messages, true, undefined, tools);
    const logprobs = req.logprobs ? req.top_logprobs ?? 0 : null;
    const params = requestSamplingParams(
      s,
      engine,
      req,
      { param: "messages", length: promptIds.length },
      logprobs,
    );
    const grammar = responseFormatGrammar(req.response_format);
    if (grammar) params.grammar = grammar;
    const toolFormat = engine.chatTemplate.toolFormat ?? "hermes";
    if (tools) {
      // One grammar per request: a JSON answer and constrained tool calls cannot both hold.
      if (grammar) {
        throw badRequest(
          "'response_format' cannot be combined with 'tools' unless 'tool_choice' is \"none\".",
          "response_format",
        );
      }
      params.grammar = toolGrammar(toolFormat, tools, choice, req.parallel_tool_calls ?? true);
    }
    // A conversation that has come back once (it resends an assistant turn) likely will again.
    const continues = req.messages.some((m) => m.role === "assistant");
    const answers = engine.answerCache;
    // Tool calls come back as structured turns, not as the text generated: no prediction for those.
    const predict = !tools && (answers === "on" || (answers === "auto" && continues))
      ? (answer: string) =>
        encodeChat(engine, [...req.messages, { role: "assistant", content: answer }], false)
      : undefined;
    return generate(c, s, {
      engine,
      promptIds,
      params,
      promptParam: "messages",
      continues,
      predict,
      stream: req.stream ?? false,
      includeUsage: req.stream_options?.include_usage ?? false,
      format: tools ? toolChatFormat(new ToolCallParser(toolFormat)) : chatFormat(),
    });
  });
}
