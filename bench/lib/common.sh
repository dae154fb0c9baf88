# bench/lib/common.sh — shared plumbing of the snapshot / replica / backup benchmarks
# (snapshot-create.sh, backup-throughput.sh, fig6.sh). Source it after setting BENCH_NAME and before parsing
# options; it defines helpers only and starts nothing by itself.
#
#   bench_watchdog MAX_TIME "$@"   re-exec the calling script under timeout(1) (hard time bound)
#   bench_workdir                  WORK=$(mktemp -d) under ${TMPDIR:-/tmp}, refuses tmpfs, installs the cleanup trap
#   bench_spawn LOGFILE CMD...     start a background process and record its PID for the cleanup
#   bench_unspawn PID              stop one recorded process (SIGTERM, SIGKILL after 10 s)
#   tv_freeze                      copy the current build into $WORK/tv, so a concurrent rebuild cannot break the run
#   tv_start POOL                  init a pool, serve it on $WORK/nbd.sock (+ control socket); sets TV_SOCK, TV_CTL
#   tv ARGS...                     run the CLI against that daemon (--control added), 600 s limit
#   now_ns, secs_since NS          wall clock
#   drop_caches                    sync + echo 3 > drop_caches when DROP=yes
#   machine_note                   one line: date, cores, CPU, RAM, kernel, fs of $WORK, load, versions
#   splice_section FILE            stdin = markdown; put it between <!-- $BENCH_NAME:begin/end --> in FILE
# shellcheck shell=bash

BENCH_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_LIB/../.." && pwd)
THINVAULT_CLI_SET=${THINVAULT_CLI:-}
THINVAULT_CLI=${THINVAULT_CLI:-$REPO/dist/cli/main.js}

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found (needed for: $2; Debian package: ${3:-$1})"; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

# Hard time bound: the script re-executes itself under timeout(1); on expiry timeout sends SIGTERM, and the EXIT
# trap stops what the script started (by PID) and deletes its work directory.
bench_watchdog() { # MAX_TIME SCRIPT ARGS...
  local max=$1 script=$2
  shift 2
  [[ $max =~ ^[1-9][0-9]*$ ]] || die "--max-time must be a positive integer"
  if [[ -z ${BENCH_WATCHDOG:-} ]]; then
    export BENCH_WATCHDOG=$max
    exec timeout -k 20 "$max" bash "$script" "$@"
  fi
}

BENCH_PIDS=()
BENCH_MOUNTS=()
WORK=
# FUSE mounts: BENCH_MOUNTS holds "PATH PID" (the FUSE server's PID), innermost last.
is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }
bench_mount_add() { BENCH_MOUNTS+=("$1 $2"); }
bench_umount_all() { # unmount innermost first; wait for each FUSE server to go before the next layer
  local i m pid
  for ((i = ${#BENCH_MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${BENCH_MOUNTS[$i]% *} pid=${BENCH_MOUNTS[$i]##* }
    if is_mounted "$m"; then
      "${FUSERMOUNT:-fusermount3}" -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || true
    fi
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if is_mounted "$m"; then
      bench_unspawn "$pid"
      "${FUSERMOUNT:-fusermount3}" -u "$m" 2>/dev/null || "${FUSERMOUNT:-fusermount3}" -u -z "$m" 2>/dev/null ||
        umount -l "$m" 2>/dev/null || true
    fi
    bench_unspawn "$pid"
  done
  BENCH_MOUNTS=()
}
bench_cleanup() {
  local rc=$? pid i m
  trap - EXIT
  bench_umount_all
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[$i]}
    [[ -n $pid ]] || continue
    bench_unspawn "$pid"
  done
  if [[ -n $WORK && -d $WORK ]]; then
    if awk -v w="$WORK/" 'index($2, w) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
      log "something is still mounted under $WORK; not deleting it"
      exit "$rc"
    fi
    rm -rf "$WORK"
  fi
  exit "$rc"
}

bench_workdir() {
  local base=${WORKBASE:-${TMPDIR:-/tmp}} fstype
  mkdir -p "$base"
  WORK=$(mktemp -d "$base/thinvault-$BENCH_NAME.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 143' TERM INT HUP
  fstype=$(df --output=fstype "$WORK" | tail -1 | tr -d ' ')
  [[ $fstype != tmpfs && $fstype != ramfs ]] || die "work directory $WORK is on $fstype; use --workdir on a disk"
  WORK_FS="$fstype ($(df --output=source "$WORK" | tail -1))"
}

bench_need_space() { # BYTES
  local avail
  avail=$(df --output=avail -B1 "$WORK" | tail -1 | tr -d ' ')
  ((avail > $1)) || die "not enough free space under $WORK: $avail bytes free, about $1 needed"
}

bench_spawn() { # LOGFILE CMD... -> BENCH_LAST_PID
  local logf=$1
  shift
  "$@" >"$logf" 2>&1 &
  BENCH_LAST_PID=$!
  BENCH_PIDS+=("$BENCH_LAST_PID")
}

bench_unspawn() { # PID
  local pid=$1 i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "PID $pid ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${!BENCH_PIDS[@]}"; do [[ ${BENCH_PIDS[$i]} != "$pid" ]] || BENCH_PIDS[$i]=; done
}

# ---------------------------------------------------------------- thinvault daemon
# Other people rebuild dist/ while benchmarks run; a CLI call that starts in the middle of a rebuild fails with a
# half-written module. tv_freeze copies dist/, build/Release/*.node and package.json into $WORK/tv (node_modules is
# a symlink) once, so the whole run uses one build. THINVAULT_CLI set by the caller is used as it is.
tv_freeze() {
  [[ -z ${THINVAULT_CLI_SET:-} ]] || return 0
  [[ -f $REPO/dist/cli/main.js ]] || die "$REPO/dist/cli/main.js missing: build first (npm run build)"
  local i
  for i in $(seq 10); do
    # wait until dist/ has not changed for 5 s (a rebuild writes many files over a few seconds)
    [[ -n $(find "$REPO/dist" -newermt '-5 seconds' -print -quit 2>/dev/null) ]] || break
    log "dist/ is being rebuilt; waiting ($i)"
    sleep 5
  done
  mkdir -p "$WORK/tv/build/Release"
  cp -a "$REPO/dist" "$REPO/package.json" "$WORK/tv/"
  cp -a "$REPO"/build/Release/*.node "$WORK/tv/build/Release/" 2>/dev/null || true
  ln -s "$REPO/node_modules" "$WORK/tv/node_modules"
  THINVAULT_CLI=$WORK/tv/dist/cli/main.js
  node "$THINVAULT_CLI" --version >/dev/null 2>&1 || die "the copied build does not start: node $THINVAULT_CLI --version"
  TV_VERSION_NOTE=$(tv_version)
}
tv_start() { # POOL [init args...]
  local pool=$1
  shift
  [[ -f $THINVAULT_CLI ]] || die "$THINVAULT_CLI missing: build first (npm run build)"
  TV_POOL=$pool TV_SOCK=$WORK/nbd.sock TV_CTL=$WORK/control.sock
  timeout 60 node "$THINVAULT_CLI" init "$pool" "$@" >"$WORK/init.log" 2>&1 ||
    die "thinvault init failed: $(tail -c 600 "$WORK/init.log")"
  bench_spawn "$WORK/server.log" node "$THINVAULT_CLI" serve "$pool" --socket "$TV_SOCK" --control "$TV_CTL"
  TV_PID=$BENCH_LAST_PID
  for _ in $(seq 150); do
    [[ -S $TV_CTL && -S $TV_SOCK ]] && return 0
    kill -0 "$TV_PID" 2>/dev/null || die "thinvault serve exited: $(tail -c 600 "$WORK/server.log")"
    sleep 0.2
  done
  die "thinvault sockets did not appear within 30 s"
}
tv_stop() { [[ -z ${TV_PID:-} ]] || bench_unspawn "$TV_PID"; TV_PID=; }

# tv ARGS... : the CLI against the daemon of tv_start; stdout is the command's output; failures are fatal with
# the CLI's message.
tv() {
  local out rc=0
  out=$(timeout -k 5 "${TV_TIMEOUT:-600}" node "$THINVAULT_CLI" "$@" --control "$TV_CTL" 2>"$WORK/tv.err") || rc=$?
  if ((rc != 0)); then
    die "thinvault $* failed (rc $rc): $(tail -c 600 "$WORK/tv.err") $(head -c 400 <<<"$out")"
  fi
  printf '%s\n' "$out"
}
tv_uri() { echo "nbd+unix:///$1?socket=$TV_SOCK"; }

# tv_has_command GROUP CMD: does this build have `thinvault GROUP CMD`?
tv_has_command() { node "$THINVAULT_CLI" "$1" "$2" --help 2>&1 | grep -q "thinvault $1 $2"; }

to_bytes() { # 512, 64K, 64KiB, 1G, 10GiB, 1TiB -> bytes
  [[ $1 =~ ^([0-9]+)([KkMmGgTt]?)(i?[Bb])?$ ]] || die "bad size '$1'"
  local n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]^^}
  case $u in K) echo $((n << 10)) ;; M) echo $((n << 20)) ;; G) echo $((n << 30)) ;; T) echo $((n << 40)) ;; *) echo "$n" ;; esac
}

# json_get FIELD[.FIELD...] < JSON : one value ("" if absent)
json_get() {
  node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      let v = JSON.parse(s);
      for (const k of process.argv[1].split(".")) v = v == null ? undefined : v[k];
      process.stdout.write(v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
    });' "$1"
}

# ---------------------------------------------------------------- time, cache, machine
now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

DROP=${DROP:-auto}
DROP_NOTE=
drop_caches_init() {
  if [[ $DROP == auto ]]; then
    if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then DROP=yes; else
      DROP=no DROP_NOTE=" (writing /proc/sys/vm/drop_caches failed: not root?)"
    fi
  fi
}
drop_caches() { if [[ $DROP == yes ]]; then sync && echo 3 >/proc/sys/vm/drop_caches; fi; }
cache_note() {
  if [[ $DROP == yes ]]; then
    echo "Page cache dropped (\`sync; echo 3 > /proc/sys/vm/drop_caches\`) before every timed step."
  else
    echo "Page cache **not** dropped$DROP_NOTE: reads may come from memory."
  fi
}

tv_version() {
  [[ -z ${TV_VERSION_NOTE:-} ]] || { echo "$TV_VERSION_NOTE"; return; }
  local rev dirty
  rev=$(git -C "$REPO" rev-parse -q --verify --short HEAD 2>/dev/null) || rev="no commit"
  dirty=$(git -C "$REPO" status --porcelain -- src native 2>/dev/null | head -1)
  echo "thinvault $rev${dirty:+ + uncommitted changes in src/} (dist/ built $(date -u -r "$THINVAULT_CLI" '+%H:%M UTC' 2>/dev/null || echo '?')) on node $(node --version)"
}
machine_note() {
  local cpu mem
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
  mem=$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)
  echo "$DATE_AT_START · $(nproc) cores (nproc) $cpu, $mem, $(uname -s) $(uname -r), work dir on ${WORK_FS:-?}, load average at start ${LOAD_AT_START:-?}"
}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATE_AT_START=$(date -u '+%Y-%m-%d %H:%M UTC')

# load average now, printed at the end of a section as a (coarse) noise indicator for the shared machine
load_now() { cut -d' ' -f1-3 /proc/loadavg; }

splice_section() { # FILE < section.md
  node "$BENCH_LIB/splice-section.mjs" --name "$BENCH_NAME" --out "$1"
}

# human-friendly numbers
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
rate_mibs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "–" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "–" }'; }
