#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; `scripts/fuzz.sh 300` for
# longer). Installs cargo-fuzz if it is missing. libFuzzer's coverage instrumentation works
# on the stable toolchain; the sanitizers need nightly, so they are off (`-s none`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in $(cargo fuzz list); do
  echo "fuzzing $target for $seconds s"
  # New inputs go to fuzz/corpus/<target> (not kept); fuzz/seeds/<target> holds a few valid
  # inputs to start from, when there are any.
  corpora=("fuzz/corpus/$target")
  if [ -d "fuzz/seeds/$target" ]; then corpora+=("fuzz/seeds/$target"); fi
  mkdir -p "${corpora[0]}"
  cargo fuzz run "$target" -s none "${corpora[@]}" -- -max_total_time="$seconds"
done
