#!/usr/bin/env bash
# hookscope's standard analytic set against DuckDB, same files, same run.
#
#   benches/duckdb/run.sh                                  # 1M deliveries over 30 days
#   benches/duckdb/run.sh --rows 10000000
#   benches/duckdb/run.sh --rows 1000000 --flush-every 10s --data-dir /tmp/small   # as ingest leaves a lake
#
# Makes a venv with duckdb under target/duckdb-venv (once), builds the release binary
# unless HOOKSCOPE_BIN names one, and runs compare.py (its --help lists the options).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/duckdb-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "duckdb==${DUCKDB_VERSION:-2.0.1}"
fi
bin=${HOOKSCOPE_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --bin hookscope
    bin="${CARGO_TARGET_DIR:-target}/release/hookscope"
fi
exec "$venv/bin/python" benches/duckdb/compare.py --hookscope "$bin" "$@"
