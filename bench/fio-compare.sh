#!/usr/bin/env bash
# fio-compare.sh — compare NBD servers side by side with fio's nbd ioengine, in one run on one machine.
#
# Run `bash bench/fio-compare.sh --help` for the options; bench/README.md explains the method.
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
ORIG_ARGS=("$@")

usage() {
  cat <<'EOF'
usage: bash bench/fio-compare.sh [options]

Compares NBD servers with fio's nbd ioengine over Unix sockets. Every (server, round) gets a freshly started
server on a fresh 4 GiB backing store and runs, in order: seq write, seq read, prefill (not reported),
rand write, rand read. Rounds are interleaved (round 1: all servers, round 2: all servers); the best round is
reported together with whether the rounds agreed within 10 %.

options:
  --servers LIST       comma-separated, in run order (default: nbdkit-file,nbdkit-sparse,qemu-nbd,thinvault)
                         nbdkit-file     nbdkit file plugin on a preallocated file (fallocate -l 4G)
                         nbdkit-sparse   nbdkit file plugin on a sparse file (truncate -s 4G)
                         qemu-nbd        qemu-nbd on a 4 GiB qcow2, --cache=writeback --discard=unmap
                         thinvault       node dist/cli/main.js serve (needs a build: npm run build)
                         thinvault:VARIANT  the same with a variant (see --thinvault-variant)
  --rounds N           interleaved rounds (default 2)
  --out FILE|none      markdown file to update between the fio-compare markers (default docs/benchmarks.md);
                       "none" only prints the section
  --thinvault-variant V  variant for a plain "thinvault" entry (default $THINVAULT_VARIANT or "plain");
                       "tracked-snap" = tracking on, snapshot present (see bench/README.md)
  --workdir DIR        parent for the temporary work directory (default $TMPDIR or /tmp); must be a real disk,
                       not tmpfs; needs about 5 GiB free
  --keep-json DIR      copy every fio JSON result into DIR
  --no-drop-caches     do not drop the page cache before each (server, round)
  --max-time SECONDS   hard limit for the whole run (default 900); the run is stopped and cleaned up after it
  --idle-wait SECONDS  before each (server, round), wait up to this long for the shared machine to be quiet
                       (other processes below 0.25 cores of CPU over 2 s); default 20, at most 120 s per run in
                       all; 0 = don't wait
  --quick              smoke test: 256M sequential, 2 s random, 1 round and --out none unless given
                       (numbers not comparable with full runs)
  -h, --help           this text

environment (thinvault only):
  THINVAULT_VARIANT       default for --thinvault-variant
  THINVAULT_CLI           the CLI entry point to run with node (default <repo>/dist/cli/main.js)
  THINVAULT_CREATE_ARGS   extra arguments for `volume create` (word-split)
  THINVAULT_SETUP         shell command run after the volume is created, before the first fio job
  THINVAULT_SETUP_RANDOM  shell command run after the prefill, before the random jobs
  The hooks run under bash with TV ("node <repo>/dist/cli/main.js"), TV_CLI, TV_POOL, TV_CTL, TV_SOCK,
  TV_EXPORT, TV_URI, TV_ROUND and TV_VARIANT exported, inside a 120 s timeout; a failing hook fails that run.
EOF
}

# ---------------------------------------------------------------- options
SERVERS=nbdkit-file,nbdkit-sparse,qemu-nbd,thinvault
ROUNDS=2
OUT=$REPO/docs/benchmarks.md
OUT_SET=0
ROUNDS_SET=0
TV_VARIANT=${THINVAULT_VARIANT:-plain}
WORKBASE=${TMPDIR:-/tmp}
KEEP_JSON=
DROP=auto
MAX_TIME=900
SEQ_SIZE=2G
RUNTIME=5
QUICK=0
IDLE_WAIT=20

need_arg() { [[ $# -ge 2 && -n $2 ]] || { echo "fio-compare: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --servers) need_arg "$@"; SERVERS=$2; shift 2 ;;
    --rounds) need_arg "$@"; ROUNDS=$2; ROUNDS_SET=1; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; OUT_SET=1; shift 2 ;;
    --thinvault-variant) need_arg "$@"; TV_VARIANT=$2; shift 2 ;;
    --workdir) need_arg "$@"; WORKBASE=$2; shift 2 ;;
    --keep-json) need_arg "$@"; KEEP_JSON=$2; shift 2 ;;
    --no-drop-caches) DROP=no; shift ;;
    --max-time) need_arg "$@"; MAX_TIME=$2; shift 2 ;;
    --idle-wait) need_arg "$@"; IDLE_WAIT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fio-compare: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "fio-compare: --rounds must be a positive integer" >&2; exit 2; }
[[ $MAX_TIME =~ ^[1-9][0-9]*$ ]] || { echo "fio-compare: --max-time must be a positive integer" >&2; exit 2; }
[[ $IDLE_WAIT =~ ^[0-9]+$ ]] || { echo "fio-compare: --idle-wait must be a number of seconds" >&2; exit 2; }
if [[ $QUICK == 1 ]]; then
  SEQ_SIZE=256M RUNTIME=2
  [[ $ROUNDS_SET == 1 ]] || ROUNDS=1
  [[ $OUT_SET == 1 ]] || OUT=none
fi

# Hard time limit for the whole run: re-exec under timeout(1). On expiry timeout sends SIGTERM to the whole
# process group (this script, fio, the servers); the EXIT trap below then stops the servers by PID and removes
# the work directory. timeout may put the run into a process group of its own, where a Ctrl-C given to a caller
# such as `npm run bench` does not arrive; so the run also stops by itself, between two jobs, once its caller
# has gone.
if [[ -z ${FIO_COMPARE_WATCHDOG:-} ]]; then
  export FIO_COMPARE_WATCHDOG=$MAX_TIME FIO_COMPARE_CALLER=$PPID
  exec timeout -k 20 "$MAX_TIME" bash "${BASH_SOURCE[0]}" "${ORIG_ARGS[@]}"
fi
caller_alive() { [[ -z ${FIO_COMPARE_CALLER:-} ]] || kill -0 "$FIO_COMPARE_CALLER" 2>/dev/null; }

log() { printf '[fio-compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  if [[ -n ${WORK:-} && -d ${WORK:-} ]]; then printf '%s\n' "$*" >"$WORK/fail-reason"; fi
  exit 1
}

IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
[[ ${#SERVER_LIST[@]} -gt 0 ]] || die "empty --servers"
for i in "${!SERVER_LIST[@]}"; do
  s=${SERVER_LIST[$i]}
  case $s in
    nbdkit-file|nbdkit-sparse|qemu-nbd) ;;
    thinvault) SERVER_LIST[$i]=thinvault; [[ $TV_VARIANT == plain ]] || SERVER_LIST[$i]=thinvault:$TV_VARIANT ;;
    thinvault:*) [[ ${s#thinvault:} =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad thinvault variant in '$s'" ;;
    *) die "unknown server '$s' (see --help)" ;;
  esac
done
SERVERS=$(IFS=,; echo "${SERVER_LIST[*]}")
if [[ $OUT != none ]]; then OUT=$(realpath -m "$OUT"); fi

# ---------------------------------------------------------------- tools and sizes
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found (needed for: $2)"; }
need fio "all servers"; need nbdinfo "readiness checks (libnbd-bin)"; need node "result parsing"
need timeout "time limits"
for s in "${SERVER_LIST[@]}"; do
  case $s in
    nbdkit-*) need nbdkit "$s"; need fallocate "$s" ;;
    qemu-nbd) need qemu-nbd "$s"; need qemu-img "$s" ;;
  esac
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine"

to_bytes() { # fio-style size with binary suffixes: 512, 64K, 256M, 2G
  local v=$1 n u
  [[ $v =~ ^([0-9]+)([KkMmGg]?)(i?[Bb])?$ ]] || die "bad size '$v'"
  n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]^^}
  case $u in K) echo $((n << 10)) ;; M) echo $((n << 20)) ;; G) echo $((n << 30)) ;; *) echo "$n" ;; esac
}
EXPORT_BYTES=$((4 << 30))
SEQ_BYTES=$(to_bytes "$SEQ_SIZE")
((SEQ_BYTES > 0 && SEQ_BYTES <= EXPORT_BYTES)) || die "sequential size must be within the 4 GiB export"
PREFILL_OFFSET=$SEQ_BYTES
PREFILL_BYTES=$((EXPORT_BYTES - SEQ_BYTES))

# ---------------------------------------------------------------- fio jobs (the exact arguments used)
FIO_COMMON=(--ioengine=nbd --output-format=json)
JOB_seqwrite=(--name=seqwrite --rw=write --bs=1M --iodepth=16 "--size=$SEQ_SIZE" --fsync=256)
JOB_seqread=(--name=seqread --rw=read --bs=1M --iodepth=16 "--size=$SEQ_SIZE")
JOB_prefill=(--name=prefill --rw=write --bs=1M --iodepth=16 "--offset=$PREFILL_OFFSET" "--size=$PREFILL_BYTES"
  --fsync=256 --end_fsync=1)
JOB_randwrite=(--name=randwrite --rw=randwrite --bs=4k --iodepth=32 --time_based "--runtime=$RUNTIME" --size=4G
  --fsync=256)
JOB_randread=(--name=randread --rw=randread --bs=4k --iodepth=32 --time_based "--runtime=$RUNTIME" --size=4G)
JOBS=(seqwrite seqread prefill randwrite randread)
declare -A JOB_DIR=([seqwrite]=write [seqread]=read [prefill]=write [randwrite]=write [randread]=read)
# Per-job time limits (seconds): generous, only there so that a hung server cannot stall the run.
declare -A JOB_LIMIT=([seqwrite]=180 [seqread]=180 [prefill]=180 [randwrite]=$((RUNTIME + 60))
  [randread]=$((RUNTIME + 60)))

# ---------------------------------------------------------------- work directory and cleanup
mkdir -p "$WORKBASE"
WORK=$(mktemp -d "$WORKBASE/thinvault-fio.XXXXXX")
SERVER_PID_FILE=$WORK/server.pid
FSTYPE=$(df --output=fstype "$WORK" | tail -1 | tr -d ' ')
[[ $FSTYPE != tmpfs && $FSTYPE != ramfs ]] || die "work directory $WORK is on $FSTYPE; use --workdir on a disk"
AVAIL=$(df --output=avail -B1 "$WORK" | tail -1 | tr -d ' ')
((AVAIL > EXPORT_BYTES + (1 << 30))) || die "not enough free space in $WORKBASE ($AVAIL bytes)"

cleanup() {
  local rc=$?
  trap - EXIT
  # A server left behind by an interrupted run (its PID was recorded when it was started).
  if [[ -f $SERVER_PID_FILE ]]; then
    local pid
    pid=$(cat "$SERVER_PID_FILE" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

DROP_NOTE=
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }
if [[ $DROP == auto ]]; then
  if (drop_caches) 2>/dev/null; then
    DROP=yes
  else
    DROP=no
    DROP_NOTE=" (writing /proc/sys/vm/drop_caches failed here)"
  fi
fi

# ---------------------------------------------------------------- one (server, round)
# Runs in a subshell with its own traps; prints nothing on stdout; appends to $WORK/results.tsv.
SERVER_PID=
start_server() { # LOG CMD...
  local logf=$1
  shift
  "$@" >"$logf" 2>&1 &
  SERVER_PID=$!
  echo "$SERVER_PID" >"$SERVER_PID_FILE"
}

stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "server PID $SERVER_PID ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
  fi
  [[ -z $SERVER_PID ]] || wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  rm -f "$SERVER_PID_FILE"
}

wait_ready() { # URI: wait until the export answers with the expected size
  local uri=$1 size=
  for _ in $(seq 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited during start-up (log: $(tail -c 600 "$RUN/server.log"))"
    if size=$(timeout 5 nbdinfo --size "$uri" 2>/dev/null); then
      [[ $size == "$EXPORT_BYTES" ]] || die "export $uri has size $size, expected $EXPORT_BYTES"
      return 0
    fi
    sleep 0.2
  done
  die "export $uri not ready after 30 s"
}

run_hook() { # NAME COMMAND
  [[ -n $2 ]] || return 0
  log "  $1: $2"
  timeout -k 5 120 bash -c "$2" >>"$RUN/hooks.log" 2>&1 || die "$1 failed (log: $(tail -c 600 "$RUN/hooks.log"))"
}

job_args() { # JOB -> ARGS (array copy of JOB_<job>)
  local -n a="JOB_$1"
  ARGS=("${a[@]}")
}

# Disk canary: 512 MiB of O_DIRECT writes into a new file in the work directory, in MB/s. Run before and after
# every (server, round); the virtual disk of a shared machine changes speed, and this shows when it did.
disk_canary() {
  local f=$WORK/canary.img out
  out=$(LC_ALL=C timeout 60 dd if=/dev/zero of="$f" bs=1M count=512 oflag=direct conv=fsync 2>&1) || out=
  rm -f "$f"
  awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.0f", $1 / $(i - 1) / 1e6; exit } }' <<<"$out"
}
# CPU accounting, to see how busy the shared machine was. CPU used by other people's processes (builds, tests,
# benchmarks) over a window = user + system jiffies of all CPUs, minus those of kernel threads (they also do this
# run's writeback and extent conversion; counted per thread, so threads that come and go do not skew it), minus
# those of this subshell and its reaped children (fio, the server, helpers). cpu_mark FILE starts a window,
# cpu_others FILE [SELF_PID SELF_START] ends it and prints the jiffies of others.
kthread_ticks() { # "pid ticks" for every kernel thread
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk '{ pid = $1; sub(/^.*\) /, ""); if ($2 == 2 || pid == 2) print pid, $12 + $13 }'
}
cpu_all() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }
cpu_mark() { { echo "all $(cpu_all)"; kthread_ticks; } >"$1"; }
cpu_others() {
  local self=0
  if [[ -n ${2:-} ]]; then self=$(($(self_cpu "$2") - $3)); fi
  { echo "all $(cpu_all)"; kthread_ticks; } |
    awk -v self="$self" 'NR == FNR { s[$1] = $2; next }
      $1 == "all" { all = $2 - s["all"]; next }
      { kt += $2 - (($1 in s) ? s[$1] : 0) }
      END { o = all - kt - self; print (o < 0 ? 0 : o) }' "$1" -
}
self_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"; }

run_one() { # SERVER ROUND
  local server=$1 round=$2 base=${1%%:*} variant= uri job json line
  local me=$BASHPID t0 self0 canary0 canary1
  canary0=$(disk_canary)
  t0=$(date +%s%N) self0=$(self_cpu "$me")
  cpu_mark "$WORK/cpu-mark"
  [[ $server == *:* ]] && variant=${server#*:}
  RUN=$WORK/run
  rm -rf "$RUN"
  mkdir -p "$RUN"
  trap 'echo "line $LINENO: $BASH_COMMAND" >"$WORK/fail-reason"' ERR
  trap 'stop_server; rm -rf "$RUN"' EXIT
  trap 'exit 143' TERM INT HUP
  local sock=$RUN/nbd.sock
  case $base in
    nbdkit-file|nbdkit-sparse)
      if [[ $base == nbdkit-file ]]; then fallocate -l 4G "$RUN/disk.img"; else truncate -s 4G "$RUN/disk.img"; fi
      start_server "$RUN/server.log" nbdkit -f -U "$sock" -P "$RUN/nbdkit.pid" --exit-with-parent \
        file "$RUN/disk.img"
      uri="nbd+unix:///?socket=$sock"
      ;;
    qemu-nbd)
      qemu-img create -q -f qcow2 "$RUN/disk.qcow2" 4G
      start_server "$RUN/server.log" qemu-nbd -f qcow2 --cache=writeback --discard=unmap -t -k "$sock" -x disk \
        "$RUN/disk.qcow2"
      uri="nbd+unix:///disk?socket=$sock"
      ;;
    thinvault)
      local cli=${THINVAULT_CLI:-$REPO/dist/cli/main.js} ctl=$RUN/control.sock
      [[ -f $cli ]] || die "$cli missing: build first (npm run build)"
      export TV="node $cli" TV_CLI=$cli TV_POOL=$RUN/pool TV_CTL=$ctl TV_SOCK=$sock TV_EXPORT=vol0
      export TV_URI="nbd+unix:///vol0?socket=$sock" TV_ROUND=$round TV_VARIANT=${variant:-plain}
      timeout 60 node "$cli" init "$TV_POOL" >"$RUN/init.log" 2>&1 ||
        die "thinvault init failed: $(tail -c 600 "$RUN/init.log")"
      start_server "$RUN/server.log" node "$cli" serve "$TV_POOL" --socket "$sock" --control "$ctl"
      for _ in $(seq 150); do
        [[ -S $ctl ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "thinvault serve exited: $(tail -c 600 "$RUN/server.log")"
        sleep 0.2
      done
      [[ -S $ctl ]] || die "thinvault control socket $ctl did not appear within 30 s"
      # shellcheck disable=SC2086 # THINVAULT_CREATE_ARGS is deliberately word-split
      timeout 60 node "$cli" volume create vol0 --size 4GiB --control "$ctl" ${THINVAULT_CREATE_ARGS:-} \
        >"$RUN/create.log" 2>&1 || die "thinvault volume create failed: $(tail -c 600 "$RUN/create.log")"
      uri=$TV_URI
      ;;
  esac
  wait_ready "$uri"
  if [[ $base == thinvault ]]; then run_hook THINVAULT_SETUP "$TV_SETUP"; fi
  if [[ $DROP == yes ]]; then drop_caches; fi

  for job in "${JOBS[@]}"; do
    caller_alive || { log "caller (PID $FIO_COMPARE_CALLER) has gone; stopping"; exit 143; }
    if [[ $job == randwrite && $base == thinvault ]]; then run_hook THINVAULT_SETUP_RANDOM "$TV_SETUP_RANDOM"; fi
    job_args "$job"
    json=$RUN/$job.json
    timeout -k 5 "${JOB_LIMIT[$job]}" fio "${FIO_COMMON[@]}" "--uri=$uri" "${ARGS[@]}" "--output=$json" \
      >"$RUN/fio-$job.log" 2>&1 ||
      die "fio $job failed or timed out (rc $?): $(tail -c 600 "$RUN/fio-$job.log") $(tail -c 400 "$json" 2>/dev/null)"
    kill -0 "$SERVER_PID" 2>/dev/null || die "server died during $job: $(tail -c 600 "$RUN/server.log")"
    line=$(node "$SCRIPT_DIR/lib/fio-result.mjs" "$json" "${JOB_DIR[$job]}")
    [[ -z $KEEP_JSON ]] || cp "$json" "$KEEP_JSON/$server-r$round-$job.json"
    if [[ $job != prefill ]]; then printf '%s\t%s\t%s\t%s\n' "$server" "$round" "$job" "$line" >>"$WORK/results.tsv"; fi
    log "  $job: $(awk -F'\t' '{printf "%s MiB/s, %s IOPS, %s ms, %s flushes", $1, $2, $3, $5}' <<<"$line")"
  done
  stop_server
  rm -rf "$RUN"
  canary1=$(disk_canary)
  local other
  other=$(awk -v o="$(cpu_others "$WORK/cpu-mark" "$me" "$self0")" \
    -v ns="$(( $(date +%s%N) - t0 ))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.2f", o / hz / (ns / 1e9) }')
  printf '%s\t%s\tmachine\t%s\t%s\t%s\n' "$server" "$round" "$other" "${canary0:-?}" "${canary1:-?}" \
    >>"$WORK/results.tsv"
  log "  CPU used by other processes meanwhile: $other cores (of $(nproc));" \
    "disk canary before/after: ${canary0:-?}/${canary1:-?} MB/s"
}

# thinvault variants: "plain" uses only the hooks from the environment; "new-gen" advances the generation after
# the prefill (the random jobs then pay for marking every chunk they first touch); "tracked-snap" (tracking on, a snapshot
# present during every job) defaults the hooks to taking snapshots when they are not set (`snapshot create SOURCE
# NAME`, the CLI's syntax since 5f0a5a8); THINVAULT_SETUP / THINVAULT_SETUP_RANDOM override them.
TV_SETUP=${THINVAULT_SETUP:-}
TV_SETUP_RANDOM=${THINVAULT_SETUP_RANDOM:-}
variant_hooks() { # VARIANT -> sets TV_SETUP / TV_SETUP_RANDOM for this server entry
  TV_SETUP=${THINVAULT_SETUP:-}
  TV_SETUP_RANDOM=${THINVAULT_SETUP_RANDOM:-}
  if [[ $1 == new-gen ]]; then
    # tracking cost: the random jobs start in a fresh generation, so the first write into each chunk must make
    # its "changed in generation G" mark durable before the data goes down (commit-rules.ts, W3)
    # shellcheck disable=SC2016
    if [[ -z $TV_SETUP_RANDOM ]]; then TV_SETUP_RANDOM='$TV volume advance-generation "$TV_EXPORT" --control "$TV_CTL"'; fi
  fi
  if [[ $1 == tracked-snap ]]; then
    # shellcheck disable=SC2016 # expanded by the hook shell
    if [[ -z $TV_SETUP ]]; then TV_SETUP='$TV snapshot create "$TV_EXPORT" bench-empty --control "$TV_CTL"'; fi
    # shellcheck disable=SC2016
    if [[ -z $TV_SETUP_RANDOM ]]; then TV_SETUP_RANDOM='$TV snapshot create "$TV_EXPORT" bench-filled --control "$TV_CTL"'; fi
  fi
}

# ---------------------------------------------------------------- description of the run
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)
FSDEV=$(df --output=source "$WORK" | tail -1)
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
VERSIONS=$(fio --version)
for s in "${SERVER_LIST[@]}"; do
  case $s in
    nbdkit-*) [[ $VERSIONS == *nbdkit* ]] || VERSIONS+=", $(nbdkit --version)" ;;
    qemu-nbd) VERSIONS+=", $(qemu-nbd --version | head -1 | sed 's/ (.*//')" ;;
    thinvault*)
      if [[ $VERSIONS != *thinvault* ]]; then
        rev=$(git -C "$REPO" rev-parse -q --verify --short HEAD 2>/dev/null) || rev="no commit"
        dirty=$(git -C "$REPO" status --porcelain -- src native 2>/dev/null | head -1)
        VERSIONS+=", thinvault $rev${dirty:+ + uncommitted changes} on node $(node --version)"
      fi
      ;;
  esac
done
{
  printf 'date\t%s\n' "$DATE"
  printf 'cores\t%s\n' "$(nproc)"
  printf 'fio\t%s\n' "$(fio --version)"
  printf 'machine\t%s cores (nproc) %s, %s, %s %s, work dir on %s (%s), load average at start %s\n' \
    "$(nproc)" "$CPU" "$MEM" "$(uname -s)" "$(uname -r)" "$FSTYPE" "$FSDEV" "$LOAD"
  printf 'versions\t%s\n' "$VERSIONS"
  if [[ $DROP == yes ]]; then
    printf 'cache\tPage cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) after each server start, before its first fio job.\n'
  else
    printf 'cache\tPage cache not dropped%s.\n' "$DROP_NOTE"
  fi
  [[ $QUICK == 0 ]] || printf 'note\tQuick smoke run (--quick): 256M sequential, 2 s random; not comparable with full runs.\n'
  for s in "${SERVER_LIST[@]}"; do
    case $s in
      nbdkit-file) printf 'label:%s\tnbdkit-file (preallocated file)\n' "$s" ;;
      nbdkit-sparse) printf 'label:%s\tnbdkit-sparse (sparse file)\n' "$s" ;;
      qemu-nbd) printf 'label:%s\tqemu-nbd (qcow2, writeback)\n' "$s" ;;
      thinvault:tracked-snap) printf 'label:%s\tthinvault (tracking on, snapshot present)\n' "$s" ;;
      thinvault:*) printf 'label:%s\tthinvault (variant %s)\n' "$s" "${s#thinvault:}" ;;
    esac
  done
} >"$WORK/meta.tsv"

fio_cmd() { # JOB -> printable command
  job_args "$1"
  echo "fio ${FIO_COMMON[*]} --uri=URI ${ARGS[*]} --output=RESULT.json"
}
{
  echo '### Commands'
  echo
  echo "FILE, POOL, SOCK, CTL and PIDFILE live in a fresh \`mktemp -d\` directory on $FSTYPE ($FSDEV); a server is"
  echo 'started fresh for every (server, round), checked with `nbdinfo --size URI` (must print 4294967296), stopped'
  echo 'with SIGTERM by PID after its last job, and its files are deleted before the next server starts.'
  echo
  for s in "${SERVER_LIST[@]}"; do
    case $s in
      nbdkit-file)
        echo '- nbdkit-file: `fallocate -l 4G FILE`; `nbdkit -f -U SOCK -P PIDFILE --exit-with-parent file FILE`;'
        echo '  URI `nbd+unix:///?socket=SOCK`' ;;
      nbdkit-sparse)
        echo '- nbdkit-sparse: `truncate -s 4G FILE`; `nbdkit -f -U SOCK -P PIDFILE --exit-with-parent file FILE`;'
        echo '  URI `nbd+unix:///?socket=SOCK`' ;;
      qemu-nbd)
        echo '- qemu-nbd: `qemu-img create -q -f qcow2 FILE 4G`;'
        echo '  `qemu-nbd -f qcow2 --cache=writeback --discard=unmap -t -k SOCK -x disk FILE`; URI `nbd+unix:///disk?socket=SOCK`' ;;
      thinvault*)
        variant_hooks "${s#thinvault:}"
        echo "- $s: \`node dist/cli/main.js init POOL\`; \`node dist/cli/main.js serve POOL --socket SOCK --control CTL &\`;"
        echo "  \`node dist/cli/main.js volume create vol0 --size 4GiB --control CTL${THINVAULT_CREATE_ARGS:+ $THINVAULT_CREATE_ARGS}\`; URI \`nbd+unix:///vol0?socket=SOCK\`"
        [[ -z $TV_SETUP ]] || echo "  then (THINVAULT_SETUP) \`$TV_SETUP\`"
        [[ -z $TV_SETUP_RANDOM ]] || echo "  after the prefill (THINVAULT_SETUP_RANDOM) \`$TV_SETUP_RANDOM\`"
        ;;
    esac
  done
  echo
  echo 'fio jobs, each its own fio process, in this order against the same server:'
  echo
  echo '```'
  for job in "${JOBS[@]}"; do fio_cmd "$job"; done
  echo '```'
  echo
  echo "The seq write fills bytes 0–$SEQ_SIZE and the seq read reads them back; the prefill (not reported) writes the"
  echo "rest of the export once, so the whole 4 GiB has been written before the random jobs: rand write overwrites"
  echo 'written data and rand read reads written data on every server. MiB/s = fio `bw_bytes` / 2^20, IOPS = fio `iops`.'
  echo 'The write jobs flush (`--fsync=256`), so they measure durable throughput. Note: at each 256-write point fio 3.33'
  echo 'fills every free queue slot with an NBD_CMD_FLUSH, so a server sees roughly iodepth concurrent flushes per 256'
  echo 'writes (counted with nbdkit'"'"'s stats filter: ~29 per 256 writes at iodepth 32, ~15 at iodepth 16, 1 at iodepth 1);'
  echo 'the same for every server. fio'"'"'s own count is in each result JSON (`sync.total_ios`) and in the run log.'
} >"$WORK/commands.md"

# Wait (bounded) until other processes leave the CPUs alone. Nothing of this run is running at that point, so all
# CPU seen outside kernel threads is someone else's.
# At most IDLE_WAIT seconds per (server, round) and IDLE_BUDGET seconds per run, so a busy machine cannot stretch
# a full run much beyond its usual length.
IDLE_BUDGET=120
wait_idle() {
  local waited=0 d hz limit
  hz=$(getconf CLK_TCK)
  limit=$((IDLE_WAIT < IDLE_BUDGET ? IDLE_WAIT : IDLE_BUDGET))
  while :; do
    cpu_mark "$WORK/idle-mark"
    sleep 2
    d=$(cpu_others "$WORK/idle-mark")
    if awk -v d="$d" -v hz="$hz" 'BEGIN { exit !(d / hz / 2 < 0.25) }'; then
      ((waited == 0)) || log "  waited ${waited}s for the machine to be quiet"
      break
    fi
    waited=$((waited + 2))
    if ((waited >= limit)); then
      log "  machine still busy after ${waited}s ($(awk -v d="$d" -v hz="$hz" \
        'BEGIN { printf "%.2f", d / hz / 2 }') cores used by others); running anyway"
      break
    fi
  done
  IDLE_BUDGET=$((IDLE_BUDGET - waited))
}

# ---------------------------------------------------------------- the rounds
: >"$WORK/results.tsv"
[[ -z $KEEP_JSON ]] || mkdir -p "$KEEP_JSON"
log "servers $SERVERS, $ROUNDS round(s), work dir $WORK ($FSTYPE), page cache drop: $DROP, limit ${MAX_TIME}s"
for round in $(seq "$ROUNDS"); do
  for s in "${SERVER_LIST[@]}"; do
    log "round $round: $s"
    rm -f "$WORK/fail-reason"
    caller_alive || { log "caller (PID $FIO_COMPARE_CALLER) has gone; stopping"; exit 143; }
    ((IDLE_WAIT == 0)) || wait_idle
    [[ $s != thinvault* ]] || variant_hooks "${s#thinvault:}"
    set +e
    (set -Eeuo pipefail; run_one "$s" "$round")
    rc=$?
    set -e
    if ((rc == 143)); then exit 143; fi
    if ((rc != 0)); then
      reason=$(tr '\n\t' '  ' <"$WORK/fail-reason" 2>/dev/null || echo "exit status $rc")
      log "round $round: $s FAILED: $reason"
      printf '%s\t%s\tFAILED\t%s\n' "$s" "$round" "${reason:0:300}" >>"$WORK/results.tsv"
    fi
  done
done

ELAPSED=$SECONDS
printf 'elapsed\t%d min %02d s\n' $((ELAPSED / 60)) $((ELAPSED % 60)) >>"$WORK/meta.tsv"
report_args=(--dir "$WORK" --servers "$SERVERS")
[[ $OUT == none ]] || { mkdir -p "$(dirname "$OUT")"; report_args+=(--out "$OUT"); }
node "$SCRIPT_DIR/lib/fio-report.mjs" "${report_args[@]}"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
