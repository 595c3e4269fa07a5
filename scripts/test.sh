#!/usr/bin/env bash
# The one test command: installs what the tests need (a Python venv with the moto S3 server,
# DuckDB, pyarrow and pandas), checks formatting and lints, then builds and runs every test.
#
#   scripts/test.sh            # everything
#   scripts/test.sh <filter>   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

venv="${KSQL_LAKE_VENV:-$root/.venv}"
stamp="$venv/.requirements.sha"
want=$(sha256sum scripts/requirements-test.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing test tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  echo "$want" > "$stamp"
fi
export KSQL_LAKE_VENV="$venv"

# A third-party ksqlDB client from npm the simulator is checked against (tests/clients/).
node_dir="$venv/node"
if [ ! -d "$node_dir/node_modules/ksqldb-client" ]; then
  echo "== installing the npm ksqldb-client into $node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent ksqldb-client@1.0.5
fi

# The dashboard's types (tests/grafana.rs).
if [ ! -x "$node_dir/node_modules/.bin/tsc" ] || [ ! -d "$node_dir/node_modules/@grafana/schema" ]; then
  echo "== installing typescript and @grafana/schema into $node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent typescript@5.9.3 @grafana/schema@13.2.3
fi

# A real Prometheus and promtool, and a headless browser for the status page
# (tests/prometheus.rs), from Debian.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || [ ! -x /usr/bin/chromium ]; then
  echo "== installing prometheus, promtool and chromium (Debian)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null
fi

if [ -z "${KSQL_LAKE_CAPTURES:-}" ] && [ -d "$root/../shared/ksqldb-captures" ]; then
  export KSQL_LAKE_CAPTURES="$root/../shared/ksqldb-captures"
fi

echo "== formatting and lints"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The core library builds, lint-free, without the simulator and the test helpers.
cargo clippy --lib --no-default-features --quiet -- -D warnings

echo "== building"
cargo build --all-targets --quiet
echo "== testing"
cargo test --no-fail-fast "$@" 2>&1 | tee "${TMPDIR:-/tmp}/ksql-lake-test.log"
status=${PIPESTATUS[0]}
# One closing line that counts every test binary's results together.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "${TMPDIR:-/tmp}/ksql-lake-test.log"
exit "$status"
