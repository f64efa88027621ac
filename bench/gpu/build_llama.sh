#!/usr/bin/env bash
# llama.cpp's llama-server for the GPU host (bench/gpu/llama_server.sh), built from the llama.cpp source
# that the npm package node-llama-cpp ships (its llama/gitRelease.bundle plus the patches it applies).
# Nothing of it enters the repo: the source travels as the git-ignored .cache/llama-src.tar.xz.
#
#   bash bench/gpu/build_llama.sh prepare   # here (npm registry): writes .cache/llama-src.tar.xz (~7 MB)
#   bash bench/gpu/build_llama.sh build     # on the GPU host (its image has nvcc 13, CMake, ninja and
#                                           # cuBLAS): builds /tmp/rt/llama/llama-server for sm_90 and
#                                           # that host's CPU (llama.cpp samples on the CPU)
#
# NODE_LLAMA_CPP (default 3.22.1) picks the npm version; JOBS the build's parallelism (default: cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARBALL=.cache/llama-src.tar.xz

prepare() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-llama-cpp@${NODE_LLAMA_CPP:-3.22.1}" >/dev/null && tar -xzf node-llama-cpp-*.tgz)
  git clone -q "$tmp/package/llama/gitRelease.bundle" "$tmp/src" 2>/dev/null
  for p in "$tmp"/package/llama/patches/*.diff; do
    [ -e "$p" ] || continue
    # node-llama-cpp skips a patch that the source already has; so does this.
    if git -C "$tmp/src" apply --check "$p" 2>/dev/null; then git -C "$tmp/src" apply "$p"; fi
  done
  mkdir -p .cache
  # The server's build needs neither tests, examples, docs, models nor the web UI's sources.
  tar -C "$tmp/src" --exclude=./.git --exclude=./models --exclude=./docs --exclude=./tests --exclude=./benches \
    --exclude=./examples --exclude=./media --exclude=./tools/ui/src --exclude=./tools/ui/static -cf - . |
    xz -T0 -6 >"$TARBALL"
  echo "llama.cpp $(cat "$tmp/package/llama/llama.cpp.info.json" | tr -d ' \n'), commit $(git -C "$tmp/src" rev-parse --short HEAD)"
  rm -rf "$tmp"
  ls -la "$TARBALL"
}

build() {
  [ -f "$TARBALL" ] || { echo "no $TARBALL: run 'bash bench/gpu/build_llama.sh prepare' here and carry it" >&2; exit 1; }
  local src=/tmp/llama-src out=/tmp/rt/llama start
  start=$(date +%s)
  mkdir -p "$out"
  # A build that a call's time limit cut short resumes where it stopped (the machine keeps /tmp while warm).
  if [ ! -f "$src/build/build.ninja" ]; then
    rm -rf "$src" && mkdir -p "$src"
    xz -dc "$TARBALL" | tar -C "$src" -xf -
  fi
  # cuBLAS headers and libraries: the toolkit's, else the Python nvidia wheels'.
  local extra=()
  if ! ls /usr/local/cuda/include/cublas_v2.h >/dev/null 2>&1; then
    local inc lib
    inc=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' | tr ' ' '\n' |
      while read -r d; do find "$d" -name cublas_v2.h 2>/dev/null | head -1; done | head -1)
    lib=$(dirname "$(find "$(dirname "$(dirname "$inc")")" -name 'libcublas.so*' | head -1)")
    [ -n "$inc" ] || { echo "no cuBLAS headers found" >&2; exit 1; }
    extra=(-DCMAKE_CUDA_FLAGS="-I$(dirname "$inc")" -DCMAKE_CXX_FLAGS="-I$(dirname "$inc")"
      -DCUDA_cublas_LIBRARY="$(ls "$lib"/libcublas.so* | head -1)")
  fi
  # The driver library for CUDA's virtual memory API: the toolkit's stub, else the driver's own.
  local cuda_lib
  cuda_lib=$(ls /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/nvidia/lib64/libcuda.so* \
    /usr/lib/x86_64-linux-gnu/libcuda.so* 2>/dev/null | head -1 || true)
  [ -z "$cuda_lib" ] || extra+=(-DCUDA_cuda_driver_LIBRARY="$cuda_lib")
  [ -f "$src/build/build.ninja" ] || cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_CUDA_NCCL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    "${extra[@]}" >"$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
  cmake --build "$src/build" --target llama-server -j "${JOBS:-$(nproc)}" >"$out/build.log" 2>&1 ||
    { tail -30 "$out/build.log"; exit 1; }
  cp "$src/build/bin/llama-server" "$out/llama-server"
  echo "built $out/llama-server in $(($(date +%s) - start)) s ($(du -h "$out/llama-server" | cut -f1))"
}

case "${1:-}" in
prepare) prepare ;;
build) build ;;
*) echo "usage: bash bench/gpu/build_llama.sh prepare|build" >&2 && exit 2 ;;
esac
