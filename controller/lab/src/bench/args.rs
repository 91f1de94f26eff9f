//! `weftctl lab bench`'s command-line arguments.

use crate::IpFamily;
use std::path::PathBuf;

/// `weftctl lab bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds of the iperf3 run per row.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Pings per row (0.05 s apart); the table shows their median RTT.
    #[arg(long, default_value_t = 50)]
    pub pings: u32,
    /// Print the report (machine facts and every figure) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows besides the kernel baseline (always measured first): host-gw, quic, kernel-vxlan,
    /// vxlan, quinn-raw, quincy, wireguard-go (the one first on PATH), wireguard-go-2022
    /// (/usr/bin/wireguard-go, Debian bookworm's), boringtun.
    #[arg(long, default_value = "host-gw,quic,quinn-raw", value_name = "ROW[,ROW...]")]
    pub backends: String,
    /// Also measure the other userspace tunnels between the same two hosts: quincy,
    /// wireguard-go, wireguard-go-2022 and boringtun (installed by deploy/bench-peers.sh; missing
    /// ones are an error).
    #[arg(long)]
    pub with_peers: bool,
    /// Address families between the pods: v4, v6 or dual. With IPv6 the kernel, host-gw and
    /// quic rows get a twin named ROW/ipv6; with dual both are measured in the same topology
    /// (one host pair, one dual-stack lab per backend), IPv4 first. The other rows are IPv4 only
    /// (left out with v6).
    #[arg(long, value_parser = parse_ip_family, default_value = "v4", conflicts_with = "scale")]
    pub ip_family: IpFamily,
    /// Streams of the second iperf3 run of each row (`-P N`); 0 skips it.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Print a Markdown section (machine, command, table) for docs/BENCHMARKS.md or a release note.
    #[arg(long, conflicts_with = "json")]
    pub release_note: bool,
    /// weft-agent binary (default: next to weftctl, or in WEFT_BIN_DIR).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// The quic row's data path threads per agent (`quic.threads`); default: the agent's (the
    /// core count, at most 8).
    #[arg(long, value_name = "N", conflicts_with = "scale")]
    pub quic_threads: Option<usize>,
    /// Seconds each lab gets for every agent to be ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// Instead of the data-path rows: an N-node host-gw lab, measuring lab up, join and leave
    /// convergence, agent RSS and idle CPU, and etcd load (see docs/BENCHMARKS.md).
    #[arg(long, value_name = "N")]
    pub scale: Option<usize>,
    /// With --scale: leave + re-join cycles (each on another node).
    #[arg(long, default_value_t = 3, requires = "scale")]
    pub cycles: usize,
    /// With --scale: seconds of the idle window (agent CPU, etcd revisions).
    #[arg(long, default_value_t = 60, requires = "scale")]
    pub idle_secs: u64,
}

fn parse_ip_family(s: &str) -> Result<IpFamily, String> {
    s.parse()
}
