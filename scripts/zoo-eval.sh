#!/usr/bin/env bash
# Indexes a zoo (default: the bundled small one) into a fresh database and prints `modeltree eval` for every
# method side by side. Usage: scripts/zoo-eval.sh [ZOO_DIR] [extra eval flags]; MIN_EDGE_ACC and MIN_TYPED_F1
# make it fail when the stored edges score below them. PROFILE=dev uses the debug binary (default: release).
set -euo pipefail
cd "$(dirname "$0")/.."
zoo=${1:-tests/zoo-small}
shift || true
profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
# MODELTREE_BIN names a binary already built (the suite passes the one `cargo test --workspace` built: a plain
# `cargo build --bin` resolves features for the binary alone and would recompile dependencies).
if [ -n "${MODELTREE_BIN:-}" ]; then
    bin=$MODELTREE_BIN
else
    cargo build $flag --locked --bin modeltree
    bin=${CARGO_TARGET_DIR:-target}/$profile/modeltree
    [ "$profile" = dev ] && bin=${CARGO_TARGET_DIR:-target}/debug/modeltree
fi
db=$(mktemp -d)/zoo.db
trap 'rm -rf "$(dirname "$db")"' EXIT
"$bin" --db "$db" scan "$zoo"
"$bin" --db "$db" eval --truth "$zoo/ground_truth.json" --method all "$@"
# With MIN_EDGE_ACC / MIN_TYPED_F1 set (the suite sets both), the stored edges must reach them: a drop fails the run.
if [ -n "${MIN_EDGE_ACC:-}${MIN_TYPED_F1:-}" ]; then
    "$bin" --db "$db" eval --truth "$zoo/ground_truth.json" --method stored --json |
        python3 -c '
import json, sys
score = json.load(sys.stdin)[0]
need_acc, need_f1 = float(sys.argv[1] or 0), float(sys.argv[2] or 0)
acc, f1 = score["edge_accuracy"], score["typed"]["f1"]
print(f"zoo-eval: stored edges: edge accuracy {acc:.3f} (need {need_acc:.3f}), typed F1 {f1:.3f} (need {need_f1:.3f})")
sys.exit(0 if acc >= need_acc and f1 >= need_f1 else 1)
' "${MIN_EDGE_ACC:-}" "${MIN_TYPED_F1:-}"
fi
