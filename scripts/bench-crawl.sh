#!/usr/bin/env bash
# Crawls a zoo served by `modeltree hub serve` on loopback and compares with a scan of the same folder:
# edge accuracy and bytes fetched at several fetch fractions, `--full` mode, and a crawl under injected faults.
# Usage: scripts/bench-crawl.sh [ZOO_DIR] [PORT]   (default: the bundled small zoo, port 18080)
set -euo pipefail
cd "$(dirname "$0")/.."
zoo=${1:-tests/zoo-small}
port=${2:-18080}
cargo build --release --locked --bin modeltree >/dev/null
bin=$PWD/target/release/modeltree
work=$(mktemp -d)
export HF_HOME=$work/hf HF_HUB_CACHE=$work/hf/hub MODELTREE_LOG=error
unset HF_TOKEN
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
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

"$bin" --db "$work/scan.db" scan "$zoo" >/dev/null
printf '%-22s %9s %9s %12s %12s %8s %6s %6s\n' run "edge acc" "typed F1" fetched checkpoint share api cdn
printf '%-22s %9s %9s\n' "scan (local mmap)" $(score "$work/scan.db")
serve "$port"
for f in 1.0 0.25 0.05 0.02; do
  db=$work/crawl-$f.db
  "$bin" --db "$db" crawl --endpoint "http://127.0.0.1:$port" --fetch-fraction "$f" --json >"$work/c.json"
  python3 - "$work/c.json" "ranged f=$f" $(score "$db") <<'PY'
import json,sys
s=json.load(open(sys.argv[1])); r=s["requests"]
print(f'{sys.argv[2]:<22} {sys.argv[3]:>9} {sys.argv[4]:>9} {s["bytes_fetched"]:>12} {s["checkpoint_bytes"]:>12} {100*s["fetched_share"]:>7.2f}% {r["api"]:>6} {r["cdn"]:>6}')
PY
done
"$bin" --db "$work/full.db" crawl --endpoint "http://127.0.0.1:$port" --full --json >"$work/c.json"
printf '%-22s %9s %9s\n' "full (HF cache)" $(score "$work/full.db")
[ "$(edges "$work/full.db")" = "$(edges "$work/scan.db")" ] && echo "full crawl lineage == scan lineage" || { echo "full crawl lineage differs from scan" >&2; exit 1; }
serve $((port + 1)) 0.2
for round in 1 2 3; do
  "$bin" --db "$work/faults.db" crawl --endpoint "http://127.0.0.1:$((port + 1))" --full --json >"$work/c.json"
  failed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$work/c.json")
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); r=s["requests"]; print("faults (rate 0.2), crawl %s: new %d, failed %d, retries %d, rate-limited %d" % (sys.argv[2], s["new"], s["failed"], r["retries"], r["rate_limited"]))' "$work/c.json" "$round"
  [ "$failed" = 0 ] && break
done
[ "$(edges "$work/faults.db")" = "$(edges "$work/scan.db")" ] && echo "crawl under faults lineage == scan lineage" || { echo "crawl under faults differs" >&2; exit 1; }
printf '%-22s %9s %9s\n' "full under faults" $(score "$work/faults.db")
