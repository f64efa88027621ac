// CPU cost of one Scheduler.schedule() call with a long queue of prompts over a cached prefix (the
// prefix-cache lookups of admission's order): N waiting requests of L tokens, all but their last 100
// tokens cached, shortest-first or arrival order. Prints the median and the largest of 20 calls.
//   deno run -A bench/schedule_cost.ts [N=1000] [L=2000] [shortest|arrival]
import { BlockManager } from "../engine/block_manager.ts";
import { neutralSamplingParams, type PrefillOrder } from "../engine/protocol.ts";
import { Scheduler } from "../engine/scheduler.ts";
import { Sequence } from "../engine/sequence.ts";

const N = Number(Deno.args[0] ?? 1000), L = Number(Deno.args[1] ?? 2000);
const order = (Deno.args[2] ?? "shortest") as PrefillOrder;
const blockSize = 16;
const blockManager = new BlockManager(200_000, blockSize, { prefixCaching: true });
const sched = new Scheduler({
  blockManager,
  blockSize,
  maxBatchTokens: 2048,
  maxSeqs: 256,
  maxContext: 8192,
  policy: "continuous",
  prefillOrder: order,
  capturedPrefillTokens: 496,
});
const params = (maxTokens: number) => neutralSamplingParams({ maxTokens, ignoreEos: true });
const shared = Array.from({ length: L - 100 }, (_, i) => 5 + (i % 1000));
// Cache the shared prefix: one request computes it and finishes.
sched.add(new Sequence("warm", [...shared, 1], params(1), 0));
sched.onStepSubmitted(sched.schedule()!);
for (const s of [...sched.running]) sched.finish(s, "length");
for (let i = 0; i < N; i++) {
  const own = Array.from({ length: 100 }, (_, j) => 2000 + i * 100 + j);
  sched.add(new Sequence(`q${i}`, [...shared, ...own], params(4), 0));
}
const ms: number[] = [];
for (let k = 0; k < 20; k++) {
  const t0 = performance.now();
  const plan = sched.schedule();
  ms.push(performance.now() - t0);
  if (!plan) break;
  sched.onStepSubmitted(plan);
  for (const it of plan.items) if (it.sample) sched.onTokenResolved(it.seq, 9);
}
ms.sort((a, b) => a - b);
console.log(
  `${N} waiting x ${L} tokens, ${order}: schedule() median ${ms[ms.length >> 1].toFixed(2)} ms, ` +
    `largest ${ms[ms.length - 1].toFixed(2)} ms (${ms.length} calls)`,
);
