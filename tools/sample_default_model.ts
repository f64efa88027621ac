// Samples from the default model (models/ragtime-mini) through ragtime's own engine and prints them
// as markdown, for the model card. Nothing is edited or filtered.
//
//   deno run -A tools/sample_default_model.ts [--model PATH] [--tokens 80] [--seed 1]
//
// Every prompt runs greedy (temperature 0) and sampled (temperature 0.8, top_p 0.95, the seed), one
// request at a time, fp16 activations like the server. Completions are encoded as the completions
// route does (BOS first); the chat sample is rendered and encoded as the chat route does.

import { parseArgs } from "node:util";
import { type LocalEngine, startLocalEngine } from "../engine/local_engine.ts";
import { loadModel } from "../engine/model/load.ts";
import type { ChatMessage } from "../engine/model/types.ts";
import { type FinishReason, neutralSamplingParams, type SamplingParams } from "../engine/protocol.ts";

export const PROMPTS = [
  "It is a truth universally acknowledged",
  "In the beginning",
  "The hacker",
  "Elizabeth looked at Mr. Darcy and",
];
export const CHAT: ChatMessage[] = [{ role: "user", content: "Tell me about Mr. Darcy." }];
export const DEFAULT_MODEL_DIR = new URL("../models/ragtime-mini", import.meta.url).pathname;

export interface Sample {
  text: string;
  ids: number[];
  finishReason: FinishReason | "error";
  completionTokens: number;
}

async function run(local: LocalEngine, id: string, promptIds: number[], p: SamplingParams): Promise<Sample> {
  const events = await local.generate(id, promptIds, p);
  const ev = events[events.length - 1];
  const text = events.map((e) => (e.type === "delta" ? e.text : "")).join("");
  const ids = events.flatMap((e) => (e.type === "delta" ? e.tokenIds : []));
  if (ev.type === "error") {
    return { text: `[error ${ev.code}: ${ev.message}]`, ids, finishReason: "error", completionTokens: 0 };
  }
  if (ev.type !== "done") throw new Error("generate ended without a terminal event");
  return { text, ids, finishReason: ev.finishReason, completionTokens: ev.completionTokens };
}

/** A fenced block that no backtick run inside the text can close early. */
function fence(text: string): string {
  const longest = Math.max(2, ...(text.match(/`+/g) ?? []).map((s) => s.length));
  const f = "`".repeat(longest + 1);
  return `${f}text\n${text}\n${f}`;
}

async function main() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string", default: DEFAULT_MODEL_DIR },
      tokens: { type: "string", default: "80" },
      seed: { type: "string", default: "1" },
    },
  });
  const maxTokens = Number(values.tokens), seed = Number(values.seed);
  const model = await loadModel(values.model!);
  const local = await startLocalEngine(model, { dtype: "f16", kvCacheMb: 64, maxSeqs: 16 });
  const modes: { label: string; params: SamplingParams }[] = [
    { label: "temperature 0 (greedy)", params: neutralSamplingParams({ maxTokens }) },
    {
      label: `temperature 0.8, top_p 0.95, seed ${seed}`,
      params: neutralSamplingParams({ maxTokens, temperature: 0.8, topP: 0.95, seed }),
    },
  ];
  const out: string[] = [];
  const note = (s: Sample) =>
    `${s.completionTokens} tokens, finish_reason ${s.finishReason}` +
    (s.finishReason === "stop" ? " (end-of-sequence token)" : "");
  let n = 0;
  try {
    for (const prompt of PROMPTS) {
      out.push(`#### "${prompt}"`, "");
      const ids = model.tokenizer.encode(prompt, true);
      for (const m of modes) {
        const s = await run(local, `s${n++}`, ids, m.params);
        out.push(`${m.label}; ${note(s)}; the prompt is followed by the completion:`, "");
        out.push(fence(prompt + s.text), "");
      }
    }
    const text = model.chatTemplate.render(CHAT, true);
    const tok = model.tokenizer;
    const bos = tok.bosTokenId === null ? "" : tok.tokenText(tok.bosTokenId);
    const ids = tok.encode(text, !(bos !== "" && text.startsWith(bos)));
    out.push(`#### Chat: ${JSON.stringify(CHAT[0].content)}`, "");
    out.push("The rendered prompt (ChatML, as the chat route renders and encodes it):", "");
    out.push(fence(text), "");
    for (const m of modes) {
      const s = await run(local, `s${n++}`, ids, m.params);
      out.push(`${m.label}; ${note(s)}; the assistant message:`, "");
      out.push(fence(s.text), "");
    }
  } finally {
    await local.close();
  }
  console.log(out.join("\n"));
}

if (import.meta.main) await main();
