//! Unit tests of the pods' resolver files on `MemStore` + `FakeKernel`: the network's settings
//! and a pod's own reach `<netns_etc>/<netns>/resolv.conf` of the namespaces weft made, follow a
//! change of the network config without a restart, show in the pod list, and go with the pod.

use super::*;
use weft_config::dns::DnsSettings;

fn servers(list: &[&str]) -> DnsSettings {
    DnsSettings { servers: list.iter().map(|s| s.parse().expect("literal")).collect(), ..Default::default() }
}

async fn api(d: &mut TestDaemon, req: Request) -> Response {
    let Phase::Running(node) = &mut d.phase else { panic!("daemon is not running") };
    node.handle(&d.ctx, req).await
}

fn resolv(w: &World, netns: &str) -> Option<String> {
    std::fs::read_to_string(w.path("netns-etc").join(netns).join("resolv.conf")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_with_the_networks_settings_or_their_own_and_follow_a_change() {
    let net_dns = DnsSettings { search: vec!["lab.weft".into()], ..servers(&["203.0.113.2"]) };
    let net = NetworkConfig::new("test", CIDR, 24, Backend::HostGw).expect("net").with_dns("t", net_dns).expect("dns");
    let mut w = World::with_net(MemStore::new(), &net);
    w.extra = "[[pods]]\nname = \"p1\"\n[pods.dns]\nservers = [\"198.51.100.53\"]\n[[pods]]\nname = \"p2\"\n".into();
    let (mut d, h) = w.started().await;

    assert_eq!(
        resolv(&w, "p1").as_deref(),
        Some("# written by weft-agent\nnameserver 198.51.100.53\nsearch lab.weft\n"),
        "p1's own server over the network's search list"
    );
    assert_eq!(resolv(&w, "p2").as_deref(), Some("# written by weft-agent\nnameserver 203.0.113.2\nsearch lab.weft\n"));
    let listed = status(&h).pods.into_iter().find(|p| p.name == "p2").expect("p2 listed");
    assert_eq!(listed.dns.map(|d| d.servers), Some(vec!["203.0.113.2".parse().expect("literal")]));

    // An API pod with its own settings; a bad setting is refused.
    let add = |dns| Request::PodAdd { name: "p3".into(), netns: None, ifname: None, netns_path: None, dns };
    let bad = DnsSettings { options: vec!["nd ots".into()], ..Default::default() };
    match api(&mut d, add(Some(bad))).await {
        Response::Error { message } => assert!(message.contains("dns.options[0]"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    let own = DnsSettings { options: vec!["ndots:2".into()], ..Default::default() };
    assert!(matches!(api(&mut d, add(Some(own))).await, Response::Pod(_)));
    assert_eq!(
        resolv(&w, "p3").as_deref(),
        Some("# written by weft-agent\nnameserver 203.0.113.2\nsearch lab.weft\noptions ndots:2\n")
    );

    // The network's servers change: every pod follows on the next full reconcile.
    let changed = net.clone().with_dns("t", servers(&["203.0.113.9"])).expect("dns");
    w.put(&Keys::new("lab").config(), changed.to_json());
    full(&mut d).await;
    assert_eq!(resolv(&w, "p2").as_deref(), Some("# written by weft-agent\nnameserver 203.0.113.9\n"));
    assert_eq!(resolv(&w, "p1").as_deref(), Some("# written by weft-agent\nnameserver 198.51.100.53\n"));
    assert_eq!(resolv(&w, "p3").as_deref(), Some("# written by weft-agent\nnameserver 203.0.113.9\noptions ndots:2\n"));

    // A deleted pod's file and directory go; without any settings there is no file at all.
    assert!(matches!(api(&mut d, Request::PodDel { name: "p3".into() }).await, Response::Done));
    assert!(!w.path("netns-etc").join("p3").exists(), "p3's directory removed");
    w.put(&Keys::new("lab").config(), net.with_dns("t", DnsSettings::default()).expect("none").to_json());
    full(&mut d).await;
    assert_eq!(resolv(&w, "p2"), None, "no settings, no file");
    assert!(resolv(&w, "p1").is_some(), "p1 keeps its own server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_without_any_server_are_refused_for_an_api_pod_and_write_no_file() {
    let mut w = World::new(CIDR);
    w.extra = "[[pods]]\nname = \"p1\"\n[pods.dns]\noptions = [\"ndots:2\"]\n".into();
    let (mut d, h) = w.started().await;
    assert_eq!(resolv(&w, "p1"), None, "options without a server: the host's resolv.conf applies");
    let own = DnsSettings { search: vec!["weft.test".into()], ..Default::default() };
    let add = Request::PodAdd { name: "p2".into(), netns: None, ifname: None, netns_path: None, dns: Some(own) };
    match api(&mut d, add).await {
        Response::Error { message } => assert!(message.contains("need a server"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(status(&h).pods.iter().all(|p| p.name != "p2"));
}
