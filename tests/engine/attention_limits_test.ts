// What one PagedAttention call may hold (engine/attention_limits.ts), and what the runner does past it:
// shapes that would not fit are never captured, and a step that would not fit runs as several calls over
// its items, with the same tokens for every request as without the limit.

import { assert, assertEquals } from "../helpers/assert.ts";
import { attentionFits, type AttentionLimits } from "../../engine/attention_limits.ts";
import { type LongQueries } from "../../engine/protocol.ts";
import {
  outcomeOf,
  params,
  runAlone,
  startEngine,
  stories,
  STORY_TEXT,
  type Submission,
} from "../helpers/engine.ts";

/** llvmpipe's limits (this CPU machine's adapter), where the failures below were measured. */
const LLVMPIPE = { bindLimit: 128 * 2 ** 20, maxStorageBuffers: 32 };

Deno.test("attention limits: the calls that failed inside onnxruntime do not fit, those that ran do", () => {
  // 32 query heads, 8 KV heads of 64, decode steps (short kernel) at a 131072-token bound: 128 + 1
  // items ran, 207 + 1 and 254 + 1 needed 34 and 38 storage buffers, 256 + 1 overflowed onnxruntime's
  // SafeInt. The rule errs towards more calls: 128 items fit, 129 do not.
  const wide: AttentionLimits = { numHeads: 32, kvHeads: 8, headSize: 64, ...LLVMPIPE };
  assert(attentionFits(wide, 128, [2, 131072], false));
  assert(!attentionFits(wide, 208, [2, 131072], false));
  assert(!attentionFits(wide, 255, [2, 131072], false));
  assert(!attentionFits(wide, 257, [2, 131072], false));
  // The same at the H100's 4 GiB bindings: only the SafeInt limit is left (its 256-row decode failed).
  const h100: AttentionLimits = { ...wide, bindLimit: 2 ** 32 - 4, maxStorageBuffers: 10 };
  assert(attentionFits(h100, 255, [2, 131072], false));
  assert(!attentionFits(h100, 257, [2, 131072], false));
  // Scores in one binding fit whatever the device's binding count (those calls ran before the rule).
  assert(attentionFits({ ...h100, maxStorageBuffers: 4 }, 255, [2, 131072], false));
  assert(!attentionFits({ ...wide, maxStorageBuffers: 8 }, 9, [2, 131072], false));
  // 8 heads of 64 (query and KV) on the long-query kernel at a 65536-token bound: a 128-row prompt
  // session (4 items) needed 256 MiB of gathered K; 2 items are 128 MiB, the binding limit.
  const narrow: AttentionLimits = { numHeads: 8, kvHeads: 8, headSize: 64, ...LLVMPIPE };
  assert(!attentionFits(narrow, 4, [64, 65536], true));
  assert(attentionFits(narrow, 2, [64, 65536], true));
  // The short kernel gathers nothing: 257 decode items at that bound fit (its scores need 5 bindings).
  assert(attentionFits(narrow, 257, [2, 65536], false));
  assert(!attentionFits(narrow, 257, [32, 65536], true));
});

/** Requests whose contexts grow past 256 tokens, arriving together: steps of many items and long bounds. */
async function requests(): Promise<Submission[]> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  return Array.from({ length: 10 }, (_, i) => {
    const promptIds = [1, ...story.slice(i * 13, i * 13 + 20 + i * 37)];
    const p = i % 2 === 0 ? params({ maxTokens: 40 + 3 * i, ignoreEos: true }) : params({
      maxTokens: 40 + 3 * i,
      ignoreEos: true,
      temperature: 0.9,
      seed: 7 + i,
    });
    return { id: `r${i}`, promptIds, params: p };
  });
}

for (const mode of ["off", "prompts"] as LongQueries[]) {
  Deno.test(`attention limits (long queries ${mode}): steps past them run as several calls, same tokens`, async () => {
    const reqs = await requests();
    const solo = await startEngine({ longQueries: mode });
    let alone: Map<string, ReturnType<typeof outcomeOf>>;
    try {
      alone = await runAlone(solo, reqs);
      assertEquals(solo.runner.attentionSplits, 0);
    } finally {
      await solo.close();
    }
    const h = await startEngine({ longQueries: mode });
    // stories260K: 8 query heads, 4 KV heads of 8 (16 padded). Short kernel: at most 6 bindings of 32 KiB
    // of scores, items x bound <= 6144 (the 16-row decode session at the 256 bound, not at 512). Long
    // kernel: items x bound <= 256 (one item at a 256 bound).
    h.runner.attnLimits = { ...h.runner.attnLimits, bindLimit: 32768, maxStorageBuffers: 22 };
    const lim = h.runner.attnLimits;
    const paths: string[] = [];
    h.engine.onStep = (st) => paths.push(st.path);
    try {
      const batched = await Promise.all(reqs.map(async (r, i) => {
        await new Promise((res) => setTimeout(res, 5 * i));
        return [r.id, outcomeOf(await h.generate(r.id, r.promptIds, r.params))] as const;
      }));
      for (const [id, o] of batched) assertEquals(o, alone.get(id), id);
      assert(h.runner.attentionSplits > 0, "no step ran as several calls");
      assert(paths.includes("split"), "no step ran in parts");
      // Decode steps still replay captured sessions, of the shapes that fit: a short request alone.
      paths.length = 0;
      const short = reqs[0].promptIds.slice(0, 12);
      assertEquals(
        outcomeOf(await h.generate("short", short, params({ maxTokens: 20, ignoreEos: true }))).ids.length,
        20,
      );
      assert(paths.includes("captured"), "no decode step replayed");
      const shapes = h.runner.capturedShapes;
      assert(shapes.some((c) => c.kind === "decode"), "no decode session was captured");
      for (const c of shapes) {
        const items = c.kind === "decode" ? c.batch + 1 : c.batch;
        const q = c.kind === "decode" ? 2 : c.query!;
        assert(attentionFits(lim, items, [q, c.kvCap], c.kind === "prompt"), `captured ${JSON.stringify(c)}`);
      }
    } finally {
      await h.close();
    }
  });
}
