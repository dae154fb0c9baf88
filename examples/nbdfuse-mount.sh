#!/usr/bin/env bash
# Put an ext4 filesystem on a thinvault volume and mount it on this host without the kernel NBD module:
# libnbd's nbdfuse shows the export as a file through FUSE, and a loop device mounts that file.
# (With the nbd module, `nbd-client -unix SOCK -N vol0 /dev/nbd0` does the same through the kernel client.)
#
#   sudo examples/nbdfuse-mount.sh [WORKDIR]
#
# Needs root (mount, loop devices), /dev/fuse, nbdfuse (apt-get install nbdfuse), mkfs.ext4.
# The thinvault command: $THINVAULT, else `thinvault` on PATH, else this checkout's dist/cli/main.js.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${THINVAULT:-}" ]; then read -r -a TV <<<"$THINVAULT"
elif command -v thinvault >/dev/null 2>&1; then TV=(thinvault)
else TV=(node "$HERE/../dist/cli/main.js"); fi

missing=()
command -v nbdfuse >/dev/null || missing+=("nbdfuse (apt-get install nbdfuse)")
command -v mkfs.ext4 >/dev/null || missing+=("mkfs.ext4 (e2fsprogs)")
[ -c /dev/fuse ] || missing+=("/dev/fuse")
[ "$(id -u)" = 0 ] || missing+=("root (for mount -o loop)")
[ -e /dev/loop-control ] || missing+=("loop devices (/dev/loop-control)")
if ((${#missing[@]})); then
    echo "nbdfuse-mount: cannot run here, missing: ${missing[*]}" >&2
    exit 2
fi

WORK=${1:-$(mktemp -d /tmp/thinvault-nbdfuse.XXXXXX)}
mkdir -p "$WORK/fuse" "$WORK/mnt"
POOL=$WORK/pool
SOCK=$WORK/nbd.sock
DAEMON='' FUSE='' MOUNTED=0
cleanup() {
    set +e
    [ "$MOUNTED" = 1 ] && umount "$WORK/mnt"
    if [ -n "$FUSE" ]; then
        # as root a FUSE mount is unmounted with umount (fusermount3 -u for a user's mount); nbdfuse then exits
        umount "$WORK/fuse" 2>/dev/null || fusermount3 -u "$WORK/fuse" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$FUSE" 2>/dev/null || break; sleep 0.1; done
        kill "$FUSE" 2>/dev/null; wait "$FUSE" 2>/dev/null
    fi
    [ -n "$DAEMON" ] && { kill "$DAEMON"; wait "$DAEMON"; }
}
trap cleanup EXIT

[ -f "$POOL/pool.json" ] || "${TV[@]}" init "$POOL"
"${TV[@]}" serve "$POOL" --socket "$SOCK" 2>"$WORK/daemon.log" &
DAEMON=$!
for _ in $(seq 1 200); do
    [ -S "$SOCK" ] && "${TV[@]}" status --pool "$POOL" >/dev/null 2>&1 && break
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }
    sleep 0.1
done
"${TV[@]}" volume info fs0 --pool "$POOL" >/dev/null 2>&1 || "${TV[@]}" volume create fs0 --size 512MiB --pool "$POOL"

echo "== nbdfuse: the volume as the file $WORK/fuse/disk"
nbdfuse "$WORK/fuse/disk" "nbd+unix:///fs0?socket=$SOCK" &
FUSE=$!
for _ in $(seq 1 100); do [ -f "$WORK/fuse/disk" ] && break; sleep 0.1; done
[ -f "$WORK/fuse/disk" ] || { echo "nbdfuse did not come up" >&2; exit 1; }

echo "== mkfs.ext4 (it discards the whole device first: the volume stays thin) and mount -o loop"
blkid "$WORK/fuse/disk" >/dev/null 2>&1 || mkfs.ext4 -q "$WORK/fuse/disk"
mount -o loop "$WORK/fuse/disk" "$WORK/mnt"
MOUNTED=1
date > "$WORK/mnt/hello.txt"
dd if=/dev/urandom of="$WORK/mnt/random.bin" bs=1M count=8 status=none
sync
ls -l "$WORK/mnt"
df -h "$WORK/mnt"
"${TV[@]}" volume info fs0 --pool "$POOL"
echo "== unmount, stop nbdfuse and the daemon"
umount "$WORK/mnt"
MOUNTED=0
