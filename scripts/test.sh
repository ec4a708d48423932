#!/usr/bin/env bash
# Runs vipgate's whole test suite on a fresh Debian machine, as root: installs what the tests
# need (scripts/setup.sh), then unit, simulator, CLI and network-namespace lab tests.
# The lab tests need root; run as another user they fail with a message saying so.
# VIPGATE_SIM_SEEDS=N runs N simulator seeds (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked "$@"
