//! `weftctl network init|show`: the network config every agent reads at start.
//!
//! `init` decides with [`plan_init`] (pure) and writes with a transaction that compares the
//! config key's revision and, when the CIDR or subnet length changes, that no subnet record
//! appeared meanwhile; a lost race re-reads and decides again.

use anyhow::Context;
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
    /// Overwrite (with `--force`); `addressing_changes` when CIDR or subnet length differ.
    Replace {
        addressing_changes: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error("network {network} already has a different config ({existing}); pass --force to replace it")]
    Differs { network: String, existing: String },
    #[error(
        "refusing to change the CIDR or subnet length of network {network}: {count} subnet record(s) still exist \
         (evict the nodes first with weftctl node evict)"
    )]
    SubnetsInUse { network: String, count: i64 },
}

/// Decides what `init` does given what is stored and how many subnet records exist.
pub fn plan_init(
    network: &str,
    existing: &Existing,
    wanted: &NetworkConfig,
    force: bool,
    subnet_records: i64,
) -> Result<InitPlan, InitError> {
    let addressing_changes = match existing {
        Existing::Absent => return Ok(InitPlan::Create),
        Existing::Valid(c) if c == wanted => return Ok(InitPlan::Unchanged),
        Existing::Valid(c) => c.cidr != wanted.cidr || c.subnet_len != wanted.subnet_len,
        // Unknown addressing: assume it changes, so live subnets are protected.
        Existing::Malformed(_) => true,
    };
    if !force {
        let existing = match existing {
            Existing::Valid(c) => describe(c),
            Existing::Malformed(m) => format!("unreadable: {m}"),
            Existing::Absent => String::new(),
        };
        return Err(InitError::Differs { network: network.to_string(), existing });
    }
    if addressing_changes && subnet_records > 0 {
        return Err(InitError::SubnetsInUse { network: network.to_string(), count: subnet_records });
    }
    Ok(InitPlan::Replace { addressing_changes })
}

/// One-line description: `cidr 10.244.0.0/16, subnet length 24, backend host-gw`.
pub fn describe(c: &NetworkConfig) -> String {
    format!("cidr {}, subnet length {}, backend {}", c.cidr, c.subnet_len, c.backend)
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
        let prefix = keys.subnets_prefix();
        let (count, _) =
            store.count(&prefix).await.with_context(|| format!("counting subnet records under {prefix}"))?;
        let plan = plan_init(network, &existing, wanted, force, count)?;
        let mut compares =
            vec![if mod_rev == 0 { Compare::created_at(&key, 0) } else { Compare::modified_at(&key, mod_rev) }];
        match plan {
            InitPlan::Unchanged => return Ok(plan),
            InitPlan::Replace { addressing_changes: true } => {
                // No subnet record may appear between the count and the write.
                compares.push(Compare::created_at(&prefix, 0).with_prefix());
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

/// The human form of `network show`.
pub fn render(network: &str, c: &NetworkConfig) -> String {
    format!(
        "network:    {network}\ncidr:       {}\nsubnet_len: {}\nbackend:    {}\nschema:     {}\n",
        c.cidr, c.subnet_len, c.backend, c.schema
    )
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
        assert_eq!(plan_init("d", &Existing::Absent, &want, false, 3), Ok(InitPlan::Create));
        assert_eq!(plan_init("d", &Existing::Valid(want.clone()), &want, false, 3), Ok(InitPlan::Unchanged));

        let other_backend = Existing::Valid(cfg("10.244.0.0/16", 24, Backend::Quic));
        let e = plan_init("d", &other_backend, &want, false, 0).expect_err("differs");
        assert_eq!(
            e.to_string(),
            "network d already has a different config (cidr 10.244.0.0/16, subnet length 24, backend quic); \
             pass --force to replace it"
        );
        assert_eq!(plan_init("d", &other_backend, &want, true, 5), Ok(InitPlan::Replace { addressing_changes: false }));

        let other_cidr = Existing::Valid(cfg("10.1.0.0/16", 24, Backend::HostGw));
        let e = plan_init("d", &other_cidr, &want, true, 2).expect_err("in use");
        assert!(e.to_string().contains("2 subnet record(s) still exist"), "{e}");
        assert_eq!(plan_init("d", &other_cidr, &want, true, 0), Ok(InitPlan::Replace { addressing_changes: true }));

        let junk = Existing::Malformed("bad json".into());
        assert!(plan_init("d", &junk, &want, false, 0).expect_err("junk").to_string().contains("unreadable: bad json"));
        assert!(plan_init("d", &junk, &want, true, 1).is_err());
        assert_eq!(plan_init("d", &junk, &want, true, 0), Ok(InitPlan::Replace { addressing_changes: true }));
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
}
