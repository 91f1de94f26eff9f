//! What `lab status` shows: per node, the recorded agent pid, whether it runs, and what the
//! agent itself reports over its socket; per controller replica, its pid and URLs.

use super::names::LabNames;
use super::{IpFamily, Topology};
use serde::Serialize;
use std::net::{Ipv4Addr, Ipv6Addr};
use weft_config::api::{PodInfo, Status};
use weft_controller::output::table;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// `n1`.
    pub node: String,
    pub index: usize,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    /// In labs with IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<Ipv6Addr>,
    /// Agent pid recorded in state.json.
    pub pid: Option<u32>,
    /// The recorded agent process is alive.
    pub running: bool,
    /// The agent's own answer to `status`, when it answered.
    pub agent: Option<Status>,
    /// Why there is no answer.
    pub error: Option<String>,
}

impl NodeStatus {
    /// A node about which nothing could be learned.
    pub fn failed(names: &LabNames, i: usize, underlay_ip: Ipv4Addr, error: &str) -> Self {
        Self {
            node: LabNames::node_name(i),
            index: i,
            netns: names.node_ns(i),
            underlay_ip,
            underlay_ip6: None,
            pid: None,
            running: false,
            agent: None,
            error: Some(error.to_string()),
        }
    }

    /// Ready by the agent's own account.
    pub fn ready(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.ready)
    }
}

/// One `weft-controller` replica of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerStatus {
    /// `c1`: the replica's name in the election.
    pub name: String,
    pub index: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The cluster page (plain HTTP, reachable from every lab namespace).
    pub page: String,
    /// The join service (HTTPS), in labs where nodes join with a token.
    pub bootstrap: Option<String>,
    /// Pid recorded in state.json.
    pub pid: Option<u32>,
    /// The recorded process is alive.
    pub running: bool,
}

/// `"controller"` in `lab status --json`: replica 1, in the shape scripts read
/// (`.controller.page`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerSummary {
    pub page: String,
    pub bootstrap: Option<String>,
    pub pid: Option<u32>,
}

impl ControllerSummary {
    pub fn of(c: &ControllerStatus) -> Self {
        Self { page: c.page.clone(), bootstrap: c.bootstrap.clone(), pid: c.pid.filter(|_| c.running) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabStatus {
    pub id: String,
    pub backend: String,
    pub topology: Topology,
    pub ip_family: IpFamily,
    pub etcd_endpoint: String,
    pub etcd_pid: Option<u32>,
    pub etcd_running: bool,
    /// Replica 1, or null in a lab without controllers.
    pub controller: Option<ControllerSummary>,
    pub controllers: Vec<ControllerStatus>,
    pub nodes: Vec<NodeStatus>,
}

/// The human form of `lab status`.
pub fn render(s: &LabStatus) -> String {
    let family = match s.ip_family {
        IpFamily::V4 => String::new(),
        other => format!(", ip family {other}"),
    };
    let mut out = format!(
        "lab {}: backend {}, topology {}{family}, etcd {} {}\n",
        s.id,
        s.backend,
        s.topology,
        s.etcd_endpoint,
        match (s.etcd_pid, s.etcd_running) {
            (Some(p), true) => format!("(pid {p}, running)"),
            (Some(p), false) => format!("(pid {p}, DEAD)"),
            (None, _) => "(not started)".to_string(),
        }
    );
    for c in &s.controllers {
        let state = match (c.pid, c.running) {
            (Some(p), true) => format!("pid {p}, running"),
            (Some(p), false) => format!("pid {p}, DEAD"),
            (None, _) => "stopped".to_string(),
        };
        let bootstrap = c.bootstrap.as_ref().map_or_else(String::new, |b| format!(", join {b}"));
        out.push_str(&format!("controller {}: page {}{bootstrap} ({state})\n", c.name, c.page));
    }
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let agent = match (n.pid, n.running) {
                (Some(p), true) => format!("{p}"),
                (Some(p), false) => format!("{p} (dead)"),
                (None, _) => "stopped".to_string(),
            };
            let (ready, subnet, ip, pods) = match &n.agent {
                Some(a) => (
                    if a.ready { "yes" } else { "no" }.to_string(),
                    a.subnet.clone().unwrap_or_else(|| "-".into()),
                    a.public_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                    if a.pods.is_empty() {
                        "-".to_string()
                    } else {
                        a.pods.iter().map(pod_text).collect::<Vec<_>>().join(" ")
                    },
                ),
                None => ("-".into(), "-".into(), "-".into(), n.error.clone().map_or("-".into(), |e| format!("({e})"))),
            };
            let underlay = match n.underlay_ip6 {
                Some(ip6) => format!("{} {ip6}", n.underlay_ip),
                None => n.underlay_ip.to_string(),
            };
            vec![n.node.clone(), underlay, agent, ready, subnet, ip, pods]
        })
        .collect();
    out.push_str(&table(&["NODE", "UNDERLAY", "AGENT-PID", "READY", "SUBNET", "PUBLIC-IP", "PODS"], &rows));
    out
}

/// A pod in the PODS column: `NAME=ADDR`, or `NAME=ADDR,ADDR6` in a dual-stack lab.
fn pod_text(p: &PodInfo) -> String {
    let addrs: Vec<String> = p.addrs().iter().map(|a| a.ip.to_string()).collect();
    format!("{}={}", p.name, if addrs.is_empty() { "-".to_string() } else { addrs.join(",") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_show_an_address_per_family() {
        let mut p: PodInfo = serde_json::from_str(
            r#"{"name":"p1","netns":"n","ifname":"eth0","ip":"10.244.1.2","prefix_len":24,"gateway":"10.244.1.1",
                "host_veth":"wv","source":"config"}"#,
        )
        .expect("pod");
        assert_eq!(pod_text(&p), "p1=10.244.1.2");
        p.ip6 = Some("fd00:10:244:1::2".parse().expect("lit"));
        (p.prefix_len6, p.gateway6) = (Some(64), Some("fd00:10:244:1::1".parse().expect("lit")));
        assert_eq!(pod_text(&p), "p1=10.244.1.2,fd00:10:244:1::2");
        (p.ip, p.prefix_len, p.gateway) = (None, None, None);
        assert_eq!(pod_text(&p), "p1=fd00:10:244:1::2");
    }

    #[test]
    fn controllers_show_their_page_and_pid() {
        let c = |k: usize, pid, running| ControllerStatus {
            name: format!("c{k}"),
            index: k,
            netns: format!("weft0-c{k}"),
            ip: Ipv4Addr::new(172, 30, 0, 6 + k as u8),
            page: format!("http://172.30.0.{}:9650/", 6 + k),
            bootstrap: None,
            pid,
            running,
        };
        let controllers = vec![c(1, Some(40), true), c(2, Some(41), false), c(3, None, false)];
        let s = LabStatus {
            id: "0".into(),
            backend: "host-gw".into(),
            topology: Topology::Flat,
            ip_family: IpFamily::V4,
            etcd_endpoint: "https://172.30.0.2:2379".into(),
            etcd_pid: Some(5),
            etcd_running: true,
            controller: controllers.first().map(ControllerSummary::of),
            controllers,
            nodes: Vec::new(),
        };
        let r = render(&s);
        assert!(r.contains("\ncontroller c1: page http://172.30.0.7:9650/ (pid 40, running)\n"), "{r}");
        assert!(r.contains("\ncontroller c2: page http://172.30.0.8:9650/ (pid 41, DEAD)\n"), "{r}");
        assert!(r.contains("\ncontroller c3: page http://172.30.0.9:9650/ (stopped)\n"), "{r}");
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(
            v["controller"],
            serde_json::json!({"page": "http://172.30.0.7:9650/", "bootstrap": null, "pid": 40})
        );
        assert_eq!(v["controllers"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["controllers"][1]["running"], false);
        let none = LabStatus { controller: None, controllers: Vec::new(), ..s };
        let v = serde_json::to_value(&none).expect("json");
        assert!(v["controller"].is_null() && v["controllers"] == serde_json::json!([]), "{v}");
    }

    #[test]
    fn dead_agent_shows_as_such() {
        let names = LabNames::new("0").expect("id");
        let mut n = NodeStatus::failed(&names, 1, LabNames::node_ip(1), "connecting to agent socket /x: refused");
        n.pid = Some(77);
        let s = LabStatus {
            id: "0".into(),
            backend: "host-gw".into(),
            topology: Topology::Flat,
            ip_family: IpFamily::V4,
            etcd_endpoint: "https://172.30.0.2:2379".into(),
            etcd_pid: Some(5),
            etcd_running: true,
            controller: None,
            controllers: Vec::new(),
            nodes: vec![n],
        };
        let r = render(&s);
        assert!(
            r.starts_with("lab 0: backend host-gw, topology flat, etcd https://172.30.0.2:2379 (pid 5, running)\n"),
            "{r}"
        );
        assert!(
            r.contains("n1    172.30.0.11  77 (dead)  -      -       -          (connecting to agent socket"),
            "{r}"
        );
    }
}
