#!/usr/bin/env bash
# The demo, as root on a fresh Debian machine: installs what the lab needs, builds vipgate,
# starts three agents in network namespaces, shows `vipgate status`, cuts the owner's link,
# shows the failover and its measured outage, and removes everything it created.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) -ne 0 ]]; then
    echo "error: the demo builds network namespaces and needs root (sudo bash scripts/demo.sh)" >&2
    exit 1
fi
cargo build --locked --quiet --bin vipgate --example demo
exec target/debug/examples/demo target/debug/vipgate
