#!/usr/bin/env bash
# Benchmark, as root: DNS answers per second on one core, vipgate's embedded server against BIND
# serving the same zone (dnsperf from the client's namespace).
# Usage: bash scripts/bench-dns.sh [SECONDS]   (default 10 s per server)
# Results go into docs/benchmarks.md together with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v dnsperf >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dnsperf >/dev/null
fi
cargo build --locked --quiet --release --bin vipgate --example dns_bench
exec target/release/examples/dns_bench target/release/vipgate "${1:-10}"
