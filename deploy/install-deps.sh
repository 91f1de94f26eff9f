#!/usr/bin/env bash
# Installs the Debian packages weft's lab, tests and demo need, if any is missing.
# Run as root on Debian (bookworm or later). The Rust toolchain (cargo) must already be there.
set -euo pipefail

pkgs=(etcd-server etcd-client iproute2 iptables nftables iperf3 iputils-ping protobuf-compiler
      netcat-openbsd jq procps kmod ca-certificates
      systemd containernetworking-plugins curl)
# systemd: systemd-analyze verifies the unit (these machines need not run systemd as PID 1);
# containernetworking-plugins: bandwidth and portmap, chained after weft-cni in the CNI tests.
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on localhost; weft never uses it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  echo "note: a system etcd is running; weft's lab runs its own inside a namespace and ignores it"
fi
command -v cargo >/dev/null || { echo "error: cargo not found; install a Rust toolchain (1.85 or newer) first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: run as root (the lab creates network namespaces)" >&2; exit 1; }
modprobe tun 2>/dev/null || true
