#!/usr/bin/env bash
# Installs weft on this machine: weft-agent, weftctl and weft-controller, the weft-cni plugin, the
# systemd units, example /etc/weft/agent.toml and controller.toml, and the CNI conflist. Existing
# configs are never overwritten; the controller unit is installed but only enabled by hand (run it
# on one to three machines, not on every node).
#
# Usage (as root, from a checkout):
#   ./deploy/install.sh [--bin-dir DIR] [--prefix /usr/local] [--cni-bin-dir /opt/cni/bin] [--enable]
#   DESTDIR=/tmp/stage ./deploy/install.sh --bin-dir target/release   # stage into a tree
#
# --bin-dir   where the built binaries are (default: build them with cargo into target/release)
# --enable    also `systemctl enable --now weft-agent` (only with systemd running and no DESTDIR)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
prefix=/usr/local
cni_bin_dir=/opt/cni/bin
bin_dir=""
enable=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --cni-bin-dir) cni_bin_dir="$2"; shift 2 ;;
    --enable) enable=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
dest="${DESTDIR:-}"
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to stage into a directory)" >&2
  exit 1
fi
if [ -z "$bin_dir" ]; then
  echo "building release binaries"
  (cd "$root" && cargo build --release --bins --locked)
  bin_dir="$root/target/release"
fi
for b in weft-agent weftctl weft-cni; do
  [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b missing; build first or pass --bin-dir" >&2; exit 1; }
done

install -d -m 0755 "$dest$prefix/bin" "$dest$cni_bin_dir" "$dest/etc/systemd/system" "$dest/etc/cni/net.d"
install -d -m 0755 "$dest/etc/weft"
install -d -m 0700 "$dest/etc/weft/pki"
install -m 0755 "$bin_dir/weft-agent" "$bin_dir/weftctl" "$dest$prefix/bin/"
# The controller is optional here (a node copied only the node's binaries, as the VM guide does).
controller=0
if [ -x "$bin_dir/weft-controller" ] && [ -f "$here/systemd/weft-controller.service" ]; then
  controller=1
  install -m 0755 "$bin_dir/weft-controller" "$dest$prefix/bin/"
fi
install -m 0755 "$bin_dir/weft-cni" "$dest$cni_bin_dir/"
sed "s#/usr/local/bin/weft-agent#$prefix/bin/weft-agent#g" "$here/systemd/weft-agent.service" \
  > "$dest/etc/systemd/system/weft-agent.service"
chmod 0644 "$dest/etc/systemd/system/weft-agent.service"
if [ "$controller" = 1 ]; then
  sed "s#/usr/local/bin/weft-controller#$prefix/bin/weft-controller#g" "$here/systemd/weft-controller.service" \
    > "$dest/etc/systemd/system/weft-controller.service"
  chmod 0644 "$dest/etc/systemd/system/weft-controller.service"
  if [ -f "$here/controller.toml.example" ]; then
    install -m 0644 "$here/controller.toml.example" "$dest/etc/weft/controller.toml.example"
  fi
fi
install -m 0644 "$here/agent.toml.example" "$dest/etc/weft/agent.toml.example"
if [ ! -e "$dest/etc/weft/agent.toml" ]; then
  install -m 0644 "$here/agent.toml.example" "$dest/etc/weft/agent.toml"
  echo "wrote $dest/etc/weft/agent.toml from the example: set node_name, [etcd] and the certificates"
fi
if [ ! -e "$dest/etc/cni/net.d/10-weft.conflist" ]; then
  install -m 0644 "$here/cni/10-weft.conflist" "$dest/etc/cni/net.d/10-weft.conflist"
fi

if command -v systemd-analyze >/dev/null 2>&1 && [ -z "$dest" ]; then
  systemd-analyze verify /etc/systemd/system/weft-agent.service
  if [ "$controller" = 1 ]; then
    systemd-analyze verify /etc/systemd/system/weft-controller.service
  fi
fi
if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$enable" = 1 ]; then
    systemctl enable --now weft-agent.service
  fi
fi
echo "installed weft into ${dest:-/}: $prefix/bin/{weft-agent,weftctl}, $cni_bin_dir/weft-cni,"
echo "  /etc/systemd/system/weft-agent.service, /etc/weft/agent.toml(.example), /etc/cni/net.d/10-weft.conflist"
if [ "$controller" = 1 ]; then
  echo "  and $prefix/bin/weft-controller, /etc/systemd/system/weft-controller.service, /etc/weft/controller.toml.example"
fi
echo "next: edit /etc/weft/agent.toml, put the certificates in /etc/weft/pki, then"
echo "  weft-agent --config /etc/weft/agent.toml --check && systemctl enable --now weft-agent"
if [ "$controller" = 1 ]; then
  echo "on one to three controller machines: cp /etc/weft/controller.toml.example /etc/weft/controller.toml, edit, then"
  echo "  weft-controller --config /etc/weft/controller.toml --check && systemctl enable --now weft-controller"
fi
