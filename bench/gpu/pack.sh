#!/usr/bin/env bash
# Packs what a GPU host needs to run ragtime into .gpu/ (git-ignored, carried by the device tool):
# Deno (xz), a trimmed node_modules (xz), Debian's Vulkan loader and, with LLAMA_SERVER=PATH, a
# llama-server binary. Run from the repo root. The device tool carries at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu
DENO_BIN=$(command -v deno || true)
[ -n "$DENO_BIN" ] || { echo "deno not found on PATH" >&2; exit 1; }
[ -f .gpu/deno.xz ] || xz -T0 -6 -c "$(readlink -f "$DENO_BIN")" > .gpu/deno.xz
deno install >/dev/null
# Only the WebGPU bundle and its wasm of onnxruntime-web are used; openai's sources and playwright are for
# tests the GPU host does not run (their folders stay, so Deno sees the packages installed); Dawn
# (npm webgpu) for linux-x64 only.
tar -C . -cf - \
  --exclude='node_modules/.deno/onnxruntime-web@*/node_modules/onnxruntime-web/dist/*' \
  --exclude='node_modules/.deno/openai@*/node_modules/openai/src' \
  --exclude='node_modules/.deno/playwright-core@*/node_modules/playwright-core/lib' --exclude='CHANGELOG.md' \
  --exclude='node_modules/.deno/webgpu@*/node_modules/webgpu/dist/darwin-*' \
  --exclude='node_modules/.deno/webgpu@*/node_modules/webgpu/dist/win32-*' \
  --exclude='node_modules/.deno/webgpu@*/node_modules/webgpu/dist/linux-arm64' \
  --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' \
  node_modules | xz -T0 -6 > .gpu/node_modules.tar.xz
ORT=$(ls -d node_modules/.deno/onnxruntime-web@*/node_modules/onnxruntime-web/dist)
tar -C . -cf - "$ORT/ort.webgpu.bundle.min.mjs" "$ORT/ort-wasm-simd-threaded.asyncify.wasm" \
  "$ORT/ort-wasm-simd-threaded.asyncify.mjs" | xz -T0 -6 > .gpu/ort_dist.tar.xz
if ! ls .gpu/libvulkan1_*.deb >/dev/null 2>&1; then
  (cd .gpu && apt-get download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 >/dev/null)
fi
# stories260K for the probes and tests that read it (bench/gpu/invariance.sh links it into ../shared there).
if [ -d ../shared/models/stories260K ]; then
  mkdir -p .gpu/stories260K && cp ../shared/models/stories260K/*.gguf .gpu/stories260K/
fi
# llama.cpp's server for bench/gpu/llama_server.sh, built here (outside the repo): LLAMA_SERVER=PATH.
if [ -n "${LLAMA_SERVER:-}" ]; then
  xz -T0 -9 -c "$LLAMA_SERVER" >.gpu/llama-server.xz
fi
du -sh .gpu/*
