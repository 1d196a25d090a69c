#!/usr/bin/env bash
# Sets up everything this machine lacks, builds steady and runs the whole test suite:
# unit tests of every crate, the end-to-end tests against the real binaries, then every fuzz
# target for a bounded time (FUZZ_SECONDS each, 30 by default; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
cargo test --release --workspace
fuzz_seconds="${FUZZ_SECONDS:-30}"
if [ "$fuzz_seconds" != 0 ]; then
  bash scripts/fuzz.sh "$fuzz_seconds"
fi
