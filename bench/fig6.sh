#!/usr/bin/env bash
# fig6.sh — seed 000, Fig. 6 (図6) at small scale: full image backup vs file-level backup vs thinvault's compacted
# full backup of a thin volume holding an ext4 filesystem ~20 % and ~80 % full.
#
# Run `bash bench/fig6.sh --help` for the options; bench/README.md explains the method.
set -euo pipefail
BENCH_NAME=fig6
SCRIPT=$(realpath "${BASH_SOURCE[0]}")
# shellcheck source=lib/common.sh
source "$(dirname "$SCRIPT")/lib/common.sh"

usage() {
  cat <<'EOF'
usage: bash bench/fig6.sh [options]

Seed 000's Fig. 6 compares, for a 100 GB disk with 20 GB or 80 GB of real data, a full (image) backup (time 100,
media 100 either way), a file-level backup (media = the data; time = twice the data share, because its block
access is assumed twice as slow: 40 / 160) and the compacted replica (proportional to the data). This script
measures the same on a small thin volume (default 2 GiB) holding an ext4 filesystem filled to each level with many
small files (1–64 KiB) and a few large ones (4–64 MiB), half of the bytes each:

  source tree   node bench/lib/make-tree.mjs; image: truncate + mkfs.ext4 -m 0 -d TREE IMAGE (no mount needed)
  load          nbdcopy --destination-is-zero IMAGE 'nbd+unix:///VOL?socket=SOCK' (zero blocks skipped: stays thin)
  full-raw      nbdcopy --no-extents -S 0 VOL FILE            (whole volume, holes read and written as data)
  file-fuse     tar -cf FILE -C MNT .  with MNT = fuse2fs -o ro on nbdfuse's file of the export (the filesystem
                read through thinvault; two FUSE layers on the way)
  file-host     tar -cf FILE -C TREE .  (reference: the same files from the host's kernel ext4, not the volume)
  tv-backup     thinvault backup full VOL --to FILE
  tv-replica    thinvault replica create VOL REP; nbdcopy REP FILE   (only if this build has `replica create`)
Every step writes its output into the work directory and is timed up to and including `sync FILE`, after the
page cache was dropped (when root). Rounds are interleaved; the best round per step is reported, normalised like
the seed: full-raw time = 100 and full-raw bytes = 100 for each fill level.

options:
  --size SIZE        volume size (default 2GiB)
  --fill LIST        percentages of the volume filled with file data (default 20,80)
  --rounds N         interleaved rounds (default 2)
  --steps LIST       subset of full-raw,file-fuse,file-host,tv-backup,tv-replica (default: all that this build has)
  --out FILE|none    markdown file to update between <!-- fig6:begin/end --> (default docs/benchmarks.md)
  --workdir DIR      parent of the temporary directory (default $TMPDIR or /tmp; not tmpfs; needs ~4 × SIZE free)
  --no-drop-caches   do not drop the page cache before each step
  --max-time SEC     hard limit for the whole run (default 1500)
  -h, --help         this text

needs: node + a built dist/, nbdcopy and nbdfuse (libnbd-bin), mkfs.ext4 (e2fsprogs), fuse2fs (fuse2fs) with
fusermount3 or fusermount (fuse3) and /dev/fuse for file-fuse, tar, timeout, sync.
EOF
}

SIZE=2GiB FILL=20,80 ROUNDS=2 STEPS= OUT=$REPO/docs/benchmarks.md MAX_TIME=1500
ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) need_arg "$@"; SIZE=$2; shift 2 ;;
    --fill) need_arg "$@"; FILL=$2; shift 2 ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --steps) need_arg "$@"; STEPS=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --workdir) need_arg "$@"; WORKBASE=$2; shift 2 ;;
    --no-drop-caches) DROP=no; shift ;;
    --max-time) need_arg "$@"; MAX_TIME=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $OUT == none ]] || OUT=$(realpath -m "$OUT")
IFS=, read -r -a FILL_LIST <<<"$FILL"
for f in "${FILL_LIST[@]}"; do [[ $f =~ ^[0-9]+$ && $f -ge 1 && $f -le 90 ]] || die "bad fill percentage '$f' (1..90)"; done
bench_watchdog "$MAX_TIME" "$SCRIPT" "${ORIG_ARGS[@]}"

need node "the CLI and the tree generator"; need nbdcopy "loading and copying" libnbd-bin
need mkfs.ext4 "building the filesystem image" e2fsprogs; need tar "file-level backups"; need timeout "time limits" coreutils
bench_workdir
tv_freeze

FUSE_NOTE=
if [[ -z $STEPS ]]; then
  STEPS=full-raw,file-fuse,file-host,tv-backup,tv-replica
  if ! command -v nbdfuse >/dev/null || ! command -v fuse2fs >/dev/null || [[ ! -c /dev/fuse ]] ||
    ! { command -v fusermount3 || command -v fusermount; } >/dev/null; then
    STEPS=${STEPS/file-fuse,/}
    FUSE_NOTE="file-fuse skipped: needs nbdfuse (libnbd-bin), fuse2fs (fuse2fs), fusermount3 (fuse3) and /dev/fuse"
  fi
  tv_has_command backup full || STEPS=${STEPS/tv-backup,/}
  tv_has_command replica create || STEPS=${STEPS/,tv-replica/}
fi
IFS=, read -r -a STEP_LIST <<<"$STEPS"
for s in "${STEP_LIST[@]}"; do [[ $s =~ ^(full-raw|file-fuse|file-host|tv-backup|tv-replica)$ ]] || die "unknown step '$s'"; done
has_step() { [[ ,$STEPS, == *",$1,"* ]]; }
if has_step file-fuse; then
  need nbdfuse "file-fuse" libnbd-bin; need fuse2fs "file-fuse" fuse2fs; [[ -c /dev/fuse ]] || die "file-fuse needs /dev/fuse"
  FUSERMOUNT=$(command -v fusermount3 || command -v fusermount) || die "file-fuse needs fusermount3 (fuse3)"
fi
has_step tv-backup && { tv_has_command backup full || die "this build has no 'backup full' (drop tv-backup from --steps)"; }
has_step tv-replica && { tv_has_command replica create || die "this build has no 'replica create' (drop tv-replica from --steps)"; }

SIZE_BYTES=$(to_bytes "$SIZE")
bench_need_space $((SIZE_BYTES * 4 + (1 << 30)))
drop_caches_init
log "work dir $WORK, steps $STEPS, page cache drop: $DROP, limit ${MAX_TIME}s"
tv_start "$WORK/pool"

# ---------------------------------------------------------------- trees, images, volumes
declare -A DATA=() ALLOC=() IMGALLOC=() TREE=()
for f in "${FILL_LIST[@]}"; do
  v=fs$f
  DATA[$f]=$((SIZE_BYTES / 100 * f))
  log "fill $f %: making $(mib "${DATA[$f]}") MiB of files"
  TREE[$f]=$(node "$BENCH_LIB/make-tree.mjs" --dir "$WORK/tree$f" --bytes "${DATA[$f]}" --seed "$f")
  truncate -s "$SIZE_BYTES" "$WORK/image"
  timeout 600 mkfs.ext4 -q -F -m 0 -d "$WORK/tree$f" "$WORK/image" >"$WORK/mkfs.log" 2>&1 ||
    die "mkfs.ext4 -d failed: $(tail -c 600 "$WORK/mkfs.log")"
  IMGALLOC[$f]=$(($(stat -c %b "$WORK/image") * $(stat -c %B "$WORK/image")))
  tv volume create "$v" --size "$SIZE" >/dev/null
  timeout 600 nbdcopy --destination-is-zero --flush "$WORK/image" "$(tv_uri "$v")" 2>"$WORK/nbdcopy.err" ||
    die "loading the image failed: $(tail -c 400 "$WORK/nbdcopy.err")"
  rm -f "$WORK/image"
  ALLOC[$f]=$(tv volume info "$v" --json | json_get allocatedBytes)
  log "  $v: ${TREE[$f]}; image allocated $(mib "${IMGALLOC[$f]}") MiB, volume allocated $(mib "${ALLOC[$f]}") MiB"
done

# ---------------------------------------------------------------- steps
fuse_mount() { # VOL -> the filesystem at $WORK/m-fs (nbdfuse exposes the export as $WORK/m-nbd/nbd)
  local v=$1
  mkdir -p "$WORK/m-nbd" "$WORK/m-fs"
  bench_spawn "$WORK/nbdfuse.log" nbdfuse -r "$WORK/m-nbd" "$(tv_uri "$v")"
  bench_mount_add "$WORK/m-nbd" "$BENCH_LAST_PID"
  for _ in $(seq 100); do [[ -e $WORK/m-nbd/nbd ]] && break; sleep 0.1; done
  [[ -e $WORK/m-nbd/nbd ]] || die "nbdfuse did not come up: $(tail -c 400 "$WORK/nbdfuse.log")"
  bench_spawn "$WORK/fuse2fs.log" fuse2fs -f -o ro "$WORK/m-nbd/nbd" "$WORK/m-fs"
  bench_mount_add "$WORK/m-fs" "$BENCH_LAST_PID"
  for _ in $(seq 100); do is_mounted "$WORK/m-fs" && [[ -d $WORK/m-fs/big ]] && return 0; sleep 0.1; done
  die "fuse2fs did not mount: $(tail -c 400 "$WORK/fuse2fs.log")"
}
fuse_umount() { bench_umount_all; }

: >"$WORK/results.tsv" # fill round step seconds bytes
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/results.tsv"; log "  $3: $4 s, $5 bytes"; }
timed_to_file() { # FILL ROUND STEP CMD... : run CMD (writes $WORK/out), sync it, record time and size
  local f=$1 r=$2 step=$3 t0 out=$WORK/out
  shift 3
  rm -f "$out"
  drop_caches
  t0=$(now_ns)
  timeout 900 "$@" >"$WORK/step.log" 2>&1 || die "$step failed: $(tail -c 600 "$WORK/step.log")"
  sync "$out"
  record "$f" "$r" "$step" "$(secs_since "$t0")" "$(stat -c %s "$out")"
  rm -f "$out"
}
replica_delete() {
  if tv_has_command replica delete; then tv replica delete "$1" >/dev/null; else tv volume delete "$1" >/dev/null; fi
}
replica_to_file() { # VOL REP
  tv replica create "$1" "$2" --json >/dev/null
  nbdcopy "$(tv_uri "$2")" "$WORK/out"
}
export -f replica_to_file tv tv_uri log die
export THINVAULT_CLI TV_CTL TV_SOCK WORK BENCH_NAME

for round in $(seq "$ROUNDS"); do
  for f in "${FILL_LIST[@]}"; do
    v=fs$f
    log "round $round, fill $f %"
    for step in "${STEP_LIST[@]}"; do
      case $step in
        full-raw) timed_to_file "$f" "$round" "$step" nbdcopy --no-extents -S 0 "$(tv_uri "$v")" "$WORK/out" ;;
        file-fuse)
          fuse_mount "$v"
          timed_to_file "$f" "$round" "$step" tar -cf "$WORK/out" -C "$WORK/m-fs" .
          fuse_umount ;;
        file-host) timed_to_file "$f" "$round" "$step" tar -cf "$WORK/out" -C "$WORK/tree$f" . ;;
        tv-backup) timed_to_file "$f" "$round" "$step" node "$THINVAULT_CLI" backup full "$v" --to "$WORK/out" --control "$TV_CTL" ;;
        tv-replica)
          timed_to_file "$f" "$round" "$step" bash -c 'replica_to_file "$@"' _ "$v" "rep$f-r$round"
          replica_delete "rep$f-r$round" ;;
      esac
    done
  done
done
tv_stop

# ---------------------------------------------------------------- report
best() { awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { if (m == "" || $4 < m) m = $4 } END { print m }' "$WORK/results.tsv"; }
bytes_of() { awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { print $5; exit }' "$WORK/results.tsv"; }
spread() {
  awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { if (mx == "" || $4 > mx) mx = $4; if (mn == "" || $4 < mn) mn = $4 }
    END { if (mx > 0) printf "%.0f", (mx - mn) / mx * 100; else print "–" }' "$WORK/results.tsv"
}
norm() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.0f", a / b * 100; else print "–" }'; }
declare -A TITLE=([full-raw]='full image copy (nbdcopy --no-extents -S 0)' [file-fuse]='file-level: tar via fuse2fs on nbdfuse'
  [file-host]='file-level: tar of the source tree (host ext4, reference)' [tv-backup]='thinvault `backup full`'
  [tv-replica]='thinvault `replica create` + nbdcopy of the replica')
model() { # STEP FILL -> "time media" of the seed's model (full = 100)
  case $1 in
    full-raw) echo "100 100" ;;
    file-*) echo "$((2 * $2)) $2" ;;
    tv-*) echo "$2 $2" ;;
  esac
}
{
  echo '## Seed 000 Fig. 6 at small scale (generated by `bench/fig6.sh`)'
  echo
  echo "$(machine_note) · $(tv_version) · $(nbdcopy --version | head -1), $(tar --version | head -1)$(has_step file-fuse && echo ", $(fuse2fs -V 2>&1 | head -1 | sed 's/ *$//')")"
  echo
  echo "A $SIZE thin volume per fill level holding an ext4 filesystem (\`mkfs.ext4 -m 0 -d TREE\`) with that share of the"
  echo "volume in files, half of the bytes in small files (1–64 KiB) and half in large ones (4–64 MiB). Best of $ROUNDS"
  echo "interleaved round(s); each step writes its output to a file on the same disk and is timed up to \`sync FILE\`."
  echo "$(cache_note)"
  [[ -z $FUSE_NOTE ]] || { echo; echo "**$FUSE_NOTE.**"; }
  for f in "${FILL_LIST[@]}"; do
    echo
    echo "### $f % full ($(mib "${DATA[$f]}") MiB of files in $(json_get files <<<"${TREE[$f]}") files; volume allocated $(mib "${ALLOC[$f]}") MiB = $(norm "${ALLOC[$f]}" "$SIZE_BYTES") % of $SIZE)"
    echo
    echo '| method | time s | output MiB | time (full = 100) | media (full = 100) | seed model time / media | round spread |'
    echo '|---|---:|---:|---:|---:|---:|---:|'
    rt=$(best "$f" full-raw) rb=$(bytes_of "$f" full-raw)
    for step in "${STEP_LIST[@]}"; do
      t=$(best "$f" "$step") b=$(bytes_of "$f" "$step")
      read -r mt mm <<<"$(model "$step" "$f")"
      echo "| ${TITLE[$step]} | $t | $(mib "$b") | $(norm "$t" "$rt") | $(norm "$b" "$rb") | $mt / $mm | $(spread "$f" "$step") % |"
    done
  done
  echo
  echo "Seed model (図6): full image backup 100 / 100 at any fill; file-level backup media = the data share, time = twice"
  echo 'the data share (its block access assumed twice as slow): 40 / 20 at 20 %, 160 / 80 at 80 %; the compacted replica'
  echo 'backup proportional to the data: 20 / 20 and 80 / 80. Here the model is evaluated at the nominal fill level.'
  echo
  echo "Per round (seconds): $(awk -F'\t' '{ printf "%s%s %% r%s %s %s", (NR > 1 ? "; " : ""), $1, $2, $3, $4 }' "$WORK/results.tsv"). Load average at the end: $(load_now)."
  echo
  echo '### Commands'
  echo
  echo '```'
  echo 'node bench/lib/make-tree.mjs --dir TREE --bytes FILL% × SIZE --seed FILL'
  echo "truncate -s $SIZE_BYTES IMAGE; mkfs.ext4 -q -F -m 0 -d TREE IMAGE"
  echo 'node dist/cli/main.js init POOL; node dist/cli/main.js serve POOL --socket SOCK --control CTL &'
  echo "node dist/cli/main.js volume create VOL --size $SIZE --control CTL"
  echo 'nbdcopy --destination-is-zero --flush IMAGE "nbd+unix:///VOL?socket=SOCK"'
  echo '# each step after sync; echo 3 > /proc/sys/vm/drop_caches; timed including sync FILE:'
  has_step full-raw && echo 'nbdcopy --no-extents -S 0 "nbd+unix:///VOL?socket=SOCK" FILE'
  has_step file-fuse && echo 'nbdfuse -r MNT1 "nbd+unix:///VOL?socket=SOCK" & fuse2fs -f -o ro MNT1/nbd MNT2 &  # not timed'
  has_step file-fuse && echo 'tar -cf FILE -C MNT2 .'
  has_step file-host && echo 'tar -cf FILE -C TREE .'
  has_step tv-backup && echo 'node dist/cli/main.js backup full VOL --to FILE --control CTL'
  has_step tv-replica && echo 'node dist/cli/main.js replica create VOL REP --control CTL; nbdcopy "nbd+unix:///REP?socket=SOCK" FILE'
  echo '```'
} >"$WORK/section.md"
if [[ $OUT == none ]]; then cat "$WORK/section.md"; else splice_section "$OUT" <"$WORK/section.md"; fi
log "done in ${SECONDS}s"
