#!/usr/bin/env bash
# Step-cost probes on the GPU host (device tool), from the repo root after bench/gpu/pack.sh here:
# the 256-row decode and prefill steps under several onnxruntime WebGPU EP options, one process per
# setting (ORT's WebGPU context keeps the first value of some options for the whole process), plus
# one run that times every WebGPU API call. Output: stdout, and $OUT/probe.txt when $OUT is set.
#
# PATCH_PENDING=1 (an experiment, never the product): onnxruntime-web 1.30 passes only a few EP
# options through to the wasm EP; this edits the unpacked bundle on the host so that
# maxNumPendingDispatches (dispatches per command buffer, default 16) gets through too.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/setup.sh
export GRAPH_CACHE=/tmp/graphs QUICK=1 STEPS=${STEPS:-10}
configs=${PROBE_CONFIGS:-'{"validationMode":"basic"}
{}'}
if [ "${PATCH_PENDING:-0}" = 1 ]; then
  python3 - node_modules/.deno/onnxruntime-web@*/node_modules/onnxruntime-web/dist/ort.webgpu.bundle.min.mjs <<'PY'
import sys
f = sys.argv[1]
s = open(f).read()
old = 'A.validationMode&&je(l,"validationMode",A.validationMode,s);'
add = 'A.maxNumPendingDispatches&&je(l,"maxNumPendingDispatches",String(A.maxNumPendingDispatches),s);'
if add not in s:
    assert s.count(old) == 1, "bundle layout changed"
    open(f, "w").write(s.replace(old, old + add))
print("patched", f)
PY
fi
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  git log -1 --format='commit %H' 2>/dev/null
  while IFS= read -r c; do
    [ -n "$c" ] && RAGTIME_ORT_EP="$c" TRACE=1 deno run -A bench/gpu/step_probe.ts f16 2>&1 | grep -v "^graph\|^kv cache"
  done <<<"${TRACE_CONFIGS:-{\}}"
  while IFS= read -r c; do
    RAGTIME_ORT_EP="$c" deno run -A bench/gpu/step_probe.ts f16 2>&1 | grep -E "^(ORT|B=)"
  done <<<"$configs"
} 2>&1 | tee "${OUT:-/tmp}/probe.txt"
