// Chat templates: the model's own Jinja template (tokenizer_config.json / chat_template.jinja) or a default.

import { Template } from "@huggingface/jinja";
import {
  type ChatMessage,
  type ChatTemplate,
  ModelLoadError,
  type ToolCall,
  type ToolDefinition,
  type ToolFormat,
} from "./types.ts";

/**
 * Used when the model ships no template. ChatML was picked over an ad-hoc role-tag format because it is
 * what transformers itself used as the class-level default for years and what many small models
 * (SmolLM2, Qwen) are trained on, so it is the least surprising guess:
 *
 *   <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n
 */
export const DEFAULT_CHAT_TEMPLATE = "{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** A template failed while rendering (e.g. its raise_exception on unexpected roles). */
export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChatTemplateError";
  }
}

export function chatTemplateFrom(
  template: string | null,
  tokens: { bosToken: string; eosToken: string },
): ChatTemplate {
  const source = template ?? DEFAULT_CHAT_TEMPLATE;
  let compiled: Template;
  try {
    compiled = new Template(source);
  } catch (e) {
    throw new ModelLoadError(`chat template does not parse: ${(e as Error).message}`);
  }
  const readsTools = templateReadsTools(source);
  return {
    toolFormat: readsTools ? toolFamilyOf(source) : "hermes",
    render(messages: ChatMessage[], addGenerationPrompt: boolean, tools?: ToolDefinition[]): string {
      const given = tools !== undefined && tools.length > 0;
      try {
        return compiled.render({
          // Copies, so a template cannot mutate the caller's messages.
          messages: readsTools
            ? messages.map(templateMessage)
            : withToolsAsText(messages, given ? tools : []),
          ...(readsTools && given ? { tools: structuredClone(tools) } : {}),
          add_generation_prompt: addGenerationPrompt,
          bos_token: tokens.bosToken,
          eos_token: tokens.eosToken,
        });
      } catch (e) {
        throw new ChatTemplateError(`chat template failed to render: ${(e as Error).message}`);
      }
    },
  };
}

/** Whether a template renders tools itself (the Llama 3.x, Qwen2.5 and Mistral ones read `tools`). */
export function templateReadsTools(source: string): boolean {
  return /\btools\b/.test(source);
}

/** The tool-call format of a template's family, from its text. */
export function toolFamilyOf(source: string): ToolFormat {
  if (source.includes("[TOOL_CALLS]") || source.includes("[AVAILABLE_TOOLS]")) return "mistral";
  if (source.includes("<|start_header_id|>") || source.includes("<|python_tag|>")) return "llama3";
  return "hermes";
}

/** Arguments as an object where they are JSON text of one: the templates write them with tojson. */
function argumentsValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A message as tool-reading templates expect it; keys only where the message has them. */
function templateMessage(m: ChatMessage): Record<string, unknown> {
  const out: Record<string, unknown> = { role: m.role, content: m.content };
  if (m.tool_calls) {
    out.tool_calls = m.tool_calls.map((c) => ({
      id: c.id,
      type: c.type,
      function: { name: c.function.name, arguments: argumentsValue(c.function.arguments) },
    }));
  }
  if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
  return out;
}

/** The text of one call in the default (Hermes) format; also what constrained decoding produces. */
export function hermesCallText(c: ToolCall): string {
  const args = argumentsValue(c.function.arguments);
  return `<tool_call>\n{"name": ${JSON.stringify(c.function.name)}, "arguments": ${
    JSON.stringify(args)
  }}\n</tool_call>`;
}

/**
 * The system-prompt text that describes tools to a template that does not read them (README,
 * "Tool calling"): the definitions one JSON object a line, and the Hermes call format.
 */
export function toolSystemText(tools: ToolDefinition[]): string {
  return "# Tools\n\nYou can call the functions listed between <tools> and </tools> to help with the request.\n\n" +
    `<tools>\n${tools.map((t) => JSON.stringify(t)).join("\n")}\n</tools>\n\n` +
    "To call one, write a JSON object with its name and arguments between <tool_call> and </tool_call>:\n" +
    '<tool_call>\n{"name": "function name", "arguments": {"argument": "value"}}\n</tool_call>';
}

/**
 * Tools, tool calls and tool results as plain text, for templates that know none of them: the tool
 * description joins the system prompt, calls become Hermes <tool_call> blocks and results user turns
 * in <tool_response> tags (as Qwen2.5 renders them).
 */
function withToolsAsText(messages: ChatMessage[], tools: ToolDefinition[]): Record<string, unknown>[] {
  const out = messages.map((m): Record<string, unknown> => {
    if (m.role === "tool") {
      return { role: "user", content: `<tool_response>\n${m.content}\n</tool_response>` };
    }
    if (m.tool_calls && m.tool_calls.length > 0) {
      const calls = m.tool_calls.map(hermesCallText).join("\n");
      return { role: m.role, content: m.content === "" ? calls : `${m.content}\n${calls}` };
    }
    return { role: m.role, content: m.content };
  });
  if (tools.length === 0) return out;
  const text = toolSystemText(tools);
  if (out[0]?.role === "system") out[0] = { role: "system", content: `${out[0].content}\n\n${text}` };
  else out.unshift({ role: "system", content: text });
  return out;
}
