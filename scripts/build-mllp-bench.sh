#!/usr/bin/env bash
# Builds the shared neutral MLLP load client (shared/tools/mllp-bench) under target/ and
# prints its path. shared/ is read-only and the tool ships no Cargo.lock, so a copy is
# built. Used by test.sh and the benchmark scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ADT_ROUTER_SHARED:-$PWD/../shared}"
mkdir -p target/mllp-bench-src
cp -r "$SHARED/tools/mllp-bench/Cargo.toml" "$SHARED/tools/mllp-bench/src" target/mllp-bench-src/
chmod -R u+w target/mllp-bench-src
CARGO_TARGET_DIR=target/mllp-bench cargo build --quiet --release --manifest-path target/mllp-bench-src/Cargo.toml
echo "$PWD/target/mllp-bench/release/mllp-bench"
