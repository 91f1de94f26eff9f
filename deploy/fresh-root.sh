#!/usr/bin/env bash
# Runs the README's commands on a fresh machine: a minimal Debian bookworm root built from
# Debian's packages (mmdebstrap --variant=minbase, plus gcc and libc6-dev, which any Rust
# toolchain needs to link, and mount, which every Debian install has), this machine's Rust
# toolchain bind-mounted read-only, its trust store, and a clean clone of one commit. The root
# is made the root of its own mount namespace (pivot_root) and, inside, as root, runs the
# commands exactly as the README gives them. Nothing else of this machine is visible in there,
# so a package the build, the demo or a test needs and deploy/install-deps.sh does not install
# fails here.
#
# Usage (as root):  ./deploy/fresh-root.sh [--commit REV] [--demo-only]
#   --commit REV   the commit to clone (default HEAD; uncommitted changes are not included)
#   --demo-only    run ./deploy/demo.sh only (default: demo.sh, then ./deploy/test.sh)
#
# Everything happens inside `unshare -m --propagation private`, so no mount made here reaches
# the machine. The root lives under /var/tmp (the build needs disk, not memory); it is
# unmounted and deleted on every exit, and deleted only once /proc/mounts shows nothing under it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

commit=HEAD demo_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --commit) commit=$2; shift 2 ;;
    --demo-only) demo_only=1; shift ;;
    *) echo "usage: $0 [--commit REV] [--demo-only]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (builds a root filesystem and mounts in it)" >&2; exit 1; }

if [ -z "${WEFT_FRESH_ROOT_PRIVATE:-}" ]; then
  # mmdebstrap builds the root; it is the one package this script itself needs on the machine.
  if ! command -v mmdebstrap >/dev/null; then
    echo "== installing mmdebstrap (builds the fresh root)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
  export WEFT_FRESH_ROOT_PRIVATE=1
  args=(--commit "$commit"); [ $demo_only = 1 ] && args+=(--demo-only)
  exec unshare -m --propagation private "$repo/deploy/fresh-root.sh" "${args[@]}"
fi

sha=$(git -C "$repo" rev-parse --verify "$commit^{commit}")
rustup_home=${RUSTUP_HOME:-${HOME:-/root}/.rustup}
command -v cargo >/dev/null || { echo "error: cargo not found on PATH; the fresh root borrows this machine's Rust toolchain" >&2; exit 1; }
cargo_bin=$(dirname "$(command -v cargo)")
[ -d "$rustup_home/toolchains" ] || { echo "error: no rustup toolchains under $rustup_home" >&2; exit 1; }
toolchain=$(rustup show active-toolchain 2>/dev/null | awk '{print $1; exit}')
[ -n "$toolchain" ] || { echo "error: no active Rust toolchain (rustup show active-toolchain)" >&2; exit 1; }

root=$(mktemp -d /var/tmp/weft-fresh-root.XXXXXX)
started=$(date +%s)

mounts_under() { awk -v r="$root" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts; }

cleanup() {
  local rc=$?
  set +e
  # Processes whose root is the fresh root (a lab's etcd and agents, a stuck build): end them.
  # Compared by device and inode (-ef): inside, the fresh root is its mount namespace's root,
  # so readlink shows "/".
  for p in /proc/[0-9]*; do
    [ "$p/root" -ef "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  sleep 0.2
  # Innermost first; a lazy unmount for anything still busy.
  for m in $(mounts_under | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
  if [ -n "$(mounts_under)" ]; then
    echo "fresh-root: mounts still under $root, not deleting it:" >&2
    mounts_under >&2
  else
    rm -rf --one-file-system "$root"
  fi
  echo "fresh-root: $(( $(date +%s) - started )) s in all, exit $rc"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The root is a mount point: `ip netns` remounts / as a slave inside it, which needs one.
mount --bind "$root" "$root"

echo "== fresh root: mmdebstrap --variant=minbase bookworm (+ gcc, libc6-dev, mount) in $root"
t=$(date +%s)
mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,mount \
  bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
echo "root built in $(( $(date +%s) - t )) s"

# This machine's downloads go through a TLS proxy: give the root its trust store, where
# update-ca-certificates (run when install-deps.sh installs ca-certificates) keeps it.
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

# The Rust toolchain, read-only; cargo's own home (registry, downloads) is the root's.
mkdir -p "$root/opt/rustup" "$root/opt/cargo-bin" "$root/root/.cargo"
mount --bind "$rustup_home" "$root/opt/rustup"
mount -o remount,bind,ro "$root/opt/rustup"
mount --bind "$cargo_bin" "$root/opt/cargo-bin"
mount -o remount,bind,ro "$root/opt/cargo-bin"

# The kernel's file systems; /run and /tmp fresh.
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"

# A clean clone of the commit, as a new user would have it.
mkdir -p "$root/root/src"
git clone --quiet --no-hardlinks "$repo" "$root/root/src/weft"
git -C "$root/root/src/weft" checkout --quiet --detach "$sha"
echo "clone of $(git -C "$repo" log -1 --format='%h %s' "$sha" | cut -c1-100)"

cmds='./deploy/demo.sh && ./target/release/weftctl lab down --id demo'
[ $demo_only = 1 ] || cmds="$cmds && ./deploy/test.sh"
echo "== inside the fresh root: $cmds"
# The fresh root becomes the root of a mount namespace of its own (pivot_root, not chroot), as
# on a machine: a process that joins a mount namespace lands at that namespace's root, so under
# a chroot `docker exec` (runc joining a container's namespaces) ran in this machine's files,
# not in the container's, and a test passed or failed by what this machine had installed.
mkdir -p "$root/.old-root"
unshare -m --propagation private /bin/bash -c \
  'cd "$0" && pivot_root . .old-root && cd / && umount -l /.old-root && rmdir /.old-root && exec "$@"' "$root" \
  /usr/bin/env -i \
  HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 CI="${CI:-}" \
  RUSTUP_HOME=/opt/rustup RUSTUP_TOOLCHAIN="$toolchain" CARGO_HOME=/root/.cargo \
  PATH=/opt/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash -c "cd /root/src/weft && trap './target/release/weftctl lab down --id demo >/dev/null 2>&1 || true' EXIT && $cmds"
echo "== fresh root: passed"
