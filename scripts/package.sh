#!/usr/bin/env bash
# Builds the Debian package: the binary, the systemd unit, the example configuration, the
# manual page, shell completions and the documentation.
# Usage: bash scripts/package.sh [--profile release|dev] [--out DIR]   (default: release, target/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
out=target/debian
while (($#)); do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "error: unknown argument $1" >&2; exit 2 ;;
    esac
done
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing cargo-deb (once)" >&2
    cargo install --locked --quiet cargo-deb --version 3.8.0
fi
dir=$([[ $profile == dev ]] && echo debug || echo "$profile")
if [[ $profile != dev || ! -x target/debug/vipgate ]]; then
    cargo build --locked --quiet --profile "$profile" --bin vipgate
fi
bin="target/$dir/vipgate"
assets=target/assets
mkdir -p "$assets" "$out"
"$bin" man | gzip -9n > "$assets/vipgate.8.gz"
"$bin" completions bash > "$assets/vipgate.bash"
"$bin" completions zsh > "$assets/_vipgate"
"$bin" completions fish > "$assets/vipgate.fish"
cargo deb --no-build --profile "$profile" --output "$out" --quiet
ls "$out"/*.deb
