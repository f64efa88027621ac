#!/usr/bin/env bash
# llama.cpp's server as a peer on the GPU host (issue 12), driven over HTTP by `deno task bench` like
# ragtime: one slot per concurrent request (--parallel SLOTS), context SLOTS x SLOT_CTX, all layers on
# the GPU. From the repo root on the device machine, with the binary from `bash bench/gpu/build_llama.sh
# build` there (/tmp/rt/llama/llama-server) or carried as .gpu/ or .cache/llama-server.xz:
#
#   SLOTS=128 bash bench/gpu/llama_server.sh -- --num-prompts 128 --warmup 8 --input-len 64:512 \
#     --output-len 32:256 --seed 0
#   SLOTS=1 LABEL=llamacpp-seq bash bench/gpu/llama_server.sh -- --num-prompts 8 --warmup 1 \
#     --input-len 128:128 --output-len 128:128 --max-concurrency 1 --seed 0
#
# Flags after `--` go to `deno task bench` (the workload); --base-url, --label, --result-json,
# --no-progress, --vocab and --id-min are added here (put your own after `--` to override the last two).
# Environment:
#   PRESET      make-model preset whose GGUF is served (default llama3.2-1b); made once in /tmp with
#               --dtype f16 --seed ${SEED:-0}, beside its HF folder /tmp/$PRESET for ragtime's runs
#   MODEL       a GGUF file to serve instead
#   VOCAB       token ids of random prompts are drawn below this (default: the preset's first special id)
#   SLOTS       --parallel (default 128); SLOT_CTX per-slot context (default 1024)
#   LLAMA_ARGS  more llama-server flags (e.g. "--kv-unified" or "-fa off")
#   LLAMA_SERVER  the binary (default /tmp/rt/llama/llama-server, else unpacked there from the .xz)
#   OUT         results folder (default bench/results/gpu); LABEL (default llamacpp-$SLOTS); PORT
# Writes $OUT/$LABEL.json (and bench's plot) and $OUT/$LABEL-server.log (machine, version, server log).
# The binary needs CUDA 13's libcudart/libcublas/libcublasLt: found in the host's Python nvidia wheels
# (PyTorch cu130, which the transformers peer uses) or CUDA folders, else the script stops and says so.
set -uo pipefail
cd "$(dirname "$0")/../.."
# NO_GPU_SETUP=1: this machine already has Deno and its own Vulkan setup (local tests of the script).
[ -n "${NO_GPU_SETUP:-}" ] || source bench/gpu/setup.sh
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
SLOTS=${SLOTS:-128}
SLOT_CTX=${SLOT_CTX:-1024}
PORT=${PORT:-18700}
PRESET=${PRESET:-llama3.2-1b}
LABEL=${LABEL:-llamacpp-$SLOTS}
bench_args=()
[ "${1:-}" = "--" ] && shift
bench_args=("$@")

fail() {
  echo "llama_server.sh: $*" >&2
  exit 1
}

# --- the binary and the CUDA libraries it links
BIN=${LLAMA_SERVER:-/tmp/rt/llama/llama-server}
if [ ! -x "$BIN" ]; then
  # .cache/ (git-ignored too) when .gpu/ with it would pass the device tool's 64 MiB: carry it in its own call.
  xzf=$(ls .gpu/llama-server.xz .cache/llama-server.xz 2>/dev/null | head -1)
  [ -n "$xzf" ] || fail "no llama-server: set LLAMA_SERVER, or carry .gpu/ or .cache/llama-server.xz"
  mkdir -p "$(dirname "$BIN")"
  xz -dc "$xzf" >"$BIN" && chmod +x "$BIN"
fi
libdirs=()
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
  found=$(
    {
      python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null
      echo /usr/local/cuda/lib64 /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu
    } | tr ' ' '\n' | while read -r d; do
      [ -d "$d" ] && find "$d" -name "$lib" 2>/dev/null | head -1
    done | head -1
  )
  [ -n "$found" ] && libdirs+=("$(dirname "$found")")
done
LD_LIBRARY_PATH=$(printf '%s:' "${libdirs[@]}" /usr/local/nvidia/lib64)${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
missing=$(ldd "$BIN" 2>/dev/null | grep "not found")
[ -z "$missing" ] || fail "libraries not found for $BIN (searched Python site-packages and CUDA folders):
$missing"

# --- the model
if [ -z "${MODEL:-}" ]; then
  MODEL=/tmp/$PRESET.gguf
  if [ ! -f "$MODEL" ]; then
    deno task make-model --preset "$PRESET" --out "/tmp/$PRESET" --dtype f16 --seed "${SEED:-0}" --gguf "$MODEL" ||
      fail "make-model failed"
  fi
fi
case "${VOCAB:-$PRESET}" in
llama3.2-1b) VOCAB=128000 ;;
qwen2.5-0.5b) VOCAB=151643 ;;
smollm2-135m) VOCAB=49152 ;;
*[!0-9]*) fail "set VOCAB for preset $PRESET" ;;
esac

# --- server
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$BIN" --version 2>&1 | head -2
  git log -1 --format='commit %H' 2>/dev/null
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "model $MODEL slots $SLOTS ctx $((SLOTS * SLOT_CTX)) extra ${LLAMA_ARGS:-}"
} | tee "$OUT/$LABEL-server.log"
# shellcheck disable=SC2086 # LLAMA_ARGS is a list of flags
"$BIN" -m "$MODEL" --host 127.0.0.1 --port "$PORT" --parallel "$SLOTS" --ctx-size $((SLOTS * SLOT_CTX)) \
  --n-gpu-layers 99 --no-webui ${LLAMA_ARGS:-} >>"$OUT/$LABEL-server.log" 2>&1 &
server=$!
t0=$(date +%s)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $server 2>/dev/null || { tail -30 "$OUT/$LABEL-server.log"; fail "llama-server exited"; }
  [ $(($(date +%s) - t0)) -lt 600 ] || { kill $server; fail "no /health after 600 s"; }
  sleep 1
done
echo "llama-server ready in $(($(date +%s) - t0)) s"

deno task bench --base-url "http://127.0.0.1:$PORT" --vocab "$VOCAB" --id-min 3 "${bench_args[@]}" \
  --label "$LABEL" --result-json "$OUT/$LABEL.json" --no-progress 2>&1 | tail -30
status=${PIPESTATUS[0]}

kill -TERM $server
wait $server 2>/dev/null
grep -E "CUDA|n_ctx|n_parallel|flash_attn|model size|offloaded" "$OUT/$LABEL-server.log" | head -20
exit "$status"
