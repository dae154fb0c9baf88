#!/usr/bin/env bash
# diff-backup.sh — difference backups (issue 5): diff dump throughput against a raw read of the same bytes, dump
# time for a small against a full change set, chain restore against a raw write, and the write-path cost of a
# pending diff (fio, through bench/fio-compare.sh).
#
# Run `bash bench/diff-backup.sh --help` for the options; bench/README.md explains the method.
set -euo pipefail
BENCH_NAME=diff-backup
SCRIPT=$(realpath "${BASH_SOURCE[0]}")
# shellcheck source=lib/common.sh
source "$(dirname "$SCRIPT")/lib/common.sh"

usage() {
  cat <<'EOF'
usage: bash bench/diff-backup.sh [options]

One thinvault daemon and pool (parts dump and restore), then bench/fio-compare.sh (part fio).

dump     A SIZE volume "dv" is written in full with random data and backed up (`backup full --to FILE`). Then,
         per change set P of --changed (in order), P % of its chunks are rewritten (fio, 64 KiB random writes at
         distinct chunk-aligned offsets; 100 % = one sequential pass) and, per round, each after a cache drop:
           raw-null   nbdcopy REF null:             REF = a volume of exactly the changed bytes, written once
           raw-file   nbdcopy REF FILE; sync FILE   sequentially at the start (for 100 %: dv itself)
           diff-null  backup diff dv --scope C --to /dev/null --json
           diff-file  backup diff dv --scope C --to FILE --json   (then `sync FILE`, timed apart)
           exp-null   diff export dv --scope C --name X (timed apart); nbdcopy X null:; diff remove X
           exp-file   the same with nbdcopy X FILE; sync FILE
           empty      backup diff dv --to FILE --json   (nothing changed since the last diff: the fixed cost)
         C is the first generation after the previous change set's diff, so every round dumps the same chunks.
         The last round's diff-file of every set below 100 % is kept: full + those diffs are the restore chain.
restore  Per round, each after a cache drop: restore --from FULL --from DIFF... --verify-only; restore … --as NEW;
         and the raw yardstick: the same files concatenated (nbdkit split) nbdcopy'd into a fresh volume, --flush.
fio      bash bench/fio-compare.sh --servers FIO_SERVERS with this script's hooks (lib/diff-backup-fio-hook.sh):
         every thinvault row is written in full first; thinvault:pending-diff then has a pending `diff export`
         sharing every chunk with the volume (copy-on-write and a generation mark on every first write),
         thinvault:snapshot a snapshot + a new generation instead (the same sharing, the control), and the
         optional thinvault:new-gen only a new generation (the mark without the copy). Always a 4 GiB export.

options:
  --size SIZE          size of the volume dv (default 4GiB)
  --changed LIST       change sets in % of dv's chunks, applied in this order (default 1,25,100); the first and
                       the last are compared for "1 % costs ≤ 3 % of 100 %"
  --rounds N           rounds per change set, restore and fio-compare (default 2)
  --parts LIST         subset of dump,restore,fio (default all; restore needs dump)
  --fio-servers LIST   fio-compare servers (default nbdkit-file,thinvault,thinvault:snapshot,thinvault:pending-diff;
                       thinvault:new-gen is also known to the hooks)
  --fio-idle-wait SEC  fio-compare --idle-wait (default 5)
  --out FILE|none      markdown file to update between <!-- diff-backup:begin/end --> (default docs/benchmarks.md)
  --workdir DIR        parent of the temporary directory (default $TMPDIR or /tmp; not tmpfs; needs ~4 × SIZE free,
                       and fio-compare ~12 GiB after the other parts have cleaned up)
  --no-drop-caches     do not drop the page cache before each step
  --max-time SEC       hard limit for the whole run (default 1500)
  -h, --help           this text

needs: node + a built dist/ (copied into the work directory at the start; THINVAULT_CLI=PATH uses that entry point
as it is), nbdkit (sparse-random, split, pattern plugins; noextents filter), nbdcopy and nbdinfo (libnbd-bin), fio
with the nbd engine, timeout, sync (coreutils).
EOF
}

SIZE=4GiB CHANGED=1,25,100 ROUNDS=2 PARTS=dump,restore,fio OUT=$REPO/docs/benchmarks.md MAX_TIME=1500
FIO_SERVERS=nbdkit-file,thinvault,thinvault:snapshot,thinvault:pending-diff FIO_IDLE=5
ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) need_arg "$@"; SIZE=$2; shift 2 ;;
    --changed) need_arg "$@"; CHANGED=$2; shift 2 ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --parts) need_arg "$@"; PARTS=$2; shift 2 ;;
    --fio-servers) need_arg "$@"; FIO_SERVERS=$2; shift 2 ;;
    --fio-idle-wait) need_arg "$@"; FIO_IDLE=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --workdir) need_arg "$@"; WORKBASE=$2; shift 2 ;;
    --no-drop-caches) DROP=no; shift ;;
    --max-time) need_arg "$@"; MAX_TIME=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $FIO_IDLE =~ ^[0-9]+$ ]] || die "--fio-idle-wait must be a number of seconds"
[[ $OUT == none ]] || OUT=$(realpath -m "$OUT")
IFS=, read -r -a CHANGED_LIST <<<"$CHANGED"
IFS=, read -r -a PART_LIST <<<"$PARTS"
for p in "${CHANGED_LIST[@]}"; do [[ $p =~ ^[0-9]+$ && $p -ge 1 && $p -le 100 ]] || die "bad change percentage '$p'"; done
for p in "${PART_LIST[@]}"; do [[ $p =~ ^(dump|restore|fio)$ ]] || die "unknown part '$p'"; done
has_part() { [[ ,$PARTS, == *",$1,"* ]]; }
if has_part restore && ! has_part dump; then die "--parts restore needs dump (it restores the chain dump wrote)"; fi
bench_watchdog "$MAX_TIME" "$SCRIPT" "${ORIG_ARGS[@]}"

need node "the CLI"; need nbdcopy "reading and copying" libnbd-bin; need nbdinfo "export sizes" libnbd-bin
need timeout "time limits" coreutils
if has_part dump || has_part restore; then
  need nbdkit "the random fill and the raw write"; need fio "rewriting chunks"
  nbdkit sparse-random --dump-plugin >/dev/null 2>&1 || die "nbdkit has no sparse-random plugin"
fi
if has_part restore; then
  nbdkit split --dump-plugin >/dev/null 2>&1 || die "nbdkit has no split plugin"
fi
if has_part fio; then
  need fio "part fio"; need nbdkit "part fio (the fill)"
  nbdkit pattern --dump-plugin >/dev/null 2>&1 || die "nbdkit has no pattern plugin"
fi
bench_workdir
tv_freeze
for c in "backup diff" "backup estimate" "diff export" "diff remove"; do
  tv_has_command $c || die "this build has no 'thinvault $c' command"
done

SIZE_BYTES=$(to_bytes "$SIZE")
if has_part dump; then bench_need_space $((SIZE_BYTES * 4 + (1 << 30))); fi
drop_caches_init
log "work dir $WORK, page cache drop: $DROP, limit ${MAX_TIME}s"

# results.tsv: case round step seconds bytes daemon-cpu daemon-seconds
: >"$WORK/results.tsv"
NOTES=()
HZ=$(getconf CLK_TCK)
tv_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$TV_PID/stat"; }
start_step() { drop_caches; C0=$(tv_cpu); }
cpu_step() { awk -v a="$C0" -v b="$(tv_cpu)" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }'; }
record() { # CASE ROUND STEP SECONDS BYTES [CPU] [DAEMON_SECONDS]
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" "${7:-}" >>"$WORK/results.tsv"
  log "  $3: $4 s${5:+ ($(mib "$5") MiB)}${6:+, daemon CPU $6 s}${7:+, daemon seconds $7}"
}
file_bytes() { stat -c %s "$1"; }
nbdcopy_to() { # SRC-URI DEST
  timeout 600 nbdcopy "$1" "$2" 2>"$WORK/nbdcopy.err" || die "nbdcopy $1 $2 failed: $(tail -c 400 "$WORK/nbdcopy.err")"
}
fill_random() { # VOL BYTES SEED: random data over the whole volume
  # shellcheck disable=SC2016 # $uri is nbdkit's
  timeout 600 nbdkit -U - sparse-random "size=$2" percent=100 "seed=$3" random-content=true \
    --run "nbdcopy --destination-is-zero --flush \"\$uri\" '$(tv_uri "$1")'" >"$WORK/fill.log" 2>&1 ||
    die "fill of $1 failed: $(tail -c 600 "$WORK/fill.log")"
}
fio_write() { # NAME ARGS... against dv
  timeout 600 fio --ioengine=nbd "--uri=$(tv_uri dv)" --output-format=terse "--name=$1" "${@:2}" \
    >"$WORK/fio-change.log" 2>&1 || die "fio $1 failed: $(tail -c 600 "$WORK/fio-change.log")"
}
JS='const r = JSON.parse(require("fs").readFileSync(0, "utf8"));'
json_line() { # FIELDS... < JSON: the fields, tab-separated
  node -e "$JS"'process.stdout.write(process.argv.slice(1).map((k) => r[k] ?? "").join("\t") + "\n")' "$@"
}
json_numbers() { # < JSON: its numeric and boolean fields, as compact JSON
  node -e "$JS"'const o = {}; for (const [k, v] of Object.entries(r)) if (typeof v === "number" || typeof v === "boolean") o[k] = v; process.stdout.write(JSON.stringify(o))'
}

declare -A DATA=() NCH=() STREAM=() REFVOL=() CHANGE_S=() SCOPE=() RECORDS=()
CHAIN_FILES=() CHAIN_LABELS=()
# ================================================================ part dump (issue targets 1 and 2)
if has_part dump; then
  tv_start "$WORK/pool"
  tv volume create dv --size "$SIZE" >/dev/null
  log "filling dv ($SIZE) with random data"
  t0=$(now_ns); fill_random dv "$SIZE_BYTES" 1; FILL_S=$(secs_since "$t0")
  est=$(tv backup estimate dv --full --json)
  CHUNK=$(json_get chunkSize <<<"$est")
  NCHUNKS=$((SIZE_BYTES / CHUNK))
  log "dv: $NCHUNKS chunks of $CHUNK bytes, written in $FILL_S s; full backup"
  start_step
  t0=$(now_ns)
  out=$(tv backup full dv --to "$WORK/chain-full.tvs" --json)
  s=$(secs_since "$t0") cpu=$(cpu_step)
  record setup 1 full "$s" "$(file_bytes "$WORK/chain-full.tvs")" "$cpu" "$(json_get seconds <<<"$out")"
  FULL_JSON=$(json_numbers <<<"$out")
  CHAIN_FILES+=("$WORK/chain-full.tvs") CHAIN_LABELS+=(full)
  # the first generation after the full backup: every scope starts at the first generation after the last
  # diff kept for the chain
  C=$(tv backup estimate dv --json | json_get generationFrom)
  for p in "${CHANGED_LIST[@]}"; do
    n=$(((NCHUNKS * p + 50) / 100)); ((n >= 1)) || n=1
    ((p < 100)) || n=$NCHUNKS
    NCH[$p]=$n DATA[$p]=$((n * CHUNK))
    if ((n == NCHUNKS)); then REFVOL[$p]=dv; continue; fi
    [[ -z ${REFVOL[$p]:-} ]] || continue
    REFVOL[$p]=ref$p
    tv volume create "ref$p" --size "${DATA[$p]}" >/dev/null
    log "filling ref$p (${DATA[$p]} bytes = the changed bytes of the $p % set, written sequentially)"
    fill_random "ref$p" "${DATA[$p]}" $((p + 10))
  done
  log "CLI start-up alone: node dist/cli/main.js --version"
  for i in 1 2 3; do
    t0=$(now_ns); node "$THINVAULT_CLI" --version >/dev/null; record setup "$i" cli-version "$(secs_since "$t0")" ""
  done

  stage=0 CHAIN_OPEN=1
  for p in "${CHANGED_LIST[@]}"; do
    stage=$((stage + 1))
    n=${NCH[$p]} ref=${REFVOL[$p]}
    log "change set $p %: rewriting $n of $NCHUNKS chunks of dv"
    t0=$(now_ns)
    if ((n == NCHUNKS)); then
      fio_write "change$p" --rw=write --bs=1M --iodepth=16 "--size=$SIZE_BYTES" --end_fsync=1
    else
      fio_write "change$p" --rw=randwrite "--bs=$CHUNK" --iodepth=16 "--size=$SIZE_BYTES" \
        "--io_size=$((n * CHUNK))" "--randseed=$((1000 + stage))" --end_fsync=1
    fi
    CHANGE_S[$p]=$(secs_since "$t0")
    est=$(tv backup estimate dv --scope "$C" --json)
    IFS=$'\t' read -r erec edata ebytes efrom eto < <(json_line records dataBytes bytes generationFrom generationTo <<<"$est")
    SCOPE[$p]="$efrom..$eto" RECORDS[$p]=$erec STREAM[$p]=$ebytes
    log "  ${CHANGE_S[$p]} s; backup estimate --scope $C: $erec records, $edata data bytes, $ebytes stream bytes"
    if [[ $erec != "$n" || $edata != "${DATA[$p]}" ]]; then
      NOTES+=("The $p % set: fio rewrote $n chunks but \`backup estimate\` counts $erec records / $edata data bytes.")
      DATA[$p]=$edata
    fi
    for round in $(seq "$ROUNDS"); do
      log "change set $p %, round $round (scope $C)"
      t0=$(now_ns); tv volume info dv --json >/dev/null; record "$p" "$round" cli-baseline "$(secs_since "$t0")" ""

      start_step; t0=$(now_ns)
      nbdcopy_to "$(tv_uri "$ref")" null:
      record "$p" "$round" raw-null "$(secs_since "$t0")" "${DATA[$p]}" "$(cpu_step)"

      f=$WORK/raw.img
      start_step; t0=$(now_ns)
      nbdcopy_to "$(tv_uri "$ref")" "$f"; sync "$f"
      record "$p" "$round" raw-file "$(secs_since "$t0")" "$(file_bytes "$f")" "$(cpu_step)"
      rm -f "$f"

      start_step; t0=$(now_ns)
      out=$(tv backup diff dv --scope "$C" --to /dev/null --json)
      s=$(secs_since "$t0") cpu=$(cpu_step)
      record "$p" "$round" diff-null "$s" "$(json_get bytes <<<"$out")" "$cpu" "$(json_get seconds <<<"$out")"

      f=$WORK/diff-$p-r$round.tvs
      start_step; t0=$(now_ns)
      out=$(tv backup diff dv --scope "$C" --to "$f" --json)
      s=$(secs_since "$t0") cpu=$(cpu_step)
      t0=$(now_ns); sync "$f"; ss=$(secs_since "$t0")
      record "$p" "$round" diff-file "$s" "$(file_bytes "$f")" "$cpu" "$(json_get seconds <<<"$out")"
      record "$p" "$round" diff-sync "$ss" ""
      printf '%s\n' "$out" >"$WORK/diff-$p.json"
      if ((round == ROUNDS)); then
        NEXT_C=$(($(json_get generationTo <<<"$out") + 1))
        # the restore chain: full + the sets below 100 % as long as they follow each other (a set left out
        # ends it: the next diff's generations would not follow on the chain's last one)
        ((n < NCHUNKS)) || CHAIN_OPEN=0
      fi
      if ((round == ROUNDS && CHAIN_OPEN == 1)) && has_part restore; then
        mv "$f" "$WORK/chain-$p.tvs"
        CHAIN_FILES+=("$WORK/chain-$p.tvs") CHAIN_LABELS+=("$p %")
      else
        rm -f "$f"
      fi

      for sink in null file; do
        x=x$p-$sink-r$round
        start_step; t0=$(now_ns)
        out=$(tv diff export dv --scope "$C" --name "$x" --json)
        s=$(secs_since "$t0")
        record "$p" "$round" "exp-create-$sink" "$s" "$(json_get bytes <<<"$out")" "$(cpu_step)" "$(json_get seconds <<<"$out")"
        C0=$(tv_cpu); t0=$(now_ns)
        if [[ $sink == null ]]; then
          nbdcopy_to "$(tv_uri "$x")" null:
          record "$p" "$round" exp-null "$(secs_since "$t0")" "$(json_get bytes <<<"$out")" "$(cpu_step)"
        else
          f=$WORK/exp.tvs
          nbdcopy_to "$(tv_uri "$x")" "$f"; sync "$f"
          record "$p" "$round" exp-file "$(secs_since "$t0")" "$(file_bytes "$f")" "$(cpu_step)"
          rm -f "$f"
        fi
        tv diff remove "$x" >/dev/null
      done

      f=$WORK/empty.tvs
      start_step; t0=$(now_ns)
      out=$(tv backup diff dv --to "$f" --json)
      s=$(secs_since "$t0") cpu=$(cpu_step)
      record "$p" "$round" empty "$s" "$(file_bytes "$f")" "$cpu" "$(json_get seconds <<<"$out")"
      [[ $(json_get records <<<"$out") == 0 ]] || NOTES+=("The empty diff after the $p % set, round $round, had $(json_get records <<<"$out") records.")
      rm -f "$f"
    done
    C=$NEXT_C
  done
fi

# ================================================================ part restore (issue target 4)
if has_part restore; then
  # free the pool for the restore: dv and the reference volumes are not needed any more
  declare -A gone=()
  for v in dv "${REFVOL[@]}"; do
    [[ -z ${gone[$v]:-} ]] || continue
    gone[$v]=1
    tv volume delete "$v" >/dev/null
  done
  RESTORE_BYTES=0 CHAIN_BYTES=()
  for f in "${CHAIN_FILES[@]}"; do
    CHAIN_BYTES+=("$(file_bytes "$f")")
    RESTORE_BYTES=$((RESTORE_BYTES + $(file_bytes "$f")))
  done
  from=()
  for f in "${CHAIN_FILES[@]}"; do from+=(--from "$f"); done
  WSIZE=$(((RESTORE_BYTES + (1 << 20) - 1) >> 20 << 20))
  log "restore chain: ${CHAIN_LABELS[*]} ($RESTORE_BYTES stream bytes)"
  for round in $(seq "$ROUNDS"); do
    log "restore, round $round"
    w=raw-w$round
    tv volume create "$w" --size "$WSIZE" >/dev/null
    start_step; t0=$(now_ns)
    # shellcheck disable=SC2016 # $uri is nbdkit's
    timeout 600 nbdkit -U - -r --filter=noextents split "${CHAIN_FILES[@]}" \
      --run "nbdcopy --flush \"\$uri\" '$(tv_uri "$w")'" >"$WORK/split.log" 2>&1 ||
      die "raw write failed: $(tail -c 600 "$WORK/split.log")"
    record restore "$round" raw-write "$(secs_since "$t0")" "$RESTORE_BYTES" "$(cpu_step)"
    tv volume delete "$w" >/dev/null

    start_step; t0=$(now_ns)
    out=$(tv restore "${from[@]}" --verify-only --json)
    s=$(secs_since "$t0")
    record restore "$round" verify "$s" "$(json_get bytes <<<"$out")" "$(cpu_step)" "$(json_get seconds <<<"$out")"

    r=restored-r$round
    start_step; t0=$(now_ns)
    out=$(tv restore "${from[@]}" --as "$r" --json)
    s=$(secs_since "$t0")
    record restore "$round" restore "$s" "$(json_get bytes <<<"$out")" "$(cpu_step)" "$(json_get seconds <<<"$out")"
    RESTORE_JSON=$(json_numbers <<<"$out")
    tv volume delete "$r" >/dev/null
  done
fi
if [[ -n ${TV_PID:-} ]]; then
  tv_stop
  rm -rf "$WORK/pool" "$WORK"/*.tvs "$WORK"/*.img
fi

# ================================================================ part fio (issue target 3)
FIO_OK=0
if has_part fio; then
  remaining=$((MAX_TIME - SECONDS - 60))
  ((remaining > 120)) || die "not enough time left for fio-compare ($remaining s)"
  log "bench/fio-compare.sh --servers $FIO_SERVERS (limit $remaining s; progress in its log)"
  mkdir -p "$WORK/fio-json"
  set +e
  THINVAULT_CLI=$THINVAULT_CLI THINVAULT_SETUP="bash '$BENCH_LIB/diff-backup-fio-hook.sh' setup" \
    THINVAULT_SETUP_RANDOM="bash '$BENCH_LIB/diff-backup-fio-hook.sh' random" \
    bash "$REPO/bench/fio-compare.sh" --servers "$FIO_SERVERS" --rounds "$ROUNDS" --out none \
    --workdir "$(dirname "$WORK")" --idle-wait "$FIO_IDLE" --max-time "$remaining" --keep-json "$WORK/fio-json" \
    >"$WORK/fio-section.md" 2> >(tee "$WORK/fio.log" >&2)
  rc=$?
  set -e
  if ((rc == 0)); then FIO_OK=1; else NOTES+=("fio-compare.sh exited with status $rc: $(grep -i 'error\|failed' "$WORK/fio.log" | tail -3 | tr '\n' ' ')"); fi
fi

# ================================================================ report
best() { # CASE STEP -> smallest seconds over the rounds
  awk -F'\t' -v c="$1" -v s="$2" '$1 == c && $3 == s { if (m == "" || $4 < m) m = $4 } END { print m }' "$WORK/results.tsv"
}
col_of_best() { # CASE STEP COLUMN -> that column in the fastest round
  awk -F'\t' -v c="$1" -v s="$2" -v k="$3" '$1 == c && $3 == s { if (m == "" || $4 < m) { m = $4; v = $k } } END { print v }' "$WORK/results.tsv"
}
best_col() { # CASE STEP COLUMN -> smallest value of that column over the rounds
  awk -F'\t' -v c="$1" -v s="$2" -v k="$3" '$1 == c && $3 == s && $k != "" { if (m == "" || $k + 0 < m + 0) m = $k } END { print m }' "$WORK/results.tsv"
}
spread() {
  awk -F'\t' -v c="$1" -v s="$2" '$1 == c && $3 == s { n++; if (mx == "" || $4 > mx) mx = $4; if (mn == "" || $4 < mn) mn = $4 }
    END { if (n > 1 && mx > 0) printf "%.0f %%", (mx - mn) / mx * 100; else print "–" }' "$WORK/results.tsv"
}
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
sub_() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
# rate of BYTES in TIME as MB/s and MiB/s ("123 / 117")
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / 1e6 / s; else print "–" }'; }
vs() { [[ -n $1 && -n $2 ]] && awk -v r="$1" -v t="$2" 'BEGIN { printf "%.2f", r / t }' || echo –; }
{
  echo '## Difference backups (issue 5) (generated by `bench/diff-backup.sh`)'
  echo
  echo "$(machine_note) · $(tv_version) · $(nbdcopy --version | head -1), $(nbdkit --version), $(fio --version)"
  echo
  echo "Command: \`bash bench/diff-backup.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}\` (run time $((SECONDS / 60)) min $((SECONDS % 60)) s). $(cache_note)"
  if has_part dump; then
    echo
    echo "### Diff dump throughput against a raw read of the same bytes (target ≥ 0.80)"
    echo
    echo "A $SIZE volume \`dv\` ($NCHUNKS chunks of $((CHUNK >> 10)) KiB) written in full with random data"
    echo "(\`nbdkit sparse-random percent=100 random-content=true\` → nbdcopy, $FILL_S s), then \`backup full --to FILE\`"
    echo "($(best setup full) s, daemon \`seconds\` $(col_of_best setup full 7)). Change sets, in this order: $(for p in "${CHANGED_LIST[@]}"; do
      if ((NCH[$p] == NCHUNKS)); then printf '%s %% = one sequential fio pass over dv (%s s); ' "$p" "${CHANGE_S[$p]}"
      else printf '%s %% = %s chunks rewritten by fio (64 KiB random writes, distinct chunk-aligned offsets, %s s); ' "$p" "${NCH[$p]}" "${CHANGE_S[$p]}"; fi
    done)"
    echo "each set's diff covers the generations since the previous set's diff (\`--scope\`, so every round dumps the same"
    echo "chunks). Raw yardstick = a volume holding exactly the changed bytes, written sequentially once"
    echo "(for 100 %: dv itself), read by nbdcopy. Best of $ROUNDS round(s) per set (rounds of one set run back to back);"
    echo "MB/s = changed data bytes / time (10^6); \"vs raw → null\" / \"vs raw → file\" = that step's throughput / the raw"
    echo "read's to the same kind of sink (null: vs /dev/null, or a new file on the same disk + \`sync\`). Stream bytes"
    echo "= data + the stream's headers and tables. Daemon CPU = user + system seconds of the daemon in the step (2 cores)."
    echo
    echo '| change set | step | data MiB | time s | MB/s | vs raw → null | vs raw → file | daemon `seconds` | daemon CPU s | spread |'
    echo '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|'
    for p in "${CHANGED_LIST[@]}"; do
      d=${DATA[$p]} rn=$(best "$p" raw-null) rf=$(best "$p" raw-file)
      row() { # TITLE TIME [DAEMON] [CPU] [SPREAD] [KIND null|file|both]
        local t=$2 vn=– vf=–
        case ${6:-both} in
          null) vn=$(vs "$rn" "$t") ;;
          file) vf=$(vs "$rf" "$t") ;;
          both) vn=$(vs "$rn" "$t") vf=$(vs "$rf" "$t") ;;
        esac
        echo "| $p % | $1 | $(mib "$d") | $t | $(mbs "$d" "$t") | $vn | $vf | ${3:-} | ${4:-} | ${5:-–} |"
      }
      row 'raw read: nbdcopy REF null:' "$rn" '' "$(col_of_best "$p" raw-null 6)" "$(spread "$p" raw-null)" null
      row '`backup diff --to /dev/null` (CLI call)' "$(best "$p" diff-null)" "$(col_of_best "$p" diff-null 7)" "$(col_of_best "$p" diff-null 6)" "$(spread "$p" diff-null)" null
      row '`backup diff --to /dev/null`, daemon `seconds`' "$(best_col "$p" diff-null 7)" '' '' '' null
      row 'diff export read: nbdcopy EXPORT null:' "$(best "$p" exp-null)" '' "$(col_of_best "$p" exp-null 6)" "$(spread "$p" exp-null)" null
      row 'diff export: `diff export` + nbdcopy null:' "$(add "$(best "$p" exp-create-null)" "$(best "$p" exp-null)")" '' '' '' null
      row 'raw read to a new file: nbdcopy REF FILE + sync' "$rf" '' "$(col_of_best "$p" raw-file 6)" "$(spread "$p" raw-file)" file
      row '**`backup diff --to FILE` (CLI call + sync)**' "$(add "$(best "$p" diff-file)" "$(best "$p" diff-sync)")" "$(col_of_best "$p" diff-file 7)" "$(col_of_best "$p" diff-file 6)" "$(spread "$p" diff-file)" file
      row '`backup diff --to FILE`, daemon `seconds`' "$(best_col "$p" diff-file 7)" '' '' '' file
      row 'diff export read: nbdcopy EXPORT FILE + sync' "$(best "$p" exp-file)" '' "$(col_of_best "$p" exp-file 6)" "$(spread "$p" exp-file)" file
      row 'diff export: `diff export` + nbdcopy FILE + sync' "$(add "$(best "$p" exp-create-file)" "$(best "$p" exp-file)")" '' '' '' file
    done
    echo
    echo "Stream bytes per set: $(for p in "${CHANGED_LIST[@]}"; do printf '%s %% %s records, %s bytes (generations %s at the first round); ' "$p" "${RECORDS[$p]}" "${STREAM[$p]}" "${SCOPE[$p]}"; done)"
    echo "\`diff export\` reads the changed chunks once when it is created (for the stream's CRC table), so the nbdcopy"
    echo "read right after it (no cache drop in between, as a user would run it) finds them in the page cache: the"
    echo "\"diff export + nbdcopy\" rows are the cost of dumping through the export."
    echo "\`diff export\` itself took $(for p in "${CHANGED_LIST[@]}"; do printf '%s s (%s %%) ' "$(best "$p" exp-create-null)" "$p"; done)(CLI call, best)."
    echo
    echo "Target check, \`backup diff --to FILE\` (CLI call + sync) against the raw read into a new file / into null:"
    echo
    for p in "${CHANGED_LIST[@]}"; do
      t=$(add "$(best "$p" diff-file)" "$(best "$p" diff-sync)")
      a=$(vs "$(best "$p" raw-file)" "$t") b=$(vs "$(best "$p" raw-null)" "$(best "$p" diff-null)")
      echo "- $p %: $a × raw → file ($(awk -v a="$a" 'BEGIN { print (a >= 0.8 ? "met" : "**not met**") }')); \`--to /dev/null\` $b × raw → null ($(awk -v a="$b" 'BEGIN { print (a >= 0.8 ? "met" : "**not met**") }'))"
    done

    lo=${CHANGED_LIST[0]} hi=${CHANGED_LIST[$((${#CHANGED_LIST[@]} - 1))]}
    if [[ $lo != "$hi" ]]; then
      echo
      echo "### Dump time, $lo % against $hi % changed on the same volume (target ≤ 0.03)"
      echo
      echo "| measure | $lo % | $hi % | $lo % / $hi % |"
      echo '|---|---:|---:|---:|'
      two() { echo "| $1 | $2 | $3 | $(ratio "$2" "$3") |"; }
      two 'changed data MiB' "$(mib "${DATA[$lo]}")" "$(mib "${DATA[$hi]}")"
      tlo=$(add "$(best "$lo" diff-file)" "$(best "$lo" diff-sync)") thi=$(add "$(best "$hi" diff-file)" "$(best "$hi" diff-sync)")
      two '**`backup diff --to FILE`, CLI call + sync, s**' "$tlo" "$thi"
      two '`backup diff --to FILE`, daemon `seconds`' "$(best_col "$lo" diff-file 7)" "$(best_col "$hi" diff-file 7)"
      two '`backup diff --to /dev/null`, CLI call, s' "$(best "$lo" diff-null)" "$(best "$hi" diff-null)"
      two '`backup diff --to /dev/null`, daemon `seconds`' "$(best_col "$lo" diff-null 7)" "$(best_col "$hi" diff-null 7)"
      two 'raw read of the same bytes to a new file + sync, s' "$(best "$lo" raw-file)" "$(best "$hi" raw-file)"
      echo
      ed=$(best_col "$lo" empty 7) ec=$(best "$lo" empty) cb=$(best "$lo" cli-baseline) cv=$(best setup cli-version)
      dd_=$(best_col "$lo" diff-file 7)
      echo "Where the $lo % time goes (best rounds): the CLI call takes $tlo s; the daemon's own \`seconds\` are $dd_ s, so"
      echo "$(sub_ "$(best "$lo" diff-file)" "$dd_") s is outside the daemon's timer: node start-up + CLI module loading ($cv s for"
      echo "\`node dist/cli/main.js --version\`) and the control connection (\`volume info --json\`: $cb s in all). An empty"
      echo "diff (no chunk changed since the last one, to a new file) costs $ec s as a CLI call and $ed s in the daemon: the"
      echo "fixed part of a diff (view, generation step, stream header and trailer, fdatasync of the file and its directory)."
      echo "The $lo % set's data ($(mib "${DATA[$lo]}") MiB in ${NCH[$lo]} chunks scattered over the volume, read after a cache drop)"
      echo "accounts for the rest: about $(sub_ "$dd_" "$ed") s."
      echo "Ratio of the daemon's own seconds: $(ratio "$dd_" "$(best_col "$hi" diff-file 7)"); of the CLI calls: $(ratio "$tlo" "$thi")."
    fi
  fi
  if has_part restore; then
    echo
    echo "### Chain restore against a raw sequential write"
    echo
    echo "Chain: $(for i in "${!CHAIN_FILES[@]}"; do printf '%s (%s MiB)%s' "${CHAIN_LABELS[$i]}" "$(mib "${CHAIN_BYTES[$i]}")" "$([[ $i -lt $((${#CHAIN_FILES[@]} - 1)) ]] && echo ' + ')"; done),"
    echo "$RESTORE_BYTES stream bytes in all, restored into a new volume with \`restore --from FULL --from DIFF… --as NEW\`."
    echo "Raw yardstick: the same files, concatenated by \`nbdkit -r --filter=noextents split FILES…\`, copied by"
    echo "\`nbdcopy --flush\` into a fresh volume: the same bytes read from the same files, written sequentially."
    echo "MB/s = stream bytes / time. Best of $ROUNDS round(s); each step after a cache drop."
    echo
    echo '| step | stream MiB | time s | MB/s | vs raw write | daemon `seconds` | daemon CPU s | spread |'
    echo '|---|---:|---:|---:|---:|---:|---:|---:|'
    rw=$(best restore raw-write)
    for st in raw-write verify restore; do
      case $st in
        raw-write) title='raw write: nbdkit split FILES → nbdcopy --flush → fresh volume' ;;
        verify) title='`restore --from … --verify-only` (CLI call: reads, checks, writes nothing)' ;;
        restore) title='**`restore --from … --as NEW` (CLI call)**' ;;
      esac
      t=$(best restore "$st")
      echo "| $title | $(mib "$RESTORE_BYTES") | $t | $(mbs "$RESTORE_BYTES" "$t") | $(vs "$rw" "$t") | $(col_of_best restore "$st" 7) | $(col_of_best restore "$st" 6) | $(spread restore "$st") |"
    done
    echo
    echo "What \`restore --json\` reported (last round; numbers only): \`$(cut -c1-500 <<<"${RESTORE_JSON:-}")\`"
  fi
  if has_part fio; then
    echo
    echo "### Write-path cost of a pending diff (fio, through \`bench/fio-compare.sh\`)"
    echo
    if ((FIO_OK == 1)); then
      node - "$WORK/fio-json" "$FIO_SERVERS" "$ROUNDS" "$REPO/bench/lib/fio-result.mjs" <<'EOF'
const [dir, serversArg, roundsArg, resultScript] = process.argv.slice(2);
const { execFileSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const servers = serversArg.split(',');
const rounds = Number(roundsArg);
const cols = [
  { job: 'seqwrite', dir: 'write', title: 'seq write MiB/s', idx: 0 },
  { job: 'seqread', dir: 'read', title: 'seq read MiB/s', idx: 0 },
  { job: 'randwrite', dir: 'write', title: 'rand write IOPS', idx: 1 },
  { job: 'randread', dir: 'read', title: 'rand read IOPS', idx: 1 },
];
const val = {};
for (const s of servers) {
  val[s] = {};
  for (const c of cols) {
    const v = [];
    for (let r = 1; r <= rounds; r++) {
      const f = `${dir}/${s}-r${r}-${c.job}.json`;
      if (!existsSync(f)) continue;
      try {
        v.push(Number(execFileSync('node', [resultScript, f, c.dir], { encoding: 'utf8' }).split('\t')[c.idx]));
      } catch {}
    }
    val[s][c.job] = v;
  }
}
const best = (s, j) => (val[s]?.[j]?.length ? Math.max(...val[s][j]) : NaN);
const fmt = (x, c) => (!Number.isFinite(x) ? '–' : c.idx === 1 && x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0));
const label = (s) => ({ thinvault: 'thinvault, written in full (plain)', 'thinvault:new-gen': 'thinvault, new generation (tracking mark, no copy)', 'thinvault:snapshot': 'thinvault, snapshot + new generation (mark + copy-on-write)', 'thinvault:pending-diff': 'thinvault, **pending diff** (mark + copy-on-write)' })[s] ?? s;
const out = [];
out.push(`| server | ${cols.map((c) => c.title).join(' | ')} | round spread |`);
out.push(`|---|${cols.map(() => '---:').join('|')}|---|`);
for (const s of servers) {
  const sp = cols.map((c) => { const v = val[s][c.job]; const mx = Math.max(...v); return v.length > 1 && mx > 0 ? `${(((mx - Math.min(...v)) / mx) * 100).toFixed(0)}` : '–'; });
  out.push(`| ${label(s)} | ${cols.map((c) => fmt(best(s, c.job), c)).join(' | ')} | ${sp.join(' / ')} % |`);
}
const pairs = [['thinvault:pending-diff', 'thinvault'], ['thinvault:pending-diff', 'thinvault:snapshot'], ['thinvault:snapshot', 'thinvault'], ['thinvault:pending-diff', 'thinvault:new-gen'], ['thinvault:new-gen', 'thinvault'], ['thinvault', 'nbdkit-file'], ['thinvault:pending-diff', 'nbdkit-file']];
for (const [a, b] of pairs) {
  if (!servers.includes(a) || !servers.includes(b)) continue;
  out.push(`| *${a} / ${b}* | ${cols.map((c) => { const x = best(a, c.job), y = best(b, c.job); return Number.isFinite(x) && Number.isFinite(y) && y > 0 ? `${(x / y).toFixed(2)}×` : '–'; }).join(' | ')} | |`);
}
console.log(out.join('\n'));
EOF
      echo
      echo "Every thinvault row is written in full (\`nbdkit pattern\` → \`nbdcopy --flush\`) after \`volume create\` and"
      echo "before the first fio job (hooks: \`bench/lib/diff-backup-fio-hook.sh\`), so fio's writes overwrite data; the"
      echo "\`pending-diff\` row takes \`backup full --to /dev/null\` of the empty volume first, and after the fill a"
      echo "\`diff export --name pending1\` (view sharing all 65 536 chunks), and after fio's prefill a second one"
      echo "(\`pending2\`), so the sequential and the random write jobs both write into chunks shared with a pending diff."
      echo "The \`snapshot\` row (the control) takes \`snapshot create\` + \`volume advance-generation\` at the same two"
      echo "points: the same sharing and generation step through a snapshot; \`new-gen\` (when run) only advances the"
      echo "generation. nbdkit-file is fio-compare's preallocated file (not written first). Best of $ROUNDS round(s);"
      echo "\"round spread\" per column (seq write / seq read / rand write / rand read)."
      echo
      echo "<details><summary>fio-compare.sh's own report of this run (per round, other CPU, disk canary, commands)</summary>"
      echo
      grep -v -e '^<!-- fio-compare:' -e '^## fio comparison' "$WORK/fio-section.md" | sed -e 's/^### /#### /' -e "s|$REPO/||g"
      echo
      echo "</details>"
    else
      echo "fio-compare.sh failed; see the notes below."
    fi
  fi
  if ((${#NOTES[@]})); then
    echo
    echo "Notes from the run:"
    echo
    for n in "${NOTES[@]}"; do echo "- $n"; done
  fi
  echo
  echo "Per step and round (seconds): $(awk -F'\t' '{ printf "%s%s r%s %s %s", (NR > 1 ? "; " : ""), $1, $2, $3, $4 }' "$WORK/results.tsv")."
  echo "Load average at the end: $(load_now)."
  echo
  echo '#### Commands'
  echo
  echo '```'
  echo 'node dist/cli/main.js init POOL; node dist/cli/main.js serve POOL --socket SOCK --control CTL &'
  echo "node dist/cli/main.js volume create dv --size $SIZE --control CTL"
  echo "nbdkit -U - sparse-random size=$SIZE_BYTES percent=100 seed=1 random-content=true \\"
  echo "  --run 'nbdcopy --destination-is-zero --flush \"\$uri\" \"nbd+unix:///dv?socket=SOCK\"'"
  echo 'node dist/cli/main.js backup full dv --to FULL --json --control CTL'
  echo '# per change set P: REF = refP (a volume of the changed bytes, filled like dv) or dv for 100 %'
  echo "fio --ioengine=nbd --uri='nbd+unix:///dv?socket=SOCK' --rw=randwrite --bs=${CHUNK:-65536} --iodepth=16 --size=$SIZE_BYTES --io_size=N×${CHUNK:-65536} --randseed=S --end_fsync=1"
  echo "fio --ioengine=nbd --uri='nbd+unix:///dv?socket=SOCK' --rw=write --bs=1M --iodepth=16 --size=$SIZE_BYTES --end_fsync=1   # 100 %"
  echo '# per round, each step after sync; echo 3 > /proc/sys/vm/drop_caches:'
  echo 'nbdcopy "nbd+unix:///REF?socket=SOCK" null:'
  echo 'nbdcopy "nbd+unix:///REF?socket=SOCK" FILE; sync FILE'
  echo 'node dist/cli/main.js backup diff dv --scope C --to /dev/null --json --control CTL'
  echo 'node dist/cli/main.js backup diff dv --scope C --to FILE --json --control CTL; sync FILE'
  echo 'node dist/cli/main.js diff export dv --scope C --name X --json --control CTL; nbdcopy "nbd+unix:///X?socket=SOCK" null: (or FILE; sync FILE)'
  echo 'node dist/cli/main.js diff remove X --control CTL'
  echo 'node dist/cli/main.js backup diff dv --to FILE --json --control CTL   # empty diff'
  echo '# restore, per round:'
  echo 'nbdkit -U - -r --filter=noextents split FULL DIFF... --run '"'"'nbdcopy --flush "$uri" "nbd+unix:///W?socket=SOCK"'"'"
  echo 'node dist/cli/main.js restore --from FULL --from DIFF... --verify-only --json --control CTL'
  echo 'node dist/cli/main.js restore --from FULL --from DIFF... --as NEW --json --control CTL'
  echo '# fio:'
  echo "THINVAULT_SETUP='bash bench/lib/diff-backup-fio-hook.sh setup' THINVAULT_SETUP_RANDOM='bash bench/lib/diff-backup-fio-hook.sh random' \\"
  echo "  bash bench/fio-compare.sh --servers $FIO_SERVERS --rounds $ROUNDS --out none --idle-wait $FIO_IDLE --keep-json DIR"
  echo '```'
} >"$WORK/section.md"
if [[ $OUT == none ]]; then cat "$WORK/section.md"; else splice_section "$OUT" <"$WORK/section.md"; fi
log "done in ${SECONDS}s"
