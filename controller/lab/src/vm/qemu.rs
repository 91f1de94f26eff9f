//! QEMU's command line and the guest kernel's, made from a [`MachineSpec`]: pure, so the
//! exact arguments are unit tests.

use super::{Assets, MachineSpec};
use std::ffi::OsString;
use std::path::Path;

/// The target the initramfs writes and systemd boots instead of default.target.
pub const VM_TARGET: &str = "weft-lab-vm.target";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("machine {name}: machine_id {id:?} is not 32 lowercase hex digits")]
    MachineId { name: String, id: String },
    #[error("machine {name}: {what} {value:?} {why}")]
    Field { name: String, what: &'static str, value: String, why: &'static str },
}

fn field(spec: &MachineSpec, what: &'static str, value: &str, why: &'static str) -> SpecError {
    SpecError::Field { name: spec.name.clone(), what, value: value.to_string(), why }
}

/// A word of the kernel command line: no whitespace or quotes, not empty.
fn kernel_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '"' || c.is_control())
}

/// Checks what ends up in the kernel's or QEMU's command line.
pub fn validate(spec: &MachineSpec) -> Result<(), SpecError> {
    let id = &spec.machine_id;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(SpecError::MachineId { name: spec.name.clone(), id: id.clone() });
    }
    if !kernel_word(&spec.name) || spec.name.contains(',') {
        return Err(field(spec, "name", &spec.name, "must be one word without commas"));
    }
    let guest = spec.guest_bin.to_string_lossy();
    if !spec.guest_bin.is_absolute() || !kernel_word(&guest) {
        return Err(field(spec, "guest_bin", &guest, "must be an absolute path without whitespace"));
    }
    if spec.prefix == 0 || spec.prefix > 32 {
        return Err(field(spec, "prefix", &spec.prefix.to_string(), "must be 1 to 32"));
    }
    let tap_ok = !spec.tap.is_empty()
        && spec.tap.len() < 16
        && spec.tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !tap_ok {
        return Err(field(spec, "tap", &spec.tap, "must be an interface name (up to 15 of [A-Za-z0-9_-])"));
    }
    let mac_ok = spec.mac.len() == 17
        && spec.mac.split(':').count() == 6
        && spec.mac.split(':').all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(field(spec, "mac", &spec.mac, "must be six hex octets separated by colons"));
    }
    if spec.memory_mb < 128 {
        return Err(field(spec, "memory_mb", &spec.memory_mb.to_string(), "must be at least 128"));
    }
    Ok(())
}

/// The guest kernel's command line: serial console, classic interface names (eth0), reboot
/// at once on a panic (the lab sees QEMU still running, the console log says why), the
/// dedicated target, and the `weft.*` words the initramfs reads.
pub fn kernel_cmdline(spec: &MachineSpec) -> String {
    let mut s = format!(
        "console=ttyS0 net.ifnames=0 panic=-1 quiet systemd.unit={VM_TARGET} weft.name={} weft.ip={}/{} weft.mid={} weft.guest={}",
        spec.name,
        spec.ip,
        spec.prefix,
        spec.machine_id,
        spec.guest_bin.display()
    );
    if let Some(gw) = spec.gateway {
        s.push_str(&format!(" weft.gw={gw}"));
    }
    s
}

/// QEMU reads `,` as an option separator; a literal one is written twice.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The arguments of `qemu-system-x86_64` (see the module doc of `vm` for why each is there).
pub fn qemu_args(spec: &MachineSpec, assets: &Assets) -> Vec<OsString> {
    let dir = &spec.dir;
    let virtfs = |path: &Path, tag: &str, extra: &str| {
        format!("local,path={},mount_tag={tag},security_model=none,readonly=on{extra}", opt_path(path))
    };
    let args: Vec<String> = vec![
        "-name".into(),
        format!("weft-{},process=weft-vm-{}", spec.name, spec.name),
        "-accel".into(),
        "tcg,tb-size=64".into(),
        "-m".into(),
        spec.memory_mb.to_string(),
        "-smp".into(),
        "1".into(),
        "-nographic".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-kernel".into(),
        opt_path(&assets.kernel()),
        "-initrd".into(),
        opt_path(&assets.initrd()),
        "-append".into(),
        kernel_cmdline(spec),
        "-serial".into(),
        format!("file:{}", opt_path(&dir.join("console.log"))),
        "-virtfs".into(),
        virtfs(Path::new("/"), "hostroot", ",multidevs=remap"),
        "-virtfs".into(),
        virtfs(&assets.layer(), "layer", ",multidevs=remap"),
        "-virtfs".into(),
        virtfs(&spec.seed_dir, "seed", ""),
        "-drive".into(),
        format!("file={},if=virtio,format=raw,cache=writeback", opt_path(&dir.join("disk.img"))),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={},server=on,wait=off", opt_path(&dir.join("ctl.sock"))),
        "-device".into(),
        format!("virtserialport,chardev=ctl,name={}", super::protocol::PORT_NAME),
    ];
    args.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec;
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn cmdline_words() {
        let mut s = spec();
        assert_eq!(
            kernel_cmdline(&s),
            "console=ttyS0 net.ifnames=0 panic=-1 quiet systemd.unit=weft-lab-vm.target weft.name=n1 \
             weft.ip=172.30.0.11/24 weft.mid=0123456789abcdef0123456789abcdef weft.guest=/opt/weft/weft-lab-guest \
             weft.gw=172.30.0.1"
        );
        s.gateway = None;
        assert!(!kernel_cmdline(&s).contains("weft.gw"));
    }

    #[test]
    fn qemu_arguments() {
        let mut s = spec();
        s.dir = PathBuf::from("/run/weft-lab/x,y/vm1");
        s.seed_dir = s.dir.join("seed");
        let a = Assets { dir: PathBuf::from("/var/cache/weft-lab/vm/6.1.0-28-amd64"), kver: "6.1.0-28-amd64".into() };
        let args: Vec<String> = qemu_args(&s, &a).into_iter().map(|a| a.into_string().expect("utf-8")).collect();
        let after =
            |flag: &str| -> Vec<&str> { args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect() };
        assert_eq!(after("-accel"), ["tcg,tb-size=64"]);
        assert_eq!(after("-m"), ["512"]);
        assert_eq!(after("-serial"), ["file:/run/weft-lab/x,,y/vm1/console.log"]);
        assert_eq!(
            after("-virtfs"),
            [
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
                "local,path=/var/cache/weft-lab/vm/6.1.0-28-amd64/layer,mount_tag=layer,security_model=none,readonly=on,multidevs=remap",
                "local,path=/run/weft-lab/x,,y/vm1/seed,mount_tag=seed,security_model=none,readonly=on",
            ]
        );
        assert_eq!(after("-netdev"), ["tap,id=n0,ifname=vm1,script=no,downscript=no"]);
        assert_eq!(
            after("-device"),
            [
                "virtio-net-pci,netdev=n0,mac=52:54:00:30:00:0b",
                "virtio-rng-pci",
                "virtio-serial-pci",
                "virtserialport,chardev=ctl,name=org.weft.lab.0"
            ]
        );
        assert_eq!(after("-chardev"), ["socket,id=ctl,path=/run/weft-lab/x,,y/vm1/ctl.sock,server=on,wait=off"]);
        assert!(after("-kernel")[0].ends_with("/vmlinux") || after("-kernel")[0].ends_with("/vmlinuz"));
        assert!(!args.iter().any(|a| a == "-no-reboot"), "a guest reboot must restart in the same QEMU");
    }

    #[test]
    fn validation() {
        assert_eq!(validate(&spec()), Ok(()));
        type Change = fn(&mut MachineSpec);
        let cases: [(Change, &str); 9] = [
            (|s| s.machine_id = "0123456789ABCDEF0123456789abcdef".into(), "machine_id"),
            (|s| s.machine_id = "abc".into(), "machine_id"),
            (|s| s.guest_bin = PathBuf::from("weft-lab-guest"), "guest_bin"),
            (|s| s.guest_bin = PathBuf::from("/a b/weft-lab-guest"), "guest_bin"),
            (|s| s.name = "n 1".into(), "name"),
            (|s| s.tap = "a-very-long-tap-name".into(), "tap"),
            (|s| s.mac = "52:54:00:30:00".into(), "mac"),
            (|s| s.prefix = 33, "prefix"),
            (|s| s.memory_mb = 64, "memory_mb"),
        ];
        for (change, what) in cases {
            let mut s = spec();
            change(&mut s);
            let e = validate(&s).expect_err(what);
            assert!(e.to_string().contains(&format!(": {what} ")), "{e}");
        }
    }
}
