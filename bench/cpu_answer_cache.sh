#!/usr/bin/env bash
# Answers cached as prompts' (--answer-cache) on the CPU machine: the chat workload in long-query mode
# prompts (a GPU's default, forced here), prefix caching on with --answer-cache auto and off, and caching
# off for the ratio, one server after the other in ORDER (docs/BENCHMARKS.md, session 17).
# MODEL, ORDER (settings among auto, off, nocache; default "auto off off auto nocache"), CHAT (workload
# flags) and SERVER_ARGS (more server flags) override the defaults; results are chat-SETTING[-N].json.
OUT_DEFAULT=bench/results/cpu-answer-cache
source "$(dirname "$0")/cpu_env.sh"
MODEL=${MODEL:-models/ragtime-mini}
S="--max-model-len 512 --max-seqs 16 --long-queries prompts ${SERVER_ARGS:-}"
CHAT=${CHAT:-"--workload chat --users 2 --turns 4 --system-len 150 --user-len 2:3 --answer-len 40 --warmup 2 --seed 0 --no-progress"}
for setting in ${ORDER:-auto off off auto nocache}; do
  case $setting in
  nocache) args="--prefix-caching off" ;;
  *) args="--prefix-caching on --answer-cache $setting" ;;
  esac
  f="$OUT/chat-$setting.json" n=2
  while [ -e "$f" ]; do f="$OUT/chat-$setting-$n.json"; n=$((n + 1)); done
  deno task bench $CHAT --compare continuous --model "$MODEL" --server-args "$S $args" \
    --server-log-dir "$OUT/logs" --result-json "$f" | grep -E "^turn|^turns 2|TTFT turn"
done
