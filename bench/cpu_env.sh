# Sourced first by the CPU machine's bench scripts (bench/cpu_*.sh) with OUT_DEFAULT set: they then run
# from the repo root, with $OUT (default OUT_DEFAULT) created and a private XDG_RUNTIME_DIR, which Deno's
# WebGPU needs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$OUT_DEFAULT}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/ragtime-xdg}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
