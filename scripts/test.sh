#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every crate's tests, the fuzz target's build, and an
# end-to-end check that indexes the bundled small zoo and scores the recovered lineage against its truth.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "fuzz targets build (cargo fuzz itself needs nightly; stable checks that the targets compile)"
cargo check --manifest-path fuzz/Cargo.toml --locked

step "end to end: scan the bundled small zoo and score it"
scripts/zoo-eval.sh tests/zoo-small
