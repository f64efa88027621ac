// Structured output: response_format enforced by grammar-constrained decoding (engine/grammar.ts),
// through the official openai client against the real server, and inside the engine.

import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";
import { assert, assertEquals } from "../helpers/assert.ts";
import { idsOf, params, startEngine, startLocalEngine, stories, textOf } from "../helpers/engine.ts";
import { randomModel } from "../helpers/random_model.ts";
import { loadModel } from "../../engine/model/load.ts";
import type { LoadedModel } from "../../engine/model/types.ts";
import { withServerProcess } from "../helpers/server_process.ts";
import type { GenerateEvent, GrammarSpec } from "../../engine/protocol.ts";

const Person = z.object({
  name: z.string().max(24),
  age: z.number().int().min(0).max(120),
  tags: z.array(z.string().max(12)).max(3),
  color: z.enum(["red", "green", "blue"]),
  pet: z.object({ kind: z.enum(["cat", "dog"]), legs: z.number().int().min(0).max(8) }).nullable(),
});

Deno.test("openai parse with a zod schema: the output parses and validates, every seed; bad schemas get 400", async () => {
  await withServerProcess({}, async (s) => {
    const client = new OpenAI({ baseURL: s.baseURL, apiKey: "unused", maxRetries: 0 });
    const messages = [{ role: "user" as const, content: "Tell me about a person." }];
    for (const seed of [1, 2, 3]) {
      const r = await client.chat.completions.parse({
        model: "stories260K",
        messages,
        response_format: zodResponseFormat(Person, "person"),
        max_tokens: 96,
        temperature: 1,
        seed,
      });
      const msg = r.choices[0].message;
      assertEquals(r.choices[0].finish_reason, "stop", msg.content ?? "");
      assert(msg.parsed !== null, `not parsed: ${msg.content}`);
      Person.parse(JSON.parse(msg.content!));
    }

    // json_object: any JSON object, streamed.
    const stream = await client.chat.completions.create({
      model: "stories260K",
      messages,
      response_format: { type: "json_object" },
      max_tokens: 40,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    const obj = JSON.parse(text);
    assert(typeof obj === "object" && obj !== null && !Array.isArray(obj), text);

    // A schema xgrammar rejects is a 400 naming response_format, and the next request still works.
    for (const schema of [{ type: "foo" }, { $ref: "#/$defs/missing" }]) {
      const res = await fetch(`${s.baseURL}/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          messages,
          response_format: { type: "json_schema", json_schema: { name: "x", schema } },
        }),
      });
      assertEquals(res.status, 400);
      const { error } = await res.json();
      assertEquals(error.param, "response_format");
      assertEquals(error.type, "invalid_request_error");
    }
    const again = await client.chat.completions.parse({
      model: "stories260K",
      messages,
      response_format: zodResponseFormat(Person, "person"),
      max_tokens: 96,
      seed: 9,
    });
    Person.parse(again.choices[0].message.parsed);
  });
});

Deno.test("a constrained request sharing steps leaves an unconstrained request's tokens unchanged", async () => {
  const h = await startEngine();
  try {
    const tk = (await stories()).tokenizer;
    const prompt = tk.encode("Once upon a time", true);
    const plain = [params({ maxTokens: 40 }), params({ maxTokens: 40, temperature: 1, seed: 5 })];
    const alone = [];
    for (const [i, p] of plain.entries()) alone.push(idsOf(await h.generate(`alone${i}`, prompt, p)));
    const grammar: GrammarSpec = {
      param: "response_format",
      type: "json_schema",
      schema: JSON.stringify(z.toJSONSchema(Person)),
    };
    const shared = await Promise.all<GenerateEvent[]>([
      h.generate("c0", prompt, params({ maxTokens: 60, temperature: 1, seed: 1, grammar })),
      ...plain.map((p, i) => h.generate(`shared${i}`, prompt, p)),
      h.generate(
        "c1",
        prompt,
        params({ maxTokens: 60, grammar: { param: "response_format", type: "json_object" } }),
      ),
    ]);
    assertEquals(shared.slice(1, 3).map(idsOf), alone);
    Person.parse(JSON.parse(textOf(shared[0])));
    JSON.parse(textOf(shared[3]));
  } finally {
    await h.close();
  }
});

async function constrainedRuns(model: LoadedModel): Promise<void> {
  const h = await startLocalEngine(model, { maxModelLen: 256 });
  try {
    const prompt = model.tokenizer.encode("Tell me about a person.", true);
    const grammar: GrammarSpec = {
      param: "response_format",
      type: "json_schema",
      schema: JSON.stringify(z.toJSONSchema(Person)),
    };
    const runs = await Promise.all(
      [1, 2, 3].map((seed) =>
        h.generate(`s${seed}`, prompt, params({ maxTokens: 80, temperature: 1, seed, grammar }))
      ),
    );
    for (const ev of runs) {
      const done = ev[ev.length - 1];
      assert(done.type === "done" && done.finishReason === "stop", `${JSON.stringify(done)} ${textOf(ev)}`);
      Person.parse(JSON.parse(textOf(ev)));
    }
  } finally {
    await h.close();
  }
}

const MINI = new URL("../../models/ragtime-mini", import.meta.url).pathname;

Deno.test("constrained output validates on the built-in model (ragtime-mini)", async () => {
  await constrainedRuns(await loadModel(MINI));
});

Deno.test("constrained output validates on random weights (ragtime-mini's tokenizer)", async () => {
  const mini = await loadModel(MINI);
  const random = randomModel("llama", 7, {
    vocabSize: mini.config.vocabSize,
    eosTokenIds: mini.config.eosTokenIds,
  });
  await constrainedRuns({ ...random, tokenizer: mini.tokenizer, chatTemplate: mini.chatTemplate });
});
