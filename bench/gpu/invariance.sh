#!/usr/bin/env bash
# Batch-invariance checks on the GPU host, in f16 where the kernels round most (run from the repo root
# on the device machine after `bash bench/gpu/pack.sh` here): bench/gpu/kv_probe.ts's sweep (a token's
# KV and logits under every way of cutting its prompt into steps and every step size) and the engine's
# isolation and prefix-cache tests. Extra arguments go to kv_probe (e.g. --min-rows 1 shows why
# MIN_STEP_ROWS exists). Results in $OUT (or bench/results/gpu). WEBGPU=dawn runs all of it on Dawn
# (--preload bench/gpu/dawn.ts). LONG=on or LONG=prompts checks that long-query mode (--long-queries):
# kv_probe's --long schemes and the tests with the engine in that mode (prompts: also captured prompt
# steps against uncaptured ones).
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/setup.sh
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
# Tests and probes read stories260K from ../shared; a device copy has none, so pack.sh carries it.
if [ ! -f ../shared/models/stories260K/stories260K.gguf ] && [ -d .gpu/stories260K ]; then
  mkdir -p ../shared/models && ln -sfn "$PWD/.gpu/stories260K" ../shared/models/stories260K
fi
P=()
[ "${WEBGPU:-deno}" = dawn ] && P=(--preload bench/gpu/dawn.ts)
rc=0
L=()
# kv_probe checks the long-query kernel itself (its runner in mode on pads every step to a long query);
# the tests run the engine in the mode asked for.
case "${LONG:-off}" in
  on | prompts) L=(--long); export RAGTIME_LONG_QUERIES=on RAGTIME_TEST_LONG_QUERIES=$LONG ;;
esac
deno run -A "${P[@]}" bench/gpu/kv_probe.ts --dtype f16 --sweep "${L[@]}" --tokens "${TOKENS:-160}" "$@" 2>&1 |
  grep -v XDG_RUNTIME_DIR | tee "$OUT/kv_probe_f16.txt" || rc=1
if [ -z "${PROBE_ONLY:-}" ]; then
  RAGTIME_TEST_DTYPE=f16 deno test -A --no-check "${P[@]}" tests/engine/engine_isolation_test.ts \
    tests/engine/prefix_cache_test.ts >"$OUT/invariance_tests_f16.txt" 2>&1 || rc=1
  grep -E "^(ok|FAILED)|\.\.\. " "$OUT/invariance_tests_f16.txt" | tail -20
  # Mode prompts: prompt parts replayed from captured sessions against uncaptured ones.
  if [ "${LONG:-off}" = prompts ]; then
    RAGTIME_TEST_DTYPE=f16 deno test -A --no-check "${P[@]}" tests/engine/engine_long_queries_test.ts \
      --filter "captured sessions" >"$OUT/invariance_captured_prompts_f16.txt" 2>&1 || rc=1
    grep -E "^(ok|FAILED)|\.\.\. " "$OUT/invariance_captured_prompts_f16.txt" | tail -5
  fi
fi
exit $rc
