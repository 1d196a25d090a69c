#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; `scripts/fuzz.sh 300` for
# longer) and fails on the first input that crashes one. Installs cargo-fuzz under .tools/ if
# it is missing. libFuzzer's coverage instrumentation works on the stable toolchain; the
# sanitizers need nightly, so they are off (`-s none`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ] || [ "$seconds" -gt 86400 ]; then
  echo "usage: scripts/fuzz.sh [seconds per target, 1–86400]" >&2
  exit 2
fi
mkdir -p "$tools/bin"
if [ ! -x "$tools/bin/cargo-fuzz" ] || [ "$("$tools/bin/cargo-fuzz" --version)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: building cargo-fuzz $CARGO_FUZZ_VERSION with cargo install"
  cargo install --quiet --locked --root "$tools/cargo" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  ln -sf "$tools/cargo/bin/cargo-fuzz" "$tools/bin/cargo-fuzz"
fi
export PATH="$tools/bin:$PATH"
for target in $(cargo fuzz list); do
  echo "fuzz: $target for $seconds s"
  # New inputs go to fuzz/corpus/<target> (not kept); fuzz/seeds/<target> holds a few valid
  # inputs to start from, when there are any. A crash leaves its input in
  # fuzz/artifacts/<target>/ and ends the script with a failure.
  corpora=("fuzz/corpus/$target")
  if [ -d "fuzz/seeds/$target" ]; then corpora+=("fuzz/seeds/$target"); fi
  mkdir -p "${corpora[0]}"
  cargo fuzz run "$target" -s none "${corpora[@]}" -- -max_total_time="$seconds"
done
