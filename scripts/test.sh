#!/usr/bin/env bash
# Sets up everything this machine lacks, builds steady and runs the whole test suite:
# unit tests of every crate and the end-to-end tests against the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
cargo test --release --workspace
