#!/usr/bin/env bash
# The CPU machine's side-by-side run (software WebGPU adapter, stories260K), as in docs/BENCHMARKS.md.
# Continuous with up to 64 sequences per step, static in groups of 16, sequential one at a time.
OUT_DEFAULT=bench/results/cpu
source "$(dirname "$0")/cpu_env.sh"
MODEL=../shared/models/stories260K/stories260K.gguf
WL="--num-prompts 64 --warmup 2 --input-len 16:128 --output-len 16:96 --vocab 512 --seed 0 --no-progress"
S="--max-model-len 512 --max-batch-tokens 2048"
deno task bench $WL --compare continuous --model $MODEL --server-args "$S --max-seqs 64" --result-json "$OUT/continuous.json"
deno task bench $WL --compare static --model $MODEL --server-args "$S --max-seqs 16" --result-json "$OUT/static.json"
deno task bench $WL --compare sequential --model $MODEL --server-args "$S" --num-prompts-sequential 8 \
  --result-json "$OUT/sequential.json"
