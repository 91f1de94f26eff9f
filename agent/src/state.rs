//! The agent's state directory: the subnets it holds (`subnet.json` for IPv4, `subnet6.json` for
//! IPv6, as etcd keeps them under `subnets/` and `subnets6/`) and its pods. This is the source of
//! truth for pods; files are replaced atomically (write, fsync, rename) so a crash never leaves
//! half a file.

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weft_config::subnet::{Family, PerFamily};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetState {
    pub network: String,
    pub subnet: IpNet,
    pub node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSource {
    Config,
    Api,
    /// Added by the CNI plugin with a namespace given as a path (bind-mounted by the agent).
    Cni,
    /// A Docker endpoint on the weft network driver (kept in `docker.json`, never in
    /// `pods.json`; Docker creates and removes it).
    Docker,
}

impl PodSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSource::Config => "config",
            PodSource::Api => "api",
            PodSource::Cni => "cni",
            PodSource::Docker => "docker",
        }
    }
}

/// A pod the agent made, as `pods.json` keeps it: its address of each family the network
/// serves, stored as `ip` (IPv4, as before dual-stack) and `ip6`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PodRecordJson", into = "PodRecordJson")]
pub struct PodRecord {
    pub name: String,
    pub netns: String,
    pub ifname: String,
    /// One address per family.
    pub addrs: PerFamily<IpAddr>,
    pub host_veth: String,
    pub source: PodSource,
    /// weft created the namespace (and removes it with the pod).
    pub owns_netns: bool,
}

impl PodRecord {
    /// The pod's address of `family`, if it has one.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.addrs.get(family).copied()
    }

    /// Every address, IPv4 first.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.values().copied()
    }

    /// The addresses for a log line: `10.244.1.2`, `10.244.1.2,fd00:10:244:1::2`.
    pub fn ips_text(&self) -> String {
        self.ips().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// A [`PodRecord`] in `pods.json`.
#[derive(Serialize, Deserialize)]
struct PodRecordJson {
    name: String,
    netns: String,
    ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<IpAddr>,
    host_veth: String,
    source: PodSource,
    #[serde(default)]
    owns_netns: bool,
}

impl TryFrom<PodRecordJson> for PodRecord {
    type Error = String;

    fn try_from(j: PodRecordJson) -> Result<Self, String> {
        let (v4, v6) = match (j.ip, j.ip6) {
            // An IPv6-only pod written while `ip` held the first family's address.
            (Some(a @ IpAddr::V6(_)), None) => (None, Some(a)),
            (Some(IpAddr::V6(a)), Some(_)) => return Err(format!("pod {}: ip {a} is not an IPv4 address", j.name)),
            (_, Some(IpAddr::V4(a))) => return Err(format!("pod {}: ip6 {a} is not an IPv6 address", j.name)),
            (v4, v6) => (v4, v6),
        };
        let addrs = PerFamily::from_options(v4, v6).ok_or_else(|| format!("pod {}: no address", j.name))?;
        Ok(Self {
            name: j.name,
            netns: j.netns,
            ifname: j.ifname,
            addrs,
            host_veth: j.host_veth,
            source: j.source,
            owns_netns: j.owns_netns,
        })
    }
}

impl From<PodRecord> for PodRecordJson {
    fn from(p: PodRecord) -> Self {
        let (ip, ip6) = p.addrs.as_options();
        Self {
            ip: ip.copied(),
            ip6: ip6.copied(),
            name: p.name,
            netns: p.netns,
            ifname: p.ifname,
            host_veth: p.host_veth,
            source: p.source,
            owns_netns: p.owns_netns,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating state dir {}", self.dir.display()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The file of the subnet of `family`.
    fn subnet_file(family: Family) -> &'static str {
        match family {
            Family::V4 => "subnet.json",
            Family::V6 => "subnet6.json",
        }
    }

    /// The IPv4 subnet held (`subnet.json`).
    pub fn load_subnet(&self) -> Result<Option<SubnetState>> {
        self.load_subnet_of(Family::V4)
    }

    /// The subnet of `family` held; one of another family in its file is an error.
    pub fn load_subnet_of(&self, family: Family) -> Result<Option<SubnetState>> {
        let path = self.path(Self::subnet_file(family));
        let s: Option<SubnetState> = read_json(&path)?;
        if let Some(s) = &s {
            if Family::of_net(s.subnet) != family {
                anyhow::bail!("{}: expected an {family} subnet, found {}", path.display(), s.subnet);
            }
        }
        Ok(s)
    }

    /// Remembers a subnet, in the file of its family.
    pub fn save_subnet(&self, s: &SubnetState) -> Result<()> {
        write_json(&self.path(Self::subnet_file(Family::of_net(s.subnet))), s)
    }

    pub fn load_pods(&self) -> Result<Vec<PodRecord>> {
        Ok(read_json(&self.path("pods.json"))?.unwrap_or_default())
    }

    pub fn save_pods(&self, pods: &[PodRecord]) -> Result<()> {
        write_json(&self.path("pods.json"), &pods)
    }

    /// Another state file of the directory, by name (`None` when missing).
    pub fn load_file<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        read_json(&self.path(name))
    }

    /// Replaces another state file of the directory atomically.
    pub fn save_file<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        write_json(&self.path(name), value)
    }

    /// Removes the whole state directory (on `--leave`).
    pub fn remove_all(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
    }
}

/// Reads a JSON file; a missing file is `None`, a corrupt one an error naming it.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).with_context(|| format!("{}: invalid state file", path.display()))
}

/// Replaces `path` atomically with the JSON of `value`.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).context("encoding state")?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, 0o644)
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The flannel-compatible environment file consumers (CNI plugins, scripts) read, for a node
/// holding `subnet` of the pool `cluster`.
pub fn subnet_env(cluster: IpNet, subnet: IpNet, mtu: u32, ip_masq: bool) -> String {
    subnet_env_of(&[(cluster, subnet)], mtu, ip_masq)
}

/// [`subnet_env`] for a node holding a subnet of each pool in `leases` ((cluster CIDR, subnet),
/// at most one per family): flannel's `FLANNEL_NETWORK`/`FLANNEL_SUBNET` for IPv4 and
/// `FLANNEL_IPV6_NETWORK`/`FLANNEL_IPV6_SUBNET` for IPv6, in flannel's order.
pub fn subnet_env_of(leases: &[(IpNet, IpNet)], mtu: u32, ip_masq: bool) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        let names = match family {
            Family::V4 => ("FLANNEL_NETWORK", "FLANNEL_SUBNET"),
            Family::V6 => ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"),
        };
        for (cluster, subnet) in leases.iter().filter(|(_, s)| Family::of_net(*s) == family) {
            let gw = weft_config::subnet::gateway(*subnet);
            out.push_str(&format!("{}={cluster}\n{}={gw}/{}\n", names.0, names.1, subnet.prefix_len()));
        }
    }
    out.push_str(&format!("FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_uses_flannel_names() {
        let env = subnet_env("10.244.0.0/16".parse().expect("lit"), "10.244.3.0/24".parse().expect("lit"), 1500, true);
        assert_eq!(
            env,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn subnet_env_adds_flannels_ipv6_lines() {
        let n = |s: &str| -> IpNet { s.parse().expect("lit") };
        let dual = [(n("10.244.0.0/16"), n("10.244.3.0/24")), (n("fd00:10:244::/56"), n("fd00:10:244:3::/64"))];
        assert_eq!(
            subnet_env_of(&dual, 1500, false),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            subnet_env_of(&dual[1..], 1400, true),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
            "an IPv6-only node writes no IPv4 lines"
        );
        assert_eq!(subnet_env_of(&dual[..1], 1500, true), subnet_env(dual[0].0, dual[0].1, 1500, true));
    }

    #[test]
    fn each_family_has_its_own_subnet_file() {
        let dir = std::env::temp_dir().join(format!("weft-state6-test-{}", std::process::id()));
        let s = StateDir::new(&dir);
        let st = |subnet: &str| SubnetState {
            network: "d".into(),
            subnet: subnet.parse().expect("lit"),
            node_id: "x".into(),
        };
        s.save_subnet(&st("10.244.1.0/24")).expect("save");
        s.save_subnet(&st("fd00:10:244:1::/64")).expect("save");
        assert_eq!(s.load_subnet().expect("load"), Some(st("10.244.1.0/24")));
        assert_eq!(s.load_subnet_of(Family::V6).expect("load"), Some(st("fd00:10:244:1::/64")));
        assert!(dir.join("subnet6.json").exists());
        write_json(&dir.join("subnet6.json"), &st("10.244.9.0/24")).expect("write");
        let e = s.load_subnet_of(Family::V6).expect_err("wrong family");
        assert!(format!("{e:#}").ends_with("subnet6.json: expected an IPv6 subnet, found 10.244.9.0/24"), "{e:#}");
        s.remove_all().expect("cleanup");
    }

    #[test]
    fn state_files_keep_their_json() {
        let st = SubnetState {
            network: "default".into(),
            subnet: "10.244.1.0/24".parse().expect("lit"),
            node_id: "x".into(),
        };
        let pod = PodRecord {
            name: "p1".into(),
            netns: "ns1".into(),
            ifname: "eth0".into(),
            addrs: PerFamily::V4("10.244.1.2".parse().expect("lit")),
            host_veth: "wv0123abcd".into(),
            source: PodSource::Cni,
            owns_netns: true,
        };
        let subnet_json = "{\n  \"network\": \"default\",\n  \"subnet\": \"10.244.1.0/24\",\n  \"node_id\": \"x\"\n}";
        let pods_json = "[\n  {\n    \"name\": \"p1\",\n    \"netns\": \"ns1\",\n    \"ifname\": \"eth0\",\n    \"ip\": \"10.244.1.2\",\n    \"host_veth\": \"wv0123abcd\",\n    \"source\": \"cni\",\n    \"owns_netns\": true\n  }\n]";
        assert_eq!(serde_json::to_string_pretty(&st).expect("json"), subnet_json);
        assert_eq!(serde_json::to_string_pretty(std::slice::from_ref(&pod)).expect("json"), pods_json);
        assert_eq!(serde_json::from_str::<SubnetState>(subnet_json).expect("read back"), st);
        assert_eq!(serde_json::from_str::<Vec<PodRecord>>(pods_json).expect("read back"), vec![pod]);
    }

    #[test]
    fn pod_records_keep_an_address_per_family() {
        let line = |extra: &str| {
            format!(r#"{{"name":"p1","netns":"n","ifname":"eth0",{extra}"host_veth":"wv0","source":"config"}}"#)
        };
        let read = |extra: &str| serde_json::from_str::<PodRecord>(&line(extra));
        let ip = |s: &str| s.parse::<IpAddr>().expect("lit");
        let dual = read(r#""ip":"10.244.1.2","ip6":"fd00:10:244:1::2","#).expect("dual");
        assert_eq!(dual.addrs, PerFamily::Dual(ip("10.244.1.2"), ip("fd00:10:244:1::2")));
        assert_eq!(dual.ips().collect::<Vec<_>>(), [ip("10.244.1.2"), ip("fd00:10:244:1::2")]);
        let only6 = read(r#""ip6":"fd00:10:244:1::2","#).expect("v6");
        assert_eq!((only6.ip(Family::V4), only6.ip(Family::V6)), (None, Some(ip("fd00:10:244:1::2"))));
        let json = serde_json::to_string(&only6).expect("json");
        assert!(json.contains(r#""ip6":"fd00:10:244:1::2""#) && !json.contains(r#""ip":"#), "{json}");
        assert_eq!(serde_json::from_str::<PodRecord>(&json).expect("read back"), only6);
        assert_eq!(read(r#""ip":"fd00:10:244:1::2","#).expect("an older IPv6-only record").addrs, only6.addrs);
        assert_eq!(
            serde_json::from_str::<PodRecord>(&serde_json::to_string(&dual).expect("json")).expect("back"),
            dual
        );
        for (extra, want) in [
            ("", "pod p1: no address"),
            (r#""ip":"fd00::1","ip6":"fd00::2","#, "pod p1: ip fd00::1 is not an IPv4 address"),
            (r#""ip6":"10.0.0.1","#, "pod p1: ip6 10.0.0.1 is not an IPv6 address"),
        ] {
            let e = read(extra).expect_err(want);
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn state_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("weft-state-test-{}", std::process::id()));
        let s = StateDir::new(&dir);
        assert_eq!(s.load_subnet().expect("missing is fine"), None);
        let st = SubnetState {
            network: "default".into(),
            subnet: "10.244.1.0/24".parse().expect("lit"),
            node_id: "x".into(),
        };
        s.save_subnet(&st).expect("save");
        assert_eq!(s.load_subnet().expect("load"), Some(st));
        std::fs::write(dir.join("pods.json"), b"{not json").expect("write");
        let e = s.load_pods().expect_err("corrupt");
        assert!(format!("{e:#}").contains("pods.json: invalid state file"), "{e:#}");
        s.remove_all().expect("cleanup");
        assert!(!dir.exists());
    }
}
