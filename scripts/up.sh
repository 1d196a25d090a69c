#!/usr/bin/env bash
# Sets up everything this machine lacks, builds steady, runs the whole platform in the
# foreground and deploys examples/hello; the last line printed is the app's URL. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
exec target/release/steady up --deploy examples/hello "$@"
