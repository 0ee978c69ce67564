#!/usr/bin/env bash
# Indexes a zoo (default: the bundled small one) into a fresh database and prints `modeltree eval` for every
# method side by side. Usage: scripts/zoo-eval.sh [ZOO_DIR] [extra eval flags]
set -euo pipefail
cd "$(dirname "$0")/.."
zoo=${1:-tests/zoo-small}
shift || true
profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag --locked --bin modeltree
bin=${CARGO_TARGET_DIR:-target}/$profile/modeltree
[ "$profile" = dev ] && bin=${CARGO_TARGET_DIR:-target}/debug/modeltree
db=$(mktemp -d)/zoo.db
trap 'rm -rf "$(dirname "$db")"' EXIT
"$bin" --db "$db" scan "$zoo"
"$bin" --db "$db" eval --truth "$zoo/ground_truth.json" --method all "$@"
