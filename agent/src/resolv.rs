//! Pods' resolver files. `ip netns exec NS` bind-mounts every file of `/etc/netns/NS/` over the
//! one of the same name in `/etc`, so a pod whose namespace weft made gets its
//! `/etc/netns/<netns>/resolv.conf` here. Only namespaces weft made: a CNI runtime's or Docker's
//! containers have their own resolv.conf (a CNI runtime gets the settings in the ADD result).
//! A file is ours when it starts with [`MARK`]; one without it is never touched.

use crate::state::{PodRecord, PodSource};
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use weft_config::dns::DnsSettings;

/// The first line of every resolv.conf weft writes.
pub const MARK: &str = "# written by weft-agent\n";

/// Whether weft keeps the resolver file of `pod`: it made the pod's namespace itself.
pub fn managed(pod: &PodRecord) -> bool {
    pod.owns_netns && matches!(pod.source, PodSource::Config | PodSource::Api)
}

/// The settings `pod` resolves with: its own over the network's.
pub fn effective(pod: &PodRecord, network: &DnsSettings) -> DnsSettings {
    pod.dns.as_ref().map_or_else(|| network.clone(), |own| own.over(network))
}

fn file(netns_etc: &Path, netns: &str) -> Result<PathBuf> {
    // Pod namespace names are checked (no '/'), but this path is made from one: check again.
    if netns.is_empty() || netns.contains('/') || netns == "." || netns == ".." {
        anyhow::bail!("namespace name {netns:?} cannot name a directory under {}", netns_etc.display());
    }
    Ok(netns_etc.join(netns).join("resolv.conf"))
}

/// What is at a resolv.conf path.
enum Existing {
    Absent,
    /// A regular file that starts with [`MARK`], with its content.
    Ours(Vec<u8>),
    /// Anything else: another's file, a symlink, a directory.
    Foreign,
}

fn existing(path: &Path) -> Result<Existing> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Absent),
        Err(e) => Err(e).with_context(|| format!("looking at {}", path.display())),
        Ok(m) if !m.file_type().is_file() => Ok(Existing::Foreign),
        Ok(_) => {
            let have = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(if have.starts_with(MARK.as_bytes()) { Existing::Ours(have) } else { Existing::Foreign })
        }
    }
}

/// Makes `<netns_etc>/<netns>/resolv.conf` hold `dns`. Settings without a server write no file
/// (the resolver would fall back to 127.0.0.1 inside the pod) and remove weft's: the host's
/// resolv.conf applies. True when something changed. A file weft did not write is left alone
/// (an error says so).
///
/// A file of weft's is rewritten in place, not replaced: `ip netns exec` bind-mounts the file
/// itself, so processes started before a change read the new text only from the same inode.
pub fn sync(netns_etc: &Path, netns: &str, dns: &DnsSettings) -> Result<bool> {
    let path = file(netns_etc, netns)?;
    if dns.servers.is_empty() {
        return remove(netns_etc, netns);
    }
    let want = dns.resolv_conf();
    match existing(&path)? {
        Existing::Ours(have) if have == want.as_bytes() => Ok(false),
        Existing::Ours(_) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.write_all(want.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(true)
        }
        Existing::Foreign => anyhow::bail!("{} exists and was not written by weft; leaving it", path.display()),
        Existing::Absent => {
            let dir = path.parent().context("resolv.conf path has a directory")?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Beside the namespace's directory, not in it: `ip netns exec` binds every file
            // in there, and would trip over a half-written one.
            let tmp = netns_etc.join(format!(".weft-{netns}.resolv.conf.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(want.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            Ok(true)
        }
    }
}

/// Removes weft's resolv.conf of `netns`, and then the namespace's directory when that leaves
/// it empty. Absent files are fine; a file weft did not write stays, and so does a directory
/// weft removed nothing from. True when something went.
pub fn remove(netns_etc: &Path, netns: &str) -> Result<bool> {
    let path = file(netns_etc, netns)?;
    let _ = std::fs::remove_file(netns_etc.join(format!(".weft-{netns}.resolv.conf.tmp")));
    if !matches!(existing(&path)?, Existing::Ours(_)) {
        return Ok(false);
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // Fails (and stays) when anything else is in it.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(server: &str) -> DnsSettings {
        DnsSettings { servers: vec![server.parse().expect("literal")], ..Default::default() }
    }

    #[test]
    fn writes_replaces_and_removes_only_its_own_file() {
        let root = std::env::temp_dir().join(format!("weft-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let etc = root.as_path();
        assert!(sync(etc, "pod1", &dns("203.0.113.2")).expect("write"));
        let path = etc.join("pod1/resolv.conf");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), format!("{MARK}nameserver 203.0.113.2\n"));
        assert!(!sync(etc, "pod1", &dns("203.0.113.2")).expect("same"), "unchanged content is not rewritten");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
        let before = inode(&path);
        assert!(sync(etc, "pod1", &dns("203.0.113.3")).expect("replace"));
        assert_eq!(inode(&path), before, "rewritten in place: a bind mount of the file sees the change");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), format!("{MARK}nameserver 203.0.113.3\n"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("stat").permissions());
        assert_eq!(mode & 0o777, 0o644, "readable by the pod's unprivileged processes");
        let no_server = DnsSettings { search: vec!["weft.test".into()], ..Default::default() };
        assert!(sync(etc, "pod1", &no_server).expect("no server removes"), "search without a server writes no file");
        assert!(!etc.join("pod1").exists(), "the emptied directory goes too");
        assert_eq!(std::fs::read_dir(etc).expect("list").count(), 0, "no temporary file left");

        std::fs::create_dir_all(etc.join("pod2")).expect("mkdir");
        std::fs::write(etc.join("pod2/resolv.conf"), "nameserver 9.9.9.9\n").expect("foreign file");
        std::fs::write(etc.join("pod2/hosts"), "").expect("another file");
        assert!(sync(etc, "pod2", &dns("203.0.113.2")).is_err(), "a foreign file is not overwritten");
        assert!(!remove(etc, "pod2").expect("remove"), "nor removed");
        assert_eq!(std::fs::read_to_string(etc.join("pod2/resolv.conf")).expect("kept"), "nameserver 9.9.9.9\n");
        assert!(!remove(etc, "absent").expect("absent is fine"));
        std::fs::create_dir_all(etc.join("empty")).expect("someone's empty directory");
        assert!(!remove(etc, "empty").expect("nothing of weft's"));
        assert!(etc.join("empty").exists(), "a directory weft removed nothing from stays");
        std::fs::create_dir_all(etc.join("link")).expect("mkdir");
        std::os::unix::fs::symlink("/nonexistent/resolv.conf", etc.join("link/resolv.conf")).expect("symlink");
        assert!(sync(etc, "link", &dns("203.0.113.2")).is_err(), "a symlink is not replaced");
        std::fs::write(etc.join("pod2/resolv.conf"), b"\xff\xfe not utf-8").expect("binary file");
        assert!(sync(etc, "pod2", &dns("203.0.113.2")).is_err(), "an unreadable-as-text file is not replaced");
        assert!(sync(etc, "../x", &dns("203.0.113.2")).is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn only_namespaces_weft_made_are_managed() {
        let mut pod = PodRecord {
            name: "p1".into(),
            netns: "p1".into(),
            ifname: "eth0".into(),
            addrs: weft_config::subnet::PerFamily::V4("10.244.1.2".parse().expect("literal")),
            host_veth: "wv0".into(),
            source: PodSource::Config,
            owns_netns: true,
            dns: None,
        };
        assert!(managed(&pod));
        pod.owns_netns = false;
        assert!(!managed(&pod), "a namespace the pod was put into");
        pod.owns_netns = true;
        pod.source = PodSource::Cni;
        assert!(!managed(&pod), "a runtime's namespace (weft only bind-mounted it)");
        let net = DnsSettings { search: vec!["lab.weft".into()], ..dns("203.0.113.2") };
        assert_eq!(effective(&pod, &net), net);
        pod.dns = Some(dns("198.51.100.53"));
        assert_eq!(effective(&pod, &net), DnsSettings { search: vec!["lab.weft".into()], ..dns("198.51.100.53") });
    }
}
