#!/usr/bin/env bash
# Snapshots and full backups: take a read-only snapshot, back the volume up twice onto one SIMH tape image, list
# the tape, restore the first backup as a new volume and compare it with the snapshot.
#
#   examples/backup-restore.sh [WORKDIR]
#
# The thinvault command: $THINVAULT, else `thinvault` on PATH, else this checkout's dist/cli/main.js.
# Needs qemu-io and qemu-img (qemu-utils). Only a Unix socket in WORKDIR is used.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${THINVAULT:-}" ]; then read -r -a TV <<<"$THINVAULT"
elif command -v thinvault >/dev/null 2>&1; then TV=(thinvault)
else TV=(node "$HERE/../dist/cli/main.js"); fi
for t in qemu-io qemu-img; do command -v $t >/dev/null || { echo "backup-restore: $t is missing (apt-get install qemu-utils)" >&2; exit 1; }; done

WORK=${1:-$(mktemp -d /tmp/thinvault-backup.XXXXXX)}
mkdir -p "$WORK"
POOL=$WORK/pool
SOCK=$WORK/nbd.sock
TAPE=$WORK/backups.tap
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }
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
"${TV[@]}" volume create db --size 128MiB --pool "$POOL" >/dev/null
qemu-io -f raw "$(uri db)" -c 'write -P 1 0 4M' -c 'write -P 2 64M 1M' -c flush >/dev/null

echo "== a read-only snapshot, then more writes to the volume"
"${TV[@]}" snapshot create db monday --pool "$POOL"
"${TV[@]}" backup full db --to "tap:$TAPE" --pool "$POOL"
qemu-io -f raw "$(uri db)" -c 'write -P 3 0 1M' -c flush >/dev/null
"${TV[@]}" backup full db --to "tap:$TAPE" --pool "$POOL"

echo "== what the tape holds"
"${TV[@]}" media list "tap:$TAPE" --pool "$POOL"

echo "== restore backup #1 and compare it with the snapshot taken at the same point"
"${TV[@]}" restore --from "tap:$TAPE#1" --as db-monday --pool "$POOL"
qemu-img compare -f raw -F raw "$(uri monday)" "$(uri db-monday)"
echo "== and backup #2 with the volume"
"${TV[@]}" restore --from "tap:$TAPE#2" --as db-now --pool "$POOL" >/dev/null
qemu-img compare -f raw -F raw "$(uri db)" "$(uri db-now)"
"${TV[@]}" volume list --pool "$POOL"
