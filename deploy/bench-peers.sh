#!/usr/bin/env bash
# Installs the tunnels `weftctl lab bench --with-peers` compares weft's quic backend with, at the
# versions docs/BENCHMARKS.md reports:
# - wireguard-go: the `wireguard-go` row runs the one first on PATH, which this script makes
#   Debian trixie's 0.0.20231211 build (TUN offload, vectorised I/O, UDP GSO/GRO), and the
#   `wireguard-go-2022` row Debian bookworm's /usr/bin/wireguard-go 0.0.20220316, installed with
#   wireguard-tools (for `wg`) by deploy/install-deps.sh with every other Debian package weft uses;
# - boringtun-cli 0.7.1, quincy-server and quincy-client 3.1.1 (crates.io, built with cargo).
# Idempotent: a peer already installed at the pinned version is not fetched or rebuilt again.
# usage: sudo ./deploy/bench-peers.sh [wireguard-go] [boringtun] [quincy]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(wireguard-go boringtun quincy)
for p in "${peers[@]}"; do
  case "$p" in
    wireguard-go | boringtun | quincy) ;;
    *) echo "error: unknown peer $p (expected wireguard-go, boringtun or quincy)" >&2; exit 2 ;;
  esac
done
./deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Build outside the project's target directory so a bench setup never invalidates a test build.
export CARGO_TARGET_DIR="${BENCH_PEERS_TARGET:-/var/tmp/weft-bench-peers-target}"

# Trixie's wireguard-go, without installing anything from trixie: apt fetches the .deb into a
# private directory with a sources list, package lists, cache and (empty) dpkg status of its
# own, so the machine's apt sources, lists, cache, status and locks stay as they were; the
# trixie Release file is verified with the machine's Debian archive keyring (bookworm's
# debian-archive-keyring 2023.3+deb12u2 carries the trixie keys). dpkg-deb unpacks the .deb
# there, and only its binary (dynamically linked against glibc >= 2.34, which bookworm has) and
# its copyright file are copied to /usr/local/lib/weft-bench/wireguard-go_<Debian version>/,
# linked from /usr/local/bin/wireguard-go: /usr/local/bin comes before /usr/bin on Debian's
# PATH (and sudo's secure_path). The directory name says which build the bench ran (the
# binary's --version says v0.0.20230223: upstream did not bump it for 0.0.20231211).
# To undo: rm /usr/local/bin/wireguard-go; rm -r /usr/local/lib/weft-bench
WG_GO_UPSTREAM=0.0.20231211
WG_GO_LIB=/usr/local/lib/weft-bench
WG_GO_LINK=/usr/local/bin/wireguard-go
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
install_wireguard_go() (
  current=$(readlink -f "$WG_GO_LINK" 2>/dev/null || true)
  if [[ "$current" == "$WG_GO_LIB/wireguard-go_${WG_GO_UPSTREAM}-"*/wireguard-go ]] \
    && "$WG_GO_LINK" --version >/dev/null 2>&1; then
    echo "wireguard-go $WG_GO_UPSTREAM (trixie): already installed ($current)"
    return
  fi
  if [ -e "$WG_GO_LINK" ] && [ ! -L "$WG_GO_LINK" ]; then
    echo "error: $WG_GO_LINK exists and is not this script's link; move it away first" >&2
    exit 1
  fi
  d=$(mktemp -d /var/tmp/weft-trixie.XXXXXX)
  trap 'rm -rf "$d"' EXIT
  chmod 755 "$d"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/etc/parts" "$d/download"
  # apt downloads as its unprivileged _apt user where it can write.
  if id _apt >/dev/null 2>&1; then
    chown _apt "$d/lists/partial" "$d/cache/archives/partial" "$d/download"
  fi
  echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main" > "$d/etc/sources.list"
  : > "$d/etc/status"
  o=(-o "Dir::Etc::sourcelist=$d/etc/sources.list" -o "Dir::Etc::sourceparts=$d/etc/parts"
    -o "Dir::Etc::preferences=$d/etc/preferences" -o "Dir::Etc::preferencesparts=$d/etc/parts"
    -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o "Dir::State::status=$d/etc/status"
    -o Debug::NoLocking=1)
  if ! apt-get "${o[@]}" update -qq; then
    echo "error: apt could not fetch or verify Debian trixie's package lists with $KEYRING (it needs the trixie keys: upgrade debian-archive-keyring from bookworm's updates)" >&2
    exit 1
  fi
  (cd "$d/download" && apt-get "${o[@]}" download wireguard-go)
  deb=$(echo "$d"/download/wireguard-go_*.deb)
  version=$(dpkg-deb -f "$deb" Version)
  case "$version" in
    "$WG_GO_UPSTREAM"-*) ;;
    *) echo "error: Debian trixie has wireguard-go $version, not $WG_GO_UPSTREAM; update WG_GO_UPSTREAM here and docs/BENCHMARKS.md" >&2; exit 1 ;;
  esac
  dpkg-deb -x "$deb" "$d/root"
  "$d/root/usr/bin/wireguard-go" --version >/dev/null
  dest="$WG_GO_LIB/wireguard-go_$version"
  install -d -m 755 "$dest"
  install -m 755 "$d/root/usr/bin/wireguard-go" "$dest/wireguard-go"
  install -m 644 "$d/root/usr/share/doc/wireguard-go/copyright" "$dest/copyright"
  ln -sfn "$dest/wireguard-go" "$WG_GO_LINK.new"
  mv -Tf "$WG_GO_LINK.new" "$WG_GO_LINK"
  echo "wireguard-go $version (trixie): installed in $dest, linked from $WG_GO_LINK"
)

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
for p in "${peers[@]}"; do
  case "$p" in
    wireguard-go) install_wireguard_go ;;
    boringtun) install_crate boringtun-cli 0.7.1 boringtun-cli ;;
    quincy)
      install_crate quincy-server 3.1.1 quincy-server
      install_crate quincy-client 3.1.1 quincy-client
      ;;
  esac
done
for b in wireguard-go /usr/bin/wireguard-go wg boringtun-cli quincy-server quincy-client; do
  where=$(command -v "$b" || echo "not installed")
  [ -L "$where" ] && where="$where -> $(readlink -f "$where")"
  printf '%-22s %s\n' "$b" "$where"
done
