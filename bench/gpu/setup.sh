#!/usr/bin/env bash
# Runs on the GPU host (device tool) from the repo root: unpacks what pack.sh carried.
# Source it: `source bench/gpu/setup.sh`.
set -e
mkdir -p /tmp/rt/bin /tmp/rt/vk
[ -x /tmp/rt/bin/deno ] || { xz -dc .gpu/deno.xz > /tmp/rt/bin/deno; chmod +x /tmp/rt/bin/deno; }
[ -d node_modules/.deno ] || { xz -dc .gpu/node_modules.tar.xz | tar -xf -; xz -dc .gpu/ort_dist.tar.xz | tar -xf -; }
# The Vulkan loader and glvnd (NVIDIA's ICD lives in libGLX_nvidia, which needs libGLdispatch)
# go where the dynamic linker looks; the host image has neither.
ldconfig -p | grep -q libGLdispatch.so.0 || { for f in .gpu/*.deb; do dpkg -x "$f" /; done; ldconfig; }
export PATH=/tmp/rt/bin:$PATH
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp/rt/xdg
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export DENO_NO_UPDATE_CHECK=1
set +e
