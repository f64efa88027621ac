// Request bodies of the OpenAI/vLLM endpoints. Unknown fields are refused (a 400 naming the field: a
// silently ignored response_format or tools would hand back free text), harmless metadata is accepted
// and ignored, `null` means absent, and the first problem becomes a 400 naming its `param`.
import { z } from "zod";
import type { ChatMessage } from "../engine/protocol.ts";
import { badRequest } from "./errors.ts";
import { nestsDeeperThan, tooDeep } from "./json_depth.ts";

const custom = (ctx: z.RefinementCtx, input: unknown, message: string, path: PropertyKey[] = []) => {
  ctx.issues.push({ code: "custom", message, input, path });
  return z.NEVER;
};

const isTokenId = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Completions prompt: a string, a list of token ids (what benchmarks send), or a one-element list of either. */
export type Prompt = { text: string } | { ids: number[] };

const prompt = z.unknown().transform((v, ctx): Prompt => {
  if (v === undefined) return custom(ctx, v, "is required");
  if (typeof v === "string") return { text: v };
  if (Array.isArray(v)) {
    if (v.length === 0) return custom(ctx, v, "must not be empty");
    if (v.every(isTokenId)) return { ids: v };
    if (v.every((p) => typeof p === "string" || (Array.isArray(p) && p.every(isTokenId)))) {
      if (v.length > 1) return custom(ctx, v, "must be a single prompt; batched prompts are not supported");
      return typeof v[0] === "string" ? { text: v[0] } : { ids: v[0] };
    }
  }
  return custom(ctx, v, "must be a string or a list of token ids (non-negative integers)");
});

const content = z.unknown().transform((v, ctx): string => {
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) return custom(ctx, v, "must be a string or a list of text parts");
  const texts: string[] = [];
  for (const [i, part] of v.entries()) {
    if (typeof part !== "object" || part === null) return custom(ctx, v, "must be a text part object", [i]);
    const { type, text } = part as { type?: unknown; text?: unknown };
    if (type !== "text") {
      return custom(ctx, v, `must be "text" (got ${JSON.stringify(type)}); only text content is supported`, [
        i,
        "type",
      ]);
    }
    if (typeof text !== "string") return custom(ctx, v, "must be a string", [i, "text"]);
    texts.push(text);
  }
  return texts.join("\n");
});

/** Accepted and ignored: request metadata that does not change what is generated (listed in README). */
const ignored = z.unknown().optional();

const functionName = z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, "must be 1-64 letters, digits, _ or -");

const toolCall = z.strictObject({
  id: z.string(),
  type: z.literal("function"),
  function: z.strictObject({ name: z.string(), arguments: z.string() }),
});

const message = z.strictObject({
  role: z.enum(["system", "user", "assistant", "developer", "tool"]),
  content: content.optional(),
  name: z.string().optional(),
  tool_calls: z.array(toolCall).optional(),
  tool_call_id: z.string().optional(),
  refusal: ignored,
}).transform((m, ctx): ChatMessage => {
  // Assistant turns that only carried tool calls have no content.
  if (m.content === undefined && m.role !== "assistant") return custom(ctx, m, "is required", ["content"]);
  if (m.tool_calls !== undefined && m.role !== "assistant") {
    return custom(ctx, m, "is only allowed on assistant messages", ["tool_calls"]);
  }
  if (m.role === "tool" && m.tool_call_id === undefined) {
    return custom(ctx, m, "is required", ["tool_call_id"]);
  }
  const out: ChatMessage = { role: m.role, content: m.content ?? "" };
  if (m.tool_calls && m.tool_calls.length > 0) out.tool_calls = m.tool_calls;
  if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
  return out;
});

/** OpenAI's function tools; parameters is a JSON Schema (checked when compiled, a 400 naming tools). */
const tool = z.strictObject({
  type: z.literal("function"),
  function: z.strictObject({
    name: functionName,
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
    strict: z.boolean().optional(),
  }),
});

const toolChoice = z.union([
  z.enum(["none", "auto", "required"]),
  z.strictObject({ type: z.literal("function"), function: z.strictObject({ name: functionName }) }),
]);

const stop = z.unknown().transform((v, ctx): string[] => {
  if (typeof v === "string") return v === "" ? [] : [v];
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
    return custom(ctx, v, "must be a string or a list of strings");
  }
  if (v.length > 16) return custom(ctx, v, "may list at most 16 stop strings");
  return v.filter((s) => s !== "");
});

const sampling = {
  model: z.string().optional(),
  stream: z.boolean().optional(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional(), include_obfuscation: ignored })
    .optional(),
  n: z.int().min(1).refine((n) => n === 1, "must be 1; only one choice per request is supported").optional(),
  temperature: z.number().min(0).max(2).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  top_k: z.int().min(-1).optional(),
  min_p: z.number().min(0).max(1).optional(),
  presence_penalty: z.number().min(-2).max(2).optional(),
  frequency_penalty: z.number().min(-2).max(2).optional(),
  repetition_penalty: z.number().gt(0).max(100).optional(),
  logit_bias: z.record(z.string().regex(/^\d+$/), z.number().min(-100).max(100)).optional(),
  seed: z.int().optional(),
  stop: stop.optional(),
  stop_token_ids: z.array(z.int().min(0)).max(1024).optional(),
  ignore_eos: z.boolean().optional(),
  max_tokens: z.int().min(1).optional(),
  skip_special_tokens: z.boolean().optional(),
  user: ignored,
  metadata: ignored,
  store: ignored,
  service_tier: ignored,
  safety_identifier: ignored,
  prompt_cache_key: ignored,
};

const jsonSchema = z.record(z.string(), z.unknown());

/** OpenAI's response_format; "text" is the same as leaving it out. */
const responseFormat = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("text") }),
  z.strictObject({ type: z.literal("json_object") }),
  z.strictObject({
    type: z.literal("json_schema"),
    json_schema: z.strictObject({
      name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, "must be 1-64 letters, digits, _ or -"),
      description: z.string().optional(),
      schema: jsonSchema.optional(),
      strict: z.boolean().optional(),
    }),
  }),
]);
export type ResponseFormat = z.output<typeof responseFormat>;

export const ChatRequest = z.strictObject({
  ...sampling,
  messages: z.array(message).min(1),
  max_completion_tokens: z.int().min(1).optional(),
  logprobs: z.boolean().optional(),
  top_logprobs: z.int().min(0).max(5).optional(),
  response_format: responseFormat.optional(),
  tools: z.array(tool).max(128).optional(),
  tool_choice: toolChoice.optional(),
  parallel_tool_calls: z.boolean().optional(),
});
export type ChatRequest = z.output<typeof ChatRequest>;

export const CompletionRequest = z.strictObject({
  ...sampling,
  prompt,
  logprobs: z.int().min(0).max(5).optional(),
  echo: z.boolean().refine((e) => !e, "is not supported").optional(),
  suffix: z.string().refine((s) => s === "", "is not supported").optional(),
  // vLLM takes it on completions too: a constrained continuation of a raw prompt.
  response_format: responseFormat.optional(),
});
export type CompletionRequest = z.output<typeof CompletionRequest>;

/** Fields both generation endpoints share; what the sampling mapper reads. */
const SamplingFields = z.object(sampling);
export type SamplingFields = z.output<typeof SamplingFields>;

export const TokenizeRequest = z.union([
  z.strictObject({
    model: z.string().optional(),
    prompt: z.string(),
    add_special_tokens: z.boolean().optional(),
  }),
  z.strictObject({
    model: z.string().optional(),
    messages: z.array(message).min(1),
    add_generation_prompt: z.boolean().optional(),
    add_special_tokens: z.boolean().optional(),
  }),
]);
export type TokenizeRequest = z.output<typeof TokenizeRequest>;

export const DetokenizeRequest = z.strictObject({
  model: z.string().optional(),
  tokens: z.array(z.int().min(0)),
});
export type DetokenizeRequest = z.output<typeof DetokenizeRequest>;

/** JSON Schemas in a body, where null is a value ({"enum": [null]}) and must stay. */
const keepsNulls = (path: PropertyKey[]) =>
  (path.length === 3 && path[0] === "response_format" && path[1] === "json_schema" && path[2] === "schema") ||
  (path.length === 4 && path[0] === "tools" && path[2] === "function" && path[3] === "parameters");

/** `null` means "not given" in OpenAI clients; drop null-valued keys so optional fields accept it. */
function dropNulls(v: unknown, path: PropertyKey[] = []): unknown {
  if (keepsNulls(path)) return v;
  if (Array.isArray(v)) return v.map((x, i) => dropNulls(x, [...path, i]));
  if (typeof v !== "object" || v === null) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) if (x !== null) out[k] = dropNulls(x, [...path, k]);
  return out;
}

/** Validates a parsed JSON body; throws a 400 naming the first bad field. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  // The walks below recurse; bodies from readBodyJson were checked before parsing, others are here.
  if (typeof body === "object" && body !== null && nestsDeeperThan(body)) throw tooDeep();
  const input = dropNulls(body);
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw badRequest("The request body must be a JSON object.", null, "invalid_body");
  }
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const issue = firstIssue(r.error.issues, input);
  const param = formatPath(issue.path);
  throw badRequest(describe(issue, param, valueAt(input, issue.path)), param || null);
}

function firstIssue(issues: z.core.$ZodIssue[], input: object): z.core.$ZodIssue {
  // An unsupported field is named before any problem with the supported ones.
  let issue = issues.find((i) => i.code === "unrecognized_keys") ?? issues[0];
  if (issue.code === "invalid_union") {
    // A union body (tokenize: messages or prompt) is reported against the branch whose keys it has.
    const branch = issue.errors.find((errs) =>
      errs.every((e) => e.path.length === 0 || e.path[0] in input)
    ) ??
      issue.errors[0];
    const inner = branch.find((i) => i.code === "unrecognized_keys") ?? branch[0];
    if (inner) issue = { ...inner, path: [...issue.path, ...inner.path] };
  }
  if (issue.code === "unrecognized_keys") return { ...issue, path: [...issue.path, issue.keys[0]] };
  // Problems inside logit_bias (a key or a value) are reported against logit_bias itself.
  if (issue.path[0] === "logit_bias") return { ...issue, path: ["logit_bias"] };
  return issue;
}

/** ["messages", 0, "role"] -> "messages[0].role" */
export function formatPath(path: PropertyKey[]): string {
  let s = "";
  for (const p of path) s += typeof p === "number" ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s;
}

function valueAt(root: unknown, path: PropertyKey[]): unknown {
  let v = root;
  for (const p of path) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

const NOUNS: Record<string, string> = {
  number: "a number",
  int: "an integer",
  string: "a string",
  boolean: "a boolean",
  array: "a list",
  object: "an object",
  record: "an object",
};

function shown(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function describe(issue: z.core.$ZodIssue, param: string, value: unknown): string {
  const name = param ? `'${param}'` : "The request body";
  switch (issue.code) {
    case "invalid_type":
      if (value === undefined) return `${name} is required.`;
      return `${name} must be ${NOUNS[issue.expected] ?? issue.expected}, got ${shown(value)}.`;
    case "too_big":
    case "too_small": {
      const big = issue.code === "too_big";
      const bound = big ? issue.maximum : issue.minimum;
      if (issue.origin === "array") {
        return `${name} must have ${big ? "at most" : "at least"} ${bound} item${bound === 1 ? "" : "s"}.`;
      }
      const op = big ? (issue.inclusive ? "<=" : "<") : (issue.inclusive ? ">=" : ">");
      return `${name} must be ${op} ${bound}, got ${shown(value)}.`;
    }
    case "invalid_value":
      return `${name} must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}, got ${
        shown(value)
      }.`;
    case "invalid_key":
      return `${name} keys must be token ids (non-negative integers as strings).`;
    case "custom":
      return `${name} ${issue.message}.`;
    case "unrecognized_keys":
      return `${name} is not supported by this server (unknown field).`;
    default:
      return `${name} is invalid: ${issue.message}.`;
  }
}
