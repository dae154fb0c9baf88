#!/usr/bin/env bash
# bench/lib/diff-backup-fio-hook.sh setup|random — the THINVAULT_SETUP / THINVAULT_SETUP_RANDOM hooks that
# bench/diff-backup.sh hands to bench/fio-compare.sh. fio-compare runs them under `bash -c` with TV, TV_CTL, TV_URI,
# TV_EXPORT and TV_VARIANT exported (see its --help), once per thinvault (server, round):
#
#   setup   after `volume create vol0`, before the first fio job
#   random  after fio's prefill, before the random jobs
#
# Every thinvault row is written in full before the first fio job (so every fio write overwrites data, as on
# nbdkit-file's preallocated file the writes land on allocated space); the rows differ only in what is done then:
#
#   plain          nothing
#   new-gen        `volume advance-generation` after the fill and again after the prefill: the first write into
#                  each chunk must make its "changed in generation G" mark durable (the cost of tracking alone)
#   snapshot       the control for pending-diff: `snapshot create` + `volume advance-generation` after the fill and
#                  again after the prefill: the same sharing and the same generation step, through a snapshot
#                  instead of a diff export's view
#   pending-diff   `backup full --to /dev/null` of the empty volume (a diff needs a chain), the fill, then
#                  `diff export --name pending1`: a pending diff whose view shares every chunk with vol0, so every
#                  first write into a chunk copies it (copy-on-write) and lays down a generation mark; after the
#                  prefill (which has un-shared every chunk again) a second `diff export --name pending2` shares
#                  them again for the random jobs. Neither export is removed during the run.
set -euo pipefail
phase=${1:?usage: diff-backup-fio-hook.sh setup|random}
: "${TV:?} ${TV_CTL:?} ${TV_URI:?} ${TV_EXPORT:?} ${TV_VARIANT:?}"
tvc() { $TV "$@" --control "$TV_CTL" >/dev/null; }
fill() { # the whole export, non-zero data (nbdkit pattern: every 8-byte word holds its own offset)
  local size
  size=$(nbdinfo --size "$TV_URI")
  nbdkit -U - pattern "size=$size" --run "nbdcopy --flush \"\$uri\" '$TV_URI'"
}
case $phase:$TV_VARIANT in
  setup:plain) fill ;;
  setup:new-gen) fill; tvc volume advance-generation "$TV_EXPORT" ;;
  setup:pending-diff)
    tvc backup full "$TV_EXPORT" --to /dev/null
    fill
    tvc diff export "$TV_EXPORT" --name pending1
    ;;
  setup:snapshot)
    fill
    tvc snapshot create "$TV_EXPORT" shared1
    tvc volume advance-generation "$TV_EXPORT"
    ;;
  random:plain) ;;
  random:snapshot)
    tvc snapshot create "$TV_EXPORT" shared2
    tvc volume advance-generation "$TV_EXPORT"
    ;;
  random:new-gen) tvc volume advance-generation "$TV_EXPORT" ;;
  random:pending-diff) tvc diff export "$TV_EXPORT" --name pending2 ;;
  *) echo "diff-backup-fio-hook.sh: unknown phase or variant '$phase:$TV_VARIANT'" >&2; exit 2 ;;
esac
