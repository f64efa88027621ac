#!/usr/bin/env bash
# The GPU-host reference run (docs/BENCHMARKS.md), from the repo root on the device machine:
#   bash bench/gpu/pack.sh here, then on the host: bash bench/gpu/reference.sh [part...]
# parts, run in the order given: continuous continuous-nocapture peer peer-graph single single-peer static
# sequential sweep chat start-1b (default: continuous peer static sequential sweep).
# Ratios should come from parts run in one call on one card (e.g. "continuous peer sequential",
# then "continuous static"). Results land in $OUT (or bench/results/gpu); a part run twice in one
# call writes its second result as NAME-2.json.
# Budget (H100, 2026-11-27): continuous ~60 s, peer ~90 s, static-32 ~150 s, sequential(8) ~70 s,
# sweep ~200 s, each ragtime part plus server start (~20 s); one device call allows 600 s.
# Workload (../shared/notes/webgpu-facts.md): 256 requests at once, prompts uniform in [32, 512],
# outputs uniform in [16, 256], EOS ignored, SmolLM2-135M-shaped random weights in fp16.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/setup.sh
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(continuous peer static sequential sweep)
PRESET=${PRESET:-smollm2-135m}
MODEL=/tmp/$PRESET-f16
WL=${WL:-"--num-prompts 256 --warmup 8 --input-len 32:512 --output-len 16:256 --vocab 49152 --seed 0"}
SWL=${SWL:-"--num-prompts 12 --warmup 2 --input-len 128:128 --output-len 128:128 --vocab 49152 --seed 1 --max-concurrency 1"}
SERVER=${SERVER:-"--max-batch-tokens 8192 --kv-cache-mb 4096 --max-model-len 1024 --graph-cache /tmp/graphs"}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  deno --version | head -1
  git log -1 --format='commit %H %cd' 2>/dev/null || echo "commit unknown"
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
} | tee "$OUT/machine.txt"

[ -f "$MODEL/config.json" ] || deno task make-model --preset "$PRESET" --out "$MODEL" --dtype f16 --seed 0
deno task bench $WL --dump-workload "$OUT/workload.json" >/dev/null


result() { # NAME -> a result path not yet used in this call
  local f="$OUT/$1.json" n=2
  while [ -e "$f" ]; do f="$OUT/$1-$n.json"; n=$((n + 1)); done
  echo "$f"
}

for part in "${parts[@]}"; do
  echo "=== $part"
  case $part in
  continuous)
    # Up to 256 sequences per step; the server log's step lines give the step-time breakdown.
    rm -rf bench/results/tmp
    r=$(result continuous)
    deno task bench $WL --compare continuous --model "$MODEL" --server-args "$SERVER --max-seqs 256 --debug-steps" \
      --label continuous --result-json "$r" --no-progress 2>&1 | tail -30
    for f in bench/results/tmp/*.log; do
      grep -h -E "nodes per layer|kv cache|ready in|rss" "$f"
      python3 bench/gpu/step_summary.py "$f"
      grep -h "step {" "$f" | xz -9 >"${r%.json}_steps.log.xz"
    done
    ;;
  peer)
    python3 bench/peer/hf_cb.py --model "$MODEL" --workload "$OUT/workload.json" --result-json "$(result peer_cb)" 2>&1 |
      grep -v -E "Loading weights|it/s\]" | tail -25
    ;;
  peer-graph)
    # transformers' continuous batching at its best setting: CUDA graphs on (issue 11 counts the peer at it).
    python3 bench/peer/hf_cb.py --model "$MODEL" --workload "$OUT/workload.json" --cuda-graph on \
      --result-json "$(result peer_cb_graph)" 2>&1 | grep -v -E "Loading weights|it/s\]" | tail -25
    ;;
  continuous-nocapture)
    # The same as continuous with every step uncaptured: the capture's effect, side by side.
    deno task bench $WL --compare continuous --model "$MODEL" \
      --server-args "$SERVER --max-seqs 256 --graph-capture off" --label continuous-nocapture \
      --result-json "$(result continuous_nocapture)" --no-progress 2>&1 | tail -30
    ;;
  single)
    # One request at a time, 128 in / 128 out: single-stream TPOT, captured and uncaptured.
    deno task bench $SWL --dump-workload "$OUT/single_workload.json" >/dev/null
    for cap in ${SINGLE_CAPTURE:-on off}; do
      deno task bench $SWL --compare continuous --model "$MODEL" --server-args "$SERVER --graph-capture $cap" \
        --label "single-capture-$cap" --result-json "$(result single_capture_$cap)" --no-progress 2>&1 |
        grep -E "^(Output token|TPOT|TTFT|ITL|Duration)"
    done
    ;;
  single-peer)
    # transformers generate, batch 1, on the single-stream workload.
    deno task bench $SWL --dump-workload "$OUT/single_workload.json" >/dev/null
    python3 bench/peer/hf_cb.py --model "$MODEL" --workload "$OUT/single_workload.json" --mode generate-static \
      --static-batch-size 1 --result-json "$(result single_peer_generate)" 2>&1 | grep -v -E "Loading weights|it/s\]" | tail -12
    ;;
  static)
    # Groups of 32, like the peer's static baseline: a group runs until its longest request ends.
    deno task bench $WL --compare static --model "$MODEL" --server-args "$SERVER --max-seqs 32" \
      --label static-32 --result-json "$(result static)" --no-progress 2>&1 | tail -25
    ;;
  sequential)
    deno task bench $WL --compare sequential --model "$MODEL" --server-args "$SERVER" \
      --num-prompts-sequential 8 --label sequential --result-json "$(result sequential)" --no-progress 2>&1 | tail -25
    ;;
  sweep)
    # Poisson arrivals against one continuous server: TTFT and ITL per rate, where it saturates.
    PORT=18600
    deno run -A main.ts --model "$MODEL" --port $PORT $SERVER --max-seqs 256 >"$OUT/sweep-server.log" 2>&1 &
    server=$!
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
    for rate in ${RATES:-2 4 8 16}; do
      deno task bench --base-url "http://127.0.0.1:$PORT" --num-prompts 128 --warmup 4 --input-len 32:512 \
        --output-len 16:256 --vocab 49152 --seed 0 --rate $rate --label "rate-$rate" --no-progress \
        --result-json "$OUT/poisson-$rate.json" 2>&1 | grep -E "^(Output token|TTFT|ITL|Duration)"
    done
    kill -TERM $server
    wait $server
    ;;
  chat)
    # Multi-turn conversations over one shared system prompt, prefix caching on then off (issue 13).
    CWL=${CWL:-"--users 16 --turns 4 --system-len 400 --user-len 20:40 --answer-len 64 --warmup 2 --seed 0"}
    CSERVER=${CSERVER:-"--max-batch-tokens 8192 --kv-cache-mb 4096 --max-model-len 2048 --graph-cache /tmp/graphs"}
    for pc in on off; do
      deno task bench --workload chat $CWL --compare continuous --model "$MODEL" \
        --server-args "$CSERVER --prefix-caching $pc" --label "chat-caching-$pc" \
        --result-json "$(result chat_caching_$pc)" --no-progress 2>&1 | grep -E -A12 "^(Output token|TTFT per turn)"
    done
    ;;
  start-1b)
    # Time to ready of the Llama-3.2-1B shape (f16 HF folder), cold graph cache then warm (issue 12).
    M1B=/tmp/llama3.2-1b
    [ -f "$M1B/config.json" ] || deno task make-model --preset llama3.2-1b --out "$M1B" --dtype f16 --seed 0 >/dev/null
    rm -rf /tmp/gc1b
    for r in cold warm; do
      echo "-- $r"
      bash bench/start_time.sh "$M1B" /tmp/gc1b --max-batch-tokens 8192 --kv-cache-mb 4096 --max-model-len 1024 \
        --max-seqs 256 2>&1 | tee "$OUT/start_1b_$r.txt" | tail -14
    done
    ;;
  *) echo "unknown part: $part" >&2 ;;
  esac
done
