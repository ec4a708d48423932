#!/usr/bin/env bash
# Benchmark, as root: crash outage seen by a client, default and aggressive timings.
# Usage: bash scripts/bench-failover.sh [RUNS] [killed|WORD]   (default 10 runs per profile;
# `killed`: only the killed-agent runs; WORD: only the profiles whose name contains it)
# Results go into docs/benchmarks.md together with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --quiet --release --bin vipgate --example failover_bench
exec target/release/examples/failover_bench target/release/vipgate "${1:-10}" ${2:+"$2"}
