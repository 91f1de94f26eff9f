//! The agent's configuration file (`agent.toml`), read once at start and validated into types.
//! Unknown keys are refused with a suggestion; every error names the file and the field.

use crate::dns::DnsSettings;
use crate::error::ConfigError;
pub use crate::names::{valid_ifname, valid_name, valid_netns};
use crate::reader::Reader;
use crate::records::PRIMARY_FAMILY;
use crate::subnet::Family;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default UDP port of the QUIC backend (unused by host-gw).
pub const DEFAULT_QUIC_PORT: u16 = 7946;
/// Default address of the HTTP endpoint serving /metrics, /healthz and /readyz.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9472";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// This node's name; the key of its heartbeat and the name in its subnet record.
    pub node_name: String,
    /// Stable identity of the machine; `None` means read /etc/machine-id.
    pub node_id: Option<String>,
    /// The network (etcd namespace) this agent joins.
    pub network: String,
    /// Masquerade pod traffic that leaves the cluster CIDR (never pod-to-pod traffic).
    pub ip_masq: bool,
    /// Masquerade IPv6 pod traffic that leaves the IPv6 cluster CIDR (never pod-to-pod
    /// traffic); only in a network with an IPv6 pool.
    pub ip_masq6: bool,
    pub etcd: EtcdConfig,
    pub underlay: UnderlayConfig,
    pub bridge: BridgeConfig,
    pub paths: Paths,
    pub timers: Timers,
    /// Settings of the quic backend; required when the network's backend is quic.
    pub quic: Option<QuicConfig>,
    /// `[wireguard]`: settings of the wireguard backend (defaults when the section is absent).
    pub wireguard: WireGuardConfig,
    pub pods: Vec<PodSpec>,
    /// `[metrics]`: the HTTP endpoint for /metrics, /healthz and /readyz.
    pub metrics: MetricsConfig,
    /// `[probes]`: reachability probes of every peer's gateway, published to etcd.
    pub probes: ProbesConfig,
    /// `[bootstrap]`: join with a token when the certificate files do not exist yet, and
    /// renew before they expire.
    pub bootstrap: Option<BootstrapConfig>,
    /// `[docker]`: present = the agent serves the Docker network and IPAM plugin.
    pub docker: Option<DockerConfig>,
}

/// The default name of the Docker plugin (`--driver weft --ipam-driver weft`).
pub const DEFAULT_DOCKER_PLUGIN: &str = "weft";
/// The default socket the Docker plugin is served on.
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/weft/docker.sock";
/// Where Docker looks for plugin spec files (it reads `.spec` files only in `/etc/docker/plugins`
/// and `/usr/lib/docker/plugins`; `/run/docker/plugins` is for sockets alone).
pub const DOCKER_PLUGIN_DIR: &str = "/etc/docker/plugins";
/// Docker endpoints are listed as pods `docker-<first 12 characters of the endpoint id>`:
/// no other pod may take a name starting so.
pub const DOCKER_POD_PREFIX: &str = "docker-";

/// `[docker]` of agent.toml: the Docker plugin's name, the socket it is served on, and the spec
/// file through which Docker finds that socket (Docker takes the plugin's name from the spec
/// file's name, so it ends in `<plugin_name>.spec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    pub plugin_name: String,
    pub socket: PathBuf,
    pub spec_file: PathBuf,
}

/// `[bootstrap]` of agent.toml: where and how to get this node's certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// The controller's join service, `https://HOST:PORT` (no path).
    pub url: String,
    /// The join token, `<id>.<secret>` (6 and 16 characters of a-z and 0-9).
    pub token: String,
    /// `sha256:<64 hex>` of the cluster CA's SubjectPublicKeyInfo (`weftctl token create`).
    pub ca_pin: String,
    /// Renew this long before the certificate expires; `None`: a third of its lifetime.
    pub renew_before: Option<Duration>,
}

impl std::fmt::Debug for BootstrapConfig {
    /// Never shows the token's secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.token.split_once('.').map_or("?", |(id, _)| id);
        f.debug_struct("BootstrapConfig")
            .field("url", &self.url)
            .field("token", &format_args!("{id}.****"))
            .field("ca_pin", &self.ca_pin)
            .field("renew_before", &self.renew_before)
            .finish()
    }
}

impl AgentConfig {
    /// Every (certificate, key) pair the config names, `[etcd]`'s first, without repeats.
    pub fn cert_paths(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
        let etcd = self.etcd.tls.as_ref().and_then(|t| t.identity.clone());
        let quic = self.quic.as_ref().map(|q| (q.cert_file.clone(), q.key_file.clone()));
        for pair in [etcd, quic].into_iter().flatten() {
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }

    /// Every CA file the config names, `[etcd]`'s first, without repeats.
    pub fn ca_paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let etcd = self.etcd.tls.as_ref().map(|t| t.ca_file.clone());
        let quic = self.quic.as_ref().map(|q| q.ca_file.clone());
        for p in [etcd, quic].into_iter().flatten() {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

/// `[metrics]` of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to listen; `None` = disabled (`enabled = false`).
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_METRICS_LISTEN.parse().ok() }
    }
}

/// `[probes]` of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbesConfig {
    pub enabled: bool,
    /// Time between two probe rounds.
    pub interval: Duration,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self { enabled: true, interval: Duration::from_secs(10) }
    }
}

/// The quic backend: a tun device whose packets travel as QUIC datagrams, with mutual TLS
/// against the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP port of the QUIC endpoint.
    pub port: u16,
    /// Cluster CA certificate (PEM); peers must present certificates it signed.
    pub ca_file: PathBuf,
    /// This node's certificate (PEM, SAN = node name) and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Tun device name.
    pub tun: String,
    /// Tun and pod MTU; `None` = derived from the underlay MTU (see docs/ARCHITECTURE.md).
    pub mtu: Option<u32>,
    /// Data path threads (1 to 64), each with its own tun queue, UDP port (`port + i`) and
    /// connection per peer; `None` ("auto", the key absent) = the machine's core count, at most
    /// [`QUIC_THREADS_AUTO_MAX`] (the agent decides; docs/ARCHITECTURE.md).
    pub threads: Option<usize>,
    /// Which underlay the tunnel runs over (`endpoint_family = "ipv4"` or `"ipv6"`): the
    /// endpoint published in the record is `public_ip` or `public_ip6` and the port. IPv4 unless
    /// set, also in dual-stack networks; every node of a cluster must use the same family.
    pub endpoint_family: Family,
}

/// The default UDP port of the wireguard backend (WireGuard's and flannel's).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// The wireguard backend's key file in the state dir, unless `wireguard.key_file` says otherwise.
pub const WIREGUARD_KEY_FILE: &str = "wireguard.key";

/// `[wireguard]` of agent.toml: the kernel WireGuard backend's port, keepalive and key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardConfig {
    /// UDP port the device listens on (published in the node's record).
    pub port: u16,
    /// Persistent keepalive towards every peer, in seconds; 0 = off (as in flannel).
    pub persistent_keepalive_secs: u16,
    /// The node's private key (base64, as `wg genkey` writes it); made on first start, 0600.
    pub key_file: PathBuf,
}

/// The most data path threads `quic.threads` "auto" (the key absent) chooses.
pub const QUIC_THREADS_AUTO_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    /// Client certificate and key, for etcd servers that require client auth.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnderlayConfig {
    /// Interface that carries traffic between nodes; `None` = the one holding the default route.
    pub interface: Option<String>,
    /// Address peers use to reach this node (IPv4); `None` = the first IPv4 address of the
    /// interface.
    pub public_ip: Option<IpAddr>,
    /// The IPv6 address peers route this node's IPv6 subnet via (networks with an IPv6 pool);
    /// `None` = the first global IPv6 address of the interface.
    pub public_ip6: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub name: String,
    /// Bridge and pod MTU; `None` = the underlay's MTU (host-gw adds no header).
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub subnet_env: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    /// Where `ip netns exec` looks for per-namespace files: the agent writes
    /// `<netns_etc>/<pod namespace>/resolv.conf` for the namespaces it makes.
    pub netns_etc: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// Period of the full reconcile (routes, firewall, pods) besides the one on every change.
    pub reconcile: Duration,
    /// TTL of the node heartbeat key; it is refreshed at a third of this.
    pub heartbeat_ttl: Duration,
    /// TTL of the subnet record's lease; renewed at a tenth of it, so etcd hiccups never withdraw it.
    pub subnet_lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    /// Named network namespace under /run/netns (created when missing).
    pub netns: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Resolver settings of this pod, over the network's (see [`crate::dns::DnsSettings::over`]).
    pub dns: Option<DnsSettings>,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/weft"),
            subnet_env: PathBuf::from("/run/weft/subnet.env"),
            socket: PathBuf::from("/run/weft/agent.sock"),
            pid_file: PathBuf::from("/run/weft/agent.pid"),
            netns_etc: PathBuf::from("/etc/netns"),
        }
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            reconcile: Duration::from_secs(10),
            heartbeat_ttl: Duration::from_secs(15),
            subnet_lease: Duration::from_secs(24 * 3600),
        }
    }
}

pub(crate) const NAME_RULE: &str = "lowercase letters, digits, '-', '_' or '.', 1 to 63 characters";

impl AgentConfig {
    /// Reads and validates `path`. Errors name the file, the field and the expectation.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (source, text) = crate::reader::read_file(path)?;
        Self::parse(&source, &text)
    }

    /// Validates the TOML text; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, ConfigError> {
        let table = crate::reader::parse_table(source, text)?;
        let docker_present = table.contains_key("docker");
        let mut r = Reader::new(source, "", &table);

        let node_name = r.req_str("node_name")?;
        if !valid_name(node_name) {
            return Err(r.err("node_name", format!("expected {NAME_RULE}, found {node_name:?}")));
        }
        let node_id = match r.opt_str("node_id")? {
            Some(id) if id.trim().is_empty() || id.len() > 128 => {
                return Err(r.err("node_id", "expected a non-empty string of at most 128 characters"))
            }
            other => other.map(str::to_string),
        };
        let network = r.opt_str("network")?.unwrap_or("default");
        if !valid_name(network) {
            return Err(r.err("network", format!("expected {NAME_RULE}, found {network:?}")));
        }
        let ip_masq = r.opt_bool("ip_masq")?.unwrap_or(false);
        let ip_masq6 = r.opt_bool("ip_masq6")?.unwrap_or(false);

        let etcd = read_etcd(r.table("etcd")?)?;
        let underlay = read_underlay(r.table("underlay")?)?;
        let bridge = read_bridge(r.table("bridge")?)?;
        let paths = read_paths(r.table("paths")?)?;
        let timers = read_timers(r.table("timers")?)?;
        let quic = read_quic(r.table("quic")?)?;
        let wireguard = read_wireguard(r.table("wireguard")?, &paths)?;
        let metrics = read_metrics(r.table("metrics")?)?;
        let probes = read_probes(r.table("probes")?)?;
        let bootstrap = read_bootstrap(r.table("bootstrap")?)?;
        let docker = read_docker(r.table("docker")?, docker_present)?;
        let mut pods = Vec::new();
        for p in r.table_array("pods")? {
            pods.push(read_pod(p)?);
        }
        for (i, p) in pods.iter().enumerate() {
            if let Some(j) = pods[..i].iter().position(|q| q.name == p.name) {
                return Err(ConfigError::new(
                    source,
                    format!("pods[{i}].name"),
                    format!("duplicate pod name {:?} (also pods[{j}])", p.name),
                ));
            }
            if let Some(j) = pods[..i].iter().position(|q| q.netns == p.netns && q.ifname == p.ifname) {
                return Err(ConfigError::new(
                    source,
                    format!("pods[{i}].netns"),
                    format!("namespace {:?} with interface {:?} is already pods[{j}]", p.netns, p.ifname),
                ));
            }
        }
        r.finish()?;
        let no_cert = etcd.tls.as_ref().and_then(|t| t.identity.as_ref()).is_none() && quic.is_none();
        if bootstrap.is_some() && no_cert {
            return Err(ConfigError::new(
                source,
                "bootstrap",
                "expected cert_file and key_file in [etcd] or a [quic] section: the files the joined certificate is \
                 written to",
            ));
        }
        Ok(Self {
            node_name: node_name.to_string(),
            node_id,
            network: network.to_string(),
            ip_masq,
            ip_masq6,
            etcd,
            underlay,
            bridge,
            paths,
            timers,
            quic,
            wireguard,
            pods,
            metrics,
            probes,
            bootstrap,
            docker,
        })
    }
}

pub(crate) fn read_etcd(mut r: Reader<'_>) -> Result<EtcdConfig, ConfigError> {
    let endpoints = r.opt_str_array("endpoints")?.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(r.err("endpoints", "expected at least one URL"));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
        let ok = rest.is_some_and(|h| !h.is_empty() && !h.contains('/') && !h.contains(char::is_whitespace));
        if !ok {
            return Err(
                r.err(&format!("endpoints[{i}]"), format!("expected a URL like http://10.0.0.5:2379, found {e:?}"))
            );
        }
    }
    let ca = r.opt_str("ca_file")?;
    let cert = r.opt_str("cert_file")?;
    let key = r.opt_str("key_file")?;
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => return Err(r.err("key_file", "required when cert_file is set")),
        (None, Some(_)) => return Err(r.err("cert_file", "required when key_file is set")),
    };
    let tls = match (ca, identity) {
        (Some(ca), identity) => Some(EtcdTls { ca_file: PathBuf::from(ca), identity }),
        (None, Some(_)) => return Err(r.err("ca_file", "required when a client certificate is set")),
        (None, None) => None,
    };
    if tls.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(r.err("endpoints", "expected https:// URLs when ca_file is set"));
    }
    let endpoints = endpoints.into_iter().map(str::to_string).collect();
    r.finish()?;
    Ok(EtcdConfig { endpoints, tls })
}

fn read_underlay(mut r: Reader<'_>) -> Result<UnderlayConfig, ConfigError> {
    let interface = r.opt_str("interface")?;
    if let Some(i) = interface {
        if !valid_ifname(i) {
            return Err(r.err("interface", format!("expected an interface name of 1 to 15 characters, found {i:?}")));
        }
    }
    let public_ip = r.opt_ip("public_ip", PRIMARY_FAMILY)?;
    if let Some(ip) = public_ip {
        if !crate::subnet::is_unicast(ip) {
            return Err(r.err("public_ip", format!("expected a unicast address other nodes can reach, found {ip}")));
        }
    }
    let public_ip6 = r.opt_ip("public_ip6", Family::V6)?;
    if let Some(ip) = public_ip6 {
        if !crate::subnet::is_routable_unicast(ip) {
            return Err(r.err(
                "public_ip6",
                format!("expected a unicast address other nodes can reach (not link-local), found {ip}"),
            ));
        }
    }
    r.finish()?;
    Ok(UnderlayConfig { interface: interface.map(str::to_string), public_ip, public_ip6 })
}

fn read_bridge(mut r: Reader<'_>) -> Result<BridgeConfig, ConfigError> {
    let name = r.opt_str("name")?.unwrap_or("weft0");
    if !valid_ifname(name) {
        return Err(r.err("name", format!("expected an interface name of 1 to 15 characters, found {name:?}")));
    }
    let mtu = r.opt_int("mtu", 576, 65535)?.map(|m| m as u32);
    r.finish()?;
    Ok(BridgeConfig { name: name.to_string(), mtu })
}

fn read_paths(mut r: Reader<'_>) -> Result<Paths, ConfigError> {
    let d = Paths::default();
    let mut take = |key: &'static str, default: PathBuf| -> Result<PathBuf, ConfigError> {
        match r.opt_str(key)? {
            None => Ok(default),
            Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
            Some(p) => Err(r.err(key, format!("expected an absolute path, found {p:?}"))),
        }
    };
    let paths = Paths {
        state_dir: take("state_dir", d.state_dir)?,
        subnet_env: take("subnet_env", d.subnet_env)?,
        socket: take("socket", d.socket)?,
        pid_file: take("pid_file", d.pid_file)?,
        netns_etc: take("netns_etc", d.netns_etc)?,
    };
    r.finish()?;
    Ok(paths)
}

fn read_timers(mut r: Reader<'_>) -> Result<Timers, ConfigError> {
    let d = Timers::default();
    let secs = |v: Option<i64>, default: Duration| v.map_or(default, |s| Duration::from_secs(s as u64));
    let reconcile = secs(r.opt_int("reconcile_secs", 1, 3600)?, d.reconcile);
    let heartbeat_ttl = secs(r.opt_int("heartbeat_ttl_secs", 3, 3600)?, d.heartbeat_ttl);
    let subnet_lease = secs(r.opt_int("subnet_lease_secs", 60, 30 * 24 * 3600)?, d.subnet_lease);
    r.finish()?;
    Ok(Timers { reconcile, heartbeat_ttl, subnet_lease })
}

fn read_quic(mut r: Reader<'_>) -> Result<Option<QuicConfig>, ConfigError> {
    if r.is_empty() {
        return Ok(None);
    }
    let port = r.opt_int("port", 1, 65535)?.map_or(DEFAULT_QUIC_PORT, |p| p as u16);
    let mut file = |key: &'static str| -> Result<PathBuf, ConfigError> {
        match r.opt_str(key)? {
            Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
            Some(p) => Err(r.err(key, format!("expected an absolute path, found {p:?}"))),
            None => Err(r.err(key, "required in [quic], expected an absolute path")),
        }
    };
    let ca_file = file("ca_file")?;
    let cert_file = file("cert_file")?;
    let key_file = file("key_file")?;
    let tun = r.opt_str("tun")?.unwrap_or("weft-tun0");
    if !valid_ifname(tun) {
        return Err(r.err("tun", format!("expected an interface name of 1 to 15 characters, found {tun:?}")));
    }
    let mtu = r.opt_int("mtu", 576, 65535)?.map(|m| m as u32);
    let threads = r.opt_int("threads", 1, 64)?.map(|t| t as usize);
    // Thread i listens on port + i.
    if let Some(t) = threads {
        let last = usize::from(port) + t - 1;
        if last > usize::from(u16::MAX) {
            return Err(r.err(
                "threads",
                format!(
                    "{t} threads listen on UDP ports {port} to {last}, past 65535 (lower quic.port or quic.threads)"
                ),
            ));
        }
    }
    let endpoint_family = match r.opt_str("endpoint_family")? {
        None | Some("ipv4") => Family::V4,
        Some("ipv6") => Family::V6,
        Some(other) => return Err(r.err("endpoint_family", format!("expected \"ipv4\" or \"ipv6\", found {other:?}"))),
    };
    r.finish()?;
    Ok(Some(QuicConfig { port, ca_file, cert_file, key_file, tun: tun.to_string(), mtu, threads, endpoint_family }))
}

fn read_wireguard(mut r: Reader<'_>, paths: &Paths) -> Result<WireGuardConfig, ConfigError> {
    let port = r.opt_int("port", 1, 65535)?.map_or(DEFAULT_WIREGUARD_PORT, |p| p as u16);
    let persistent_keepalive_secs = r.opt_int("persistent_keepalive_secs", 0, 65535)?.map_or(0, |s| s as u16);
    let key_file = match r.opt_str("key_file")? {
        None => paths.state_dir.join(WIREGUARD_KEY_FILE),
        Some(p) if p.starts_with('/') && !p.ends_with('/') => PathBuf::from(p),
        Some(p) => return Err(r.err("key_file", format!("expected an absolute path of a file, found {p:?}"))),
    };
    r.finish()?;
    Ok(WireGuardConfig { port, persistent_keepalive_secs, key_file })
}

fn read_metrics(mut r: Reader<'_>) -> Result<MetricsConfig, ConfigError> {
    let enabled = r.opt_bool("enabled")?.unwrap_or(true);
    let listen = match r.opt_str("listen")? {
        None => DEFAULT_METRICS_LISTEN.parse().ok(),
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                return Err(r.err(
                    "listen",
                    format!("expected an address and port like 127.0.0.1:9472 or [::1]:9472, found {s:?}"),
                ))
            }
        },
    };
    r.finish()?;
    Ok(MetricsConfig { listen: listen.filter(|_| enabled) })
}

fn read_probes(mut r: Reader<'_>) -> Result<ProbesConfig, ConfigError> {
    let d = ProbesConfig::default();
    let enabled = r.opt_bool("enabled")?.unwrap_or(d.enabled);
    let interval = r.opt_int("interval_secs", 1, 3600)?.map_or(d.interval, |s| Duration::from_secs(s as u64));
    r.finish()?;
    Ok(ProbesConfig { enabled, interval })
}

fn read_bootstrap(mut r: Reader<'_>) -> Result<Option<BootstrapConfig>, ConfigError> {
    if r.is_empty() {
        return Ok(None);
    }
    let url = r.req_str("url")?;
    let host = url.strip_prefix("https://").map(|h| h.strip_suffix('/').unwrap_or(h));
    if !host.is_some_and(|h| !h.is_empty() && !h.contains('/') && !h.contains(char::is_whitespace)) {
        return Err(r.err("url", format!("expected an https:// URL like https://172.30.0.41:9651, found {url:?}")));
    }
    let token = r.req_str("token")?;
    let part = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !token.split_once('.').is_some_and(|(id, secret)| part(id, 6) && part(secret, 16)) {
        // Never repeat the value: it is a secret.
        return Err(r.err("token", "expected <id>.<secret>: 6, a '.', then 16 characters of a-z or 0-9"));
    }
    let ca_pin = r.req_str("ca_pin")?;
    let hex = ca_pin.strip_prefix("sha256:");
    if !hex.is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) {
        return Err(r.err("ca_pin", format!("expected sha256: and 64 lowercase hex digits, found {ca_pin:?}")));
    }
    let renew_before = r.opt_int("renew_before_secs", 60, 365 * 24 * 3600)?.map(|s| Duration::from_secs(s as u64));
    r.finish()?;
    Ok(Some(BootstrapConfig {
        url: url.trim_end_matches('/').to_string(),
        token: token.to_string(),
        ca_pin: ca_pin.to_string(),
        renew_before,
    }))
}

fn read_docker(mut r: Reader<'_>, present: bool) -> Result<Option<DockerConfig>, ConfigError> {
    if !present {
        return Ok(None);
    }
    let plugin_name = r.opt_str("plugin_name")?.unwrap_or(DEFAULT_DOCKER_PLUGIN);
    if !valid_name(plugin_name) {
        return Err(r.err("plugin_name", format!("expected {NAME_RULE}, found {plugin_name:?}")));
    }
    let mut path = |key: &'static str, default: PathBuf| -> Result<PathBuf, ConfigError> {
        match r.opt_str(key)? {
            None => Ok(default),
            Some(p) if p.starts_with('/') && !p.ends_with('/') => Ok(PathBuf::from(p)),
            Some(p) => Err(r.err(key, format!("expected an absolute file path, found {p:?}"))),
        }
    };
    let socket = path("socket", PathBuf::from(DEFAULT_DOCKER_SOCKET))?;
    let spec_file = path("spec_file", Path::new(DOCKER_PLUGIN_DIR).join(format!("{plugin_name}.spec")))?;
    let want = format!("{plugin_name}.spec");
    if spec_file.file_name().and_then(|n| n.to_str()) != Some(want.as_str()) {
        return Err(r.err(
            "spec_file",
            format!(
                "expected a file named {want} (Docker names the plugin after its spec file), found {:?}",
                spec_file.display().to_string()
            ),
        ));
    }
    r.finish()?;
    Ok(Some(DockerConfig { plugin_name: plugin_name.to_string(), socket, spec_file }))
}

fn read_pod(mut r: Reader<'_>) -> Result<PodSpec, ConfigError> {
    let name = r.req_str("name")?;
    if !valid_name(name) {
        return Err(r.err("name", format!("expected {NAME_RULE}, found {name:?}")));
    }
    if name.starts_with(DOCKER_POD_PREFIX) {
        return Err(
            r.err("name", format!("names starting with {DOCKER_POD_PREFIX:?} are Docker endpoints', found {name:?}"))
        );
    }
    let netns = r.opt_str("netns")?.unwrap_or(name);
    if !valid_netns(netns) {
        return Err(r.err("netns", format!("expected a namespace name without '/' or spaces, found {netns:?}")));
    }
    let ifname = r.opt_str("ifname")?.unwrap_or("eth0");
    if !valid_ifname(ifname) {
        return Err(r.err("ifname", format!("expected an interface name of 1 to 15 characters, found {ifname:?}")));
    }
    let dns = read_dns(r.table("dns")?)?;
    r.finish()?;
    Ok(PodSpec { name: name.to_string(), netns: netns.to_string(), ifname: ifname.to_string(), dns })
}

/// A `dns` table (`servers`, `search`, `options`); absent or empty reads as `None`.
fn read_dns(mut r: Reader<'_>) -> Result<Option<DnsSettings>, ConfigError> {
    let mut servers = Vec::new();
    for (i, s) in r.opt_str_array("servers")?.unwrap_or_default().into_iter().enumerate() {
        let ip = s.parse::<IpAddr>().map_err(|_| {
            r.err(&format!("servers[{i}]"), format!("expected an IPv4 or IPv6 address like 10.96.0.10, found {s:?}"))
        })?;
        servers.push(ip);
    }
    let owned = |v: Option<Vec<&str>>| v.unwrap_or_default().into_iter().map(str::to_string).collect::<Vec<_>>();
    let search = owned(r.opt_str_array("search")?);
    let options = owned(r.opt_str_array("options")?);
    let dns = DnsSettings { servers, search, options };
    dns.check(r.source(), r.path())?;
    r.finish()?;
    Ok((!dns.is_empty()).then_some(dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node_name = "n1"
[etcd]
endpoints = ["http://10.0.0.5:2379"]
"#;

    fn err(text: &str) -> String {
        match AgentConfig::parse("agent.toml", text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = AgentConfig::parse("agent.toml", MINIMAL).expect("valid");
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.network, "default");
        assert_eq!(c.bridge.name, "weft0");
        assert_eq!(c.paths, Paths::default());
        assert_eq!(c.timers, Timers::default());
        assert!(!c.ip_masq);
        assert!(!c.ip_masq6, "IPv6 masquerading is off by default");
        assert!(c.pods.is_empty());
        assert_eq!(c.etcd.tls, None);
        assert_eq!(c.quic, None);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9472".parse().expect("lit")));
        assert_eq!(c.probes, ProbesConfig::default());
        assert_eq!(c.docker, None);
    }

    #[test]
    fn metrics_and_probes_sections() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n";
        let c =
            AgentConfig::parse("agent.toml", &format!("{base}[metrics]\nlisten = \"[::1]:9100\"\n")).expect("valid");
        assert_eq!(c.metrics.listen, Some("[::1]:9100".parse().expect("lit")));
        let c = AgentConfig::parse("agent.toml", &format!("{base}[metrics]\nenabled = false\n")).expect("valid");
        assert_eq!(c.metrics.listen, None, "enabled = false turns the endpoint off");
        let c = AgentConfig::parse("agent.toml", &format!("{base}[probes]\nenabled = false\ninterval_secs = 3\n"))
            .expect("valid");
        assert_eq!(c.probes, ProbesConfig { enabled: false, interval: Duration::from_secs(3) });
    }

    #[test]
    fn docker_section() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n";
        assert_eq!(AgentConfig::parse("agent.toml", base).expect("valid").docker, None, "absent: no plugin");
        let d = AgentConfig::parse("agent.toml", &format!("{base}[docker]\n")).expect("valid").docker;
        assert_eq!(
            d,
            Some(DockerConfig {
                plugin_name: "weft".into(),
                socket: "/run/weft/docker.sock".into(),
                spec_file: "/etc/docker/plugins/weft.spec".into(),
            }),
            "an empty section serves the plugin with the defaults"
        );
        let named = format!("{base}[docker]\nplugin_name = \"blue\"\nsocket = \"/run/x/p.sock\"\n");
        let d = AgentConfig::parse("agent.toml", &named).expect("valid").docker.expect("docker");
        assert_eq!(d.spec_file, PathBuf::from("/etc/docker/plugins/blue.spec"), "the default follows the name");
        assert_eq!(d.socket, PathBuf::from("/run/x/p.sock"));
        let lab = format!("{base}[docker]\nspec_file = \"/run/weft-lab/7/n1/docker/plugins/weft.spec\"\n");
        let d = AgentConfig::parse("agent.toml", &lab).expect("valid").docker.expect("docker");
        assert_eq!(d.spec_file, PathBuf::from("/run/weft-lab/7/n1/docker/plugins/weft.spec"));
        for (extra, want) in [
            (
                "spec_file = \"/run/docker/plugins/other.spec\"",
                "agent.toml: docker.spec_file: expected a file named weft.spec (Docker names the plugin after its \
                 spec file), found \"/run/docker/plugins/other.spec\"",
            ),
            (
                "plugin_name = \"blue\"\nspec_file = \"/run/docker/plugins/weft.spec\"",
                "agent.toml: docker.spec_file: expected a file named blue.spec (Docker names the plugin after its \
                 spec file), found \"/run/docker/plugins/weft.spec\"",
            ),
            (
                "spec_file = \"weft.spec\"",
                "agent.toml: docker.spec_file: expected an absolute file path, found \"weft.spec\"",
            ),
            (
                "socket = \"/run/weft/\"",
                "agent.toml: docker.socket: expected an absolute file path, found \"/run/weft/\"",
            ),
            (
                "plugin_name = \"Weft\"",
                "agent.toml: docker.plugin_name: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 \
                 characters, found \"Weft\"",
            ),
            ("sock = \"/x\"", "agent.toml: docker.sock: unknown key (did you mean `socket`?)"),
        ] {
            assert_eq!(err(&format!("{base}[docker]\n{extra}\n")), want, "{extra}");
        }
    }

    #[test]
    fn wireguard_section_defaults_and_errors() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[paths]\nstate_dir = \"/var/lib/w\"\n";
        let d = AgentConfig::parse("agent.toml", base).expect("valid").wireguard;
        assert_eq!(
            d,
            WireGuardConfig {
                port: 51820,
                persistent_keepalive_secs: 0,
                key_file: PathBuf::from("/var/lib/w/wireguard.key"),
            },
            "absent section: the defaults, the key in the state dir"
        );
        let set = format!(
            "{base}[wireguard]\nport = 51821\npersistent_keepalive_secs = 25\nkey_file = \"/etc/weft/wg.key\"\n"
        );
        let w = AgentConfig::parse("agent.toml", &set).expect("valid").wireguard;
        assert_eq!((w.port, w.persistent_keepalive_secs, w.key_file), (51821, 25, PathBuf::from("/etc/weft/wg.key")));
        for (extra, want) in [
            ("port = 0", "agent.toml: wireguard.port: expected an integer from 1 to 65535, found 0"),
            (
                "persistent_keepalive_secs = -1",
                "agent.toml: wireguard.persistent_keepalive_secs: expected an integer from 0 to 65535, found -1",
            ),
            (
                "key_file = \"wg.key\"",
                "agent.toml: wireguard.key_file: expected an absolute path of a file, found \"wg.key\"",
            ),
            (
                "key_file = \"/etc/\"",
                "agent.toml: wireguard.key_file: expected an absolute path of a file, found \"/etc/\"",
            ),
            ("prot = 1", "agent.toml: wireguard.prot: unknown key (did you mean `port`?)"),
        ] {
            let e = AgentConfig::parse("agent.toml", &format!("{base}[wireguard]\n{extra}\n")).expect_err(extra);
            assert_eq!(e.to_string(), want, "{extra}");
        }
    }

    #[test]
    fn quic_section() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[quic]\n";
        let full = format!("{base}ca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\"\nkey_file = \"/n1.key\"\n");
        let q = AgentConfig::parse("agent.toml", &full).expect("valid").quic.expect("quic");
        assert_eq!(q.port, DEFAULT_QUIC_PORT);
        assert_eq!(q.tun, "weft-tun0");
        assert_eq!(q.mtu, None);
        assert_eq!(q.threads, None, "auto");
        let two = AgentConfig::parse("agent.toml", &format!("{full}threads = 2")).expect("valid").quic.expect("quic");
        assert_eq!(two.threads, Some(2));
        let top = AgentConfig::parse("agent.toml", &format!("{full}port = 65534\nthreads = 2")).expect("fits");
        assert_eq!(top.quic.map(|q| (q.port, q.threads)), Some((65534, Some(2))));
        let e = AgentConfig::parse("agent.toml", &format!("{full}port = 65534\nthreads = 3")).expect_err("ports");
        assert_eq!(
            e.to_string(),
            "agent.toml: quic.threads: 3 threads listen on UDP ports 65534 to 65536, past 65535 (lower quic.port or quic.threads)"
        );
        let e = AgentConfig::parse("agent.toml", &format!("{full}threads = 0")).expect_err("threads");
        assert_eq!(e.to_string(), "agent.toml: quic.threads: expected an integer from 1 to 64, found 0");
        let e = AgentConfig::parse("agent.toml", &format!("{base}ca_file = \"/ca.pem\"")).expect_err("no cert");
        assert_eq!(e.to_string(), "agent.toml: quic.cert_file: required in [quic], expected an absolute path");
        let e = AgentConfig::parse("agent.toml", &format!("{full}port = 0")).expect_err("port");
        assert_eq!(e.to_string(), "agent.toml: quic.port: expected an integer from 1 to 65535, found 0");
        let e = AgentConfig::parse("agent.toml", &format!("{full}mut = 1400")).expect_err("typo");
        assert_eq!(e.to_string(), "agent.toml: quic.mut: unknown key (did you mean `mtu`?)");
    }

    #[test]
    fn quic_endpoint_family_is_ipv4_unless_set() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[quic]\n";
        let full = format!("{base}ca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\"\nkey_file = \"/n1.key\"\n");
        let family = |extra: &str| {
            AgentConfig::parse("agent.toml", &format!("{full}{extra}")).map(|c| c.quic.expect("quic").endpoint_family)
        };
        assert_eq!(family(""), Ok(Family::V4));
        assert_eq!(family("endpoint_family = \"ipv4\""), Ok(Family::V4));
        assert_eq!(family("endpoint_family = \"ipv6\""), Ok(Family::V6));
        let e = family("endpoint_family = \"IPv6\"").expect_err("case matters");
        assert_eq!(e.to_string(), "agent.toml: quic.endpoint_family: expected \"ipv4\" or \"ipv6\", found \"IPv6\"");
    }

    #[test]
    fn full_config() {
        let c = AgentConfig::parse(
            "agent.toml",
            r#"
node_name = "n2"
node_id = "lab-n2"
network = "blue"
ip_masq = true
ip_masq6 = true
[etcd]
endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
ca_file = "/etc/weft/ca.pem"
cert_file = "/etc/weft/n2.pem"
key_file = "/etc/weft/n2.key"
[underlay]
interface = "eth1"
public_ip = "192.0.2.7"
[bridge]
name = "br-weft"
mtu = 1450
[paths]
state_dir = "/tmp/s"
subnet_env = "/tmp/s.env"
socket = "/tmp/a.sock"
pid_file = "/tmp/a.pid"
[timers]
reconcile_secs = 2
heartbeat_ttl_secs = 6
subnet_lease_secs = 3600
[[pods]]
name = "p1"
netns = "lab-n2-p1"
[[pods]]
name = "p2"
ifname = "net0"
"#,
        )
        .expect("valid");
        assert_eq!(c.node_id.as_deref(), Some("lab-n2"));
        assert!(c.ip_masq && c.ip_masq6);
        assert_eq!(c.etcd.endpoints.len(), 2);
        let tls = c.etcd.tls.expect("tls");
        assert_eq!(tls.identity, Some(("/etc/weft/n2.pem".into(), "/etc/weft/n2.key".into())));
        assert_eq!(c.underlay.public_ip, Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7))));
        assert_eq!(c.bridge.mtu, Some(1450));
        assert_eq!(c.timers.reconcile, Duration::from_secs(2));
        assert_eq!(
            c.pods[0],
            PodSpec { name: "p1".into(), netns: "lab-n2-p1".into(), ifname: "eth0".into(), dns: None }
        );
        assert_eq!(c.pods[1], PodSpec { name: "p2".into(), netns: "p2".into(), ifname: "net0".into(), dns: None });
    }

    #[test]
    fn a_pod_may_bring_its_resolvers() {
        let text = format!(
            "{MINIMAL}[paths]\nnetns_etc = \"/tmp/netns-etc\"\n[[pods]]\nname = \"p1\"\n[pods.dns]\nservers = [\"203.0.113.2\", \"2001:db8::2\"]\nsearch = [\"lab.weft\"]\noptions = [\"ndots:2\"]\n[[pods]]\nname = \"p2\"\n"
        );
        let c = AgentConfig::parse("agent.toml", &text).expect("valid");
        assert_eq!(c.paths.netns_etc, PathBuf::from("/tmp/netns-etc"));
        let dns = c.pods[0].dns.clone().expect("p1 has resolvers");
        assert_eq!(dns.servers.len(), 2);
        assert_eq!((dns.search, dns.options), (vec!["lab.weft".to_string()], vec!["ndots:2".to_string()]));
        assert_eq!(c.pods[1].dns, None);
        assert_eq!(
            AgentConfig::parse("agent.toml", MINIMAL).expect("valid").paths.netns_etc,
            PathBuf::from("/etc/netns")
        );
        let bad = format!("{MINIMAL}[[pods]]\nname = \"p1\"\n[pods.dns]\nservers = [\"dns.example\"]\n");
        assert_eq!(
            err(&bad),
            "agent.toml: pods[0].dns.servers[0]: expected an IPv4 or IPv6 address like 10.96.0.10, found \"dns.example\""
        );
        let bad = format!("{MINIMAL}[[pods]]\nname = \"p1\"\n[pods.dns]\nsearch = [\"a b\"]\n");
        assert!(err(&bad).starts_with("agent.toml: pods[0].dns.search[0]: expected a domain name"), "{}", err(&bad));
        let bad = format!("{MINIMAL}[[pods]]\nname = \"p1\"\n[pods.dns]\nserver = []\n");
        assert_eq!(err(&bad), "agent.toml: pods[0].dns.server: unknown key (did you mean `servers`?)");
    }

    #[test]
    fn every_validation_error_names_file_field_and_expectation() {
        let cases: &[(&str, &str)] = &[
            ("", "agent.toml: node_name: required, expected a string"),
            ("node_name = 3", "agent.toml: node_name: expected a string, found an integer"),
            ("node_name = \"N1\"", "agent.toml: node_name: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"N1\""),
            ("node_name = \"n1\"", "agent.toml: etcd.endpoints: expected at least one URL"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = []", "agent.toml: etcd.endpoints: expected at least one URL"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = \"http://a:1\"", "agent.toml: etcd.endpoints: expected an array of strings, found a string"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [1]", "agent.toml: etcd.endpoints[0]: expected a string, found an integer"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"10.0.0.1:2379\"]", "agent.toml: etcd.endpoints[0]: expected a URL like http://10.0.0.5:2379, found \"10.0.0.1:2379\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\ncert_file = \"/c\"", "agent.toml: etcd.key_file: required when cert_file is set"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\nkey_file = \"/k\"", "agent.toml: etcd.cert_file: required when key_file is set"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"https://a:1\"]\ncert_file = \"/c\"\nkey_file = \"/k\"", "agent.toml: etcd.ca_file: required when a client certificate is set"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\nca_file = \"/ca\"", "agent.toml: etcd.endpoints: expected https:// URLs when ca_file is set"),
            ("node_name = \"n1\"\n[etcd]\nendpoint = [\"http://a:1\"]", "agent.toml: etcd.endpoints: expected at least one URL"),
            ("node_name = \"n1\"\nnode_nmae = \"x\"\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: node_nmae: unknown key (did you mean `node_name`?)"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\nendpoint = [\"http://a:1\"]", "agent.toml: etcd.endpoint: unknown key (did you mean `endpoints`?)"),
            ("node_name = \"n1\"\nzzzz = 1\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: zzzz: unknown key (known keys here: bootstrap, bridge, docker, etcd, ip_masq, ip_masq6, metrics, network, node_id, node_name, paths, pods, probes, quic, timers, underlay, wireguard)"),
            ("node_name = \"n1\"\nnode_id = \"\"\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: node_id: expected a non-empty string of at most 128 characters"),
            ("node_name = \"n1\"\nip_masq = \"yes\"\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: ip_masq: expected true or false, found a string"),
            ("node_name = \"n1\"\nnetwork = \"a/b\"\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: network: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters, found \"a/b\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[underlay]\npublic_ip = \"10.0.0.300\"", "agent.toml: underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"10.0.0.300\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[underlay]\npublic_ip = \"127.0.0.1\"", "agent.toml: underlay.public_ip: expected a unicast address other nodes can reach, found 127.0.0.1"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[underlay]\ninterface = \"an-interface-name-too-long\"", "agent.toml: underlay.interface: expected an interface name of 1 to 15 characters, found \"an-interface-name-too-long\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[bridge]\nmtu = 70000", "agent.toml: bridge.mtu: expected an integer from 576 to 65535, found 70000"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[paths]\nstate_dir = \"relative\"", "agent.toml: paths.state_dir: expected an absolute path, found \"relative\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[timers]\nreconcile_secs = 0", "agent.toml: timers.reconcile_secs: expected an integer from 1 to 3600, found 0"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[timers]\nreconcile_secs = \"10s\"", "agent.toml: timers.reconcile_secs: expected an integer from 1 to 3600, found a string"),
            ("node_name = \"n1\"\netcd = 5", "agent.toml: etcd: expected a table, found an integer"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nnetns = \"x\"", "agent.toml: pods[0].name: required, expected a string"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nname = \"a\"\n[[pods]]\nname = \"a\"", "agent.toml: pods[1].name: duplicate pod name \"a\" (also pods[0])"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nname = \"a\"\nnetns = \"x\"\n[[pods]]\nname = \"b\"\nnetns = \"x\"", "agent.toml: pods[1].netns: namespace \"x\" with interface \"eth0\" is already pods[0]"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nname = \"a\"\nnetns = \"../x\"", "agent.toml: pods[0].netns: expected a namespace name without '/' or spaces, found \"../x\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nname = \"docker-web\"", "agent.toml: pods[0].name: names starting with \"docker-\" are Docker endpoints', found \"docker-web\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[[pods]]\nname = \"a\"\nifnam = \"x\"", "agent.toml: pods[0].ifnam: unknown key (did you mean `ifname`?)"),
            ("node_name = \"n1\"\npods = 1\n[etcd]\nendpoints = [\"http://a:1\"]", "agent.toml: pods: expected an array of tables ([[...]]), found an integer"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[metrics]\nlisten = \"localhost:9472\"", "agent.toml: metrics.listen: expected an address and port like 127.0.0.1:9472 or [::1]:9472, found \"localhost:9472\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[metrics]\nlisten = \"127.0.0.1:0\"", "agent.toml: metrics.listen: expected an address and port like 127.0.0.1:9472 or [::1]:9472, found \"127.0.0.1:0\""),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[metrics]\nenabled = 1", "agent.toml: metrics.enabled: expected true or false, found an integer"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[metrics]\nlisen = \"127.0.0.1:1\"", "agent.toml: metrics.lisen: unknown key (did you mean `listen`?)"),
            ("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[probes]\ninterval_secs = 0", "agent.toml: probes.interval_secs: expected an integer from 1 to 3600, found 0"),
            ("node_name = ", "agent.toml: invalid TOML (line 1, column 12): string values must be quoted, expected literal string"),
        ];
        for (text, want) in cases {
            let got = err(text);
            if want.starts_with("agent.toml: invalid TOML") {
                assert!(got.starts_with("agent.toml: invalid TOML (line 1"), "for {text:?}: {got}");
            } else {
                assert_eq!(&got, want, "for {text:?}");
            }
        }
    }

    #[test]
    fn an_ipv6_public_ip_is_refused_until_ipv6_is_switched_on() {
        let e =
            err("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[underlay]\npublic_ip = \"2001:db8::7\"");
        assert_eq!(
            e,
            "agent.toml: underlay.public_ip: expected an IPv4 address like 192.0.2.10, found \"2001:db8::7\""
        );
    }

    #[test]
    fn an_ipv6_underlay_address_goes_in_public_ip6() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[underlay]\n";
        let c = AgentConfig::parse("agent.toml", &format!("{base}public_ip6 = \"fd00:30::11\"")).expect("valid");
        assert_eq!((c.underlay.public_ip, c.underlay.public_ip6), (None, Some("fd00:30::11".parse().expect("lit"))));
        let cases: &[(&str, &str)] = &[
            ("public_ip6 = \"192.0.2.7\"", "agent.toml: underlay.public_ip6: expected an IPv6 address like 2001:db8::10, found \"192.0.2.7\""),
            ("public_ip6 = \"fe80::1\"", "agent.toml: underlay.public_ip6: expected a unicast address other nodes can reach (not link-local), found fe80::1"),
            ("public_ip6 = \"::1\"", "agent.toml: underlay.public_ip6: expected a unicast address other nodes can reach (not link-local), found ::1"),
        ];
        for (line, want) in cases {
            assert_eq!(&err(&format!("{base}{line}")), want, "for {line}");
        }
    }

    #[test]
    fn bootstrap_section() {
        let base = "node_name = \"n1\"\n[etcd]\nendpoints = [\"https://a:1\"]\nca_file = \"/p/ca.pem\"\n\
                    cert_file = \"/p/n1.pem\"\nkey_file = \"/p/n1.key\"\n";
        let pin = format!("sha256:{}", "ab".repeat(32));
        let good = format!("{base}[bootstrap]\nurl = \"https://172.30.0.41:9651/\"\ntoken = \"abc123.0123456789abcdef\"\nca_pin = \"{pin}\"\n");
        let c = AgentConfig::parse("agent.toml", &good).expect("valid");
        let b = c.bootstrap.clone().expect("bootstrap");
        assert_eq!(b.url, "https://172.30.0.41:9651");
        assert_eq!(b.renew_before, None);
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug hides the secret");
        assert_eq!(c.cert_paths(), vec![(PathBuf::from("/p/n1.pem"), PathBuf::from("/p/n1.key"))]);
        assert_eq!(c.ca_paths(), vec![PathBuf::from("/p/ca.pem")]);
        let with_quic = format!("{good}renew_before_secs = 600\n[quic]\nca_file = \"/q/ca.pem\"\ncert_file = \"/q/n1.pem\"\nkey_file = \"/q/n1.key\"\n");
        let c = AgentConfig::parse("agent.toml", &with_quic).expect("valid");
        assert_eq!(c.bootstrap.as_ref().expect("b").renew_before, Some(Duration::from_secs(600)));
        assert_eq!(c.cert_paths().len(), 2);
        assert_eq!(c.ca_paths(), vec![PathBuf::from("/p/ca.pem"), PathBuf::from("/q/ca.pem")]);

        let cases: &[(&str, &str)] = &[
            ("url = \"http://a:1\"", "agent.toml: bootstrap.url: expected an https:// URL like https://172.30.0.41:9651, found \"http://a:1\""),
            ("url = \"https://a:1/v1\"", "agent.toml: bootstrap.url: expected an https:// URL like https://172.30.0.41:9651, found \"https://a:1/v1\""),
            ("url = \"https://a:1\"\ntoken = \"abc123.SECRETSECRETSECRE\"", "agent.toml: bootstrap.token: expected <id>.<secret>: 6, a '.', then 16 characters of a-z or 0-9"),
            ("url = \"https://a:1\"\ntoken = \"abc123.0123456789abcdef\"", "agent.toml: bootstrap.ca_pin: required, expected a string"),
            ("url = \"https://a:1\"\ntoken = \"abc123.0123456789abcdef\"\nca_pin = \"sha1:ab\"", "agent.toml: bootstrap.ca_pin: expected sha256: and 64 lowercase hex digits, found \"sha1:ab\""),
        ];
        for (body, want) in cases {
            assert_eq!(&err(&format!("{base}[bootstrap]\n{body}")), want, "for {body}");
        }
        let e = err(&format!("{good}renew_before_secs = 1\n"));
        assert_eq!(e, "agent.toml: bootstrap.renew_before_secs: expected an integer from 60 to 31536000, found 1");
        let no_cert = format!("node_name = \"n1\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[bootstrap]\nurl = \"https://a:1\"\ntoken = \"abc123.0123456789abcdef\"\nca_pin = \"{pin}\"\n");
        assert!(err(&no_cert).starts_with("agent.toml: bootstrap: expected cert_file and key_file in [etcd]"));
    }

    #[test]
    fn load_names_missing_file() {
        let e = AgentConfig::load(Path::new("/nonexistent/agent.toml")).expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/agent.toml: cannot read: "), "{e}");
    }

    #[test]
    fn name_rules() {
        assert!(valid_name("n1"));
        assert!(valid_name("node-1.example"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(valid_ifname("weft-tun0"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname(""));
    }
}
