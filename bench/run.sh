#!/usr/bin/env bash
# run.sh — what `npm run bench` runs: build thinvault if needed, then every benchmark in bench/.
#
#   bash bench/run.sh [--extra LIST|all] [--no-fio] [fio-compare options]
#   e.g. bash bench/run.sh --rounds 1 --out none
#        bash bench/run.sh --extra all                   # also the snapshot / replica / backup benchmarks
#        bash bench/run.sh --no-fio --extra fig6
#
# --extra LIST (comma-separated: snapshot-create, backup-throughput, fig6, diff-backup; or "all") also runs those
# scripts after fio-compare (about 1, 3, 5 and 10-15 minutes); they are not part of the default run. --no-fio skips
# fio-compare and crc32c. Every other argument is passed to bench/fio-compare.sh (after the default --servers, so a --servers
# given here wins); an --out given here is passed to the extra scripts too.
# Every step runs even when an earlier one failed; the exit status is non-zero if any step failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
status=0
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

EXTRA= FIO=1 OUT_ARGS=() FIO_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --extra) [[ $# -ge 2 ]] || { say "--extra needs a value"; exit 2; }; EXTRA=$2; shift 2 ;;
    --no-fio) FIO=0; shift ;;
    --out) [[ $# -ge 2 ]] || { say "--out needs a value"; exit 2; }; OUT_ARGS=(--out "$2"); FIO_ARGS+=("$1" "$2"); shift 2 ;;
    *) FIO_ARGS+=("$1"); shift ;;
  esac
done
[[ $EXTRA != all ]] || EXTRA=snapshot-create,backup-throughput,fig6,diff-backup
IFS=, read -r -a EXTRA_LIST <<<"$EXTRA"
for e in "${EXTRA_LIST[@]}"; do
  [[ $e =~ ^(snapshot-create|backup-throughput|fig6|diff-backup)$ ]] || { say "unknown --extra '$e'"; exit 2; }
done

# 1. Build (TypeScript, and the native addon when it has not been built yet). Never installs packages.
needs_build=0
if [[ ! -f dist/cli/main.js ]]; then
  needs_build=1
elif [[ -n $(find src tsconfig.json package.json -newer dist/cli/main.js -print -quit 2>/dev/null) ]]; then
  needs_build=1
fi
if [[ $needs_build == 1 ]]; then
  say "building (npm run build)"
  if ! timeout 600 npm run build; then
    say "build failed: the thinvault rows will show as failed"
    status=1
  fi
fi
if [[ -f binding.gyp ]] && ! compgen -G 'build/Release/*.node' >/dev/null; then
  if [[ -x node_modules/.bin/node-gyp ]]; then
    say "building the native addon (node-gyp rebuild)"
    timeout 900 node_modules/.bin/node-gyp rebuild || { say "native addon build failed"; status=1; }
  else
    say "binding.gyp present but node-gyp is not installed; skipping the addon build"
  fi
fi

if [[ $FIO == 1 ]]; then
  # 2. fio comparison against nbdkit and qemu-nbd (writes docs/benchmarks.md unless --out none is given).
  say "bench/fio-compare.sh"
  bash bench/fio-compare.sh --servers nbdkit-file,nbdkit-sparse,qemu-nbd,thinvault "${FIO_ARGS[@]}" || status=1

  # 3. CRC32C throughput (bench/crc32c.mjs is written separately; skipped while it does not exist).
  if [[ -f bench/crc32c.mjs ]]; then
    say "node bench/crc32c.mjs"
    timeout 600 node bench/crc32c.mjs || status=1
  else
    say "bench/crc32c.mjs not present; skipped"
  fi
fi

# 4. Snapshot / replica / backup benchmarks, only when asked for (--extra). Each has its own time limit.
for e in "${EXTRA_LIST[@]}"; do
  say "bench/$e.sh"
  bash "bench/$e.sh" "${OUT_ARGS[@]}" || status=1
done

exit "$status"
