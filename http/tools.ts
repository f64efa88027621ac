// Tool calling: the grammar that enforces tool_choice (an xgrammar structural tag per template
// family, compiled in the engine like response_format) and the parser that turns the model's
// tool-call text into OpenAI tool_calls, incrementally for streams.
import type { GrammarSpec, ToolDefinition, ToolFormat } from "../engine/protocol.ts";
import { badRequest } from "./errors.ts";
import { enforceableSchema } from "./structured.ts";

export type ToolChoice = "none" | "auto" | "required" | { type: "function"; function: { name: string } };

/** Checks what the request schema cannot: unique names, a named choice among the tools. */
export function checkTools(tools: ToolDefinition[] | undefined, choice: ToolChoice | undefined): void {
  const names = new Set<string>();
  for (const [i, t] of (tools ?? []).entries()) {
    if (names.has(t.function.name)) {
      throw badRequest(`'tools[${i}].function.name' repeats the name '${t.function.name}'.`, "tools");
    }
    names.add(t.function.name);
  }
  if (choice === undefined || choice === "none") return;
  if (names.size === 0) {
    throw badRequest("'tool_choice' is only allowed when 'tools' are given.", "tool_choice");
  }
  if (typeof choice === "object" && !names.has(choice.function.name)) {
    throw badRequest(
      `'tool_choice' names the function '${choice.function.name}', which is not in 'tools'.`,
      "tool_choice",
    );
  }
}

/**
 * How each family opens, wraps and closes one call, as the grammar writes it. No newlines: the
 * grammar vocabulary has no tokens with control characters (engine/grammar.ts), so Hermes calls are
 * written `<tool_call>{...}</tool_call>`; the parser takes either spelling.
 */
const CALL_SYNTAX: Record<
  ToolFormat,
  { trigger: string; begin: (name: string) => string; end: string; separator: string }
> = {
  hermes: {
    trigger: "<tool_call>",
    begin: (n) => `<tool_call>{"name": ${JSON.stringify(n)}, "arguments": `,
    end: "}</tool_call>",
    separator: " ",
  },
  llama3: {
    trigger: '{"name": ',
    begin: (n) => `{"name": ${JSON.stringify(n)}, "parameters": `,
    end: "}",
    separator: "; ",
  },
  mistral: {
    trigger: "[TOOL_CALLS]",
    begin: (n) => `[TOOL_CALLS][{"name": ${JSON.stringify(n)}, "arguments": `,
    end: "}]",
    separator: " ",
  },
};

/**
 * The grammar of a tool_choice: `auto` free text in which each trigger must open a valid call;
 * `required` one or more calls and nothing else; a named function exactly one call of it. The
 * arguments follow each tool's parameters schema. Undefined for `none`.
 */
export function toolGrammar(
  format: ToolFormat,
  tools: ToolDefinition[],
  choice: ToolChoice,
  parallel: boolean,
): GrammarSpec | undefined {
  if (choice === "none") return undefined;
  const syntax = CALL_SYNTAX[format];
  const chosen = typeof choice === "object"
    ? tools.filter((t) => t.function.name === choice.function.name)
    : tools;
  const tags = chosen.map((t) => ({
    type: "tag",
    begin: syntax.begin(t.function.name),
    content: {
      type: "json_schema",
      json_schema: enforceableSchema(t.function.parameters ?? { type: "object" }),
    },
    end: syntax.end,
  }));
  const format_ = choice === "auto"
    ? { type: "triggered_tags", triggers: [syntax.trigger], tags, stop_after_first: !parallel }
    : {
      type: "tags_with_separator",
      tags,
      separator: syntax.separator,
      at_least_one: true,
      stop_after_first: typeof choice === "object" || !parallel,
    };
  return {
    param: "tools",
    type: "structural_tag",
    tag: JSON.stringify({ type: "structural_tag", format: format_ }),
  };
}

export type ToolEvent =
  | { type: "content"; text: string }
  | { type: "call"; index: number; id: string; name: string }
  | { type: "arguments"; index: number; text: string };

/** Strings that open tool calls in free text, and those skipped between calls. */
const MARKERS: Record<ToolFormat, { openers: string[]; fillers: string[] }> = {
  hermes: { openers: ["<tool_call>"], fillers: ["<tool_call>", "</tool_call>"] },
  // Llama 3.x also starts a call with a bare "{" at the start of its answer (see atStart).
  llama3: { openers: ["<|python_tag|>", '{"name"'], fillers: ["<|python_tag|>", ";"] },
  mistral: { openers: ["[TOOL_CALLS]"], fillers: ["[TOOL_CALLS]", "[", "]", ","] },
};

const HEADER = /^\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*/;

/** Where a JSON value that starts at `text[from]` ends (exclusive), or -1 if it has not ended yet. */
function jsonValueEnd(text: string, from: number): number {
  let depth = 0, inString = false, escaped = false;
  const scalar = !'{["'.includes(text[from]);
  for (let i = from; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (ch === "\\") escaped = true;
      else if (ch === '"') {
        inString = false;
        if (depth === 0) return i + 1;
      }
      continue;
    }
    if (scalar) {
      if (/[\s,}\]]/.test(ch)) return i;
      continue;
    }
    if (ch === '"') inString = true;
    else if (ch === "{" || ch === "[") depth++;
    else if (ch === "}" || ch === "]") {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

export const toolCallId = () => `call_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;

/**
 * The model's text split into content and tool calls, fed piece by piece. A call's name is sent
 * once its header is complete, its arguments as they are decoded; text that might begin a marker
 * is held back until it is known not to.
 */
export class ToolCallParser {
  /** The parsed calls, arguments as JSON text. */
  readonly calls: { id: string; name: string; arguments: string }[] = [];
  private state: "content" | "calls" | "object" = "content";
  private buf = "";
  private atStart = true;
  /** The call object being read, what of its arguments went out, and whether its call event did. */
  private obj = "";
  private argsFrom = -1;
  private argsSent = 0;
  private readonly markers: { openers: string[]; fillers: string[] };

  constructor(private format: ToolFormat) {
    this.markers = MARKERS[format];
  }

  push(text: string): ToolEvent[] {
    this.buf += text;
    const out: ToolEvent[] = [];
    for (let progress = true; progress;) progress = this.step(out, false);
    return merge(out);
  }

  /** The end of the output: held-back text goes out, an unfinished call is kept as far as it went. */
  end(): ToolEvent[] {
    const out: ToolEvent[] = [];
    for (let progress = true; progress;) progress = this.step(out, true);
    if (this.state === "content" && this.buf !== "") out.push({ type: "content", text: this.buf });
    if (this.state === "object" && this.argsFrom < 0) {
      out.push({ type: "content", text: this.obj + this.buf });
    }
    this.buf = "";
    return merge(out);
  }

  private step(out: ToolEvent[], final: boolean): boolean {
    if (this.buf === "") return false;
    if (this.state === "content") return this.content(out, final);
    if (this.state === "calls") return this.between(final);
    return this.object(out);
  }

  private content(out: ToolEvent[], final: boolean): boolean {
    if (this.format === "llama3" && this.atStart) {
      const trimmed = this.buf.trimStart();
      if (trimmed === "" && !final) return false;
      if (trimmed.startsWith("{")) {
        this.buf = trimmed;
        this.state = "calls";
        return true;
      }
    }
    let at = -1, opener = "";
    for (const o of this.markers.openers) {
      const i = this.buf.indexOf(o);
      if (i >= 0 && (at < 0 || i < at)) [at, opener] = [i, o];
    }
    if (at >= 0) {
      this.emitContent(out, this.buf.slice(0, at));
      // An opener that is the call's own start stays for the object.
      this.buf = this.buf.slice(opener.startsWith("{") ? at : at + opener.length);
      this.state = "calls";
      return true;
    }
    const keep = final ? 0 : heldBack(this.buf, this.markers.openers);
    this.emitContent(out, this.buf.slice(0, this.buf.length - keep));
    this.buf = this.buf.slice(this.buf.length - keep);
    return false;
  }

  private emitContent(out: ToolEvent[], text: string): void {
    if (text === "") return;
    if (text.trim() !== "") this.atStart = false;
    out.push({ type: "content", text });
  }

  /** Between calls: whitespace and the family's wrappers are skipped; other text is content again. */
  private between(final: boolean): boolean {
    const trimmed = this.buf.trimStart();
    if (trimmed === "") {
      this.buf = "";
      return false;
    }
    this.buf = trimmed;
    if (this.buf.startsWith("{")) {
      this.state = "object";
      this.obj = "";
      this.argsFrom = -1;
      this.argsSent = 0;
      return true;
    }
    const filler = this.markers.fillers.find((f) => this.buf.startsWith(f));
    if (filler) {
      this.buf = this.buf.slice(filler.length);
      return true;
    }
    if (!final && this.markers.fillers.some((f) => f.startsWith(this.buf))) return false;
    this.state = "content";
    return true;
  }

  private object(out: ToolEvent[]): boolean {
    this.obj += this.buf;
    this.buf = "";
    const end = jsonValueEnd(this.obj, 0);
    if (end >= 0) {
      // Text past the object goes back to the buffer.
      this.buf = this.obj.slice(end);
      this.obj = this.obj.slice(0, end);
    }
    if (this.argsFrom < 0) {
      const m = HEADER.exec(this.obj);
      if (m && this.obj.length > m[0].length) {
        const index = this.calls.length;
        const name = JSON.parse(m[1]) as string;
        this.calls.push({ id: toolCallId(), name, arguments: "" });
        out.push({ type: "call", index, id: this.calls[index].id, name });
        this.argsFrom = m[0].length;
      }
    }
    if (this.argsFrom >= 0) {
      const call = this.calls[this.calls.length - 1];
      const argsEnd = jsonValueEnd(this.obj, this.argsFrom);
      const upTo = argsEnd >= 0 ? argsEnd : this.obj.length;
      const text = this.obj.slice(this.argsFrom + this.argsSent, upTo);
      if (text !== "") {
        out.push({ type: "arguments", index: this.calls.length - 1, text });
        call.arguments += text;
        this.argsSent += text.length;
      }
    }
    if (end < 0) return false;
    if (this.argsFrom < 0) this.wholeObject(out);
    this.state = "calls";
    return true;
  }

  /** A complete object whose header was not in the expected order: a call if it parses as one. */
  private wholeObject(out: ToolEvent[]): void {
    let v: unknown;
    try {
      v = JSON.parse(this.obj);
    } catch {
      v = null;
    }
    const o = v as { name?: unknown; arguments?: unknown; parameters?: unknown } | null;
    if (o && typeof o === "object" && typeof o.name === "string") {
      const args = o.arguments ?? o.parameters ?? {};
      const text = typeof args === "string" ? args : JSON.stringify(args);
      const index = this.calls.length;
      this.calls.push({ id: toolCallId(), name: o.name, arguments: text });
      out.push({ type: "call", index, id: this.calls[index].id, name: o.name });
      out.push({ type: "arguments", index, text });
      return;
    }
    this.emitContent(out, this.obj);
  }
}

/** Length of the longest end of `text` that is the start of a marker (it may complete later). */
function heldBack(text: string, markers: string[]): number {
  let keep = 0;
  for (const m of markers) {
    for (let n = Math.min(m.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(m.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

function merge(events: ToolEvent[]): ToolEvent[] {
  const out: ToolEvent[] = [];
  for (const e of events) {
    const last = out[out.length - 1];
    if (last?.type === "content" && e.type === "content") last.text += e.text;
    else if (last?.type === "arguments" && e.type === "arguments" && last.index === e.index) {
      last.text += e.text;
    } else out.push({ ...e });
  }
  return out;
}
