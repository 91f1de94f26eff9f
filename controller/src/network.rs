//! `weftctl network init|show`: the network config every agent reads at start.
//!
//! `init` decides with [`plan_init`] (pure) and writes with a transaction that compares the
//! config key's revision and, for each family whose pool (CIDR or subnet length) changes, that
//! no subnet record of that family appeared meanwhile; a lost race re-reads and decides again.

use anyhow::Context;
use weft_config::records::pool_fields;
use weft_config::subnet::Family;
use weft_config::{Keys, NetworkConfig};
use weft_store::{Compare, Op, Store};

/// What is stored at the config key now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    Absent,
    Valid(NetworkConfig),
    /// Present but unreadable (the message says why).
    Malformed(String),
}

/// What `init` will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitPlan {
    Create,
    /// Same config already stored: nothing to write.
    Unchanged,
    /// Overwrite (with `--force`); `addressing_changes` when a pool (CIDR or subnet length) of
    /// either family differs.
    Replace {
        addressing_changes: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error("network {network} already has a different config ({existing}); pass --force to replace it")]
    Differs { network: String, existing: String },
    #[error(
        "refusing to change the {} of network {network}: {count} {}record(s) still exist \
         (evict the nodes first with weftctl node evict)",
        pool_name(*family), records_name(*family)
    )]
    SubnetsInUse { network: String, family: Family, count: i64 },
}

/// What the pool of `family` is called in messages.
fn pool_name(family: Family) -> String {
    match family {
        Family::V4 => "CIDR or subnet length".into(),
        Family::V6 => {
            let (cidr, len) = pool_fields(family);
            format!("IPv6 CIDR or subnet length ({cidr}, {len})")
        }
    }
}

/// What the subnet records of `family` are called in messages (with a trailing space).
fn records_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "subnet ",
        Family::V6 => "IPv6 subnet ",
    }
}

/// The families whose pool `wanted` changes (added, removed, or another CIDR or subnet
/// length). Unknown addressing (a malformed config) counts as changing both, so live subnets
/// are protected.
pub fn changed_families(existing: &Existing, wanted: &NetworkConfig) -> Vec<Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| match existing {
            Existing::Absent => false,
            Existing::Valid(c) => c.pool(*f) != wanted.pool(*f),
            Existing::Malformed(_) => true,
        })
        .collect()
}

/// Decides what `init` does given what is stored and how many subnet records of each family
/// exist (`subnet_records`).
pub fn plan_init(
    network: &str,
    existing: &Existing,
    wanted: &NetworkConfig,
    force: bool,
    subnet_records: impl Fn(Family) -> i64,
) -> Result<InitPlan, InitError> {
    match existing {
        Existing::Absent => return Ok(InitPlan::Create),
        Existing::Valid(c) if c == wanted => return Ok(InitPlan::Unchanged),
        Existing::Valid(_) | Existing::Malformed(_) => {}
    }
    if !force {
        let existing = match existing {
            Existing::Valid(c) => describe(c),
            Existing::Malformed(m) => format!("unreadable: {m}"),
            Existing::Absent => String::new(),
        };
        return Err(InitError::Differs { network: network.to_string(), existing });
    }
    let changed = changed_families(existing, wanted);
    for family in &changed {
        let count = subnet_records(*family);
        if count > 0 {
            return Err(InitError::SubnetsInUse { network: network.to_string(), family: *family, count });
        }
    }
    Ok(InitPlan::Replace { addressing_changes: !changed.is_empty() })
}

/// One-line description: `cidr 10.244.0.0/16, subnet length 24, backend host-gw` (with
/// `cidr6 ..., subnet length 64` for an IPv6 pool).
pub fn describe(c: &NetworkConfig) -> String {
    let mut parts: Vec<String> = c
        .pools()
        .iter()
        .map(|(f, p)| format!("{} {}, subnet length {}", pool_fields(f).0, p.cidr, p.subnet_len))
        .collect();
    parts.push(format!("backend {}", c.backend));
    if c.backend == weft_config::Backend::Vxlan {
        parts.push(format!("vni {}, vxlan port {}", c.vxlan.vni, c.vxlan.port));
    }
    if !c.dns.is_empty() {
        parts.push(format!("dns {}", dns_text(&c.dns)));
    }
    parts.join(", ")
}

/// Resolver settings on one line: `servers 203.0.113.2; search lab.weft; options ndots:2`.
pub fn dns_text(d: &weft_config::dns::DnsSettings) -> String {
    let mut parts = Vec::new();
    if !d.servers.is_empty() {
        parts.push(format!("servers {}", d.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" ")));
    }
    if !d.search.is_empty() {
        parts.push(format!("search {}", d.search.join(" ")));
    }
    if !d.options.is_empty() {
        parts.push(format!("options {}", d.options.join(" ")));
    }
    parts.join("; ")
}

/// Writes `wanted` as the network's config. Returns the plan that was carried out.
pub async fn init(store: &impl Store, network: &str, wanted: &NetworkConfig, force: bool) -> anyhow::Result<InitPlan> {
    let keys = Keys::new(network);
    let key = keys.config();
    for _ in 0..5 {
        let (existing, mod_rev) = match store.get(&key).await? {
            None => (Existing::Absent, 0),
            Some(r) => {
                let e = match NetworkConfig::from_json(&key, &r.value) {
                    Ok(c) => Existing::Valid(c),
                    Err(e) => Existing::Malformed(e.to_string()),
                };
                (e, r.mod_revision)
            }
        };
        let mut counts = Vec::new();
        for family in [Family::V4, Family::V6] {
            let prefix = keys.subnets_prefix_of(family);
            let (count, _) =
                store.count(&prefix).await.with_context(|| format!("counting subnet records under {prefix}"))?;
            counts.push((family, count));
        }
        let count_of = |f: Family| counts.iter().find(|(g, _)| *g == f).map_or(0, |(_, n)| *n);
        let plan = plan_init(network, &existing, wanted, force, count_of)?;
        let mut compares =
            vec![if mod_rev == 0 { Compare::created_at(&key, 0) } else { Compare::modified_at(&key, mod_rev) }];
        match plan {
            InitPlan::Unchanged => return Ok(plan),
            InitPlan::Replace { addressing_changes: true } => {
                // No subnet record of a changing family may appear between the count and the write.
                for family in changed_families(&existing, wanted) {
                    compares.push(Compare::created_at(&keys.subnets_prefix_of(family), 0).with_prefix());
                }
            }
            InitPlan::Create | InitPlan::Replace { addressing_changes: false } => {}
        }
        let put = vec![Op::put(&key, wanted.to_json(), 0)];
        let ok = store.txn(compares, put, vec![]).await.with_context(|| format!("writing {key}"))?;
        if ok {
            return Ok(plan);
        }
        // Someone else wrote meanwhile: look again.
    }
    anyhow::bail!("{key} kept changing while writing it; try again")
}

/// Reads the network's config; an absent or malformed one is an error naming the key.
pub async fn show(store: &impl Store, network: &str) -> anyhow::Result<NetworkConfig> {
    let key = Keys::new(network).config();
    let r = store
        .get(&key)
        .await?
        .with_context(|| format!("network {network} has no config at {key} (create it with weftctl network init)"))?;
    Ok(NetworkConfig::from_json(&key, &r.value)?)
}

/// The human form of `network show`: one `label: value` line per field, each pool's fields
/// under their config names.
pub fn render(network: &str, c: &NetworkConfig) -> String {
    let mut lines: Vec<(&str, String)> = vec![("network", network.to_string())];
    for (family, p) in c.pools().iter() {
        let (cidr, len) = pool_fields(family);
        lines.push((cidr, p.cidr.to_string()));
        lines.push((len, p.subnet_len.to_string()));
    }
    lines.push(("backend", c.backend.to_string()));
    if !c.dns.is_empty() {
        lines.push(("dns", dns_text(&c.dns)));
    }
    lines.push(("schema", c.schema.to_string()));
    let width = lines.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
    lines.iter().map(|(l, v)| format!("{:width$} {v}\n", format!("{l}:"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_config::Backend;

    fn cfg(cidr: &str, len: u8, b: Backend) -> NetworkConfig {
        NetworkConfig::new("t", cidr, len, b).expect("valid")
    }

    #[test]
    fn init_decisions() {
        let want = cfg("10.244.0.0/16", 24, Backend::HostGw);
        assert_eq!(plan_init("d", &Existing::Absent, &want, false, |_| 3), Ok(InitPlan::Create));
        assert_eq!(plan_init("d", &Existing::Valid(want.clone()), &want, false, |_| 3), Ok(InitPlan::Unchanged));

        let other_backend = Existing::Valid(cfg("10.244.0.0/16", 24, Backend::Quic));
        let e = plan_init("d", &other_backend, &want, false, |_| 0).expect_err("differs");
        assert_eq!(
            e.to_string(),
            "network d already has a different config (cidr 10.244.0.0/16, subnet length 24, backend quic); \
             pass --force to replace it"
        );
        assert_eq!(
            plan_init("d", &other_backend, &want, true, |_| 5),
            Ok(InitPlan::Replace { addressing_changes: false })
        );

        let other_cidr = Existing::Valid(cfg("10.1.0.0/16", 24, Backend::HostGw));
        let e = plan_init("d", &other_cidr, &want, true, |_| 2).expect_err("in use");
        assert!(e.to_string().contains("2 subnet record(s) still exist"), "{e}");
        assert_eq!(plan_init("d", &other_cidr, &want, true, |_| 0), Ok(InitPlan::Replace { addressing_changes: true }));

        let junk = Existing::Malformed("bad json".into());
        assert!(plan_init("d", &junk, &want, false, |_| 0)
            .expect_err("junk")
            .to_string()
            .contains("unreadable: bad json"));
        assert!(plan_init("d", &junk, &want, true, |_| 1).is_err());
        assert_eq!(plan_init("d", &junk, &want, true, |_| 0), Ok(InitPlan::Replace { addressing_changes: true }));
    }

    #[tokio::test]
    async fn init_writes_once_and_guards_live_subnets() {
        let s = weft_store::MemStore::new();
        let want = cfg("10.244.0.0/16", 24, Backend::HostGw);
        let e = show(&s, "d").await.expect_err("nothing yet");
        assert!(e.to_string().contains("network d has no config at /weft/v1/d/config"), "{e}");
        assert_eq!(init(&s, "d", &want, false).await.expect("init"), InitPlan::Create);
        assert_eq!(show(&s, "d").await.expect("show"), want);
        let rev = s.revision();
        assert_eq!(init(&s, "d", &want, false).await.expect("again"), InitPlan::Unchanged);
        assert_eq!(s.revision(), rev, "an unchanged config is not written");

        s.put("/weft/v1/d/subnets/10.244.1.0-24", "{}", 0).await.expect("put");
        let other = cfg("10.1.0.0/16", 24, Backend::HostGw);
        let e = init(&s, "d", &other, true).await.expect_err("a subnet is in use");
        assert!(matches!(e.downcast_ref::<InitError>(), Some(InitError::SubnetsInUse { count: 1, .. })), "{e}");
        let quic = cfg("10.244.0.0/16", 24, Backend::Quic);
        assert_eq!(init(&s, "d", &quic, true).await.expect("force"), InitPlan::Replace { addressing_changes: false });
        assert_eq!(show(&s, "d").await.expect("show"), quic);

        s.set_down(true);
        let e = init(&s, "d", &want, true).await.expect_err("etcd away");
        assert!(format!("{e:#}").starts_with("reading /weft/v1/d/config: "), "{e:#}");
    }

    #[test]
    fn rendering() {
        let c = cfg("10.244.0.0/16", 24, Backend::HostGw);
        assert_eq!(describe(&c), "cidr 10.244.0.0/16, subnet length 24, backend host-gw");
        assert!(render("default", &c).starts_with("network:    default\ncidr:       10.244.0.0/16\n"));
    }

    fn dual(cidr6: &str, len6: u8) -> NetworkConfig {
        NetworkConfig::with_pools("t", Some(("10.244.0.0/16", 24)), Some((cidr6, len6)), Backend::HostGw)
            .expect("valid")
    }

    #[test]
    fn each_family_is_guarded_by_its_own_subnet_records() {
        let v4 = Existing::Valid(cfg("10.244.0.0/16", 24, Backend::HostGw));
        let claimed = |v4: i64, v6: i64| move |f: Family| if f == Family::V4 { v4 } else { v6 };
        // Adding an IPv6 pool to a network with live IPv4 subnets: its addressing changes, but
        // no IPv6 subnet is claimed yet.
        let want = dual("fd00:10:244::/56", 64);
        assert_eq!(changed_families(&v4, &want), [Family::V6]);
        assert_eq!(plan_init("d", &v4, &want, true, claimed(5, 0)), Ok(InitPlan::Replace { addressing_changes: true }));
        // Changing the IPv6 pool while IPv6 subnets are claimed is refused, naming it.
        let have = Existing::Valid(want.clone());
        let other6 = dual("fd00:10:245::/56", 64);
        let e = plan_init("d", &have, &other6, true, claimed(0, 2)).expect_err("v6 in use");
        assert_eq!(
            e.to_string(),
            "refusing to change the IPv6 CIDR or subnet length (cidr6, subnet_len6) of network d: 2 IPv6 subnet record(s) \
             still exist (evict the nodes first with weftctl node evict)"
        );
        assert_eq!(
            plan_init("d", &have, &other6, true, claimed(7, 0)),
            Ok(InitPlan::Replace { addressing_changes: true })
        );
        let e = plan_init("d", &have, &dual("fd00:10:244::/56", 72), true, claimed(0, 1)).expect_err("length too");
        assert!(matches!(e, InitError::SubnetsInUse { family: Family::V6, count: 1, .. }), "{e}");
        // Dropping the IPv4 pool while IPv4 subnets live is refused with the IPv4 message.
        let v6_only =
            NetworkConfig::with_pools("t", None, Some(("fd00:10:244::/56", 64)), Backend::HostGw).expect("v6");
        let e = plan_init("d", &have, &v6_only, true, claimed(3, 0)).expect_err("v4 in use");
        assert!(
            e.to_string().starts_with("refusing to change the CIDR or subnet length of network d: 3 subnet record(s)"),
            "{e}"
        );
        assert_eq!(
            describe(&want),
            "cidr 10.244.0.0/16, subnet length 24, cidr6 fd00:10:244::/56, subnet length 64, backend host-gw"
        );
        assert_eq!(describe(&v6_only), "cidr6 fd00:10:244::/56, subnet length 64, backend host-gw");
    }

    #[tokio::test]
    async fn init_guards_the_ipv6_subnets_and_shows_both_pools() {
        let s = weft_store::MemStore::new();
        let v4 = cfg("10.244.0.0/16", 24, Backend::HostGw);
        assert_eq!(init(&s, "d", &v4, false).await.expect("init"), InitPlan::Create);
        s.put("/weft/v1/d/subnets/10.244.1.0-24", "{}", 0).await.expect("put");
        let want = dual("fd00:10:244::/56", 64);
        assert_eq!(init(&s, "d", &want, true).await.expect("add IPv6"), InitPlan::Replace { addressing_changes: true });
        assert_eq!(show(&s, "d").await.expect("show"), want);
        s.put("/weft/v1/d/subnets6/fd00:10:244:1::-64", "{}", 0).await.expect("put");
        let e = init(&s, "d", &dual("fd00:10:245::/56", 64), true).await.expect_err("an IPv6 subnet is in use");
        assert!(
            matches!(e.downcast_ref::<InitError>(), Some(InitError::SubnetsInUse { family: Family::V6, count: 1, .. })),
            "{e}"
        );
        assert_eq!(
            render("d", &want),
            "network:     d\ncidr:        10.244.0.0/16\nsubnet_len:  24\ncidr6:       fd00:10:244::/56\n\
             subnet_len6: 64\nbackend:     host-gw\nschema:      2\n"
        );
        assert_eq!(
            render("d", &v4),
            "network:    d\ncidr:       10.244.0.0/16\nsubnet_len: 24\nbackend:    host-gw\nschema:     1\n",
            "an IPv4-only network shows as it did"
        );
    }
}
