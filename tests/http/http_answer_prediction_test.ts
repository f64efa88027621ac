// A chat's next prompt predicted while its answer is generated (http/answer_prediction.ts): which
// requests send predictions, and that the last one is where the conversation's next prompt starts.
import assert from "node:assert/strict";
import type { AnswerCache } from "../../engine/protocol.ts";
import { PREDICT_EVERY_TOKENS } from "../../http/answer_prediction.ts";
import { type FakeEngine, post, readSse, withFake } from "../helpers/fake_engine.ts";

const REPLY = "Once upon a time a small fox found a very long road home.";
const conversation = [
  { role: "user", content: "Tell me a story." },
  { role: "assistant", content: "Which one?" },
  { role: "user", content: "Any." },
];

async function chat(baseURL: string, messages: object[], extra: Record<string, unknown> = {}) {
  const res = await post(`${baseURL}/chat/completions`, { messages, ...extra });
  if (extra.stream) return (await readSse(res)).data.length;
  return (await res.json()).choices[0].message.content as string;
}

const predictionsOf = (engine: FakeEngine, i: number) =>
  engine.predictions.filter((p) => p.id === engine.requests[i].id);

for (const stream of [false, true]) {
  Deno.test(`answer prediction (${stream ? "streamed" : "JSON"}): a continuing chat's predictions settle into its next prompt's start`, async () => {
    await withFake(
      { engine: { answerCache: "auto", reply: () => REPLY, tokensPerDelta: 1 } },
      async (s, engine) => {
        await chat(s.baseURL, conversation, { stream });
        assert.equal(engine.requests[0].predictsAnswer, true);
        const preds = predictionsOf(engine, 0);
        // One every PREDICT_EVERY_TOKENS answer tokens (one byte each here), then the final one.
        assert.ok(preds.length >= 2 && preds.length <= Math.ceil(REPLY.length / PREDICT_EVERY_TOKENS) + 1);
        const final = preds.at(-1)!;
        assert.equal(final.final, true);
        assert.ok(preds.slice(0, -1).every((p) => !p.final));
        // Each settled part grows, and none is contradicted later.
        for (let i = 1; i < preds.length; i++) {
          assert.ok(preds[i].ids.length > preds[i - 1].ids.length);
          assert.deepEqual(preds[i].ids.slice(0, preds[i - 1].ids.length), preds[i - 1].ids);
        }
        // The next turn resends the answer: its prompt starts with the final prediction, whole.
        const next = [...conversation, { role: "assistant", content: REPLY }, {
          role: "user",
          content: "More.",
        }];
        await chat(s.baseURL, next);
        const prompt = engine.requests[1].promptIds;
        assert.ok(final.ids.length > engine.requests[0].promptIds.length + REPLY.length / 2);
        assert.deepEqual(prompt.slice(0, final.ids.length), final.ids);
      },
    );
  });
}

Deno.test("answer prediction: which requests predict, by --answer-cache as the engine resolved it", async () => {
  const firstTurn = [{ role: "user", content: "Hi" }];
  const cases: [AnswerCache, object[], Record<string, unknown>, boolean][] = [
    ["auto", conversation, {}, true],
    // A first turn has not shown that the conversation comes back.
    ["auto", firstTurn, {}, false],
    ["on", firstTurn, {}, true],
    ["off", conversation, {}, false],
    // Tool calls come back as structured turns, not as the generated text.
    ["auto", conversation, {
      tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }],
    }, false],
  ];
  for (const [answerCache, messages, extra, predicts] of cases) {
    await withFake({ engine: { answerCache, reply: () => REPLY } }, async (s, engine) => {
      await chat(s.baseURL, messages, extra);
      const what = `${answerCache} ${JSON.stringify(messages).slice(0, 40)} ${Object.keys(extra)}`;
      assert.equal(engine.requests[0].predictsAnswer ?? false, predicts, what);
      assert.equal(predictionsOf(engine, 0).length > 0, predicts, what);
    });
  }
  // Completions never predict: their text does not come back as a chat turn.
  await withFake({ engine: { answerCache: "on", reply: () => REPLY } }, async (s, engine) => {
    await post(`${s.baseURL}/completions`, { prompt: "Hi" }).then((r) => r.json());
    assert.equal(engine.requests[0].predictsAnswer ?? false, false);
    assert.equal(engine.predictions.length, 0);
  });
});
