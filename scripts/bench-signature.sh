#!/usr/bin/env bash
# Signature extraction throughput and memory, side by side with a plain blake3 pass over the same bytes.
#
#   scripts/bench-signature.sh          ~1.7 GB synthetic Llama-like bf16 checkpoint
#   scripts/bench-signature.sh --big    ~4.3 GB checkpoint, and checks peak RSS of signing ≤ 256 MiB
#
# Prints, for (a) blake3 on one thread, (b) the full signature on one thread (rayon pool of 1) and (c) on all
# threads: the best GB/s over ROUNDS interleaved rounds (default 3; interleaving spreads the noise of a shared
# machine over all three), the ratio (b)/(a) (goal ≥ 0.5) by wall time and by CPU time (on-CPU seconds of the
# process, which a busy shared machine distorts much less), and each process's peak resident set (VmHWM).
# The file is read from the page cache (it is read once before measuring), so this measures CPU cost, not disk.
# Both read the file in 256 KiB windows (positioned reads into reused buffers), so VmHWM stays small whatever
# the file size.
set -euo pipefail
cd "$(dirname "$0")/.."

big=0
for arg in "$@"; do
  case "$arg" in
    --big) big=1 ;;
    *) echo "usage: $0 [--big]" >&2; exit 2 ;;
  esac
done
gib=1
[[ $big == 1 ]] && gib=4
rounds=${ROUNDS:-3}
limit_mib=256

cargo build --release --quiet -p modeltree-signature --example bench
bin="${CARGO_TARGET_DIR:-target}/release/examples/bench"

dir=$(mktemp -d "${TMPDIR:-/tmp}/modeltree-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
file="$dir/model.safetensors"
"$bin" write "$file" "$gib"
cat "$file" > /dev/null

best() { # best KIND FIELD: the largest value of FIELD over the lines starting with KIND
  grep "^$1" "$dir/results" | tr ' ' '\n' | grep "^$2=" | cut -d= -f2 | sort -g | tail -1
}
: > "$dir/results"
for ((r = 1; r <= rounds; r++)); do
  "$bin" hash "$file" 1 | grep '^hash' >> "$dir/results"
  "$bin" sign "$file" 1 1 | grep '^sign' | sed 's/^sign threads=1/sign1/' >> "$dir/results"
  "$bin" sign "$file" 0 1 | grep '^sign' | sed 's/^sign threads=[0-9]*/signall/' >> "$dir/results"
done

threads=$(nproc)
hash=$(best hash best_gbps)
one=$(best sign1 best_gbps)
all=$(best signall best_gbps)
hash_cpu=$(best hash cpu_gbps)
one_cpu=$(best sign1 cpu_gbps)
rss_one=$(best sign1 vm_hwm_mib)
rss_all=$(best signall vm_hwm_mib)
rss_hash=$(best hash vm_hwm_mib)
printf '\nfile: %s bytes, %s rounds\n' "$(stat -c %s "$file")" "$rounds"
printf '(a) blake3, 1 thread       %6.2f GB/s   peak RSS %7.1f MiB (256 KiB windows)\n' "$hash" "$rss_hash"
printf '(b) signature, 1 thread    %6.2f GB/s   peak RSS %7.1f MiB\n' "$one" "$rss_one"
printf '(c) signature, %d threads   %6.2f GB/s   peak RSS %7.1f MiB\n' "$threads" "$all" "$rss_all"
ratio=$(awk -v a="$hash" -v b="$one" 'BEGIN { printf "%.2f", b / a }')
ratio_cpu=$(awk -v a="$hash_cpu" -v b="$one_cpu" 'BEGIN { printf "%.2f", b / a }')
printf 'ratio (b)/(a) = %s by wall time, %s by CPU time (%.2f / %.2f GB/s per CPU second) (goal >= 0.5)\n' \
  "$ratio" "$ratio_cpu" "$one_cpu" "$hash_cpu"
printf 'load average during the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $big == 1 ]]; then
  if awk -v x="$rss_all" -v l="$limit_mib" 'BEGIN { exit !(x <= l) }'; then
    printf 'peak RSS while signing %s MiB <= %s MiB: ok\n' "$rss_all" "$limit_mib"
  else
    printf 'peak RSS while signing %s MiB > %s MiB: FAIL\n' "$rss_all" "$limit_mib"
    exit 1
  fi
fi
