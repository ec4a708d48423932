#!/usr/bin/env bash
# Runs vipgate's whole test suite on a fresh Debian machine, as root: installs what the tests
# need (scripts/setup.sh), then unit, simulator, CLI and network-namespace lab tests.
# The lab tests need root; run as another user they fail with a message saying so.
# VIPGATE_SIM_SEEDS=N runs N simulator seeds (default 10000); VIPGATE_DB_SIM_SEEDS=N as many
# seeds of the database simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
# vagrant validates the Vagrant lab's Vagrantfile; shellcheck checks every shell script.
bash scripts/setup.sh vagrant shellcheck
# The packaging test builds a .deb with cargo-deb (from crates.io, pinned).
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing cargo-deb" >&2
    cargo install --locked --quiet cargo-deb --version 3.8.0
fi
cargo test --locked "$@"
