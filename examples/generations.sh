#!/usr/bin/env bash
# What a difference backup will read: the generation map. Write, look at the changed ranges, close the generation
# (as a backup does at its snapshot point), write again, and see that only the new changes carry the new generation.
#
#   examples/generations.sh [WORKDIR]
#
# The thinvault command: $THINVAULT, else `thinvault` on PATH, else this checkout's dist/cli/main.js.
# Needs qemu-io (qemu-utils). Only a Unix socket in WORKDIR is used.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${THINVAULT:-}" ]; then read -r -a TV <<<"$THINVAULT"
elif command -v thinvault >/dev/null 2>&1; then TV=(thinvault)
else TV=(node "$HERE/../dist/cli/main.js"); fi
command -v qemu-io >/dev/null || { echo "generations: qemu-io is missing (apt-get install qemu-utils)" >&2; exit 1; }

WORK=${1:-$(mktemp -d /tmp/thinvault-generations.XXXXXX)}
mkdir -p "$WORK"
POOL=$WORK/pool
SOCK=$WORK/nbd.sock
URI="nbd+unix:///db?socket=$SOCK"
DAEMON=''
stop_daemon() { if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; DAEMON=''; fi; }
trap stop_daemon EXIT

"${TV[@]}" init "$POOL" >/dev/null
"${TV[@]}" serve "$POOL" --socket "$SOCK" 2>"$WORK/daemon.log" &
DAEMON=$!
for _ in $(seq 1 200); do
    [ -S "$SOCK" ] && "${TV[@]}" status --pool "$POOL" >/dev/null 2>&1 && break
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }
    sleep 0.1
done
"${TV[@]}" volume create db --size 256MiB --pool "$POOL" >/dev/null

echo "== generation 1: write 1 MiB at 0 and 100 KiB at 10 MiB (partial chunks count whole)"
qemu-io -f raw "$URI" -c 'write -P 1 0 1M' -c 'write -P 2 10M 100k' -c flush >/dev/null
"${TV[@]}" volume generations db --map --pool "$POOL" --json

echo "== close generation 1 (a backup does this at its snapshot point; durable when it returns)"
"${TV[@]}" volume advance-generation db --pool "$POOL" --json

echo "== generation 2: overwrite 64 KiB at 512 KiB and write 4 KiB at 200 MiB"
qemu-io -f raw "$URI" -c 'write -P 3 512k 64k' -c 'write -P 4 200M 4k' -c flush >/dev/null
"${TV[@]}" volume generations db --map --pool "$POOL" --json
echo "A difference backup of generation 2 holds exactly the ranges above with \"generation\": 2;"
echo "the counts say how many bytes that is before anything is read."
stop_daemon
