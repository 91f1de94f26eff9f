#!/usr/bin/env bash
# Installs every Debian package weft's build, demo, tests and benchmarks use, if any is missing.
# This is the one list: a fresh machine is a minimal Debian bookworm (mmdebstrap
# --variant=minbase) plus a Rust toolchain and what linking needs (gcc, libc6-dev), and
# ./deploy/fresh-root.sh (run by CI) proves the README's commands pass on exactly that.
# Run as root on Debian (bookworm or later). The Rust toolchain (cargo) must already be there.
# Installing never starts a service: packages such as etcd-server ship init scripts, and apt
# runs here under a policy-rc.d that forbids starting them.
set -euo pipefail

pkgs=(
  # build: etcd-client compiles etcd's .proto files with protoc; the well-known types they
  # import (google/protobuf/descriptor.proto, struct.proto) are in libprotobuf-dev.
  protobuf-compiler libprotobuf-dev
  # downloads (cargo, apt over https) trust the CAs here; update-ca-certificates keeps local ones.
  ca-certificates
  # the lab, the demo and the tests: a real etcd server (etcdctl for poking at it by hand),
  # namespaces, veth, bridges, routes (ip, ss, tc, bridge), both firewall tools the agent
  # drives, and modprobe for the tun module.
  etcd-server etcd-client iproute2 iptables nftables kmod
  # traffic and probes in the demo, tests and bench: ping, nc (TCP receivers print the source
  # they see), iperf3 (bench and reliability streams), curl (metrics and health endpoints).
  iputils-ping netcat-openbsd iperf3 curl
  # scripts: jq reads `lab status --json` in demo.sh; procps has ps, pgrep, sysctl; coreutils'
  # timeout and util-linux's unshare/nsenter/mount are in every minimal root already.
  jq procps
  # systemd-analyze verifies the unit in the deploy tests (these machines need not run systemd
  # as PID 1).
  systemd
  # the CNI tests chain bandwidth and portmap after weft-cni.
  containernetworking-plugins
  # bench peers: the wireguard-go row (and wg to configure it); deploy/bench-peers.sh adds
  # boringtun and quincy from crates.io.
  wireguard-go wireguard-tools
  # the controller tests load the cluster page in headless Chromium inside a lab namespace.
  chromium
  # the Docker tests and `weftctl lab docker`: Debian's dockerd, containerd and runc (not
  # crun: these machines' cgroups are hybrid) started by the lab per node, never in the root
  # namespace; busybox-static is the whole `weft-busybox` image the lab imports (no registry is
  # reachable); dnsmasq-base is the resolver the DNS tests run in a lab namespace.
  docker.io busybox-static dnsmasq-base
  # the VM lab (deploy/vm-assets.sh, run below): QEMU (TCG), python3 for the guests' cloud-init
  # (the guest runs the machine's own), xz for the kernel image, e2fsprogs for the VMs' disks;
  # busybox-static (above) is the initramfs.
  qemu-system-x86 python3 xz-utils e2fsprogs
)

[ "$(id -u)" = 0 ] || { echo "error: run as root (installs packages; the lab creates network namespaces)" >&2; exit 1; }

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # A policy-rc.d that exits 101 tells invoke-rc.d and deb-systemd-invoke not to start any
  # service during the install; ours is removed afterwards, one that was already there is kept.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# weft install-deps.sh: no service starts while packages install\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-system-x86 and an installed qemu-utils of another QEMU release (say 10.0 from
  # backports) break each other, and apt would silently remove qemu-utils: install the
  # qemu-utils of qemu-system-x86's release with it instead (qemu-img stays available).
  extra=()
  if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86 \
    && dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q "install ok installed"; then
    want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    have=$(dpkg-query -W -f='${Version}' qemu-utils)
    if [ -n "$want" ] && [ "$want" != "$have" ]; then
      echo "replacing qemu-utils $have by $want, the release of qemu-system-x86 (they cannot be mixed)"
      extra=("qemu-utils=$want" --allow-downgrades)
    fi
  fi
  # busybox-static conflicts with Debian's dynamically linked busybox, which many machines have
  # (initramfs-tools wants one or the other): the Docker image and the VM initramfs need the
  # static one, which provides the same commands, so it takes busybox's place, said here
  # (--no-remove below refuses every removal it is not told about).
  if printf '%s\n' "${missing[@]}" | grep -qx busybox-static \
    && dpkg-query -W -f='${Status}' busybox 2>/dev/null | grep -q "install ok installed"; then
    echo "replacing busybox by busybox-static (same commands; the Docker image and the VM initramfs need it static)"
    apt-get install -y -qq --no-install-recommends busybox-static busybox- >/dev/null
  fi
  apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}" "${extra[@]}" >/dev/null
  # docker.io's postinst enables docker.service and docker.socket (systemd) and the docker
  # init script (sysvinit); the policy above only stopped them starting now. A machine dockerd
  # would rewrite the root namespace's firewall (docker0, NAT, a FORWARD policy of DROP), and
  # socket activation would start one at the first touch of /run/docker.sock: when this script
  # installed docker.io, it stays off until its owner turns it on
  # (systemctl enable --now docker.socket docker.service).
  if printf '%s\n' "${missing[@]}" | grep -qx docker.io; then
    # systemctl edits the unit links offline too (deb-systemd-helper only runs under dpkg).
    if command -v systemctl >/dev/null; then
      systemctl disable docker.socket docker.service >/dev/null 2>&1 || true
    fi
    update-rc.d docker disable >/dev/null 2>&1 || true
    if ls /etc/systemd/system/*.wants/docker.* >/dev/null 2>&1; then
      echo "warning: docker.service or docker.socket is still enabled; a root-namespace dockerd may start at boot" >&2
    fi
  fi
fi

# The VM lab's kernel, initramfs and cloud-init layer (cached; quick when up to date).
"$(dirname "$0")/vm-assets.sh"

command -v cargo >/dev/null || { echo "error: cargo not found; install a Rust toolchain (1.88 or newer) first" >&2; exit 1; }
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || echo "warning: /dev/net/tun is missing; the quic backend and its tests need the tun module" >&2
