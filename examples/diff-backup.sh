#!/usr/bin/env bash
# Difference backups (seed 002): a full backup and three diffs on one SIMH tape image, the Wednesday diff with a
# scope that repeats Tuesday's generation; the exact size of each diff asked for first; the dirty-bitmap view of the
# changes; a chain restore that leaves out the Tuesday tape file (Wednesday's overlapping diff covers it), compared
# with the volume.
#
#   examples/diff-backup.sh [WORKDIR]
#
# The thinvault command: $THINVAULT, else `thinvault` on PATH, else this checkout's dist/cli/main.js.
# Needs qemu-io, qemu-img (qemu-utils) and nbdinfo (libnbd-bin). Only a Unix socket in WORKDIR is used.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${THINVAULT:-}" ]; then read -r -a TV <<<"$THINVAULT"
elif command -v thinvault >/dev/null 2>&1; then TV=(thinvault)
else TV=(node "$HERE/../dist/cli/main.js"); fi
for t in qemu-io qemu-img nbdinfo; do command -v $t >/dev/null || { echo "diff-backup: $t is missing (apt-get install qemu-utils libnbd-bin)" >&2; exit 1; }; done

WORK=${1:-$(mktemp -d /tmp/thinvault-diff.XXXXXX)}
mkdir -p "$WORK"
POOL=$WORK/pool
SOCK=$WORK/nbd.sock
TAPE=$WORK/week.tap
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
"${TV[@]}" volume create db --size 256MiB --pool "$POOL" >/dev/null
qemu-io -f raw "$(uri db)" -c 'write -P 1 0 8M' -c flush >/dev/null

echo "== Monday: full backup (starts the chain)"
"${TV[@]}" backup full db --to "tap:$TAPE" --pool "$POOL"

echo "== Tuesday: changes, the size of the diff, the diff"
qemu-io -f raw "$(uri db)" -c 'write -P 2 1M 512k' -c 'write -P 3 100M 64k' -c flush >/dev/null
"${TV[@]}" backup estimate db --pool "$POOL"
"${TV[@]}" backup diff db --to "tap:$TAPE" --pool "$POOL"

echo "== Wednesday: more changes; a diff of generations 1..2 (scope 1), as seed 002 does against a bad tape"
qemu-io -f raw "$(uri db)" -c 'write -P 4 200M 1M' -c 'discard 4M 1M' -c flush >/dev/null
"${TV[@]}" backup diff db --scope 1 --to "tap:$TAPE" --pool "$POOL"

echo "== Thursday: what changed since generation 3, as a dirty bitmap (qemu:dirty-bitmap:since-3)"
qemu-io -f raw "$(uri db)" -c 'write -P 5 32M 128k' -c flush >/dev/null
nbdinfo --map=qemu:dirty-bitmap:since-3 "$(uri db)"
"${TV[@]}" backup diff db --to "tap:$TAPE" --pool "$POOL"

echo "== the tape"
"${TV[@]}" media list "tap:$TAPE" --pool "$POOL"

echo "== restore Monday + Wednesday (1..2) + Thursday (3..3), leaving out Tuesday's tape file"
"${TV[@]}" restore --from "tap:$TAPE#1" --from "tap:$TAPE#3" --from "tap:$TAPE#4" --as db-back --pool "$POOL"
qemu-img compare -f raw -F raw "$(uri db)" "$(uri db-back)"

echo "== a gap is refused before anything is read: Monday + Thursday"
if "${TV[@]}" restore --from "tap:$TAPE#1" --from "tap:$TAPE#4" --as db-gap --pool "$POOL"; then
    echo "a chain with a gap was accepted" >&2; exit 1
fi
echo "diff-backup done"
