#!/usr/bin/env bash
# Fidelity check of hubsim against the official Python client (huggingface_hub).
#
#   scripts/hf-fidelity.sh [ROOT]        (ROOT defaults to tests/zoo-small)
#
# Creates (once) a venv with a pinned huggingface_hub range under $HF_FIDELITY_CACHE (default
# ~/.cache/modeltree/hf-fidelity), builds and starts crates/hubsim/examples/serve.rs on 127.0.0.1 with a small page
# size, one gated and one private repo, then runs scripts/hf-fidelity.py against it with HF_ENDPOINT pointing at the
# server, telemetry and Xet off, and a throwaway HF_HOME. Ends with "N passed, M failed"; exits non-zero on failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "${1:-$here/tests/zoo-small}" && pwd)
# The range the checks were written against (2.x moved to httpx2); bump deliberately, never float to the next major.
hf_spec='huggingface_hub>=2.0,<3'
page_size=4
token=hf_fidelity_accepted_token

cache=${HF_FIDELITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeltree/hf-fidelity}
venv=$cache/venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "$hf_spec" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
sys.exit(0 if Requirement(sys.argv[1]).specifier.contains(version("huggingface_hub")) else 1)
EOF
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$hf_spec" packaging
fi

cd "$here"
cargo build --quiet -p modeltree-hubsim --example serve
target_dir=$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
server=$target_dir/debug/examples/serve

# One gated and one private repo, chosen from the folder so the script works on any root.
mapfile -t repos < <(cd "$root" && find . -mindepth 2 -maxdepth 2 -type d | sed 's|^\./||' | sort)
if (( ${#repos[@]} < 3 )); then
    echo "need at least 3 repos under $root" >&2
    exit 2
fi
gated=${repos[0]}
private=${repos[${#repos[@]}-1]}

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

: >"$tmp/server.out"
"$server" "$root" 127.0.0.1:0 --page-size "$page_size" --gated "$gated" --private "$private" --token "$token" \
    >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
url=
for _ in $(seq 1 100); do
    url=$(sed -n 's/^hubsim \(http:[^ ]*\) .*/\1/p' "$tmp/server.out" || true)
    [[ -n $url ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.1
done
if [[ -z $url ]]; then
    echo "hubsim did not start:" >&2
    cat "$tmp/server.err" >&2
    exit 1
fi
cat "$tmp/server.out"

HF_ENDPOINT=$url HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
    HF_HOME=$tmp/hf HF_HUB_DISABLE_IMPLICIT_TOKEN=1 \
    "$venv/bin/python" "$here/scripts/hf-fidelity.py" --root "$root" --page-size "$page_size" \
    --gated "$gated" --private "$private" --token "$token"
