#!/usr/bin/env bash
# The CPU machine's prefix-caching comparison (software WebGPU adapter, stories260K), as in
# docs/BENCHMARKS.md: the chat workload and the random-prompt workload, each against a server with
# --prefix-caching on and one with it off, run one after the other in one go (docs/BENCHMARKS.md
# also has a second round in the opposite order: off before on; --compare compares batching modes only,
# so each setting is its own --compare continuous run).
OUT_DEFAULT=bench/results/cpu-2026-12-02-prefix
source "$(dirname "$0")/cpu_env.sh"
# MODEL, SYSTEM_LEN (words), ORDER (the caching settings' order, e.g. "on off off on"), RANDOM_TOO=0 (chat
# only) and SERVER_ARGS (more server flags) override the defaults; results are named chat-SETTING[-N].json
# in run order.
MODEL=${MODEL:-../shared/models/stories260K/stories260K.gguf}
S="--max-model-len 512 --max-seqs 16 ${SERVER_ARGS:-}"
CHAT="--workload chat --users 2 --turns 3 --system-len ${SYSTEM_LEN:-110} --user-len 2:3 --answer-len 8 --warmup 2 --seed 0 --no-progress"
RAND="--num-prompts 24 --warmup 2 --input-len 16:128 --output-len 16:64 --vocab 512 --seed 0 --no-progress"
for pc in ${ORDER:-on off}; do
  f="$OUT/chat-$pc.json" n=2
  while [ -e "$f" ]; do f="$OUT/chat-$pc-$n.json"; n=$((n + 1)); done
  deno task bench $CHAT --compare continuous --model "$MODEL" --server-args "$S --prefix-caching $pc" \
    --server-log-dir "$OUT/logs" --result-json "$f"
done
[ "${RANDOM_TOO:-1}" = 0 ] && exit 0
for pc in on off; do
  deno task bench $RAND --compare continuous --model "$MODEL" --server-args "$S --prefix-caching $pc" \
    --server-log-dir "$OUT/logs" --result-json "$OUT/random-$pc.json"
done
