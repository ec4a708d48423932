#!/usr/bin/env bash
# Runs vipgate's whole test suite on a fresh Debian machine (as root).
# Installs what the tests need first (nothing beyond the Rust toolchain yet). VIPGATE_SIM_SEEDS=N runs N simulator seeds (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install a Rust toolchain (edition 2024, rustup) first" >&2
    exit 1
fi
cargo test --locked "$@"
