// RSS of a server over rounds of seeded fuzz requests (tests/helpers/fuzz_cases.ts), 8 at a time, each
// response left unread (its body cancelled, as a departing client does). Per round: VmRSS before, peak
// (sampled every 250 ms), after (gauges back to 0 and the round's connections closed, +2 s so a
// malloc_trim can run) and settled (`--settle` s later). Starts main.ts on stories260K (the environment
// passes on, e.g. RAGTIME_MALLOC_TRIM=0), or measures a running loopback server given --url and --pid.
//
// Usage: deno run -A bench/fuzz_rss.ts [--rounds 3] [--count 1200] [--seed 7] [--settle 10]
//        [--model GGUF] [--server-args="--max-model-len 512"] | [--url URL --pid PID]
import { parseArgs } from "node:util";
import { fuzzCase } from "../tests/helpers/fuzz_cases.ts";
import { rssMb, SERVER_OPTIONS, serverTarget, untilIdle } from "./soak.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Round {
  requests: number;
  statuses: Record<string, number>;
  wallS: number;
  beforeMb: number | null;
  peakMb: number | null;
  afterMb: number | null;
  settledMb: number | null;
}

/** Sends `count` fuzz cases from index `from`, 8 at a time, on a client of its own (closed at the end). */
async function round(
  origin: string,
  pid: number | undefined,
  seed: number,
  from: number,
  count: number,
  settleS: number,
): Promise<Round> {
  const statuses: Record<string, number> = {};
  const beforeMb = rssMb(pid);
  let peakMb = beforeMb;
  const sampler = setInterval(() => {
    const v = rssMb(pid);
    if (v !== null && (peakMb === null || v > peakMb)) peakMb = v;
  }, 250);
  // A client per round: closing it closes its kept-alive connections, as clients that leave do.
  const client = Deno.createHttpClient({});
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < count) {
      const c = fuzzCase(seed, from + next++);
      const res = await fetch(`${origin}${c.path}`, {
        method: c.method,
        headers: c.headers,
        body: c.body as BodyInit | null,
        client,
        signal: AbortSignal.timeout(120_000),
      }).catch(() => null);
      const key = res ? String(res.status) : "failed";
      statuses[key] = (statuses[key] ?? 0) + 1;
      await res?.body?.cancel().catch(() => {});
    }
  }));
  const wallS = (performance.now() - t0) / 1000;
  client.close();
  if (await untilIdle(origin, 30_000) === null) console.error("[fuzz_rss] gauges not back to 0 within 30 s");
  clearInterval(sampler);
  // The front trims 1 s after the last large connection closes (at most every 5 s).
  await sleep(2000);
  const afterMb = rssMb(pid);
  await sleep(settleS * 1000);
  return { requests: count, statuses, wallS, beforeMb, peakMb, afterMb, settledMb: rssMb(pid) };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      ...SERVER_OPTIONS,
      rounds: { type: "string", default: "3" },
      count: { type: "string", default: "1200" },
      seed: { type: "string", default: "7" },
      settle: { type: "string", default: "10" },
    },
  });
  const { server, origin, pid } = await serverTarget(values, values.url?.replace(/\/+$/, ""), "fuzz_rss");
  const count = Number(values.count), seed = Number(values.seed), settleS = Number(values.settle);
  const fmt = (v: number | null) => v === null ? "n/a" : v.toFixed(1);
  const rounds: Round[] = [];
  try {
    // Warm-up: the first generations compile and allocate; "before" of round 1 is taken after them.
    await round(origin, pid, seed + 1, 0, 16, 0);
    const start = rssMb(pid);
    for (let r = 0; r < Number(values.rounds); r++) {
      const x = await round(origin, pid, seed, r * count, count, settleS);
      rounds.push(x);
      console.log(
        `round ${r + 1}: ${x.requests} requests in ${x.wallS.toFixed(0)} s ${
          JSON.stringify(x.statuses)
        }; RSS MiB ` +
          `before ${fmt(x.beforeMb)}, peak ${fmt(x.peakMb)}, after ${fmt(x.afterMb)}, settled ${
            fmt(x.settledMb)
          }`,
      );
    }
    const end = rounds.at(-1)?.settledMb ?? null;
    if (start !== null && end !== null) {
      console.log(
        `over ${rounds.length * count} requests: ${fmt(start)} -> ${fmt(end)} MiB (${
          (end - start).toFixed(1)
        })`,
      );
    }
  } finally {
    if (server) {
      await server.stop();
      // main.ts prints RSS and the V8 heap as it stops.
      const line = server.output().split("\n").find((l) => l.includes("ragtime: stopped"));
      if (line) console.log(line.trim());
    }
  }
}
