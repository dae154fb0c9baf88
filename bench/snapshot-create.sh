#!/usr/bin/env bash
# snapshot-create.sh — is `snapshot create` flat in the volume size? A small and a huge sparse volume with the same
# data written, N snapshot creates each (interleaved), median / p90 of the daemon's createMs and of the CLI call.
#
# Run `bash bench/snapshot-create.sh --help` for the options; bench/README.md explains the method.
set -euo pipefail
BENCH_NAME=snapshot-create
SCRIPT=$(realpath "${BASH_SOURCE[0]}")
# shellcheck source=lib/common.sh
source "$(dirname "$SCRIPT")/lib/common.sh"

usage() {
  cat <<'EOF'
usage: bash bench/snapshot-create.sh [options]

One thinvault daemon, one pool; a small and a huge sparse volume (default 1 GiB and 1 TiB), each with the same
amount of data written (default 256 MiB, as 256 extents spread evenly over the volume, written with qemu-io over
the NBD socket). Then N snapshot creates per volume, interleaved (small, huge, small, huge, ...). Reported per
volume: median and p90 of the daemon's own `createMs` (from `snapshot create --json`) and of the wall time of the
whole CLI call (node start-up + control socket round trip), next to the wall time of a trivial CLI call
(`volume info`) as the baseline. The point is the ratio huge / small: flat means ≈ 1.

options:
  --count N          snapshot creates per volume (default 20)
  --sizes A,B,...    volume sizes (default 1GiB,1TiB,1TiB:packed); SIZE:packed writes the same extents back to
                     back from offset 0 instead of spreading them, to tell volume size from data layout
  --data SIZE        bytes written into each volume before the snapshots (default 256MiB; a multiple of 256 extents)
  --chunk-size SIZE  pool chunk size for `thinvault init` (default: the CLI's default)
  --out FILE|none    markdown file to update between <!-- snapshot-create:begin/end --> (default docs/benchmarks.md)
  --workdir DIR      parent of the temporary directory (default $TMPDIR or /tmp; not tmpfs)
  --max-time SEC     hard limit for the whole run (default 600)
  -h, --help         this text

needs: node + a built dist/ (copied into the work directory at the start, so a rebuild
during the run does not matter; THINVAULT_CLI=PATH uses that entry point as it is), qemu-io (qemu-utils), timeout.
EOF
}

COUNT=20 SIZES=1GiB,1TiB,1TiB:packed DATA=256MiB CHUNK= OUT=$REPO/docs/benchmarks.md MAX_TIME=600
ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
  case $1 in
    --count) need_arg "$@"; COUNT=$2; shift 2 ;;
    --sizes) need_arg "$@"; SIZES=$2; shift 2 ;;
    --data) need_arg "$@"; DATA=$2; shift 2 ;;
    --chunk-size) need_arg "$@"; CHUNK=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --workdir) need_arg "$@"; WORKBASE=$2; shift 2 ;;
    --max-time) need_arg "$@"; MAX_TIME=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "--count must be a positive integer"
[[ $OUT == none ]] || OUT=$(realpath -m "$OUT")
bench_watchdog "$MAX_TIME" "$SCRIPT" "${ORIG_ARGS[@]}"

need node "the CLI"; need qemu-io "writing the data" qemu-utils; need timeout "time limits" coreutils
bench_workdir
tv_freeze

IFS=, read -r -a SIZE_LIST <<<"$SIZES"
DATA_BYTES=$(to_bytes "$DATA")
EXTENTS=256
EXTENT=$((DATA_BYTES / EXTENTS))
((EXTENT >= 4096 && EXTENT % 4096 == 0)) || die "--data must be a multiple of 256 × 4 KiB"

bench_need_space $((DATA_BYTES * ${#SIZE_LIST[@]} + (1 << 30)))
log "work dir $WORK"
tv_start "$WORK/pool" ${CHUNK:+--chunk-size "$CHUNK"}

# ---------------------------------------------------------------- volumes and data
VOLS=()
declare -A ALLOC=() CM=() WM=()
for i in "${!SIZE_LIST[@]}"; do
  spec=${SIZE_LIST[$i]}
  size=$(to_bytes "${spec%:packed}")
  stride=$((size / EXTENTS))
  [[ $spec != *:packed ]] || stride=$EXTENT
  ((stride >= EXTENT)) || die "volume ${SIZE_LIST[$i]} too small for $DATA of data"
  v=vol$i
  VOLS+=("$v")
  tv volume create "$v" --size "${spec%:packed}" >/dev/null
  cmds=()
  for ((e = 0; e < EXTENTS; e++)); do
    cmds+=(-c "write -P $(((e % 255) + 1)) $((e * stride / 65536 * 65536)) $EXTENT")
  done
  log "writing $DATA into $v ($spec): $EXTENTS extents of $EXTENT bytes, one every $stride bytes"
  timeout 300 qemu-io -f raw "${cmds[@]}" -c flush "$(tv_uri "$v")" >"$WORK/qemu-io.log" 2>&1 ||
    die "qemu-io failed: $(tail -c 600 "$WORK/qemu-io.log")"
  ALLOC[$i]=$(tv volume info "$v" --json | json_get allocatedBytes)
  log "  $v allocated: ${ALLOC[$i]} bytes"
done

# ---------------------------------------------------------------- the creates, interleaved
: >"$WORK/samples.tsv" # vol kind value_ms
for ((n = 1; n <= COUNT; n++)); do
  for i in "${!VOLS[@]}"; do
    v=${VOLS[$i]}
    t0=$(now_ns)
    tv volume info "$v" --json >/dev/null
    printf '%s\tbaseline\t%s\n' "$i" "$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')" >>"$WORK/samples.tsv"
    t0=$(now_ns)
    out=$(tv snapshot create "$v" "$v-snap$n" --json)
    wall=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
    ms=$(json_get createMs <<<"$out")
    [[ -n $ms ]] || die "snapshot create --json printed no createMs: $(head -c 300 <<<"$out")"
    printf '%s\tcreate\t%s\n%s\twall\t%s\n' "$i" "$ms" "$i" "$wall" >>"$WORK/samples.tsv"
  done
  ((n % 5)) || log "$n / $COUNT snapshots per volume"
done
SNAP_LIST=$(tv snapshot list --json | json_get snapshots | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s||"[]").length))')
tv_stop

# ---------------------------------------------------------------- report
stats() { # VOLIDX KIND -> "median p90 min max"
  awk -F'\t' -v i="$1" -v k="$2" '$1 == i && $2 == k { print $3 }' "$WORK/samples.tsv" | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "– – – –"; exit }
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      p = int(0.9 * NR); if (p < 0.9 * NR) p++; if (p < 1) p = 1
      printf "%.1f %.1f %.1f %.1f\n", med, v[p], v[1], v[NR] }'
}
{
  echo '## Snapshot create time vs volume size (generated by `bench/snapshot-create.sh`)'
  echo
  echo "$(machine_note) · $(tv_version)"
  echo
  echo "One pool, one daemon; $COUNT snapshot creates per volume, interleaved between the volumes; every volume has"
  echo "$DATA written ($EXTENTS extents of $((EXTENT >> 10)) KiB spread evenly over the volume, or back to back from offset 0"
  echo 'for a "packed" volume) before the first snapshot.'
  echo "\`createMs\` is the daemon's own measure (from \`snapshot create --json\`); \"CLI call\" is the wall time of the"
  echo 'whole `node dist/cli/main.js snapshot create … --json` process; "baseline" is the wall time of `volume info --json`'
  echo '(node start-up plus one control round trip) measured just before each create. Times in ms; p90 = nearest rank.'
  echo
  echo '| volume | allocated | createMs median | createMs p90 | createMs max | CLI call median | CLI call p90 | baseline CLI median |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|'
  for i in "${!VOLS[@]}"; do
    read -r cm cp _ cx <<<"$(stats "$i" create)"
    read -r wm wp _ _ <<<"$(stats "$i" wall)"
    read -r bm _ _ _ <<<"$(stats "$i" baseline)"
    echo "| ${SIZE_LIST[$i]/:packed/, data packed at the start} | $(mib "${ALLOC[$i]}") MiB | $cm | $cp | $cx | $wm | $wp | $bm |"
    CM[$i]=$cm WM[$i]=$wm
  done
  for ((i = 1; i < ${#VOLS[@]}; i++)); do
    echo "| *${SIZE_LIST[$i]/:packed/ packed} / ${SIZE_LIST[0]}* | | $(ratio "${CM[$i]}" "${CM[0]}")× | | | $(ratio "${WM[$i]}" "${WM[0]}")× | | |"
  done
  echo
  echo "Snapshots in the pool at the end: ${SNAP_LIST:-?} ($COUNT per volume). Load average at the end: $(load_now)."
  echo
  echo '### Commands'
  echo
  echo '```'
  echo "node dist/cli/main.js init POOL${CHUNK:+ --chunk-size $CHUNK}; node dist/cli/main.js serve POOL --socket SOCK --control CTL &"
  for i in "${!VOLS[@]}"; do
    echo "node dist/cli/main.js volume create ${VOLS[$i]} --size ${SIZE_LIST[$i]%:packed} --control CTL"
    if [[ ${SIZE_LIST[$i]} == *:packed ]]; then
      echo "qemu-io -f raw -c 'write -P P OFFSET $EXTENT' ... (×$EXTENTS, OFFSET = e × $EXTENT) -c flush 'nbd+unix:///${VOLS[$i]}?socket=SOCK'"
    else
      echo "qemu-io -f raw -c 'write -P P OFFSET $EXTENT' ... (×$EXTENTS, OFFSET = e × size/$EXTENTS rounded down to 64 KiB) -c flush 'nbd+unix:///${VOLS[$i]}?socket=SOCK'"
    fi
  done
  echo "# then $COUNT times, for each volume in turn:"
  echo 'node dist/cli/main.js volume info VOL --json --control CTL              # baseline'
  echo 'node dist/cli/main.js snapshot create VOL VOL-snapN --json --control CTL    # createMs + wall time'
  echo '```'
} >"$WORK/section.md"
if [[ $OUT == none ]]; then cat "$WORK/section.md"; else splice_section "$OUT" <"$WORK/section.md"; fi
log "done in ${SECONDS}s"
