#!/usr/bin/env bash
# Checks the export formats with the tools people open them with.
#
#   scripts/export-check.sh [ZOO_DIR]        (ZOO_DIR defaults to tests/zoo-small)
#
# Scans the zoo into a temporary database and exports JSON, GraphML, DOT and the HTML report. Then: networkx reads
# the GraphML back (venv with a pinned networkx range, cached under $EXPORT_CHECK_CACHE, default
# ~/.cache/modeltree/export-check); Graphviz renders the DOT to SVG and PNG; headless Chromium opens the report,
# dumps the DOM after its script ran and takes a screenshot. scripts/export-check.py compares every count with the
# store's models and edges and fails on any mismatch. Graphviz and Chromium are required: a missing tool is a
# failure, never a skip (install with `apt-get install -y graphviz chromium`). Set EXPORT_CHECK_OUT=DIR to keep
# the exports, renders and screenshot. PROFILE=dev builds the debug binary (default: release, as zoo-eval.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
zoo=$(cd "${1:-$here/tests/zoo-small}" && pwd)
networkx_spec='networkx>=3.2,<4'
chromium=${CHROMIUM:-chromium}

missing=()
command -v dot >/dev/null || missing+=("graphviz (dot)")
command -v "$chromium" >/dev/null || missing+=("chromium")
command -v python3 >/dev/null || missing+=("python3")
if (( ${#missing[@]} )); then
    echo "export-check: FAILED: missing ${missing[*]}; install with: apt-get install -y graphviz chromium" >&2
    exit 1
fi

cache=${EXPORT_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeltree/export-check}
venv=$cache/venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "$networkx_spec" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
sys.exit(0 if Requirement(sys.argv[1]).specifier.contains(version("networkx")) else 1)
PY
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$networkx_spec" packaging
fi

cd "$here"
profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
# MODELTREE_BIN names a binary already built (see zoo-eval.sh).
if [ -n "${MODELTREE_BIN:-}" ]; then
    bin=$MODELTREE_BIN
else
    cargo build --quiet $flag --locked --bin modeltree
    target_dir=$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    bin=$target_dir/$([ "$profile" = release ] && echo release || echo debug)/modeltree
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${EXPORT_CHECK_OUT:-$tmp/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
db=$tmp/zoo.db

"$bin" --db "$db" scan "$zoo" >/dev/null
for format in json graphml dot html; do
    "$bin" --db "$db" export --format "$format" --out "$out/modeltree.$format"
done

dot -Tsvg "$out/modeltree.dot" -o "$out/modeltree.dot.svg"
dot -Tpng "$out/modeltree.dot" -o "$out/modeltree.dot.png"

# A throwaway profile, no network beyond what the page asks for (its policy allows none), a fixed window.
run_chromium() {
    local url=$1
    shift
    timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d -p "$tmp")" --window-size=1400,1000 --virtual-time-budget=3000 "$@" \
        "$url" 2>"$tmp/chromium.err"
}
page=file://$out/modeltree.html
# The search box is checked with a query every zoo's ids hold (its LoRA children).
query=lora
if ! run_chromium "$page" --dump-dom >"$out/modeltree.dom.html" \
    || ! run_chromium "$page#q=$query" --dump-dom >"$out/modeltree.search.html"; then
    echo "export-check: FAILED: chromium --dump-dom failed:" >&2
    cat "$tmp/chromium.err" >&2
    exit 1
fi
if ! run_chromium "$page" --screenshot="$out/modeltree.png" >/dev/null; then
    echo "export-check: FAILED: chromium --screenshot failed:" >&2
    cat "$tmp/chromium.err" >&2
    exit 1
fi

"$venv/bin/python" "$here/scripts/export-check.py" --json "$out/modeltree.json" --graphml "$out/modeltree.graphml" \
    --dot-svg "$out/modeltree.dot.svg" --png "$out/modeltree.dot.png" --dom "$out/modeltree.dom.html" \
    --screenshot "$out/modeltree.png" --search-dom "$out/modeltree.search.html" --query "$query"
if [[ -n ${EXPORT_CHECK_OUT:-} ]]; then
    echo "exports, renders and screenshot kept in $out"
fi
