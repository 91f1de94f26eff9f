//! Pods: a named network namespace with one veth into the node bridge, an address from each of
//! the node's subnets (one per family the network serves) and a default route per family via
//! the bridge. `attach` is the single idempotent operation
//! that creates or repairs a pod; the state dir records the result and is the source of truth.

use crate::kernel::Kernel;
use crate::state::{PodRecord, PodSource};
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use weft_config::dns::DnsSettings;
use weft_config::subnet::{self, Family, PerFamily};

/// Host-side veth name, derived from the pod's namespace and interface so it is stable across
/// restarts and fits the 15-byte limit.
pub fn host_veth_name(netns: &str, ifname: &str) -> String {
    format!("wv{:08x}", fnv32(&format!("{netns}/{ifname}")))
}

fn temp_peer_name(netns: &str, ifname: &str) -> String {
    format!("wt{:08x}", fnv32(&format!("{netns}/{ifname}")))
}

fn fnv32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Picks the pod's address: keep `current` when it is a valid, unused address of the subnet
/// (restart, or state dir lost), else the lowest free one.
pub fn choose_addr(subnet: IpNet, current: &[IpAddr], used_by_others: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    current
        .iter()
        .copied()
        .find(|a| subnet::is_pod_addr(subnet, *a) && !used_by_others.contains(a))
        .or_else(|| subnet::first_free_addr(subnet, used_by_others))
}

/// Whether weft manages `addr` on an interface that takes addresses from `subnet`: the
/// addresses of the subnet's family, except IPv6 link-local ones, which the kernel keeps for
/// neighbour discovery. (The same rule serves the bridge and each family of a dual-stack pod.)
pub fn managed_addr(subnet: IpNet, addr: IpNet) -> bool {
    let link_local = matches!(addr, IpNet::V6(a) if a.addr().is_unicast_link_local());
    Family::of_net(addr) == Family::of_net(subnet) && !link_local
}

pub struct PodNet<'a, K> {
    pub nl: &'a K,
    pub bridge_index: u32,
    /// The node's subnets: a pod gets an address of each.
    pub subnets: PerFamily<IpNet>,
    pub mtu: u32,
}

pub struct AttachRequest<'a> {
    pub name: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub source: PodSource,
    /// Addresses the state dir remembers, if any.
    pub remembered: Option<PerFamily<IpAddr>>,
    /// weft created the namespace earlier (remembered in the state dir).
    pub owns_netns: bool,
    /// The pod's own resolver settings, kept in its record.
    pub dns: Option<DnsSettings>,
}

/// Creates or repairs one pod. `used_by_others` holds the addresses of every other pod (of
/// every family).
pub async fn attach<K: Kernel>(
    net: &PodNet<'_, K>,
    req: &AttachRequest<'_>,
    used_by_others: &BTreeSet<IpAddr>,
) -> Result<PodRecord> {
    let created = net.nl.ensure_netns(req.netns)?;
    let pod_nl = net.nl.in_netns(req.netns)?;
    let host = host_veth_name(req.netns, req.ifname);

    let mut inside = pod_nl.link(req.ifname).await?;
    let host_link = net.nl.link(&host).await?;
    if inside.is_some() && host_link.is_none() {
        // The interface in the pod is not ours (or its peer is gone): refuse to clobber it.
        let kind = inside.as_ref().and_then(|l| l.kind.clone()).unwrap_or_default();
        if kind != "veth" {
            bail!("namespace {} already has an interface {} ({kind}) that weft did not create", req.netns, req.ifname);
        }
        bail!(
            "namespace {} has a veth {} whose host side {host} is missing; delete it or pick another ifname",
            req.netns,
            req.ifname
        );
    }
    if inside.is_none() {
        if let Some(stale) = &host_link {
            net.nl.del_link(stale.index).await?;
        }
        let tmp = temp_peer_name(req.netns, req.ifname);
        if let Some(old) = net.nl.link(&tmp).await? {
            net.nl.del_link(old.index).await?;
        }
        net.nl.add_veth(&host, &tmp, net.mtu).await?;
        let peer = net.nl.link(&tmp).await?.context("veth peer vanished after creation")?;
        net.nl.move_to_netns(peer.index, req.netns).await?;
        let moved = pod_nl.link(&tmp).await?.context("veth peer missing in the pod namespace")?;
        pod_nl.rename(moved.index, req.ifname).await?;
        inside = pod_nl.link(req.ifname).await?;
    }
    let inside = inside.context("pod interface missing after creation")?;
    let host_link = net.nl.link(&host).await?.context("host veth missing after creation")?;
    if host_link.controller != Some(net.bridge_index) || !host_link.up || host_link.mtu != net.mtu {
        net.nl.set_link(host_link.index, Some(net.mtu), true, Some(net.bridge_index)).await?;
    }
    if !inside.up || inside.mtu != net.mtu {
        pod_nl.set_link(inside.index, Some(net.mtu), true, None).await?;
    }

    // Per family: the address (stray ones of the family go), then the default route via the
    // bridge's gateway of that family.
    let current = pod_nl.addrs(inside.index).await?;
    let (mut v4, mut v6) = (None, None);
    for (family, subnet) in net.subnets.iter() {
        let subnet = *subnet;
        let present: Vec<IpNet> = current.iter().copied().filter(|a| managed_addr(subnet, *a)).collect();
        let mut candidates: Vec<IpAddr> = req.remembered.and_then(|r| r.get(family).copied()).into_iter().collect();
        candidates.extend(present.iter().filter(|a| a.prefix_len() == subnet.prefix_len()).map(|a| a.addr()));
        let ip = choose_addr(subnet, &candidates, used_by_others)
            .with_context(|| format!("no free address left in {subnet}"))?;
        let want = IpNet::new(ip, subnet.prefix_len()).context("pod address")?;
        for a in present.iter().filter(|a| **a != want) {
            pod_nl.del_addr(inside.index, *a).await?;
        }
        if !present.contains(&want) {
            pod_nl.add_addr(inside.index, want).await?;
        }
        pod_nl.replace_default_route(subnet::gateway(subnet), inside.index).await?;
        match family {
            Family::V4 => v4 = Some(ip),
            Family::V6 => v6 = Some(ip),
        }
    }
    let addrs = PerFamily::from_options(v4, v6).context("the node holds no subnet")?;
    Ok(PodRecord {
        name: req.name.to_string(),
        netns: req.netns.to_string(),
        ifname: req.ifname.to_string(),
        addrs,
        host_veth: host,
        source: req.source,
        owns_netns: req.owns_netns || created,
        dns: req.dns.clone(),
    })
}

/// Removes a pod's veth and, when weft created it, its namespace. Absent parts are fine.
pub async fn detach(nl: &impl Kernel, pod: &PodRecord, remove_netns: bool) -> Result<()> {
    if let Some(l) = nl.link(&pod.host_veth).await? {
        nl.del_link(l.index).await?;
    }
    if remove_netns {
        nl.remove_netns(&pod.netns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{Call, FakeKernel, ROOT};

    fn request<'a>(netns: &'a str) -> AttachRequest<'a> {
        AttachRequest {
            name: "p1",
            netns,
            ifname: "eth0",
            source: PodSource::Config,
            remembered: None,
            owns_netns: false,
            dns: None,
        }
    }

    async fn node() -> (FakeKernel, u32) {
        let k = FakeKernel::new();
        let br = k.ensure_bridge("weft0", 1450).await.expect("bridge");
        k.take_calls();
        (k, br)
    }

    fn subnet() -> IpNet {
        "10.244.1.0/24".parse().expect("literal")
    }

    #[tokio::test]
    async fn attach_sends_the_pod_setup_in_order() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: subnet().into(), mtu: 1450 };
        let rec = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        assert_eq!(rec.addrs, PerFamily::V4("10.244.1.2".parse::<IpAddr>().expect("literal")));
        assert!(rec.owns_netns, "weft created the namespace");
        let host = host_veth_name("ns1", "eth0");
        let tmp = temp_peer_name("ns1", "eth0");
        let hostl = k.link(&host).await.expect("lookup").expect("host veth");
        let pod = k.in_netns("ns1").expect("pod namespace");
        let inside = pod.link("eth0").await.expect("lookup").expect("pod eth0");
        let s = |x: &str| x.to_string();
        assert_eq!(
            k.calls(),
            vec![
                (s(ROOT), Call::AddNetns(s("ns1"))),
                (s(ROOT), Call::AddVeth { name: host.clone(), peer: tmp, mtu: 1450 }),
                (s(ROOT), Call::MoveToNetns { index: inside.index, netns: s("ns1") }),
                (s("ns1"), Call::Rename { index: inside.index, name: s("eth0") }),
                (s(ROOT), Call::SetLink { index: hostl.index, mtu: Some(1450), up: true, controller: Some(br) }),
                (s("ns1"), Call::SetLink { index: inside.index, mtu: Some(1450), up: true, controller: None }),
                (s("ns1"), Call::AddAddress { index: inside.index, addr: "10.244.1.2/24".parse().expect("literal") }),
                (
                    s("ns1"),
                    Call::ReplaceDefaultRoute { via: "10.244.1.1".parse().expect("literal"), oif: inside.index }
                ),
            ]
        );
        assert_eq!(pod.default_route_oif(crate::routes::Family::V4).await.expect("route"), Some(inside.index));
        assert_eq!(hostl.controller, Some(br));
    }

    #[tokio::test]
    async fn attach_again_only_refreshes_the_route_and_repairs_what_drifted() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: subnet().into(), mtu: 1450 };
        let first = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        k.take_calls();
        let again = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("again");
        assert_eq!(again.addrs, first.addrs);
        let calls = k.take_calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(matches!(calls[0].1, Call::ReplaceDefaultRoute { .. }), "{calls:?}");

        // Someone moved the pod's address: the remembered one comes back, the stray one goes.
        let pod = k.in_netns("ns1").expect("pod namespace");
        let eth0 = pod.link("eth0").await.expect("lookup").expect("eth0").index;
        pod.del_addr(eth0, "10.244.1.2/24".parse().expect("literal")).await.expect("del");
        pod.add_addr(eth0, "10.244.1.9/16".parse().expect("literal")).await.expect("add");
        let req = AttachRequest { remembered: Some(first.addrs), ..request("ns1") };
        attach(&net, &req, &BTreeSet::new()).await.expect("repair");
        assert_eq!(pod.addrs(eth0).await.expect("list"), vec!["10.244.1.2/24".parse::<IpNet>().expect("literal")]);
    }

    #[tokio::test]
    async fn attach_leaves_the_kernels_ipv6_link_local_address_alone() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: subnet().into(), mtu: 1450 };
        attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        let pod = k.in_netns("ns1").expect("pod namespace");
        let eth0 = pod.link("eth0").await.expect("lookup").expect("eth0").index;
        let ll: IpNet = "fe80::1/64".parse().expect("literal");
        pod.add_addr(eth0, ll).await.expect("add");
        k.take_calls();
        attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("again");
        let calls = k.take_calls();
        assert!(!calls.iter().any(|(_, c)| matches!(c, Call::DelAddress { .. })), "{calls:?}");
        assert!(pod.addrs(eth0).await.expect("list").contains(&ll));
    }

    fn dual() -> PerFamily<IpNet> {
        PerFamily::Dual(subnet(), "fd00:10:244:1::/64".parse().expect("literal"))
    }

    #[tokio::test]
    async fn a_dual_stack_pod_gets_an_address_and_a_default_route_per_family() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: dual(), mtu: 1450 };
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
        let rec = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        assert_eq!(rec.addrs, PerFamily::Dual(ip("10.244.1.2"), ip("fd00:10:244:1::2")));
        let pod = k.in_netns("ns1").expect("pod namespace");
        let eth0 = pod.link("eth0").await.expect("lookup").expect("eth0").index;
        let tail: Vec<Call> = k
            .take_calls()
            .into_iter()
            .rev()
            .take(4)
            .rev()
            .map(|(ns, c)| {
                assert_eq!(ns, "ns1");
                c
            })
            .collect();
        assert_eq!(
            tail,
            vec![
                Call::AddAddress { index: eth0, addr: "10.244.1.2/24".parse().expect("literal") },
                Call::ReplaceDefaultRoute { via: ip("10.244.1.1"), oif: eth0 },
                Call::AddAddress { index: eth0, addr: "fd00:10:244:1::2/64".parse().expect("literal") },
                Call::ReplaceDefaultRoute { via: ip("fd00:10:244:1::1"), oif: eth0 },
            ],
            "IPv4 first, each family's address before its route"
        );
        for family in [Family::V4, Family::V6] {
            assert_eq!(pod.default_route_oif(family).await.expect("route"), Some(eth0), "{family}");
        }

        // Again with what the state dir remembers: nothing but the two routes; a stray IPv6
        // address is replaced by the remembered one, the IPv4 one is left as it is.
        attach(&net, &AttachRequest { remembered: Some(rec.addrs), ..request("ns1") }, &BTreeSet::new())
            .await
            .expect("again");
        let calls = k.take_calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        pod.del_addr(eth0, "fd00:10:244:1::2/64".parse().expect("literal")).await.expect("del");
        pod.add_addr(eth0, "fd00:10:244:1::99/64".parse().expect("literal")).await.expect("add");
        let again = attach(&net, &AttachRequest { remembered: Some(rec.addrs), ..request("ns1") }, &BTreeSet::new())
            .await
            .expect("repair");
        assert_eq!(again.addrs, rec.addrs);
        let mut addrs = pod.addrs(eth0).await.expect("list");
        addrs.sort();
        assert_eq!(addrs, vec![n("10.244.1.2/24"), n("fd00:10:244:1::2/64")]);

        // The state dir lost: the addresses in the namespace are kept, per family.
        let lost = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("state dir lost");
        assert_eq!(lost.addrs, rec.addrs);
        // Another pod gets the next address of each family.
        let used: BTreeSet<IpAddr> = rec.ips().collect();
        let other = attach(&net, &AttachRequest { name: "p2", ..request("ns2") }, &used).await.expect("second pod");
        assert_eq!(other.addrs, PerFamily::Dual(ip("10.244.1.3"), ip("fd00:10:244:1::3")));
    }

    fn n(s: &str) -> IpNet {
        s.parse().expect("literal")
    }

    #[tokio::test]
    async fn an_ipv6_only_pod_gets_only_the_ipv6_address_and_route() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: PerFamily::V6(n("fd00:10:244:1::/64")), mtu: 1450 };
        let rec = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        assert_eq!(rec.addrs, PerFamily::V6("fd00:10:244:1::2".parse().expect("literal")));
        let pod = k.in_netns("ns1").expect("pod namespace");
        let eth0 = pod.link("eth0").await.expect("lookup").expect("eth0").index;
        assert_eq!(pod.addrs(eth0).await.expect("list"), vec![n("fd00:10:244:1::2/64")]);
        assert_eq!(pod.default_route_oif(Family::V6).await.expect("route"), Some(eth0));
        assert_eq!(pod.default_route_oif(Family::V4).await.expect("route"), None);
    }

    #[test]
    fn managed_addresses_are_those_of_the_subnets_family_but_link_local() {
        let n = |s: &str| s.parse::<IpNet>().expect("lit");
        assert!(managed_addr(n("10.244.1.0/24"), n("10.9.9.9/16")));
        assert!(!managed_addr(n("10.244.1.0/24"), n("fd00::2/64")));
        assert!(!managed_addr(n("10.244.1.0/24"), n("fe80::1/64")));
        assert!(managed_addr(n("fd00:10:244:1::/64"), n("fd00:10:244:9::2/64")));
        assert!(!managed_addr(n("fd00:10:244:1::/64"), n("fe80::1/64")));
        assert!(!managed_addr(n("fd00:10:244:1::/64"), n("10.244.1.2/24")));
    }

    #[tokio::test]
    async fn attach_refuses_an_interface_weft_did_not_make() {
        let (k, br) = node().await;
        k.ensure_netns("ns1").expect("netns");
        k.in_netns("ns1").expect("pod").seed_link("eth0", "macvlan", 1500);
        k.take_calls();
        let net = PodNet { nl: &k, bridge_index: br, subnets: subnet().into(), mtu: 1450 };
        let e = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect_err("not ours");
        assert!(e.to_string().contains("that weft did not create"), "{e}");
        assert!(k.calls().is_empty(), "nothing was changed: {:?}", k.calls());
    }

    #[tokio::test]
    async fn detach_deletes_the_veth_and_the_namespace_it_owns() {
        let (k, br) = node().await;
        let net = PodNet { nl: &k, bridge_index: br, subnets: subnet().into(), mtu: 1450 };
        let rec = attach(&net, &request("ns1"), &BTreeSet::new()).await.expect("attach");
        let host = k.link(&rec.host_veth).await.expect("lookup").expect("host veth").index;
        k.take_calls();
        detach(&k, &rec, true).await.expect("detach");
        assert_eq!(
            k.take_calls(),
            vec![(ROOT.to_string(), Call::DelLink(host)), (ROOT.to_string(), Call::RemoveNetns("ns1".into()))]
        );
        assert_eq!(k.namespaces(), vec![ROOT.to_string()]);
        detach(&k, &rec, true).await.expect("detaching twice is fine");
        assert!(k.calls().is_empty());
    }

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("weft0-n1-p1", "eth0");
        assert_eq!(a, host_veth_name("weft0-n1-p1", "eth0"));
        assert_ne!(a, host_veth_name("weft0-n1-p2", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("wv"));
        assert!(temp_peer_name("x", "eth0").len() <= 15);
    }

    #[test]
    fn address_choice_keeps_valid_current_and_avoids_others() {
        let s: IpNet = "10.244.1.0/24".parse().expect("lit");
        let ip = |x: &str| x.parse::<IpAddr>().expect("lit");
        let none = BTreeSet::new();
        assert_eq!(choose_addr(s, &[], &none), Some(ip("10.244.1.2")));
        assert_eq!(choose_addr(s, &[ip("10.244.1.7")], &none), Some(ip("10.244.1.7")));
        // an address of an old subnet is not kept
        assert_eq!(choose_addr(s, &[ip("10.244.9.7")], &none), Some(ip("10.244.1.2")));
        // the gateway is never given out
        assert_eq!(choose_addr(s, &[ip("10.244.1.1")], &none), Some(ip("10.244.1.2")));
        let used: BTreeSet<_> = [ip("10.244.1.2"), ip("10.244.1.7")].into();
        assert_eq!(choose_addr(s, &[ip("10.244.1.7")], &used), Some(ip("10.244.1.3")));
    }

    #[test]
    fn address_choice_in_an_ipv6_subnet() {
        let s: IpNet = "fd00:10:244:1::/64".parse().expect("lit");
        let ip = |x: &str| x.parse::<IpAddr>().expect("lit");
        let none = BTreeSet::new();
        assert_eq!(choose_addr(s, &[], &none), Some(ip("fd00:10:244:1::2")));
        assert_eq!(choose_addr(s, &[ip("fd00:10:244:1::abcd")], &none), Some(ip("fd00:10:244:1::abcd")));
        assert_eq!(choose_addr(s, &[ip("10.244.1.7")], &none), Some(ip("fd00:10:244:1::2")), "other family");
        assert_eq!(choose_addr(s, &[ip("fd00:10:244:1::1")], &none), Some(ip("fd00:10:244:1::2")), "gateway");
        let used: BTreeSet<_> = [ip("fd00:10:244:1::2")].into();
        assert_eq!(choose_addr(s, &[], &used), Some(ip("fd00:10:244:1::3")));
    }
}
