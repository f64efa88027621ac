// Issue 13's exactness check: caching never changes a request's tokens. KV reused from the prefix
// cache must equal recomputed KV bit for bit, however the prompt was cut into chunks around it; and
// greedy and seeded requests (logprobs included) give the same outputs with caching on as off,
// alone, batched, across conversation turns, and with a pool small enough to evict and preempt.

import * as ort from "onnxruntime-web/webgpu";
import { assert, assertEquals } from "../helpers/assert.ts";
import { readBufferU16 } from "../helpers/gpu_read.ts";
import {
  type Harness,
  idsOf,
  type Outcome,
  outcomeOf,
  params,
  PUBLISHED_GREEDY,
  startEngine,
  stories,
  STORY_TEXT,
  type Submission,
  TEST_LONG_QUERIES,
  textOf,
  tracePlans,
} from "../helpers/engine.ts";
import { createEngine, type LocalEngineOptions } from "../../engine/local_engine.ts";
import type { ModelRunner, StepInputs, StepPath } from "../../engine/model_runner.ts";
import { BATCH_INVARIANT_ITEM_TOKENS, type GenerateEvent } from "../../engine/protocol.ts";

/** stories260K with the other tests' settings, prefix caching on or off. */
function startCaching(prefixCaching: boolean, opts: LocalEngineOptions = {}): Promise<Harness> {
  return startEngine({ ...opts, prefixCaching });
}

// ---- KV bits, at the runner ------------------------------------------------------------------------

interface Item {
  tokens: number[];
  table: number[];
  start: number;
  numTokens: number;
}

/** One step over the items (the engine's flat layout), greedy; logits read back if asked for. */
async function step(
  runner: ModelRunner,
  items: Item[],
  wantLogits: boolean,
): Promise<{ logits: Float32Array | null; path: StepPath }> {
  const T = items.reduce((n, it) => n + it.numTokens, 0);
  const maxBlocks = Math.max(...items.map((it) => it.table.length));
  const s: StepInputs = {
    inputIds: new Int32Array(T),
    idSrc: new Int32Array(T).fill(-1),
    cuSeqlens: new Int32Array(items.length + 1),
    pastSeqlens: new Int32Array(items.length),
    blockTable: new Int32Array(items.length * maxBlocks),
    maxBlocks,
    sampleRows: Int32Array.from(items.map((_, b) => b)),
    sampleU: new Float32Array(items.length).fill(-1),
    invTemp: new Float32Array(items.length).fill(1),
    sampleFilters: new Float32Array(3 * items.length).map((_, i) => (i % 3 === 1 ? 1 : 0)),
    sampleEdits: new Float32Array(0),
    wantLogits,
  };
  let t = 0;
  items.forEach((it, b) => {
    for (let p = it.start; p < it.start + it.numTokens; p++) s.inputIds[t++] = it.tokens[p];
    s.cuSeqlens[b + 1] = t;
    s.pastSeqlens[b] = it.start;
    s.blockTable.set(it.table, b * maxBlocks);
    s.sampleRows[b] = t - 1;
  });
  const handle = await runner.run(s);
  return { logits: (await runner.read(handle)).logits, path: handle.path };
}

/**
 * Prefills tokens[from, to) in chunks of `chunk`, beside `companion` if given. Returns the last
 * step's logits, and the paths the steps took (one-token steps replay captured sessions, as the
 * engine's decodes do, when no logits are read back).
 */
async function prefillChunks(
  runner: ModelRunner,
  vocab: number,
  r: { tokens: number[]; table: number[]; from: number; to: number; chunk: number },
  companion?: Item,
): Promise<{ logits: Float32Array; paths: StepPath[] }> {
  let logits = new Float32Array(0);
  const paths: StepPath[] = [];
  for (let p = r.from; p < r.to; p += r.chunk) {
    const item = { tokens: r.tokens, table: r.table, start: p, numTokens: Math.min(r.chunk, r.to - p) };
    const last = p + r.chunk >= r.to;
    const out = await step(runner, companion ? [item, companion] : [item], last);
    if (out.logits) logits = out.logits.slice(0, vocab);
    paths.push(out.path);
  }
  return { logits, paths };
}

Deno.test("KV read from cached blocks equals KV recomputed from position 0, bit for bit", async () => {
  const model = await stories();
  const { runner } = await createEngine(model, {
    dtype: "f32",
    kvCacheMb: 8,
    graphCache: null,
    maxModelLen: 512,
    graphCapture: true,
    graphCaptureEager: false,
  });
  try {
    const device = await ort.env.webgpu.device as GPUDevice;
    const V = model.config.vocabSize, bs = runner.blockSize, C = BATCH_INVARIANT_ITEM_TOKENS;
    const story = model.tokenizer.encode(STORY_TEXT, false);
    const prompt = [1, ...story.slice(0, 199)];
    const other = [1, ...story.slice(250, 270)];
    const L = prompt.length, nb = Math.ceil(L / bs);
    let nextBlock = 0;
    const newTable = (n: number) => Array.from({ length: n }, () => nextBlock++);

    const prefill = (tokens: number[], table: number[], from: number, to: number, chunk: number, w?: Item) =>
      prefillChunks(runner, V, { tokens, table, from, to, chunk }, w);

    // The reference: the whole prompt alone, in the engine's chunks from position 0 (caching off).
    const ref = newTable(nb);
    const refLogits = (await prefill(prompt, ref, 0, L, C)).logits;

    // A request computed the first 96 positions, the first 40 of them as one-token decodes (its
    // answer's KV), the rest in chunks; a second request reuses those 6 blocks and prefills from
    // position 96, its chunk boundaries shifted by 96 mod 31, beside an unrelated sequence.
    const shared = newTable(6);
    const decodes = await prefill(prompt, shared, 0, 40, 1);
    // Those one-token steps ran as the engine's decodes do, replayed from captured sessions.
    assertEquals(decodes.paths.filter((p) => p === "captured").length, 39);
    await prefill(prompt, shared, 40, 96, C);
    const reuse = [...shared, ...newTable(nb - 6)];
    const otherItem = { tokens: other, table: newTable(2), start: 0, numTokens: other.length };
    const reuseLogits = (await prefill(prompt, reuse, 96, L, C, otherItem)).logits;

    // The same after a 16-token prefix computed in 16-token chunks (any block boundary).
    const reuse16 = newTable(nb);
    await prefill(prompt, reuse16, 0, 16, 16);
    const reuse16Logits = (await prefill(prompt, reuse16, 16, L, C)).logits;

    const buffers = await Promise.all(runner.kvBuffers().map((b) => readBufferU16(device, b)));
    const rowLen = buffers[0].length / ((runner.numBlocks + 1) * bs);
    const kvOf = (table: number[]) =>
      buffers.map((buf) => {
        const rows = new Uint16Array(L * rowLen);
        for (let p = 0; p < L; p++) {
          const at = (table[Math.floor(p / bs)] * bs + (p % bs)) * rowLen;
          rows.set(buf.subarray(at, at + rowLen), p * rowLen);
        }
        return rows;
      });
    const refKv = kvOf(ref);
    const nonzero = refKv.reduce((n, k) => n + k.filter((x) => x !== 0).length, 0);
    assert(nonzero > L * refKv.length * rowLen / 4, `reference KV mostly zero (${nonzero})`);
    for (
      const [name, table, logits] of [["reuse", reuse, reuseLogits], [
        "reuse16",
        reuse16,
        reuse16Logits,
      ]] as const
    ) {
      const kv = kvOf(table);
      const diff: string[] = [];
      kv.forEach((k, layer) => {
        const i = k.findIndex((x, j) => x !== refKv[layer][j]);
        if (i >= 0) diff.push(`buffer ${layer} from position ${Math.floor(i / rowLen)}`);
      });
      assertEquals(diff, [], `${name}: KV differs`);
      assert(logits.every((x, j) => Object.is(x, refLogits[j])), `${name}: last logits differ`);
    }
  } finally {
    await runner.close();
  }
});

// ---- Outputs, through the engine ---------------------------------------------------------------------

/** A shared 101-token system prompt, then a question of 0..40 tokens; greedy and seeded, some with logprobs. */
async function buildRequests(): Promise<Submission[]> {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const system = [1, ...story.slice(0, 100)];
  const reqs: Submission[] = [];
  for (let i = 0; i < 12; i++) {
    const question = story.slice(120 + 23 * i, 120 + 23 * i + ((i * 7) % 41));
    const promptIds = [...system, ...question];
    const maxTokens = 12 + (i % 4);
    reqs.push({
      id: `g${i}`,
      promptIds,
      params: params({ maxTokens, ignoreEos: true, logprobs: i % 3 === 0 ? 3 : null }),
    });
    reqs.push({
      id: `s${i}`,
      promptIds,
      params: params({
        maxTokens,
        ignoreEos: true,
        temperature: 0.9,
        seed: 500 + i,
        topK: i % 2 ? 20 : 0, // CPU sampling for odd i, GPU for even
        logprobs: i % 4 === 1 ? 2 : null,
      }),
    });
  }
  return reqs;
}

interface Got {
  outcome: Outcome;
  /** Logprobs as returned, to compare logits bit for bit where they were asked for. */
  logprobs: string;
  cached: number;
}

function gotOf(events: GenerateEvent[]): Got {
  const done = events[events.length - 1];
  assert(done.type === "done", `ended with ${JSON.stringify(done)}`);
  const logprobs = JSON.stringify(events.flatMap((e) => (e.type === "delta" ? e.logprobs ?? [] : [])));
  return { outcome: outcomeOf(events), logprobs, cached: done.cachedPromptTokens ?? -1 };
}

async function runOneByOne(h: Harness, reqs: Submission[]): Promise<Map<string, Got>> {
  const out = new Map<string, Got>();
  for (const r of reqs) out.set(r.id, gotOf(await h.generate(r.id, r.promptIds, r.params)));
  return out;
}

async function runTogether(h: Harness, reqs: Submission[], perStep: number): Promise<Map<string, Got>> {
  const pending: Promise<[string, Got]>[] = [];
  let next = 0;
  const submit = (n: number) => {
    for (; n > 0 && next < reqs.length; n--, next++) {
      const r = reqs[next];
      pending.push(h.generate(r.id, r.promptIds, r.params).then((ev) => [r.id, gotOf(ev)]));
    }
  };
  h.engine.onStep = () => submit(perStep);
  submit(perStep);
  while (next < reqs.length) await new Promise((r) => setTimeout(r, 10));
  const out = new Map(await Promise.all(pending));
  h.engine.onStep = null;
  return out;
}

function compare(name: string, got: Map<string, Got>, ref: Map<string, Got>) {
  const bad: string[] = [];
  for (const [id, r] of ref) {
    const g = got.get(id)!;
    if (JSON.stringify(g.outcome) !== JSON.stringify(r.outcome)) {
      bad.push(`${id}: ${JSON.stringify(g.outcome.ids)} vs ${JSON.stringify(r.outcome.ids)} uncached`);
    } else if (g.logprobs !== r.logprobs) bad.push(`${id}: same tokens, different logprobs`);
  }
  assert(
    bad.length === 0,
    `${name}: ${bad.length} of ${ref.size} differ with caching on:\n${bad.join("\n")}`,
  );
}

let reference: Promise<{ reqs: Submission[]; off: Map<string, Got> }> | null = null;
/** Every request alone on an engine without prefix caching. */
function uncached() {
  reference ??= (async () => {
    const reqs = await buildRequests();
    const h = await startCaching(false);
    try {
      const off = await runOneByOne(h, reqs);
      const st = h.engine.stats();
      assertEquals([st.prefixCacheQueriesTotal, st.prefixCacheHitsTotal, st.kvBlocksCached], [0, 0, 0]);
      for (const g of off.values()) assertEquals(g.cached, 0);
      return { reqs, off };
    } finally {
      await h.close();
    }
  })();
  return reference;
}

Deno.test("caching on: one by one, every request after the first reuses the system prompt; same outputs", async () => {
  const { reqs, off } = await uncached();
  const h = await startCaching(true);
  try {
    const on = await runOneByOne(h, reqs);
    compare("one by one", on, off);
    // The system prompt fills 6 blocks; a request with the same whole prompt as the one before
    // reuses all of it but its last token's block.
    assertEquals(on.get("g0")!.cached, 0);
    for (const r of reqs.slice(1)) {
      const cached = on.get(r.id)!.cached;
      assert(cached >= 96 && cached % 16 === 0 && cached < r.promptIds.length, `${r.id}: ${cached} cached`);
    }
    const st = h.engine.stats();
    const cachedTotal = [...on.values()].reduce((n, g) => n + g.cached, 0);
    assertEquals(st.prefixCacheHitsTotal, cachedTotal);
    assertEquals(st.prefixCacheQueriesTotal, reqs.reduce((n, r) => n + r.promptIds.length, 0));
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);
    assert(st.kvBlocksCached! > 6, `${st.kvBlocksCached} blocks cached`);
  } finally {
    await h.close();
  }
});

Deno.test("caching on: requests batched as they arrive reuse blocks still being written; same outputs", async () => {
  const { reqs, off } = await uncached();
  const h = await startCaching(true);
  try {
    const plans = tracePlans(h.engine);
    const on = await runTogether(h, reqs, 3);
    compare("batched", on, off);
    // Requests were admitted at a cached offset while others were in flight.
    const reused = plans.flatMap((p) =>
      p.items.filter((it) => it.start >= 96 && it.start === on.get(it.id)?.cached)
    );
    assert(reused.length >= 10, `only ${reused.length} admissions at a cached offset`);
    assert(Math.max(...plans.map((p) => p.items.length)) >= 8, "requests did not share steps");
  } finally {
    await h.close();
  }
});

Deno.test("caching on: a 16-block pool evicts and preempts; same outputs", async () => {
  const { reqs, off } = await uncached();
  // 16 usable blocks (the runner keeps one more for its padding item): 2048 bytes per block here.
  const h = await startCaching(true, { kvCacheMb: (17 * 2048 * 10) / 2 ** 20 });
  try {
    assertEquals(h.engine.stats().kvBlocksTotal, 16);
    const on = await runTogether(h, reqs, 4);
    compare("16-block pool", on, off);
    const st = h.engine.stats();
    assert(st.preemptionsTotal > 0, "no preemption");
    assert(st.prefixCacheHitsTotal! > 0, "no cache hit");
    assertEquals([st.running, st.waiting, st.kvBlocksUsed], [0, 0, 0]);
    assert(st.kvBlocksCached! <= 16);
    // The pool is consistent afterwards: a last request reuses what is left and runs to the same end.
    const last = reqs[5];
    const again = gotOf(await h.generate("again", last.promptIds, last.params));
    assertEquals(again.outcome, off.get(last.id)!.outcome);
  } finally {
    await h.close();
  }
});

Deno.test("a conversation's next turn reuses the previous turn, answer included; same outputs", async () => {
  const story = (await stories()).tokenizer.encode(STORY_TEXT, false);
  const turns = async (h: Harness) => {
    const q1 = [1, ...story.slice(0, 70)];
    const t1 = gotOf(await h.generate("t1", q1, params({ maxTokens: 40, ignoreEos: true })));
    const q2 = [...q1, ...t1.outcome.ids, ...story.slice(200, 230)];
    const t2 = gotOf(await h.generate("t2", q2, params({ maxTokens: 20, ignoreEos: true, logprobs: 2 })));
    return { t1, t2, q2 };
  };
  const off = await (async () => {
    const h = await startCaching(false);
    try {
      return await turns(h);
    } finally {
      await h.close();
    }
  })();
  const h = await startCaching(true);
  try {
    const on = await turns(h);
    assertEquals([on.t1.outcome, on.t2.outcome], [off.t1.outcome, off.t2.outcome]);
    assertEquals(on.t2.logprobs, off.t2.logprobs);
    // Turn 1 wrote KV for its 71 prompt tokens and 39 of its 40 answer tokens: 6 full blocks. In
    // long-query mode "prompts" an answer's KV (short kernel) is not a prompt's (long kernel): the
    // 4 blocks of turn 1's prompt.
    assertEquals(on.t2.cached, TEST_LONG_QUERIES === "prompts" ? 64 : 96);
  } finally {
    await h.close();
  }
});

Deno.test("stories260K: a prompt continuing the published text from cached decode blocks goes on as published", async () => {
  const h = await startCaching(true);
  try {
    const tk = h.model.tokenizer;
    const prompt = tk.encode("Once upon a time", true);
    const first = await h.generate("a", prompt, params({ maxTokens: 160, ignoreEos: true }));
    const text = "Once upon a time" + textOf(first);
    const n = Math.min(text.length, PUBLISHED_GREEDY.length);
    assertEquals(text.slice(0, n), PUBLISHED_GREEDY.slice(0, n));
    assert(n > 300, `only ${n} characters compared`);
    // Its first 100 tokens become a prompt, whose blocks a's decodes wrote: the continuation is a's.
    const ids = idsOf(first);
    const second = await h.generate(
      "b",
      [...prompt, ...ids.slice(0, 100)],
      params({ maxTokens: 60, ignoreEos: true }),
    );
    const done = second[second.length - 1];
    if (TEST_LONG_QUERIES === "prompts") {
      // Those tokens as a prompt run on the long kernel, not as a's decodes did: nothing is reused,
      // and the continuation need not be a's (engine_long_queries_test.ts checks it against a fresh engine).
      assert(done.type === "done" && done.cachedPromptTokens === 0, JSON.stringify(done));
      return;
    }
    assert(done.type === "done" && done.cachedPromptTokens === 96, JSON.stringify(done));
    assertEquals(idsOf(second), ids.slice(100, 160));
  } finally {
    await h.close();
  }
});
