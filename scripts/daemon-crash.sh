#!/usr/bin/env bash
# The daemon crash test at a chosen number of kills (CI runs 50): `modeltree daemon` crawls a loopback hubsim
# serving a copy of tests/zoo-small while it is SIGKILLed at random points (a quarter anywhere from start-up on,
# the rest inside a run) and a repo is pushed before each restart. Then the store is compared with an
# uninterrupted run over the same folder: same models, revisions, statuses, bit-identical signatures, same
# edges, no duplicate rows, no run left `running`, and `PRAGMA integrity_check` ok.
#
# Usage: scripts/daemon-crash.sh [--kills N]   (default 200; at least 50)
set -euo pipefail
cd "$(dirname "$0")/.."

kills=200
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kills) kills="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
MODELTREE_CRASH_KILLS="$kills" cargo test --test daemon sigkill_at_random_points -- --nocapture >"$log" 2>&1 ||
    status=$?
grep -E '^crash test|^test result|panicked|seed' "$log" || tail -n 30 "$log"
echo "wall time: $(( $(date +%s) - start )) s (build included)"
exit "$status"
