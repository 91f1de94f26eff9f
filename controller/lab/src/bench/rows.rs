//! The bench's rows: which tunnels are measured, how `--backends` names them, over which
//! address families (`--ip-family`), and whether a peer row's programs are installed.

use crate::IpFamily;
use weft_config::subnet::Family;
use weft_config::Backend;
use weft_controller::error::UsageError;

/// One row of the bench table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// Static routes between two hosts, no agent: the ceiling for any backend.
    Kernel,
    /// A 2-node lab on the host-gw backend.
    HostGw,
    /// A 2-node lab on the quic backend.
    Quic,
    /// A 2-node lab on the vxlan backend.
    Vxlan,
    /// A VXLAN device made by hand on each host of the kernel row's pair (own VNI and port),
    /// with plain routes over it and no agent: the ceiling for the vxlan row.
    KernelVxlan,
    /// QUIC datagrams alone between the two hosts, no tun (`weft-quic-raw`): the transport's
    /// ceiling, with the agent's TLS and transport settings.
    QuinnRaw,
    /// Another userspace tunnel between the same two hosts (`--with-peers`).
    PeerTunnel(PeerTunnel),
}

impl RowKind {
    pub const ALL: [RowKind; 10] = [
        RowKind::Kernel,
        RowKind::HostGw,
        RowKind::Quic,
        RowKind::KernelVxlan,
        RowKind::Vxlan,
        RowKind::QuinnRaw,
        RowKind::PeerTunnel(PeerTunnel::Quincy),
        RowKind::PeerTunnel(PeerTunnel::WireguardGo),
        RowKind::PeerTunnel(PeerTunnel::WireguardGo2022),
        RowKind::PeerTunnel(PeerTunnel::Boringtun),
    ];

    pub fn name(self) -> &'static str {
        match self {
            RowKind::Kernel => "kernel",
            RowKind::HostGw => "host-gw",
            RowKind::Quic => "quic",
            RowKind::Vxlan => "vxlan",
            RowKind::KernelVxlan => "kernel-vxlan",
            RowKind::QuinnRaw => "quinn-raw",
            RowKind::PeerTunnel(p) => p.name(),
        }
    }

    /// The lab backend this row runs, if it is a lab row.
    pub fn backend(self) -> Option<Backend> {
        match self {
            RowKind::HostGw => Some(Backend::HostGw),
            RowKind::Quic => Some(Backend::Quic),
            RowKind::Vxlan => Some(Backend::Vxlan),
            RowKind::Kernel | RowKind::KernelVxlan | RowKind::QuinnRaw | RowKind::PeerTunnel(_) => None,
        }
    }

    /// Whether the row can carry IPv6 between the pods: the kernel baseline and the lab rows.
    /// quinn-raw has no pods, and the peer tunnels and kernel-vxlan are set up for IPv4 only.
    pub fn has_ipv6(self) -> bool {
        matches!(self, RowKind::Kernel | RowKind::HostGw | RowKind::Quic | RowKind::Vxlan)
    }

    /// The name of this row measured over `family`: the plain name over IPv4 (as before IPv6
    /// rows existed, so IPv4 reports read the same), `NAME/ipv6` over IPv6.
    pub fn name_in(self, family: Family) -> String {
        match family {
            Family::V4 => self.name().to_string(),
            Family::V6 => format!("{}/ipv6", self.name()),
        }
    }
}

/// One row kind and the families it is measured over, in order (IPv4 first). Rows over two
/// families share their topology: one kernel host pair, one dual-stack lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRow {
    pub kind: RowKind,
    pub families: Vec<Family>,
}

/// What `--ip-family` makes of the rows: each row over the families asked for that it can
/// carry, and a note for every row that cannot carry one of them (a row with no family left is
/// left out).
pub fn plan_rows(rows: &[RowKind], ip_family: IpFamily) -> (Vec<PlannedRow>, Vec<String>) {
    let mut planned = Vec::new();
    let mut ipv4_only = Vec::new();
    for &kind in rows {
        let v6 = ip_family.has_v6() && kind.has_ipv6();
        if ip_family.has_v6() && !kind.has_ipv6() {
            ipv4_only.push(kind.name());
        }
        let families: Vec<Family> = [(ip_family.has_v4(), Family::V4), (v6, Family::V6)]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        if !families.is_empty() {
            planned.push(PlannedRow { kind, families });
        }
    }
    let mut notes = Vec::new();
    if !ipv4_only.is_empty() {
        let what = if ip_family.has_v4() { "measured over IPv4 only" } else { "left out" };
        notes.push(format!("no IPv6 rows for {} (IPv4 only in the bench): {what}", ipv4_only.join(", ")));
    }
    (planned, notes)
}

impl std::fmt::Display for RowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RowKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RowKind::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let all: Vec<&str> = RowKind::ALL.iter().map(|r| r.name()).collect();
            format!("expected one of {}, found {s:?}", all.join(", "))
        })
    }
}

/// Parses `--backends` (comma-separated rows); `with_peers` appends the other userspace
/// tunnels. The kernel row always comes first: it is the reference the ratios are taken
/// against. Duplicates are dropped.
pub fn parse_rows(list: &str, with_peers: bool) -> Result<Vec<RowKind>, UsageError> {
    let named = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| part.parse::<RowKind>().map_err(|e| UsageError::new(format!("--backends: {e}"))));
    let peers = PeerTunnel::ALL.into_iter().filter(|_| with_peers).map(|p| Ok(RowKind::PeerTunnel(p)));
    let mut rows = vec![RowKind::Kernel];
    for r in named.chain(peers) {
        let r = r?;
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Refuses to start when a peer row's tunnel is not installed, naming what is missing.
pub fn check_peers_installed(rows: &[RowKind]) -> Result<(), UsageError> {
    let peers: Vec<PeerTunnel> =
        rows.iter().filter_map(|r| if let RowKind::PeerTunnel(p) = r { Some(*p) } else { None }).collect();
    let missing = missing(&peers);
    if missing.is_empty() {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "--with-peers: not found on PATH: {}; install them with deploy/bench-peers.sh (or leave out --with-peers)",
        missing.join(", ")
    )))
}

/// Another userspace tunnel measured by `--with-peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerTunnel {
    /// wireguard-go (the Go userspace WireGuard) found first on PATH, configured with `wg`:
    /// Debian trixie's 0.0.20231211 build, with TUN offload, vectorised I/O and UDP GSO/GRO, once
    /// `deploy/bench-peers.sh` has put it in /usr/local/bin.
    WireguardGo,
    /// Debian bookworm's wireguard-go 0.0.20220316 at `/usr/bin/wireguard-go` (none of that
    /// work), so figures measured before the trixie build stay comparable.
    WireguardGo2022,
    /// boringtun-cli (Cloudflare's userspace WireGuard in Rust), configured with `wg`.
    Boringtun,
    /// quincy-server and quincy-client (a QUIC VPN on quinn).
    Quincy,
}

impl PeerTunnel {
    pub const ALL: [PeerTunnel; 4] =
        [PeerTunnel::Quincy, PeerTunnel::WireguardGo, PeerTunnel::WireguardGo2022, PeerTunnel::Boringtun];

    pub fn name(self) -> &'static str {
        match self {
            PeerTunnel::WireguardGo => "wireguard-go",
            PeerTunnel::WireguardGo2022 => "wireguard-go-2022",
            PeerTunnel::Boringtun => "boringtun",
            PeerTunnel::Quincy => "quincy",
        }
    }

    /// Whether the row only keeps earlier figures comparable: the quic targets leave it out.
    pub fn superseded(self) -> bool {
        self == PeerTunnel::WireguardGo2022
    }

    /// The programs the row runs, the daemon first, which must be on PATH, or at their absolute
    /// path (`deploy/bench-peers.sh` installs them); besides these it uses `ip`, and for quincy
    /// `iptables` and `sha256sum`, which weft's own setup already installs.
    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            PeerTunnel::WireguardGo => &["wireguard-go", "wg"],
            PeerTunnel::WireguardGo2022 => &["/usr/bin/wireguard-go", "wg"],
            PeerTunnel::Boringtun => &["boringtun-cli", "wg"],
            PeerTunnel::Quincy => &["quincy-server", "quincy-client"],
        }
    }

    /// Two letters naming the peer's devices.
    pub(super) fn tag(self) -> &'static str {
        match self {
            PeerTunnel::WireguardGo => "wg",
            PeerTunnel::WireguardGo2022 => "wo",
            PeerTunnel::Boringtun => "bt",
            PeerTunnel::Quincy => "qc",
        }
    }
}

impl std::fmt::Display for PeerTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The binaries of `peers` not found on PATH, e.g. `["quincy-server"]`; empty when all are there.
pub fn missing(peers: &[PeerTunnel]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for bin in peers.iter().flat_map(|p| p.binaries().iter().copied()) {
        if !out.contains(&bin) && crate::bins::on_path(bin, "").is_err() {
            out.push(bin);
        }
    }
    out
}
