#!/usr/bin/env bash
# Poisson-arrival sweep on the CPU machine (software adapter, stories260K): TTFT and ITL per rate.
OUT_DEFAULT=bench/results/cpu
source "$(dirname "$0")/cpu_env.sh"
PORT=${PORT:-18555}
deno run -A main.ts --model ../shared/models/stories260K/stories260K.gguf --port "$PORT" --max-model-len 512 \
  --max-seqs 64 >"$OUT/sweep-server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
for rate in ${RATES:-0.5 1 2 4}; do
  deno task bench --base-url "http://127.0.0.1:$PORT" --num-prompts 32 --warmup 2 --input-len 16:128 \
    --output-len 16:64 --vocab 512 --seed 0 --rate "$rate" --label "rate-$rate" --no-progress \
    --result-json "$OUT/poisson-$rate.json" | grep -E "^(Output token|TTFT|ITL|Duration)"
done
# One plot over the rates (each run above also wrote its own beside its JSON).
files=$(for rate in ${RATES:-0.5 1 2 4}; do printf '%s,' "$OUT/poisson-$rate.json"; done)
deno task bench --plot-only "${files%,}" --plot-out "$OUT/poisson.svg"
