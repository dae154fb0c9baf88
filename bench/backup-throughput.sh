#!/usr/bin/env bash
# backup-throughput.sh — compacted replica and full backup against a raw sequential read of the same bytes, on a
# volume with 10 % and with 100 % of its chunks allocated.
#
# Run `bash bench/backup-throughput.sh --help` for the options; bench/README.md explains the method.
set -euo pipefail
BENCH_NAME=backup-throughput
SCRIPT=$(realpath "${BASH_SOURCE[0]}")
# shellcheck source=lib/common.sh
source "$(dirname "$SCRIPT")/lib/common.sh"

usage() {
  cat <<'EOF'
usage: bash bench/backup-throughput.sh [options]

One thinvault daemon, one pool, one volume per fill level (default a 4 GiB volume with 10 % and one with 100 % of
it written with random data by `nbdkit sparse-random … --run 'nbdcopy …'`). Per round and fill level, each step
after dropping the page cache (when root):
  raw       nbdcopy 'nbd+unix:///VOL?socket=SOCK' null:   (skips holes: reads exactly the allocated bytes)
  raw-file  nbdcopy 'nbd+unix:///VOL?socket=SOCK' FILE; sync FILE   (the same bytes written to a new file: what
            a file target can take, the fair reference for backup full --to FILE)
  replica   thinvault replica create VOL REP --json       (wall time of the CLI call)
  rep-read  nbdcopy 'nbd+unix:///REP?socket=SOCK' null:   (the whole packed image)
  backup    thinvault backup full VOL --to FILE --json    (wall time; then `sync FILE` is timed separately)
Throughput = allocated bytes of the volume / time. Rounds are interleaved (round 1: every fill level, round 2: …);
the best round per step is reported. Targets: replica and backup ≥ 80 % of the raw read throughput, and the time
for 10 % ≈ 0.1 × the time for 100 % (scales with allocated data, not volume size).

options:
  --size SIZE          volume size (default 4GiB)
  --fill LIST          allocated percentages (default 10,100)
  --rounds N           interleaved rounds (default 2)
  --steps LIST         subset of raw,raw-file,replica,rep-read,backup (default all; replica/backup need those
                       CLI commands)
  --runlength SIZE     average run of written data for the sparse fill (bytes, default 1048576; nbdkit sparse-random)
  --out FILE|none      markdown file to update between <!-- backup-throughput:begin/end --> (default docs/benchmarks.md)
  --workdir DIR        parent of the temporary directory (default $TMPDIR or /tmp; not tmpfs; needs ~3 × SIZE free)
  --no-drop-caches     do not drop the page cache before each step
  --max-time SEC       hard limit for the whole run (default 1200)
  -h, --help           this text

needs: node + a built dist/ (copied into the work directory at the start, so a rebuild
during the run does not matter; THINVAULT_CLI=PATH uses that entry point as it is), nbdkit (sparse-random plugin), nbdcopy and
nbdinfo (libnbd-bin), timeout, sync (coreutils).
EOF
}

SIZE=4GiB FILL=10,100 ROUNDS=2 STEPS=raw,raw-file,replica,rep-read,backup RUNLENGTH=1048576 OUT=$REPO/docs/benchmarks.md MAX_TIME=1200
ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) need_arg "$@"; SIZE=$2; shift 2 ;;
    --fill) need_arg "$@"; FILL=$2; shift 2 ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --steps) need_arg "$@"; STEPS=$2; shift 2 ;;
    --runlength) need_arg "$@"; RUNLENGTH=$2; shift 2 ;;
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
IFS=, read -r -a STEP_LIST <<<"$STEPS"
for f in "${FILL_LIST[@]}"; do [[ $f =~ ^[0-9]+$ && $f -ge 1 && $f -le 100 ]] || die "bad fill percentage '$f'"; done
for s in "${STEP_LIST[@]}"; do [[ $s =~ ^(raw|raw-file|replica|rep-read|backup)$ ]] || die "unknown step '$s'"; done
has_step() { [[ ,$STEPS, == *",$1,"* ]]; }
bench_watchdog "$MAX_TIME" "$SCRIPT" "${ORIG_ARGS[@]}"

need node "the CLI"; need nbdkit "the random fill"; need nbdcopy "copying and reading" libnbd-bin
need nbdinfo "export sizes" libnbd-bin; need timeout "time limits" coreutils
nbdkit sparse-random --dump-plugin >/dev/null 2>&1 || die "nbdkit has no sparse-random plugin"
bench_workdir
tv_freeze
if has_step replica || has_step rep-read; then
  tv_has_command replica create ||
    die "this build has no 'replica create' command (drop it with --steps raw,backup)"
fi
if has_step backup; then
  tv_has_command backup full ||
    die "this build has no 'backup full' command (drop it with --steps raw,replica,rep-read)"
fi
if has_step rep-read && ! has_step replica; then die "--steps rep-read needs replica"; fi

SIZE_BYTES=$(to_bytes "$SIZE")
bench_need_space $((SIZE_BYTES * 3 + (1 << 30)))
drop_caches_init
log "work dir $WORK, page cache drop: $DROP, limit ${MAX_TIME}s"
tv_start "$WORK/pool"

# ---------------------------------------------------------------- fill the volumes
declare -A ALLOC=() FILL_S=()
for f in "${FILL_LIST[@]}"; do
  v=fill$f
  tv volume create "$v" --size "$SIZE" >/dev/null
  log "filling $v: nbdkit sparse-random percent=$f runlength=$RUNLENGTH random-content=true → nbdcopy"
  t0=$(now_ns)
  # shellcheck disable=SC2016 # $uri is nbdkit's
  timeout 600 nbdkit -U - sparse-random "size=$SIZE_BYTES" "percent=$f" "runlength=$RUNLENGTH" seed=$((f + 1)) \
    random-content=true --run "nbdcopy --destination-is-zero --flush \"\$uri\" '$(tv_uri "$v")'" \
    >"$WORK/fill.log" 2>&1 || die "fill failed: $(tail -c 600 "$WORK/fill.log")"
  FILL_S[$f]=$(secs_since "$t0")
  ALLOC[$f]=$(tv volume info "$v" --json | json_get allocatedBytes)
  log "  $v: ${ALLOC[$f]} bytes allocated ($(mib "${ALLOC[$f]}") MiB) in ${FILL_S[$f]} s"
done

# ---------------------------------------------------------------- the rounds
# results.tsv: fill round step seconds bytes(extra)
: >"$WORK/results.tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$WORK/results.tsv"; log "  $3: $4 s${5:+ ($5)}${6:+, daemon CPU $6 s}"; }
# CPU time (user + system) of the daemon since start_step: where the time of a step goes
HZ=$(getconf CLK_TCK)
tv_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$TV_PID/stat"; }
start_step() { drop_caches; C0=$(tv_cpu); }
cpu_step() { awk -v a="$C0" -v b="$(tv_cpu)" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }'; }

replica_delete() { # NAME: whichever delete command this build has
  local n=$1
  if tv_has_command replica delete; then tv replica delete "$n" >/dev/null
  else tv volume delete "$n" >/dev/null; fi
}

for round in $(seq "$ROUNDS"); do
  for f in "${FILL_LIST[@]}"; do
    v=fill$f
    log "round $round, $f % allocated"
    t0=$(now_ns)
    tv volume info "$v" --json >/dev/null
    record "$f" "$round" cli-baseline "$(secs_since "$t0")" ""
    if has_step raw; then
      start_step
      t0=$(now_ns)
      timeout 300 nbdcopy "$(tv_uri "$v")" null: 2>"$WORK/nbdcopy.err" || die "nbdcopy raw read failed: $(tail -c 400 "$WORK/nbdcopy.err")"
      record "$f" "$round" raw "$(secs_since "$t0")" "${ALLOC[$f]}" "$(cpu_step)"
    fi
    if has_step raw-file; then
      file=$WORK/raw-$f.img
      start_step
      t0=$(now_ns)
      timeout 300 nbdcopy "$(tv_uri "$v")" "$file" 2>"$WORK/nbdcopy.err" || die "nbdcopy to a file failed: $(tail -c 400 "$WORK/nbdcopy.err")"
      sync "$file"
      record "$f" "$round" raw-file "$(secs_since "$t0")" "$(($(stat -c %b "$file") * $(stat -c %B "$file")))" "$(cpu_step)"
      rm -f "$file"
    fi
    if has_step replica; then
      rep=rep$f-r$round
      start_step
      t0=$(now_ns)
      out=$(tv replica create "$v" "$rep" --json)
      s=$(secs_since "$t0") cpu=$(cpu_step)
      printf '%s\n' "$out" >"$WORK/replica-$f-$round.json"
      rbytes=$(timeout 30 nbdinfo --size "$(tv_uri "$rep")")
      record "$f" "$round" replica "$s" "$rbytes" "$cpu"
      if has_step rep-read; then
        start_step
        t0=$(now_ns)
        timeout 300 nbdcopy "$(tv_uri "$rep")" null: 2>"$WORK/nbdcopy.err" ||
          die "nbdcopy replica read failed: $(tail -c 400 "$WORK/nbdcopy.err")"
        record "$f" "$round" rep-read "$(secs_since "$t0")" "$rbytes" "$(cpu_step)"
      fi
      replica_delete "$rep"
    fi
    if has_step backup; then
      file=$WORK/full-$f.tvs
      start_step
      t0=$(now_ns)
      out=$(tv backup full "$v" --to "$file" --json)
      s=$(secs_since "$t0") cpu=$(cpu_step)
      printf '%s\n' "$out" >"$WORK/backup-$f-$round.json"
      t0=$(now_ns)
      sync "$file"
      record "$f" "$round" backup "$s" "$(stat -c %s "$file")" "$cpu"
      record "$f" "$round" backup-sync "$(secs_since "$t0")" ""
      ds=$(json_get seconds <<<"$out")
      [[ -z $ds ]] || record "$f" "$round" backup-daemon "$ds" "$(stat -c %s "$file")"
      rm -f "$file"
    fi
  done
done
tv_stop

# ---------------------------------------------------------------- report
best() { # FILL STEP -> smallest seconds over the rounds
  awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { if (m == "" || $4 < m) m = $4 } END { print m }' "$WORK/results.tsv"
}
cpu_of_best() { # FILL STEP -> daemon CPU seconds in the fastest round
  awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { if (m == "" || $4 < m) { m = $4; c = $6 } } END { print c }' "$WORK/results.tsv"
}
best_bytes() { awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { print $5; exit }' "$WORK/results.tsv"; }
spread() { # FILL STEP -> (max - min) / max in %
  awk -F'\t' -v f="$1" -v s="$2" '$1 == f && $3 == s { if (mx == "" || $4 > mx) mx = $4; if (mn == "" || $4 < mn) mn = $4 }
    END { if (mx > 0) printf "%.0f", (mx - mn) / mx * 100; else print "–" }' "$WORK/results.tsv"
}
declare -A TITLE=([raw]='raw read (nbdcopy VOL → null:)' [raw-file]='raw read to a new file (nbdcopy VOL FILE + sync)' [replica]='`replica create`' [rep-read]='replica read (nbdcopy REP → null:)'
  [replica+read]='replica create + read' [backup]='`backup full --to FILE` (CLI call)'
  [backup-daemon]='`backup full`, the daemon'"'"'s own `seconds`' [backup+sync]='backup full CLI call + `sync FILE`')
{
  echo '## Replica and full backup throughput (generated by `bench/backup-throughput.sh`)'
  echo
  echo "$(machine_note) · $(tv_version) · $(nbdcopy --version | head -1), $(nbdkit --version)"
  echo
  echo "A $SIZE volume per fill level, written by \`nbdkit sparse-random percent=P runlength=$RUNLENGTH random-content=true\`"
  echo "through nbdcopy. Best of $ROUNDS interleaved round(s). $(cache_note) Throughput = the volume's allocated bytes"
  echo '/ time (MiB/s); "vs raw" = that throughput / the raw read throughput of the same volume (target ≥ 0.80);'
  echo '"vs raw → file" = the same against reading the same bytes into a new file (nbdcopy VOL FILE + sync), which is'
  echo 'what a backup to a file on this disk can reach at best. "daemon CPU s" = user + system CPU time of the thinvault'
  echo 'daemon during the step (fastest round; from /proc/PID/stat), out of 2 cores.'
  echo
  echo '| step | fill | allocated | time s | MiB/s | vs raw | vs raw → file | stream / image / file bytes | daemon CPU s | round spread |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
  for step in raw raw-file replica rep-read replica+read backup backup-daemon backup+sync; do
    for f in "${FILL_LIST[@]}"; do
      case $step in
        replica+read) has_step rep-read || continue
          a=$(best "$f" replica) b=$(best "$f" rep-read); t=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a + b }'); bytes=$(best_bytes "$f" replica); sp=– ;;
        backup+sync) has_step backup || continue
          a=$(best "$f" backup) b=$(best "$f" backup-sync); t=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a + b }'); bytes=; sp=– ;;
        backup-daemon) has_step backup && [[ -n $(best "$f" backup-daemon) ]] || continue
          t=$(best "$f" "$step") bytes=$(best_bytes "$f" "$step") sp="$(spread "$f" "$step") %" ;;
        *) has_step "$step" || continue
          t=$(best "$f" "$step") bytes=$(best_bytes "$f" "$step") sp="$(spread "$f" "$step") %" ;;
      esac
      raw=$(best "$f" raw)
      vs=–
      [[ -z $raw ]] || vs=$(awk -v r="$raw" -v t="$t" 'BEGIN { printf "%.2f", r / t }')
      [[ $step == raw ]] && vs=1.00
      rawf=$(best "$f" raw-file) vsf=–
      [[ -z $rawf || $step == raw ]] || vsf=$(awk -v r="$rawf" -v t="$t" 'BEGIN { printf "%.2f", r / t }')
      echo "| ${TITLE[$step]} | $f % | $(mib "${ALLOC[$f]}") MiB | $t | $(rate_mibs "${ALLOC[$f]}" "$t") | $vs | $vsf | ${bytes:+$(mib "$bytes") MiB} | $(cpu_of_best "$f" "$step") | $sp |"
    done
  done
  if ((${#FILL_LIST[@]} >= 2)); then
    lo=${FILL_LIST[0]} hi=${FILL_LIST[$((${#FILL_LIST[@]} - 1))]}
    echo
    echo "Scaling, $lo % against $hi % (allocated bytes ratio $(ratio "${ALLOC[$lo]}" "${ALLOC[$hi]}")):"
    echo
    echo "| step | time $lo % / time $hi % |"
    echo '|---|---:|'
    for step in raw raw-file replica rep-read backup backup-daemon; do
      [[ -n $(best "$lo" "$step") ]] || continue
      echo "| ${TITLE[$step]} | $(ratio "$(best "$lo" "$step")" "$(best "$hi" "$step")") |"
    done
  fi
  if has_step backup || has_step replica; then
    echo
    echo 'What `replica create --json` and `backup full --json` reported (last round; strings and objects left out):'
    echo
    for j in "$WORK"/replica-*-"$ROUNDS".json "$WORK"/backup-*-"$ROUNDS".json; do
      [[ -f $j ]] || continue
      f=${j##*/}
      echo "- ${f%-*.json} %: \`$(node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));const o={};for(const[k,v]of Object.entries(r))if(typeof v==="number"||typeof v==="boolean")o[k]=v;process.stdout.write(JSON.stringify(o))' "$j" | cut -c1-400)\`"
    done
  fi
  echo
  echo "The CLI calls include node's start-up: a trivial call (\`volume info --json\`, timed in every round) took"
  echo "$(for f in "${FILL_LIST[@]}"; do printf '%s s ' "$(best "$f" cli-baseline)"; done)(best per fill level)."
  echo
  echo "Per round (seconds): $(awk -F'\t' '{ printf "%s%s %% r%s %s %s", (NR > 1 ? "; " : ""), $1, $2, $3, $4 }' "$WORK/results.tsv")."
  echo "Fill times: $(for f in "${FILL_LIST[@]}"; do printf '%s %% %s s; ' "$f" "${FILL_S[$f]}"; done)load average at the end: $(load_now)."
  echo
  echo '### Commands'
  echo
  echo '```'
  echo 'node dist/cli/main.js init POOL; node dist/cli/main.js serve POOL --socket SOCK --control CTL &'
  echo "node dist/cli/main.js volume create fillP --size $SIZE --control CTL"
  echo "nbdkit -U - sparse-random size=$SIZE_BYTES percent=P runlength=$RUNLENGTH seed=P+1 random-content=true \\"
  echo "  --run 'nbdcopy --destination-is-zero --flush \"\$uri\" \"nbd+unix:///fillP?socket=SOCK\"'"
  echo '# per round and fill level, each step after sync; echo 3 > /proc/sys/vm/drop_caches:'
  has_step raw && echo 'nbdcopy "nbd+unix:///fillP?socket=SOCK" null:'
  has_step raw-file && echo 'nbdcopy "nbd+unix:///fillP?socket=SOCK" FILE; sync FILE'
  has_step replica && echo 'node dist/cli/main.js replica create fillP REP --json --control CTL'
  has_step rep-read && echo 'nbdcopy "nbd+unix:///REP?socket=SOCK" null:'
  has_step backup && echo 'node dist/cli/main.js backup full fillP --to FILE --json --control CTL; sync FILE'
  echo '```'
} >"$WORK/section.md"
if [[ $OUT == none ]]; then cat "$WORK/section.md"; else splice_section "$OUT" <"$WORK/section.md"; fi
log "done in ${SECONDS}s"
