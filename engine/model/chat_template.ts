// Chat templates: the model's own Jinja template (tokenizer_config.json / chat_template.jinja) or a default.

import { Template } from "@huggingface/jinja";
import { type ChatMessage, type ChatTemplate, ModelLoadError } from "./types.ts";

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
  return {
    render(messages: ChatMessage[], addGenerationPrompt: boolean): string {
      try {
        return compiled.render({
          // Copies, so a template cannot mutate the caller's messages.
          messages: messages.map((m) => ({ ...m })),
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
