#!/usr/bin/env bash
# Mesa 25's Vulkan software driver (lavapipe) for the Dawn test (tests/e2e/dawn_test.ts): Dawn refuses
# Debian 12's Mesa 22.3, so the driver comes from bookworm-backports, unpacked into DIR (not installed:
# the rest of the suite keeps the system's driver). Prints the ICD file to point VK_DRIVER_FILES at.
#   bash .ci/dawn_driver.sh DIR
set -euo pipefail
DIR=${1:?usage: dawn_driver.sh DIR}
ICD=$DIR/lvp_icd.json
if [ -f "$ICD" ]; then echo "$ICD"; exit 0; fi
mkdir -p "$DIR/lists/partial" "$DIR/cache/archives/partial" "$DIR/debs" "$DIR/root"
echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$DIR/sources.list"
APT=(-o "Dir::Etc::sourcelist=$DIR/sources.list" -o Dir::Etc::sourceparts=/nonexistent
  -o "Dir::State::Lists=$DIR/lists" -o "Dir::Cache=$DIR/cache" -o Debug::NoLocking=1
  -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -qq >&2
(cd "$DIR/debs" && apt-get "${APT[@]}" download -qq mesa-vulkan-drivers/bookworm-backports \
  libdrm2/bookworm-backports libdrm-amdgpu1/bookworm-backports >&2)
for d in "$DIR"/debs/*.deb; do dpkg-deb -x "$d" "$DIR/root"; done
LIB=$(ls "$DIR"/root/usr/lib/*/libvulkan_lvp.so)
sed "s#\"library_path\": \"[^\"]*\"#\"library_path\": \"$LIB\"#" \
  "$DIR"/root/usr/share/vulkan/icd.d/lvp_icd.json >"$ICD"
echo "$ICD"
