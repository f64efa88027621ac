#!/usr/bin/env bash
# Prefill order side by side on the CPU machine (docs/BENCHMARKS.md, session 16): a burst of prompts at once
# on the built-in model, one server per order in ORDERS (default "arrival shortest shortest arrival").
OUT_DEFAULT=bench/results/cpu-prefill-order
source "$(dirname "$0")/cpu_env.sh"
MODEL=${MODEL:-models/ragtime-mini}
WL=${WL:-"--num-prompts 32 --warmup 2 --input-len 32:256 --output-len 16:48 --vocab 4096 --seed 0 --no-progress"}
S=${S:-"--max-model-len 512 --max-batch-tokens 512"}
n=0
for order in ${ORDERS:-arrival shortest shortest arrival}; do
  n=$((n + 1))
  deno task bench $WL --compare continuous --model "$MODEL" --server-args "$S --prefill-order $order" \
    --result-json "$OUT/$n-$order.json" 2>&1 | grep -E "^TTFT  |^TPOT  |Output token throughput" |
    sed "s/^/$n $order: /"
done
