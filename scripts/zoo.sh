#!/usr/bin/env bash
# Generates the modeltree test zoo: small Llama decoders really trained from scratch with candle on CPU, then
# fine-tuned, LoRA-adapted, quantised, merged and re-uploaded into Hub-style repos with a ground_truth.json.
#
#   scripts/zoo.sh --size small|bench|wide --out DIR [--seed N] [--jobs N]
#
# wide: hidden 512, vocabulary 1024 (27 models, 398 MB), so row-block sampling can read a few percent of a
# checkpoint; about 20 min on one busy core (`--jobs 1`).
#
# Needs only the Rust toolchain. The same seed gives byte-identical files (except the wall-clock "seconds" in
# ground_truth.json). DIR must be empty or absent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p modeltree-zoo
target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
exec "$target/release/modeltree-zoo" generate "$@"
