// /health latency while clients send huge prompts: N concurrent POSTs of a large prompt (default
// 4 x 1 MiB) to a running server, /health probed every 50 ms meanwhile; prints the probes' latencies.
// Usage: deno run -A bench/health_under_load.ts URL [--clients 4] [--mib 1] [--rounds 3] [--path /v1/completions]
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    clients: { type: "string", default: "4" },
    mib: { type: "string", default: "1" },
    rounds: { type: "string", default: "3" },
    path: { type: "string", default: "/v1/completions" },
  },
});
const origin = positionals[0] ?? "http://127.0.0.1:8080";
const clients = Number(values.clients);
// Just under the body limit once wrapped in JSON.
const chars = Math.floor(Number(values.mib) * 2 ** 20) - 256;
const text = "the quick brown fox jumps over the lazy dog ".repeat(Math.ceil(chars / 44)).slice(0, chars);
const body = values.path === "/v1/chat/completions"
  ? JSON.stringify({ messages: [{ role: "user", content: text }], max_tokens: 1 })
  : JSON.stringify({ prompt: text, max_tokens: 1 });

const latencies: number[] = [];
const statuses: Record<string, number> = {};
for (let round = 0; round < Number(values.rounds); round++) {
  let busy = true;
  const probes = (async () => {
    while (busy) {
      const t0 = performance.now();
      const r = await fetch(`${origin}/health`);
      await r.body?.cancel();
      latencies.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    const r = await fetch(`${origin}${values.path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    await r.text();
    statuses[r.status] = (statuses[r.status] ?? 0) + 1;
  }));
  const wall = performance.now() - t0;
  busy = false;
  await probes;
  console.log(`round ${round}: ${clients} x ${body.length} B in ${wall.toFixed(0)} ms`);
}
latencies.sort((a, b) => a - b);
const q = (p: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(1);
console.log(
  JSON.stringify({ statuses, probes: latencies.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: q(1) }),
);
