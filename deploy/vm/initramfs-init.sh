#!/bin/sh
# /init of the weft VM lab's initramfs (packed by deploy/vm-assets.sh; busybox sh). It plays the
# part of the hypervisor and the distribution's initramfs at once:
#  1. loads the modules listed in /lib/modules/load-order (virtio, 9p, overlay, ext4);
#  2. configures eth0 from weft.ip=A.B.C.D/N and weft.gw=A.B.C.D on the kernel command line, as a
#     DHCP server would (cloud-init's network config is disabled);
#  3. mounts the VM's disk (/dev/vda, ext4) and the 9p shares hostroot (the machine's /, read
#     only), layer (kernel modules, cloud-init) and seed (the NoCloud seed);
#  4. makes the root an overlay: lower = layer above hostroot, upper and work on the disk, so
#     /etc and /var/lib persist across reboots (cloud-init runs once per instance);
#  5. hides (overlay whiteouts, where the disk has nothing of its own) /.dockerenv, the machine's own weft unit,
#     config and state, and cloud-init state, which the guest must not inherit;
#  6. writes /etc/machine-id from weft.mid unless the disk has one, an empty /etc/fstab, and in a
#     tmpfs /run (kept by systemd): the target weft-lab-vm.target, weft-lab-guest.service
#     (running weft.guest=PATH) and runtime masks for the units the machine has enabled;
#  7. mounts the seed at /var/lib/cloud/seed/nocloud and switch_roots to the machine's systemd,
#     which boots weft-lab-vm.target (systemd.unit= on the command line).
# A failure powers the VM off (QEMU exits) after saying why on the console (console.log); should
# /init itself end (switch_root failing after its checks), the kernel panics, and the lab, which
# watches the console for that, gives up on the VM.

PATH=/bin
export PATH
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

log() { echo "weft-init: $*" > /dev/console; }
fail() {
  log "FATAL: $*"
  sleep 1
  poweroff -f
}

while read -r m; do
  insmod "/lib/modules/$m" 2> /dev/console || log "insmod $m failed"
done < /lib/modules/load-order

ip= gw= mid= guest= name=vm
for w in $(cat /proc/cmdline); do
  case "$w" in
    weft.ip=*) ip=${w#weft.ip=} ;;
    weft.gw=*) gw=${w#weft.gw=} ;;
    weft.mid=*) mid=${w#weft.mid=} ;;
    weft.guest=*) guest=${w#weft.guest=} ;;
    weft.name=*) name=${w#weft.name=} ;;
  esac
done
[ -n "$ip" ] || fail "no weft.ip= on the kernel command line"
[ -n "$guest" ] || fail "no weft.guest= on the kernel command line"

ip link set lo up
ip link set eth0 up || fail "no eth0 (virtio-net)"
ip addr add "$ip" dev eth0 || fail "cannot set $ip on eth0"
if [ -n "$gw" ]; then
  ip route add default via "$gw" dev eth0 || fail "cannot add the default route via $gw"
fi

i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail "no /dev/vda (virtio-blk) after 10 s"
  sleep 0.1
done
mkdir -p /mnt/disk /mnt/host /mnt/layer /mnt/seed
mount -t ext4 /dev/vda /mnt/disk || fail "cannot mount /dev/vda (ext4)"
# cache=loose: without a cache every lookup is a round trip to QEMU, and Python's imports
# (cloud-init's four stages) made the first boot minutes long. The price: a file the machine
# changes while the VM runs may be seen stale in the guest until it is evicted or the VM
# reboots (start a lab after building, not during).
p9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$p9,ro,cache=loose" hostroot /mnt/host || fail "cannot mount the 9p share hostroot"
mount -t 9p -o "$p9,ro,cache=loose" layer /mnt/layer || fail "cannot mount the 9p share layer"
mount -t 9p -o "$p9,ro" seed /mnt/seed || fail "cannot mount the 9p share seed"

first=
if [ ! -e /mnt/disk/weft-lab-disk ]; then
  first=1
  mkdir -p /mnt/disk/upper /mnt/disk/work
fi
# Whiteouts (0/0 character devices in the upper dir) hide these paths of the machine's root,
# checked at every boot (the machine may have gained one) but only where the disk has nothing
# of its own (what the guest wrote there, e.g. install.sh's unit, wins). /.dockerenv: systemd
# would take the VM for a Docker container and ignore the kernel command line (systemd.unit=).
for p in .dockerenv etc/systemd/system/weft-agent.service etc/systemd/system/multi-user.target.wants/weft-agent.service \
  etc/systemd/system/weft-controller.service etc/systemd/system/multi-user.target.wants/weft-controller.service \
  etc/weft var/lib/weft var/lib/cloud; do
  if { [ -e "/mnt/host/$p" ] || [ -L "/mnt/host/$p" ]; } && [ ! -e "/mnt/disk/upper/$p" ] && [ ! -L "/mnt/disk/upper/$p" ]; then
    mkdir -p "/mnt/disk/upper/$(dirname "$p")"
    mknod "/mnt/disk/upper/$p" c 0 0 || fail "cannot hide /$p"
  fi
done
mount -t overlay overlay -o lowerdir=/mnt/layer:/mnt/host,upperdir=/mnt/disk/upper,workdir=/mnt/disk/work /newroot \
  || fail "cannot mount the overlay root"
[ -z "$first" ] || echo "weft lab disk of $name; upper/ is the root's upper layer" > /mnt/disk/weft-lab-disk

r=/newroot
if [ ! -s /mnt/disk/upper/etc/machine-id ]; then
  case "$mid" in
    ????????????????????????????????) echo "$mid" > $r/etc/machine-id ;;
    *) fail "weft.mid= is not 32 hex digits: '$mid'" ;;
  esac
fi
echo "# weft lab VM: no mounts here; the initramfs made the root" > $r/etc/fstab
if [ ! -s /mnt/disk/upper/etc/hostname ]; then
  echo "$name" > $r/etc/hostname
fi

# /tmp is the guest's own (systemd-tmpfiles would otherwise empty the machine's /tmp as seen
# through the overlay, one whiteout per file: slow, and pointless).
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/tmp || fail "cannot mount a tmpfs on /tmp"
# /run: a tmpfs mounted here is kept by systemd, so the units below are there when it starts.
mkdir -p $r/run
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run || fail "cannot mount a tmpfs on /run"
units=$r/run/systemd/system
mkdir -p $units
cat > $units/weft-lab-vm.target <<EOF
# Written by the weft lab's initramfs. The VM boots this instead of default.target: only what
# is listed here (and sysinit.target's own units) starts, never the machine's enabled services.
[Unit]
Description=weft lab VM
Requires=sysinit.target
After=sysinit.target
Wants=systemd-journald.service systemd-udevd.service systemd-modules-load.service
Wants=cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service cloud-init.target
Wants=weft-lab-guest.service weft-agent.service
AllowIsolate=yes
EOF
cat > $units/weft-lab-guest.service <<EOF
# Written by the weft lab's initramfs: the command agent the host's exec() talks to over the
# virtio-serial port org.weft.lab.0. Early (no default dependencies): the host can reach the
# guest while the rest boots.
[Unit]
Description=weft lab guest command agent
DefaultDependencies=no

[Service]
ExecStart=$guest
Restart=always
RestartSec=1
EOF
# Runtime masks for what the machine has enabled: /run/systemd/system ranks below
# /etc/systemd/system, so a unit file written to /etc later (the guest's install.sh) wins over
# the mask instead of following a symlink to /dev/null. A unit whose file is in the machine's
# /etc cannot be masked this way; the target does not pull it in (nor multi-user.target).
for link in /mnt/host/etc/systemd/system/*.wants/* /mnt/host/etc/systemd/system/*.requires/*; do
  [ -e "$link" ] || [ -L "$link" ] || continue
  u=${link##*/}
  case "$u" in
    weft-lab-* | weft-agent.service | cloud-* | systemd-journald* | systemd-udevd* | systemd-modules-load*) continue ;;
  esac
  [ -e "$units/$u" ] || ln -s /dev/null "$units/$u"
done

mkdir -p $r/var/lib/cloud/seed/nocloud
mount --move /mnt/seed $r/var/lib/cloud/seed/nocloud || fail "cannot mount the seed at /var/lib/cloud/seed/nocloud"

# A failed exec would end /init and panic the kernel (which reboots, over and over): check
# what switch_root needs while a failure can still power the VM off.
[ -x $r/lib/systemd/systemd ] || fail "no /lib/systemd/systemd in the root (is systemd installed on this machine?)"
log "root ready at $(cut -d" " -f1 /proc/uptime) s (ip $ip${gw:+ via $gw}${first:+, first boot}); starting systemd"
mount --move /dev $r/dev || fail "cannot move /dev into the root"
umount /proc /sys
exec switch_root $r /lib/systemd/systemd
