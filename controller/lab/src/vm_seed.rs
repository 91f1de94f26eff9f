//! What a VM node boots with: the NoCloud seed made from the VM guide's own cloud-init file
//! (`deploy/vm/user-data-node.yaml`), and the directory of weft's binaries and installer that
//! the guide copies to `/usr/local/src/weft` on every node.
//!
//! The lab runs the guide's user-data as it is, with only the values a reader pastes in by
//! hand replaced (the node's name, etcd's and the controller's addresses, the token and the CA
//! pin, where the binaries are) and the package installs dropped (a lab VM has no internet: the
//! packages come from this machine's root, which the VM shares). Every replaced text must
//! still be in the guide: when the guide changes, [`user_data`] says which one went missing
//! instead of booting a VM with the example's values.

use anyhow::Context;
use std::path::Path;

/// The guide's node user-data, built into the lab so it boots exactly what the guide says.
pub const GUIDE_USER_DATA: &str = include_str!("../../../deploy/vm/user-data-node.yaml");

/// What `deploy/install.sh` needs beside the binaries (the guide copies `deploy/{install.sh,
/// agent.toml.example,systemd,cni}`): relative path, contents, mode.
const INSTALL_FILES: [(&str, &str, u32); 4] = [
    ("install.sh", include_str!("../../../deploy/install.sh"), 0o755),
    ("agent.toml.example", include_str!("../../../deploy/agent.toml.example"), 0o644),
    ("systemd/weft-agent.service", include_str!("../../../deploy/systemd/weft-agent.service"), 0o644),
    ("cni/10-weft.conflist", include_str!("../../../deploy/cni/10-weft.conflist"), 0o644),
];

/// The node binaries the guide copies.
pub const NODE_BINARIES: [&str; 3] = ["weft-agent", "weftctl", "weft-cni"];

/// The values the guide's reader fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedValues {
    pub node_name: String,
    /// `https://172.30.0.2:2379`
    pub etcd_endpoint: String,
    /// `https://172.30.0.7:9651`
    pub bootstrap_url: String,
    pub token: String,
    pub ca_pin: String,
    /// Where the binaries and the installer are (a directory of this machine, which the VM
    /// sees at the same path).
    pub src_dir: String,
}

/// The guide's example values, each replaced by the lab's.
const GUIDE_NODE_NAME: &str = "node_name = \"node-a\"";
const GUIDE_ETCD: &str = "https://10.0.0.5:2379";
const GUIDE_BOOTSTRAP: &str = "https://10.0.0.5:9651";
const GUIDE_TOKEN: &str = "k3x9a1.8f2mq0z7c4wd1n6e";
const GUIDE_CA_PIN: &str = "sha256:59de59fe2b6dcf3e682a9e93bfb3126eb6b6f2521f8565859f774de41b883df2";
const GUIDE_SRC: &str = "/usr/local/src/weft";
/// Top-level keys dropped (package installs need the internet).
const DROPPED_KEYS: [&str; 2] = ["package_update:", "packages:"];

/// The guide's user-data `guide` with the lab's `v`. Errors name the example text that is no
/// longer in the guide.
pub fn user_data(guide: &str, v: &SeedValues) -> anyhow::Result<String> {
    let node_name = format!("node_name = \"{}\"", v.node_name);
    let swaps: [(&str, &str); 6] = [
        (GUIDE_NODE_NAME, &node_name),
        (GUIDE_ETCD, &v.etcd_endpoint),
        (GUIDE_BOOTSTRAP, &v.bootstrap_url),
        (GUIDE_TOKEN, &v.token),
        (GUIDE_CA_PIN, &v.ca_pin),
        (GUIDE_SRC, &v.src_dir),
    ];
    let mut text: String =
        guide.lines().filter(|l| !DROPPED_KEYS.iter().any(|k| l.starts_with(k))).map(|l| format!("{l}\n")).collect();
    anyhow::ensure!(text.starts_with("#cloud-config\n"), "the guide's user-data does not start with #cloud-config");
    for (from, to) in swaps {
        anyhow::ensure!(
            text.contains(from),
            "deploy/vm/user-data-node.yaml no longer contains {from:?}, which the lab replaces: \
             update controller/lab/src/vm_seed.rs with the guide"
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

/// NoCloud's meta-data: the instance id (cloud-init runs its once-per-instance modules, like
/// write_files, again only when it changes) and the host name (for the record: the lab's
/// cloud-init has no set_hostname; the initramfs names the machine).
pub fn meta_data(lab_id: &str, node_name: &str) -> String {
    format!("instance-id: weft-lab-{lab_id}-{node_name}\nlocal-hostname: {node_name}\n")
}

/// Writes the seed (`meta-data`, `user-data`) into `dir`, readable by root only: user-data
/// carries the join token.
pub fn write_seed(dir: &Path, lab_id: &str, v: &SeedValues) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ud = user_data(GUIDE_USER_DATA, v)?;
    for (name, text) in [("meta-data", meta_data(lab_id, &v.node_name)), ("user-data", ud)] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Makes `dir` what the guide copies to a node: links to the node binaries in `bin_dir` and
/// the installer's files.
pub fn write_src_dir(dir: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, text, mode) in INSTALL_FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    for b in NODE_BINARIES {
        let target = bin_dir.join(b);
        anyhow::ensure!(target.is_file(), "{} missing: build the binaries first", target.display());
        let link = dir.join(b);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> SeedValues {
        SeedValues {
            node_name: "n2".into(),
            etcd_endpoint: "https://172.30.0.2:2379".into(),
            bootstrap_url: "https://172.30.0.7:9651".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_pin: "sha256:00ff".into(),
            src_dir: "/run/weft-lab/v1/src".into(),
        }
    }

    #[test]
    fn the_guide_user_data_gets_the_lab_values_and_no_package_installs() {
        let ud = user_data(GUIDE_USER_DATA, &values()).expect("the guide has every example value");
        assert!(ud.starts_with("#cloud-config\n"));
        for want in [
            "node_name = \"n2\"",
            "endpoints = [\"https://172.30.0.2:2379\"]",
            "url = \"https://172.30.0.7:9651\"",
            "token = \"abcdef.0123456789abcdef\"",
            "ca_pin = \"sha256:00ff\"",
            "/run/weft-lab/v1/src/install.sh --bin-dir /run/weft-lab/v1/src --enable",
            "systemctl restart systemd-modules-load",
            "      wireguard\n",
        ] {
            assert!(ud.contains(want), "missing {want:?} in\n{ud}");
        }
        // The guide's comments may name its example hosts; its settings may not.
        let settings: String = ud.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        for gone in ["node-a", "10.0.0.5", "k3x9a1", "59de59fe", "/usr/local/src/weft", "packages:", "package_update:"]
        {
            assert!(!settings.contains(gone), "{gone:?} left in\n{ud}");
        }
        assert_eq!(ud.lines().count(), GUIDE_USER_DATA.lines().count() - 2, "only the two package lines dropped");
    }

    #[test]
    fn a_guide_without_an_example_value_is_refused_by_name() {
        let guide = GUIDE_USER_DATA.replace(GUIDE_TOKEN, "PASTE-TOKEN");
        let e = user_data(&guide, &values()).expect_err("the token example is gone").to_string();
        assert!(e.contains("\"k3x9a1.8f2mq0z7c4wd1n6e\"") && e.contains("vm_seed.rs"), "{e}");
        assert!(user_data("runcmd: []\n", &values()).is_err(), "not cloud-config");
    }

    #[test]
    fn meta_data_names_the_instance_and_host() {
        assert_eq!(meta_data("v1", "n3"), "instance-id: weft-lab-v1-n3\nlocal-hostname: n3\n");
    }

    #[test]
    fn the_src_dir_has_the_installer_and_links_to_the_binaries() {
        let tmp = std::env::temp_dir().join(format!("weft-vm-seed-{}", std::process::id()));
        let bins = tmp.join("bins");
        std::fs::create_dir_all(&bins).expect("mkdir");
        let dir = tmp.join("src");
        assert!(write_src_dir(&dir, &bins).expect_err("no binaries").to_string().contains("weft-agent missing"));
        let _ = std::fs::remove_dir_all(&dir);
        for b in NODE_BINARIES {
            std::fs::write(bins.join(b), "#!/bin/sh\n").expect("write");
        }
        write_src_dir(&dir, &bins).expect("made");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("install.sh")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(dir.join("systemd/weft-agent.service").is_file() && dir.join("cni/10-weft.conflist").is_file());
        assert_eq!(std::fs::read_link(dir.join("weftctl")).expect("link"), bins.join("weftctl"));
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }
}
