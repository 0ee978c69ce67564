#!/usr/bin/env bash
# Crawls a zoo served by `modeltree hub serve` on loopback and compares with a scan of the same folder:
# edge accuracy, typed F1, bytes fetched and requests per model at several fetch fractions, `--full` mode, and a
# crawl under injected faults.
# Usage: scripts/bench-crawl.sh [ZOO_DIR] [PORT]   (default: the bundled small zoo, port 18080)
# Env: FRACTIONS (default "1.0 0.25 0.1 0.05 0.03 0.02 0.01"), FAULTS=0 skips the fault-injection crawl,
#      KEEP=1 keeps the databases (the path is printed), CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
zoo=${1:-tests/zoo-small}
port=${2:-18080}
fractions=${FRACTIONS:-1.0 0.25 0.1 0.05 0.03 0.02 0.01}
cargo build --release --locked --bin modeltree >/dev/null
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/modeltree
work=$(mktemp -d)
export HF_HOME=$work/hf HF_HUB_CACHE=$work/hf/hub MODELTREE_LOG=error
unset HF_TOKEN
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  if [ "${KEEP:-0}" != 0 ]; then rm -rf "$work/hf"; echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

serve() { # serve PORT [FAULT_RATE]
  "$bin" hub serve --root "$zoo" --addr "127.0.0.1:$1" --fault-seed 11 --fault-rate "${2:-0}" >"$work/serve-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do grep -q serving "$work/serve-$1.log" && return; sleep 0.1; done
  echo "server on $1 did not start" >&2; cat "$work/serve-$1.log" >&2; exit 1
}
score() { # score DB -> "edge_acc typed_f1"
  "$bin" --db "$1" eval --truth "$zoo/ground_truth.json" --json >"$work/score.json"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))[0]; print("%.3f %.3f" % (s["edge_accuracy"], s["typed"]["f1"]))' "$work/score.json"
}
edges() { "$bin" --db "$1" tree --json | python3 -c 'import json,sys; print(sorted((e["parent"],e["child"],e["relation"]) for e in json.load(sys.stdin)["edges"]))'; }
row() { # row CRAWL_JSON LABEL EDGE_ACC TYPED_F1: one table row
  python3 - "$@" <<'PY'
import json,sys
s=json.load(open(sys.argv[1])); r=s["requests"]; n=max(s["new"]+s["changed"], 1)
per=f'{r["api"]/n:.1f}/{r["resolvers"]/n:.1f}/{r["cdn"]/n:.1f}'
print(f'{sys.argv[2]:<18} {s["bytes_fetched"]:>13} {s["checkpoint_bytes"]:>13} {100*s["fetched_share"]:>7.2f}% {per:>16} {sys.argv[3]:>8} {sys.argv[4]:>8}')
PY
}

start=$SECONDS
"$bin" --db "$work/scan.db" scan "$zoo" >/dev/null
printf '%-18s %13s %13s %8s %16s %8s %8s\n' run "bytes fetched" "checkpoint" share "req/model a/r/c" "edge acc" "typed F1"
printf '%-18s %13s %13s %8s %16s %8s %8s\n' "scan (local)" - - - - $(score "$work/scan.db")
serve "$port"
for f in $fractions; do
  db=$work/crawl-$f.db
  "$bin" --db "$db" crawl --endpoint "http://127.0.0.1:$port" --fetch-fraction "$f" --json >"$work/c.json"
  row "$work/c.json" "ranged f=$f" $(score "$db")
done
"$bin" --db "$work/full.db" crawl --endpoint "http://127.0.0.1:$port" --full --json >"$work/c.json"
row "$work/c.json" "full (HF cache)" $(score "$work/full.db")
echo "(req/model a/r/c: API, resolver and CDN requests per model signed; share: bytes fetched / checkpoint bytes)"
[ "$(edges "$work/full.db")" = "$(edges "$work/scan.db")" ] && echo "full crawl lineage == scan lineage" || { echo "full crawl lineage differs from scan" >&2; exit 1; }
if [ "${FAULTS:-1}" != 0 ]; then
  serve $((port + 1)) 0.2
  for round in 1 2 3; do
    "$bin" --db "$work/faults.db" crawl --endpoint "http://127.0.0.1:$((port + 1))" --full --json >"$work/c.json"
    failed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$work/c.json")
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); r=s["requests"]; print("faults (rate 0.2), crawl %s: new %d, failed %d, retries %d, rate-limited %d" % (sys.argv[2], s["new"], s["failed"], r["retries"], r["rate_limited"]))' "$work/c.json" "$round"
    [ "$failed" = 0 ] && break
  done
  [ "$(edges "$work/faults.db")" = "$(edges "$work/scan.db")" ] && echo "crawl under faults lineage == scan lineage" || { echo "crawl under faults differs" >&2; exit 1; }
  printf '%-18s %13s %13s %8s %16s %8s %8s\n' "full under faults" - - - - $(score "$work/faults.db")
fi
echo "bench took $((SECONDS - start)) s"
