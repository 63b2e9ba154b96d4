#!/usr/bin/env bash
# Reproducible directory and attribution benchmarks (step 3), on SQLite by default
# (ADT_ROUTER__DATABASE__URL=postgres://... for PostgreSQL):
#   1. endpoint-file import rate      (ENDPOINTS rows, default 500,000: NPPES scale)
#   2. full npidata import            (PROVIDERS rows, default 8,000,000: NPPES scale),
#      with the importer's peak RSS
#   3. attribution lookup latency     (PATIENTS roster patients, default 1,000,000)
#
#   scripts/bench-directory.sh
#   PROVIDERS=1000000 PATIENTS=100000 scripts/bench-directory.sh     a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
PROVIDERS="${PROVIDERS:-8000000}"
ENDPOINTS="${ENDPOINTS:-500000}"
PATIENTS="${PATIENTS:-1000000}"
SAMPLES="${SAMPLES:-10000}"

cargo build --quiet --release --features tools
BIN="$PWD/target/release/adt-router"
work=$(mktemp -d /tmp/adt-router-dirbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); work dir $work"

echo "== generating synthetic NPPES files: $PROVIDERS providers, $ENDPOINTS endpoints"
"$BIN" nppes synth --providers "$PROVIDERS" --endpoints "$ENDPOINTS" --out-dir "$work/nppes"
ls -l "$work/nppes"

peak() { # peak RSS of a command, in MB (GNU time)
  /usr/bin/time -f "%M" -o "$work/rss" "$@"
  echo "peak RSS: $(( $(cat "$work/rss") / 1024 )) MB" >&2
}

echo "== 1. endpoint file import (full)"
peak "$BIN" nppes import --endpoints "$work/nppes/endpoint_pfile_synthetic.csv" --quiet > "$work/ep.json"
grep -E '"rows"|rows_per_s|seconds' "$work/ep.json"

echo "== 2. npidata import (full)"
peak "$BIN" nppes import --npidata "$work/nppes/npidata_pfile_synthetic.csv" --quiet > "$work/np.json"
grep -E '"rows"|rows_per_s|seconds' "$work/np.json"
rm -f "$work/nppes/npidata_pfile_synthetic.csv"

echo "== 3. attribution lookups with a $PATIENTS-patient roster"
"$BIN" roster synth --patients "$PATIENTS" --out "$work/roster.csv"
/usr/bin/time -f "roster import: %e s, peak RSS %M KB" "$BIN" roster import "$work/roster.csv" --source bench --replace > /dev/null
"$BIN" attribution bench --samples "$SAMPLES"
