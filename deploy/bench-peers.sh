#!/usr/bin/env bash
# Installs the tunnels `weftctl lab bench --with-peers` compares weft's quic backend with, at the
# versions docs/BENCHMARKS.md reports: wireguard-go (Debian) with wireguard-tools for `wg`,
# which deploy/install-deps.sh installs with every other Debian package weft uses, and
# boringtun-cli 0.7.1, quincy-server and quincy-client 3.1.1 (crates.io, built with cargo).
# Idempotent: a peer already installed at the pinned version is not rebuilt.
# usage: sudo ./deploy/bench-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Build outside the project's target directory so a bench setup never invalidates a test build.
export CARGO_TARGET_DIR="${BENCH_PEERS_TARGET:-/var/tmp/weft-bench-peers-target}"
pinned() { # crate version: cargo's own record of what it installed (quincy has no --version)
  cargo install --list | grep -qxF "$1 v$2:"
}
install_crate() { # crate version binary
  if command -v "$3" >/dev/null && pinned "$1" "$2"; then
    echo "$1 $2: already installed"
    return
  fi
  cargo install --locked --quiet --version "=$2" "$1"
}
install_crate boringtun-cli 0.7.1 boringtun-cli
install_crate quincy-server 3.1.1 quincy-server
install_crate quincy-client 3.1.1 quincy-client
for b in wireguard-go wg boringtun-cli quincy-server quincy-client; do
  printf '%-14s %s\n' "$b" "$(command -v "$b")"
done
