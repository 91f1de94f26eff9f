#!/usr/bin/env bash
# Fetches and builds what a VM of the lab (`weftctl lab up --vms N`) boots, into
# /var/cache/weft-lab/vm/<kver>/ with the symlink /var/cache/weft-lab/vm/current -> <kver>:
#   vmlinux     Debian bookworm's kernel (linux-image-amd64's), uncompressed for QEMU's PVH entry
#               (saves the in-guest decompression, seconds under TCG); vmlinuz if that fails
#   initrd.img  static busybox, the modules the init needs, and deploy/vm/initramfs-init.sh as /init
#   layer/      a tree the guest overlays above the machine's root (merged-usr paths only): the
#               kernel's modules (depmod'ed), cloud-init and the Python modules it needs that
#               /usr/bin/python3 lacks, and etc/cloud/cloud.cfg.d/90-weft-lab.cfg
#   kver        the kernel release, e.g. 6.1.0-28-amd64
#   stamp       what the tree was built from (script, init, kernel and cloud-init versions)
# Installs qemu-system-x86 (apt, no recommends) if missing. Nothing else is installed: the kernel
# and cloud-init packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`, so
# /boot, /lib/modules and the dpkg database stay as they are. Nothing touches the network
# namespaces. Idempotent: a cache built from the same inputs is kept (quick). Rebuilding replaces
# the <kver> directory: do not run it while lab VMs are up. Run as root (Debian bookworm).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
init_src="$here/vm/initramfs-init.sh"
cache=/var/cache/weft-lab/vm

# Modules the initramfs loads (their dependencies come from modules.dep): the virtio transport,
# disk, network, console (the control port) and entropy devices, 9p over virtio (the machine's
# root, the layer, the seed), overlayfs (the root) and ext4 (the disk; crc32c is its soft
# dependency, which modules.dep does not list).
init_modules=(virtio_pci virtio_blk virtio_net virtio_console virtio-rng 9pnet_virtio 9p overlay crc32c_generic ext4)

# Module directories the guest never needs (hardware a QEMU guest does not have).
drop_dirs=(sound drivers/gpu drivers/media drivers/infiniband drivers/net/wireless drivers/staging
  drivers/bluetooth net/bluetooth drivers/iio drivers/isdn drivers/comedi drivers/hwmon drivers/usb
  drivers/input/touchscreen drivers/hid drivers/platform drivers/scsi drivers/ata drivers/mmc
  drivers/net/ethernet drivers/net/can drivers/nfc net/wireless net/mac80211)

# cloud-init's Python dependencies come from what apt would install with it on this machine (a
# dry run, `apt-get -s`): every python3-* package in that list is unpacked into the layer, so the
# layer holds exactly what this machine's python3 lacks (on a minimal Debian: all of them).

[ "$(id -u)" = 0 ] || { echo "error: run as root (installs qemu-system-x86, writes $cache)" >&2; exit 1; }
[ -f "$init_src" ] || { echo "error: $init_src is missing" >&2; exit 1; }
[ -x /usr/bin/python3 ] || { echo "error: /usr/bin/python3 is missing (the guest runs cloud-init with it): apt-get install python3" >&2; exit 1; }
for tool in busybox depmod xz dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; run deploy/install-deps.sh" >&2; exit 1; }
done
# The initramfs has no libraries: Debian's busybox package is linked dynamically and would not
# start as /init (the kernel panics); busybox-static's is the one that works.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || { echo "error: busybox-static is not installed (the VMs' initramfs needs a static busybox); run deploy/install-deps.sh" >&2; exit 1; }

# QEMU. --no-remove: never trade a package the machine has for it (say so instead).
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  echo "installing: qemu-system-x86"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --no-remove qemu-system-x86 >/dev/null
fi

# The kernel linux-image-amd64 depends on, and the versions the cache is keyed on.
# (apt-cache fails while apt has no package lists: then the answer is empty, and apt-get update
# runs below.)
kernel_pkg() { { apt-cache depends linux-image-amd64 2>/dev/null || true; } | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || { echo "error: apt-cache knows no linux-image-amd64 (run apt-get update?)" >&2; exit 1; }
kver=${kpkg#linux-image-}
kpkg_ver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2 }')
ci_ver=$(apt-cache policy cloud-init | awk '/Candidate:/ { print $2 }')
mapfile -t missing_py < <(apt-get -s -qq install --no-install-recommends cloud-init 2>/dev/null \
  | awk '$1 == "Inst" && $2 ~ /^python3-/ { print $2 }' | sort -u)
stamp=$(
  {
    sha256sum "$0" "$init_src" | awk '{ print $1 }'
    echo "$kpkg $kpkg_ver cloud-init $ci_ver ${missing_py[*]}"
  } | sha256sum | awk '{ print $1 }'
)

dir="$cache/$kver"
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] && [ "$(readlink "$cache/current" || true)" = "$kver" ]; then
  echo "vm assets cached: $dir ($kpkg $kpkg_ver, cloud-init $ci_ver)"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
out="$work/out"
mkdir -p "$out" "$work/debs" "$work/kernel" "$work/py"

echo "fetching: $kpkg $kpkg_ver, cloud-init $ci_ver${missing_py[*]:+, ${missing_py[*]}}"
# _apt cannot write into a root-only directory; let it (the downloads are public packages).
chmod 755 "$work"; chown _apt "$work/debs" 2>/dev/null || true
(cd "$work/debs" && apt-get download -q "$kpkg" cloud-init "${missing_py[@]}" >/dev/null)
dpkg-deb -x "$work/debs/${kpkg}_"*.deb "$work/kernel"
modsrc="$work/kernel/lib/modules/$kver"
[ -d "$modsrc" ] || modsrc="$work/kernel/usr/lib/modules/$kver"
[ -d "$modsrc" ] || { echo "error: $kpkg holds no lib/modules/$kver" >&2; exit 1; }

# vmlinux: the bzImage's payload is compressed (Debian: xz); find the stream and unpack it.
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
kernel_file=vmlinuz
for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
  tail -c +"$((off + 1))" "$vmlinuz" | xz -dcq > "$out/vmlinux" 2>/dev/null || true
  if [ "$(head -c 4 "$out/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
    kernel_file=vmlinux
    break
  fi
done
if [ "$kernel_file" = vmlinuz ]; then
  rm -f "$out/vmlinux"
  cp "$vmlinuz" "$out/vmlinuz"
  echo "warning: no uncompressed vmlinux could be extracted; booting the bzImage (slower under TCG)" >&2
fi

# layer/: modules under usr/lib/modules (never a real lib/ dir: it would hide the machine's
# /lib -> usr/lib symlink in the guest), minus hardware the guest has not, then depmod.
layer="$out/layer"
mkdir -p "$layer/usr/lib/modules"
cp -a "$modsrc" "$layer/usr/lib/modules/$kver"
for d in "${drop_dirs[@]}"; do rm -rf "$layer/usr/lib/modules/$kver/kernel/$d"; done
depmod -b "$layer/usr" "$kver"

# cloud-init and the Python packages, merged-usr: lib/, bin/, sbin/ of a package move under usr/.
for deb in "$work/debs/"*.deb; do
  case "$(basename "$deb")" in "$kpkg"_*) continue ;; esac
  rm -rf "$work/py"
  mkdir -p "$work/py"
  dpkg-deb -x "$deb" "$work/py"
  for top in lib bin sbin; do
    if [ -d "$work/py/$top" ] && [ ! -L "$work/py/$top" ]; then
      mkdir -p "$work/py/usr/$top"
      cp -a "$work/py/$top/." "$work/py/usr/$top/"
      rm -rf "${work:?}/py/$top"
    fi
  done
  rm -rf "$work/py/usr/share/doc" "$work/py/usr/share/man" "$work/py/usr/share/lintian"
  cp -a "$work/py/." "$layer/"
done
for top in lib lib64 bin sbin; do
  [ ! -e "$layer/$top" ] || { echo "error: layer/$top exists; it would hide the machine's /$top in the guest" >&2; exit 1; }
done
mkdir -p "$layer/etc/cloud/cloud.cfg.d"
cat > "$layer/etc/cloud/cloud.cfg.d/90-weft-lab.cfg" <<'EOF'
# weft VM lab (deploy/vm-assets.sh): the seed is a 9p share the initramfs mounts at
# /var/lib/cloud/seed/nocloud; the lab's "hypervisor" (the initramfs, from the kernel command
# line) configures eth0, as DHCP would, so cloud-init leaves the network alone.
datasource_list: [NoCloud, None]
network: {config: disabled}
# Only the modules the lab's VMs use: under TCG every module costs seconds, and others would
# fail or crawl here (ssh host keys, locales, growpart/resizefs of an overlay root, package
# installs without internet). A seed that needs another module lists it in its own config.
# Not set_hostname/update_hostname: with systemd they run hostnamectl, which needs dbus, and a
# machine whose root the VMs share may have none (a minimal Debian has not); the initramfs writes
# /etc/hostname from weft.name instead.
cloud_init_modules: [migrator, seed_random, bootcmd, write-files, update_etc_hosts, users-groups]
cloud_config_modules: [runcmd]
cloud_final_modules: [write-files-deferred, scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message, power-state-change]
EOF
if ! PYTHONPATH="$layer/usr/lib/python3/dist-packages" /usr/bin/python3 -c \
  'import cloudinit.cmd.main, cloudinit.sources.DataSourceNoCloud, cloudinit.config.schema, jinja2, configobj, jsonschema, jsonpatch, requests, serial, yaml' ; then
  echo "error: cloud-init does not import with the layer's Python modules (see above)" >&2
  exit 1
fi

# Byte-compile cloud-init and its modules now (the machine's python3, the guest's): otherwise
# each of cloud-init's four stages compiles them anew under TCG on the first boot.
/usr/bin/python3 -m compileall -q -j 0 "$layer/usr/lib/python3/dist-packages" >/dev/null

# initrd.img: busybox, the modules in load order (dependencies first, from modules.dep), /init.
initrd="$work/initrd"
mkdir -p "$initrd/bin" "$initrd/lib/modules" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/newroot" "$initrd/mnt"
cp /bin/busybox "$initrd/bin/busybox"
ln -s busybox "$initrd/bin/sh"
install -m 0755 "$init_src" "$initrd/init"
moddir="$layer/usr/lib/modules/$kver"
declare -A seen=()
order=()
add_module() { # $1: a path relative to $moddir as modules.dep names it
  local rel=$1 dep
  [ -z "${seen[$rel]:-}" ] || return 0
  seen[$rel]=1
  for dep in $(awk -v m="$rel:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep"); do
    add_module "$dep"
  done
  order+=("$rel")
}
for m in "${init_modules[@]}"; do
  name=${m//-/_}
  if grep -Eq "/(${m}|${name})\.ko" "$moddir/modules.builtin"; then continue; fi
  rel=$(awk -F: -v a="/$m.ko" -v b="/$name.ko" 'index($1, a) || index($1, b) { print $1; exit }' "$moddir/modules.dep")
  [ -n "$rel" ] || { echo "error: module $m is neither built in nor in $moddir/modules.dep" >&2; exit 1; }
  add_module "$rel"
done
for rel in "${order[@]}"; do
  base=$(basename "$rel")
  case "$base" in
    *.ko.xz) xz -dc "$moddir/$rel" > "$initrd/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    *) cp "$moddir/$rel" "$initrd/lib/modules/$base" ;;
  esac
  echo "$base" >> "$initrd/lib/modules/load-order"
done
(cd "$initrd" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null | gzip -9 > "$out/initrd.img")

echo "$kver" > "$out/kver"
echo "$stamp" > "$out/stamp"
rm -rf "${dir:?}.old"
[ ! -e "$dir" ] || mv "$dir" "$dir.old"
mv "$out" "$dir"
rm -rf "${dir:?}.old"
ln -sfn "$kver" "$cache/current.new"
mv -T "$cache/current.new" "$cache/current"
echo "vm assets built: $dir ($kernel_file, initrd.img with ${#order[@]} modules, layer $(du -sh "$dir/layer" | cut -f1)); $cache/current -> $kver"
