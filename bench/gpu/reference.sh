#!/usr/bin/env bash
# The GPU-host reference run (docs/BENCHMARKS.md), from the repo root on the device machine:
#   bash bench/pack.sh here, then on the host: bash bench/gpu/reference.sh [what]
# what: all (default) | ragtime | peer | sweep. Results land in $OUT (or bench/results/gpu).
# Budget (H100, 2026-11-27): continuous ~60 s, peer ~60 s, static-32 over 130 s, sequential(4) ~50 s,
# sweep ~150 s, each plus server start (~20 s); split over several device calls if needed.
# Workload (../shared/notes/webgpu-facts.md): 256 requests at once, prompts uniform in [32, 512],
# outputs uniform in [16, 256], EOS ignored, SmolLM2-135M-shaped random weights in fp16.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/setup.sh
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
what=${1:-all}
MODEL=/tmp/smollm2-135m-f16
WL="--num-prompts 256 --warmup 8 --input-len 32:512 --output-len 16:256 --vocab 49152 --seed 0"
SERVER="--max-batch-tokens 8192 --kv-cache-mb 4096 --max-model-len 1024 --graph-cache /tmp/graphs"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  deno --version | head -1
  git log -1 --format='commit %H %cd' 2>/dev/null || echo "commit unknown"
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
} | tee "$OUT/machine.txt"

[ -f "$MODEL/config.json" ] || deno task make-model --preset smollm2-135m --out "$MODEL" --dtype f16 --seed 0
deno task bench $WL --dump-workload "$OUT/workload.json" >/dev/null

if [ "$what" = all ] || [ "$what" = ragtime ]; then
  # Continuous with up to 256 sequences per step; static in groups of 32 (like the peer's static
  # baseline: a group runs until its longest request ends); sequential one at a time (first 8).
  rm -rf bench/results/tmp
  deno task bench $WL --compare continuous --model "$MODEL" --server-args "$SERVER --max-seqs 256 --debug-steps" \
    --label continuous --result-json "$OUT/continuous.json" --no-progress 2>&1 | tail -40
  for f in bench/results/tmp/*.log; do
    grep -h -E "nodes per layer|kv cache|ready in|rss" "$f"
    python3 bench/gpu/step_summary.py "$f"
    grep -h "step {" "$f" | xz -9 > "$OUT/continuous_steps.log.xz"
  done
fi

if [ "$what" = all ] || [ "$what" = peer ]; then
  python3 bench/peer/hf_cb.py --model "$MODEL" --workload "$OUT/workload.json" --result-json "$OUT/peer_cb.json" 2>&1 |
    grep -v -E "Loading weights|it/s\]" | tail -25
fi

if [ "$what" = all ] || [ "$what" = ragtime ]; then
  deno task bench $WL --compare static --model "$MODEL" --server-args "$SERVER --max-seqs 32" \
    --label static-32 --result-json "$OUT/static.json" --no-progress 2>&1 | tail -25
  deno task bench $WL --compare sequential --model "$MODEL" --server-args "$SERVER" \
    --num-prompts-sequential 8 --label sequential --result-json "$OUT/sequential.json" --no-progress 2>&1 | tail -25
  grep -h -E "nodes per layer|kv cache|ready in" bench/results/tmp/*.log 2>/dev/null | sort -u | head -10
fi

if [ "$what" = sweep ]; then
  # Poisson arrivals against one continuous server: TTFT and ITL per rate, where it saturates.
  PORT=18600
  deno run -A main.ts --model "$MODEL" --port $PORT $SERVER --max-seqs 256 >"$OUT/sweep-server.log" 2>&1 &
  server=$!
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
  for rate in 2 4 8 16; do
    deno task bench --base-url "http://127.0.0.1:$PORT" --num-prompts 128 --warmup 4 --input-len 32:512 \
      --output-len 16:256 --vocab 49152 --seed 0 --rate $rate --label "rate-$rate" --no-progress \
      --result-json "$OUT/poisson-$rate.json" 2>&1 | grep -E "^(Output token|TTFT|ITL|Duration)"
  done
  kill -TERM $server; wait $server
fi
