//! `weftctl network`: write and show the network config agents read at start.

use super::{print_out, with_store, UsageError};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use weft_config::records::VxlanOptions;
use weft_config::{Backend, NetworkConfig};
use weft_controller::network::{self, InitPlan};

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Write the network config (idempotent; refuses to change a different one without --force).
    Init {
        #[command(flatten)]
        pools: PoolFlags,
        #[arg(long, value_parser = super::parse_backend)]
        backend: Backend,
        /// VXLAN network identifier of a vxlan network (1 to 16777215; flannel's default 1).
        #[arg(long, default_value_t = VxlanOptions::default().vni)]
        vni: u32,
        /// UDP port of a vxlan network (flannel's and the kernel's default 8472; IANA's is 4789).
        #[arg(long, default_value_t = VxlanOptions::default().port)]
        vxlan_port: u16,
        /// With --backend auto: the encapsulation for peers that are not on-link (vxlan, quic or wireguard).
        #[arg(long, value_parser = super::parse_backend, default_value = "vxlan")]
        encap: Backend,
        /// The pods' resolvers (a pod may bring its own over these).
        #[command(flatten)]
        dns: super::DnsFlags,
        /// Replace a different config (never a family's CIDR or subnet length while subnets of
        /// that family exist).
        #[arg(long)]
        force: bool,
    },
    /// Print the network config.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// The address pools of `network init`: IPv4, IPv6 or both, each a CIDR with its subnet length.
#[derive(Args, Debug, Default, Clone)]
#[group(id = "pool", required = true, multiple = true, args = ["cidr", "cidr6"])]
pub struct PoolFlags {
    /// IPv4 cluster CIDR the nodes' IPv4 subnets are carved from.
    #[arg(long, requires = "subnet_len")]
    pub cidr: Option<String>,
    /// Prefix length of each node's IPv4 subnet.
    #[arg(long, requires = "cidr")]
    pub subnet_len: Option<u8>,
    /// IPv6 cluster CIDR the nodes' IPv6 subnets are carved from (dual-stack with --cidr).
    #[arg(long, requires = "subnet_len6")]
    pub cidr6: Option<String>,
    /// Prefix length of each node's IPv6 subnet.
    #[arg(long, requires = "cidr6")]
    pub subnet_len6: Option<u8>,
}

/// The flag of a network config field.
fn flag(field: &str) -> &'static str {
    match field {
        "subnet_len" => "--subnet-len",
        "cidr6" => "--cidr6",
        "subnet_len6" => "--subnet-len6",
        _ => "--cidr",
    }
}

/// One pool from its two flags; a half-given pair names the flag that is missing.
fn pool<'a>(
    cidr: &'a Option<String>,
    len: Option<u8>,
    (cidr_flag, len_flag): (&str, &str),
) -> Result<Option<(&'a str, u8)>, UsageError> {
    match (cidr.as_deref(), len) {
        (Some(c), Some(l)) => Ok(Some((c, l))),
        (Some(_), None) => Err(UsageError::new(format!("{len_flag}: required with {cidr_flag}"))),
        (None, Some(_)) => Err(UsageError::new(format!("{cidr_flag}: required with {len_flag}"))),
        (None, None) => Ok(None),
    }
}

/// `NetworkConfig::with_pools` errors rendered against the flag that holds the bad value.
fn network_config(p: &PoolFlags, backend: Backend) -> Result<NetworkConfig, UsageError> {
    let v4 = pool(&p.cidr, p.subnet_len, ("--cidr", "--subnet-len"))?;
    let v6 = pool(&p.cidr6, p.subnet_len6, ("--cidr6", "--subnet-len6"))?;
    if v4.is_none() && v6.is_none() {
        return Err(UsageError::new("--cidr: expected --cidr with --subnet-len, --cidr6 with --subnet-len6, or both"));
    }
    NetworkConfig::with_pools("--cidr", v4, v6, backend)
        .map_err(|e| UsageError::new(format!("{}: {}", flag(&e.field), e.message)))
}

/// The config with the `--vni` and `--vxlan-port` values, an error naming the flag.
fn with_vxlan(c: NetworkConfig, vni: u32, port: u16) -> Result<NetworkConfig, UsageError> {
    c.with_vxlan("--vni", VxlanOptions { vni, port }).map_err(|e| {
        let flag = if e.field == "vni" { "--vni" } else { "--vxlan-port" };
        UsageError::new(format!("{flag}: {}", e.message))
    })
}

/// Runs `network init` or `network show` against the store named by the global flags.
pub fn run(g: &super::Global, cmd: &NetworkCmd) -> anyhow::Result<ExitCode> {
    // Check input before connecting, so bad flags exit 2 without touching etcd.
    let opts = super::etcd_opts(g)?;
    let wanted = match cmd {
        NetworkCmd::Init { pools, backend, vni, vxlan_port, encap, dns, .. } => {
            let c = with_vxlan(network_config(pools, *backend)?, *vni, *vxlan_port)?;
            let c = c.with_encap("--encap", *encap).map_err(|e| UsageError::new(format!("--encap: {}", e.message)))?;
            Some(c.with_dns("--dns-server", dns.network_settings()?).map_err(|e| UsageError::new(e.to_string()))?)
        }
        NetworkCmd::Show { .. } => None,
    };
    let net = g.network.as_str();
    with_store(opts, |store| async move {
        match cmd {
            NetworkCmd::Init { force, .. } => {
                let wanted = wanted.ok_or_else(|| anyhow::anyhow!("network config missing"))?;
                let plan = network::init(&store, net, &wanted, *force).await.map_err(|e| {
                    match e.downcast::<network::InitError>() {
                        Ok(refusal) => UsageError::new(refusal.to_string()).into(),
                        Err(e) => e,
                    }
                })?;
                match plan {
                    InitPlan::Unchanged => {}
                    InitPlan::Create => outln!("network {net} created: {}", network::describe(&wanted)),
                    InitPlan::Replace { .. } => outln!("network {net} replaced: {}", network::describe(&wanted)),
                }
                Ok(ExitCode::SUCCESS)
            }
            NetworkCmd::Show { json } => {
                let c = network::show(&store, net).await?;
                print_out(*json, &c, || network::render(net, &c))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn v4(cidr: &str, len: u8) -> PoolFlags {
        PoolFlags { cidr: Some(cidr.into()), subnet_len: Some(len), ..PoolFlags::default() }
    }

    #[test]
    fn an_ipv6_cidr_is_refused_against_its_flag_before_etcd() {
        let e = network_config(&v4("fd00:10:244::/56", 64), Backend::HostGw).expect_err("ipv6");
        assert_eq!(e.to_string(), "--cidr: expected an IPv4 CIDR like 10.244.0.0/16, found \"fd00:10:244::/56\"");
    }

    #[test]
    fn each_pool_flag_is_checked_and_named() {
        let both =
            PoolFlags { cidr6: Some("fd00:10:244::/56".into()), subnet_len6: Some(64), ..v4("10.244.0.0/16", 24) };
        let c = network_config(&both, Backend::HostGw).expect("dual");
        assert_eq!(
            network::describe(&c),
            "cidr 10.244.0.0/16, subnet length 24, cidr6 fd00:10:244::/56, subnet length 64, backend host-gw"
        );
        let v6 = PoolFlags { cidr6: Some("fd00:10:244::/56".into()), subnet_len6: Some(64), ..PoolFlags::default() };
        assert_eq!(network_config(&v6, Backend::Quic).map(|c| c.schema), Ok(2));
        let bad: &[(PoolFlags, &str)] = &[
            (
                PoolFlags { cidr6: Some("10.245.0.0/16".into()), ..v6.clone() },
                "--cidr6: expected an IPv6 CIDR like fd00:10:244::/56, found \"10.245.0.0/16\"",
            ),
            (
                PoolFlags { cidr6: Some("fd00:10:244::1/56".into()), ..v6.clone() },
                "--cidr6: fd00:10:244::1/56 has host bits set (did you mean fd00:10:244::/56?)",
            ),
            (
                PoolFlags { subnet_len6: Some(127), ..v6.clone() },
                "--subnet-len6: expected a prefix length from 57 to 126 (longer than the cluster's /56), found 127",
            ),
            (
                PoolFlags { subnet_len: Some(8), ..both.clone() },
                "--subnet-len: expected a prefix length from 17 to 30 (longer than the cluster's /16), found 8",
            ),
            (PoolFlags { subnet_len6: None, ..v6.clone() }, "--subnet-len6: required with --cidr6"),
            (PoolFlags { cidr: None, ..v4("x", 24) }, "--cidr: required with --subnet-len"),
            (PoolFlags::default(), "--cidr: expected --cidr with --subnet-len, --cidr6 with --subnet-len6, or both"),
        ];
        for (flags, want) in bad {
            assert_eq!(network_config(flags, Backend::HostGw).expect_err(want).to_string(), *want);
        }
    }

    /// `network init` as clap parses it.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: NetworkCmd,
    }

    fn parse(args: &str) -> Result<NetworkCmd, clap::Error> {
        Cli::try_parse_from(["network"].into_iter().chain(args.split_whitespace())).map(|c| c.cmd)
    }

    #[test]
    fn vxlan_flags_reach_the_config_and_bad_values_name_the_flag() {
        let ok = parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend vxlan --vni 42 --vxlan-port 4789");
        let Ok(NetworkCmd::Init { pools, backend, vni, vxlan_port, .. }) = ok else { panic!("{ok:?}") };
        let c = with_vxlan(network_config(&pools, backend).expect("valid"), vni, vxlan_port).expect("valid");
        assert_eq!((c.backend, c.vxlan), (Backend::Vxlan, VxlanOptions { vni: 42, port: 4789 }));
        let base = || network_config(&v4("10.244.0.0/16", 24), Backend::Vxlan).expect("valid");
        assert_eq!(with_vxlan(base(), 0, 8472).expect_err("vni").to_string(), "--vni: expected 1 to 16777215, found 0");
        assert_eq!(
            with_vxlan(base(), 1, 0).expect_err("port").to_string(),
            "--vxlan-port: expected a UDP port from 1 to 65535, found 0"
        );
        let Ok(NetworkCmd::Init { vni, vxlan_port, .. }) =
            parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend vxlan")
        else {
            panic!("defaults")
        };
        assert_eq!((vni, vxlan_port), (1, 8472), "flannel's defaults");
    }

    #[test]
    fn wireguard_is_a_backend_and_auto_s_encapsulation() {
        let ok = parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend wireguard");
        let Ok(NetworkCmd::Init { pools, backend, encap, .. }) = ok else { panic!("{ok:?}") };
        let c = network_config(&pools, backend).expect("valid").with_encap("--encap", encap).expect("valid");
        assert_eq!(c.backend, Backend::WireGuard);
        let ok = parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend auto --encap wireguard");
        let Ok(NetworkCmd::Init { pools, backend, encap, .. }) = ok else { panic!("{ok:?}") };
        let c = network_config(&pools, backend).expect("valid").with_encap("--encap", encap).expect("valid");
        assert_eq!((c.backend, c.encap), (Backend::Auto, Backend::WireGuard));
        let e = parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend wg").expect_err("unknown");
        assert!(e.to_string().contains("expected one of host-gw, quic, vxlan, wireguard, auto"), "{e}");
    }

    #[test]
    fn clap_refuses_a_missing_pool_or_half_a_pool_naming_the_flags() {
        let ok = parse(
            "init --cidr 10.244.0.0/16 --subnet-len 24 --cidr6 fd00:10:244::/56 --subnet-len6 64 --backend host-gw",
        );
        assert!(matches!(ok, Ok(NetworkCmd::Init { pools: PoolFlags { subnet_len6: Some(64), .. }, .. })), "{ok:?}");
        assert!(parse("init --cidr6 fd00:10:244::/56 --subnet-len6 64 --backend quic").is_ok());
        assert!(parse("init --cidr 10.244.0.0/16 --subnet-len 24 --backend host-gw").is_ok());
        for (args, names) in [
            ("init --backend host-gw", "--cidr"),
            ("init --cidr 10.244.0.0/16 --backend host-gw", "--subnet-len"),
            ("init --cidr6 fd00:10:244::/56 --backend host-gw", "--subnet-len6"),
            ("init --cidr 10.244.0.0/16 --subnet-len 24 --subnet-len6 64 --backend host-gw", "--cidr6"),
        ] {
            let e = parse(args).expect_err(args);
            assert_eq!(e.exit_code(), 2, "{args}");
            assert!(e.to_string().contains(names), "{args}: {e}");
        }
    }
}
