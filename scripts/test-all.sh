#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine (only what is missing), builds, and runs every test.
# Used by the README and by .ci/run. Needs root (or sudo) for apt-get when packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests drive: libnbd tools, qemu, nbdkit, fio; the kernel client in a qemu guest (nbd-vm);
# the power-loss harness (python3-libnbd, busybox, kernel image); openssl for TLS tests.
PACKAGES=(qemu-utils libnbd-bin nbdkit fio python3-libnbd
          qemu-system-x86 linux-image-amd64 busybox-static cpio nbd-client e2fsprogs socat kmod util-linux
          openssl procps systemd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "test-all: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# npm ci when node_modules is missing or older than the lock file (it also builds the addon and the TypeScript).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # The registry reachable here serves only the linux-x64 builds of rollup's optional platform packages, so the
  # lock file cannot list the others and `npm ci` refuses it as "out of sync"; `npm install` with the same lock
  # file installs exactly the locked versions.
  npm ci || npm install
else
  [ -f build/Release/thinvault_native.node ] || npx node-gyp rebuild
  npx tsc -p tsconfig.json
fi

exec npx vitest run "$@"
