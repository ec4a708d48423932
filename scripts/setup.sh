#!/usr/bin/env bash
# Installs the Debian packages the lab (tests, demo, benchmarks) needs, and any named as
# arguments, if one is missing. Needs root to install; does nothing when all are present.
# Usage: bash scripts/setup.sh [PACKAGE…]
set -euo pipefail

packages=(iproute2 nftables iputils-ping procps mariadb-server mariadb-client bind9-dnsutils bind9 systemd util-linux "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install a Rust toolchain (edition 2024, rustup) first" >&2
    exit 1
fi
