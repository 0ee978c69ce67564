#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every crate's tests, the fuzz target's build, the official
# Python Hub client against our Hub-compatible server, and an end-to-end check that indexes the bundled small zoo
# and scores the recovered lineage against its truth. Needs the Rust toolchain and python3 (for a venv).
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

step "fidelity: the official Python client (huggingface_hub) against hubsim"
scripts/hf-fidelity.sh tests/zoo-small

step "end to end: scan the bundled small zoo and score it"
# The debug binary that `cargo test` already built (dependencies and the math crates are optimised in the dev
# profile, see Cargo.toml): a release build here would compile every dependency a third time.
MODELTREE_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/modeltree MIN_EDGE_ACC=1.0 MIN_TYPED_F1=1.0 scripts/zoo-eval.sh tests/zoo-small

step "exports: GraphML through networkx, DOT through Graphviz, the HTML report in headless Chromium"
MODELTREE_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/modeltree scripts/export-check.sh tests/zoo-small
