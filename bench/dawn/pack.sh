#!/usr/bin/env bash
# Packs dawn.node (npm webgpu 0.6.2, linux-x64 only) into .gpu/dawn.tar.xz for the GPU host, which has no
# registry access. Run from the repo root after `(cd bench/dawn && npm ci)`. On the host, after
# `source bench/gpu/setup.sh`: `xz -dc .gpu/dawn.tar.xz | tar -xf -` restores bench/dawn/node_modules/webgpu,
# enough for bench/dawn/dawn_preload.mjs (it imports nothing else).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=bench/dawn/node_modules/webgpu
[ -f "$W/dist/linux-x64/dawn.node" ] || { echo "run (cd bench/dawn && npm ci) first" >&2; exit 1; }
mkdir -p .gpu
tar -cf - "$W/package.json" "$W/index.js" "$W/dist/linux-x64/dawn.node" | xz -T0 -6 > .gpu/dawn.tar.xz
du -sh .gpu/dawn.tar.xz
