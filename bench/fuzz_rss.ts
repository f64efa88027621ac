// RSS of a running server over N seeded fuzz requests (tests/helpers/fuzz_cases.ts), read from
// /proc/PID/status every `--every` requests. Usage: deno run -A bench/fuzz_rss.ts URL PID [--count N]
import { parseArgs } from "node:util";
import { fuzzCase } from "../tests/helpers/fuzz_cases.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    count: { type: "string", default: "3600" },
    every: { type: "string", default: "600" },
    seed: { type: "string", default: "7" },
  },
});
const [origin, pid] = positionals;
const rssMb = () => Number(/VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1]) / 1024;
const count = Number(values.count), every = Number(values.every);
const rows: Array<[number, number]> = [[0, rssMb()]];
let next = 0;
await Promise.all(Array.from({ length: 8 }, async () => {
  while (next < count) {
    const i = next++;
    const c = fuzzCase(Number(values.seed), i);
    const res = await fetch(`${origin}${c.path}`, {
      method: c.method,
      headers: c.headers,
      body: c.body as BodyInit | null,
    })
      .catch(() => null);
    await res?.body?.cancel();
    if ((i + 1) % every === 0) rows.push([i + 1, rssMb()]);
  }
}));
for (const [n, mb] of rows) console.log(`${n}\t${mb.toFixed(0)} MiB`);
