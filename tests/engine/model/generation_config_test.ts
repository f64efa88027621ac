// generation_config.json sampling defaults: parsed from a Hugging Face folder, applied by the HTTP layer
// to the fields a request leaves out (an explicit field wins), and in effect on a real server.

import { assert, assertEquals } from "../../helpers/assert.ts";
import { join } from "node:path";
import { generationDefaults } from "../../../engine/model/hf.ts";
import { loadModel } from "../../../engine/model/load.ts";
import { makeModel } from "../../../tools/make_model.ts";
import { post, withFake } from "../../helpers/fake_engine.ts";
import { startServerProcess } from "../../helpers/server_process.ts";

const root = await Deno.makeTempDir({ prefix: "ragtime_genconfig_test_" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(root, { recursive: true });
  } catch {
    // already gone
  }
});

/** A tiny random Llama folder whose generation_config.json is `gen` (with its token ids). */
async function folder(name: string, gen: Record<string, unknown>): Promise<string> {
  const dir = join(root, name);
  await makeModel({ preset: "tiny-llama", out: dir, seed: 5, dtype: "f32" });
  const path = join(dir, "generation_config.json");
  const ids = JSON.parse(await Deno.readTextFile(path));
  await Deno.writeTextFile(path, JSON.stringify({ ...ids, ...gen }));
  return dir;
}

Deno.test("generationDefaults: vLLM's fields, do_sample not read, unusable values dropped", () => {
  assertEquals(generationDefaults(null), {});
  assertEquals(generationDefaults({ bos_token_id: 1, eos_token_id: 2 }), {});
  assertEquals(
    generationDefaults({
      do_sample: false,
      temperature: 0.6,
      top_p: 0.9,
      top_k: 20,
      min_p: 0.05,
      repetition_penalty: 1.1,
      max_new_tokens: 64,
      num_beams: 4,
    }),
    { temperature: 0.6, topP: 0.9, topK: 20, minP: 0.05, repetitionPenalty: 1.1, maxNewTokens: 64 },
  );
  assertEquals(
    generationDefaults({
      temperature: -1,
      top_p: 0,
      top_k: 2.5,
      min_p: 2,
      repetition_penalty: 0,
      max_new_tokens: 0,
    }),
    {},
  );
  assertEquals(generationDefaults({ temperature: "0.7", top_k: null }), {});
});

Deno.test("HF folder: generation_config.json reaches the tokenizer-side load (the HTTP thread's)", async () => {
  const dir = await folder("load", { temperature: 0, top_k: 7, max_new_tokens: 9 });
  const m = await loadModel(dir, { skipWeights: true });
  assertEquals(m.generation, { temperature: 0, topK: 7, maxNewTokens: 9 });
  // The built-in model's file asks for temperature 0.8 and top_p 0.95.
  const mini = await loadModel(new URL("../../../models/ragtime-mini", import.meta.url).pathname, {
    skipWeights: true,
  });
  assertEquals(mini.generation, { temperature: 0.8, topP: 0.95 });
});

Deno.test("HTTP: omitted fields take the model's defaults, explicit fields win", async () => {
  await withFake({}, async (s, engine) => {
    engine.info.generation = { temperature: 0.3, topP: 0.5, topK: 7, minP: 0.1, repetitionPenalty: 1.2 };
    const chat = (body: Record<string, unknown>) =>
      post(`${s.baseURL}/chat/completions`, { messages: [{ role: "user", content: "Hi" }], ...body });

    assertEquals((await chat({})).status, 200);
    const p0 = engine.requests[0].params;
    assertEquals([p0.temperature, p0.topP, p0.topK, p0.minP, p0.repetitionPenalty], [0.3, 0.5, 7, 0.1, 1.2]);
    assertEquals(p0.maxTokens, 512 - engine.requests[0].promptIds.length, "no max_new_tokens: the room left");

    const explicit = { temperature: 0, top_p: 1, top_k: -1, min_p: 0, repetition_penalty: 1 };
    assertEquals((await chat(explicit)).status, 200);
    const p1 = engine.requests[1].params;
    assertEquals([p1.temperature, p1.topP, p1.topK, p1.minP, p1.repetitionPenalty], [0, 1, -1, 0, 1]);

    // One field given, the rest defaulted; /v1/completions too.
    const r = await post(`${s.baseURL}/completions`, { prompt: "Hi", top_k: 3 });
    assertEquals(r.status, 200);
    const p2 = engine.requests[2].params;
    assertEquals([p2.temperature, p2.topK], [0.3, 3]);
  });
});

Deno.test("HTTP: max_new_tokens is the default max_tokens, bounded by the room the prompt leaves", async () => {
  await withFake({ engine: { maxContext: 64 } }, async (s, engine) => {
    engine.info.generation = { maxNewTokens: 10 };
    const complete = (body: Record<string, unknown>) => post(`${s.baseURL}/completions`, body);
    assertEquals((await complete({ prompt: "Hi" })).status, 200);
    assertEquals(engine.requests[0].params.maxTokens, 10);
    assertEquals((await complete({ prompt: "Hi", max_tokens: 20 })).status, 200);
    assertEquals(engine.requests[1].params.maxTokens, 20, "explicit max_tokens wins");
    assertEquals((await complete({ prompt: "x".repeat(60) })).status, 200);
    assertEquals(engine.requests[2].params.maxTokens, 64 - engine.requests[2].promptIds.length);
  });
});

Deno.test("HTTP: without generation defaults, OpenAI's (temperature 1, no truncation)", async () => {
  await withFake({}, async (s, engine) => {
    assertEquals((await post(`${s.baseURL}/completions`, { prompt: "Hi" })).status, 200);
    const p = engine.requests[0].params;
    assertEquals([p.temperature, p.topP, p.topK, p.minP, p.repetitionPenalty], [1, 1, 0, 0, 1]);
  });
});

Deno.test({
  name: "real server: a folder asking for greedy decoding and 6 tokens gets them when the request is silent",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await folder("serve", { do_sample: true, temperature: 0, max_new_tokens: 6 });
    const srv = await startServerProcess({
      args: ["--model", dir, "--max-model-len", "128", "--max-seqs", "4"],
    });
    try {
      assert(
        srv.output().includes(
          "sampling defaults from generation_config.json for fields a request leaves out: temperature=0, max_tokens=6",
        ),
        srv.output(),
      );
      const complete = async (body: Record<string, unknown>) => {
        const r = await post(`${srv.baseURL}/completions`, {
          prompt: "Once upon a time",
          ignore_eos: true,
          ...body,
        });
        assertEquals(r.status, 200);
        const j = await r.json();
        return { text: j.choices[0].text as string, tokens: j.usage.completion_tokens as number };
      };
      const greedy = await complete({ temperature: 0, max_tokens: 6 });
      // Silent requests: greedy (so identical, whatever the random seed) and 6 tokens long.
      const silent = [await complete({}), await complete({})];
      assertEquals(silent, [greedy, greedy]);
      assertEquals(greedy.tokens, 6);
      // Explicit fields win: more tokens, and sampling (some seed leaves the greedy path).
      assertEquals((await complete({ max_tokens: 9 })).tokens, 9);
      const sampled = [];
      for (let seed = 1; seed <= 6; seed++) sampled.push((await complete({ temperature: 2, seed })).text);
      assert(sampled.some((t) => t !== greedy.text), `temperature 2 never left the greedy path: ${sampled}`);
    } finally {
      await srv.stop();
    }
  },
});
