//! Test fixtures for the firewall modules: real `iptables -S` and `nft -j` outputs, a recording
//! fake [`Runner`], and the spec they were captured with.
//!
//! Fixtures are real outputs captured on Debian 12 (iptables 1.8.9 nf_tables, nft 1.0.6) inside a
//! scratch network namespace; spec: network `t`, cluster 10.244.0.0/16, node 10.244.1.0/24,
//! bridge `r-c1`, tun `r-c2`. The IPv6 ones (`IP6_*`, `NFT_*6`, `NFT_FORWARD_DUAL`) were captured
//! the same way with the IPv6 twin of that spec ([`spec6`]: cluster fd00:244::/48, node
//! fd00:244:0:1::/64, tag `weft:t:ip6`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{render_command, Command, FirewallError, FirewallSpec, ForwardMode, Runner};

pub(super) const DOCKER_FILTER_BEFORE: &str = "-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-USER -j RETURN
";
pub(super) const DOCKER_FILTER_AFTER: &str = r#"-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-USER
-N WEFT-FWD-t
-A FORWARD -m comment --comment "weft:t" -j WEFT-FWD-t
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-USER -j RETURN
-A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment "weft:t" -j ACCEPT
"#;
/// After `iptables -F WEFT-FWD-t` (what a firewall reload of the chain looks like).
pub(super) const DOCKER_FILTER_FLUSHED: &str = r#"-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-USER
-N WEFT-FWD-t
-A FORWARD -m comment --comment "weft:t" -j WEFT-FWD-t
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-USER -j RETURN
"#;
pub(super) const DOCKER_NAT_BEFORE: &str = "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
";
pub(super) const DOCKER_NAT_AFTER: &str = r#"-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-N WEFT-MASQ-t
-A POSTROUTING -m comment --comment "weft:t" -j WEFT-MASQ-t
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A WEFT-MASQ-t -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "weft:t" -j RETURN
-A WEFT-MASQ-t -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft:t" -j MASQUERADE --random-fully
"#;
pub(super) const DOCKER_CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-ISOLATION-STAGE-1", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 3}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 6, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip", "table": "filter", "name": "WEFT-FWD-t", "handle": 11}}, {"chain": {"family": "ip", "table": "nat", "name": "DOCKER", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 2, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "nat", "name": "WEFT-MASQ-t", "handle": 4}}]}"#;
pub(super) const TUNNEL_FILTER_AFTER: &str = r#"-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N WEFT-FWD-t
-A FORWARD -m comment --comment "weft:t" -j WEFT-FWD-t
-A WEFT-FWD-t -s 10.244.0.0/16 -d 10.244.1.0/24 -i r-c2 -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t -s 10.244.1.0/24 -i r-c1 -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t ! -s 10.244.0.0/16 -d 10.244.1.0/24 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment "weft:t" -j DROP
"#;
pub(super) const EMPTY_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";
pub(super) const EMPTY_NAT: &str = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
/// A pure nftables host: `table inet filter { chain forward { ...; policy drop; ct state invalid drop; } }`.
pub(super) const NFT_CHAINS_BEFORE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
pub(super) const NFT_CHAINS_AFTER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip", "table": "filter", "name": "WEFT-FWD-t", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;
pub(super) const NFT_FORWARD_BEFORE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;
pub(super) const NFT_FORWARD_AFTER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;
/// Tunnel rules of `t`, open rules of a second network `t2`, a foreign `ip saddr 10.244.1.2 drop`
/// and `ct state invalid drop`.
pub(super) const NFT_FORWARD_TUNNEL: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 12, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c2"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 11, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 10, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "r-c1"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 9, "comment": "weft:t2", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 8, "comment": "weft:t2", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.244.1.2"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;

/// `ip6tables -S` after the tunnel rules of [`spec6`].
pub(super) const IP6_FILTER_AFTER: &str = r#"-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N WEFT-FWD-t
-A FORWARD -m comment --comment "weft:t:ip6" -j WEFT-FWD-t
-A WEFT-FWD-t -s fd00:244::/48 -d fd00:244:0:1::/64 -i r-c2 -m comment --comment "weft:t:ip6" -j ACCEPT
-A WEFT-FWD-t -s fd00:244:0:1::/64 -i r-c1 -m comment --comment "weft:t:ip6" -j ACCEPT
-A WEFT-FWD-t ! -s fd00:244::/48 -d fd00:244:0:1::/64 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft:t:ip6" -j ACCEPT
-A WEFT-FWD-t -d fd00:244::/48 -m comment --comment "weft:t:ip6" -j DROP
"#;
/// `ip6tables -t nat -S` after the masquerade of [`spec6`].
pub(super) const IP6_NAT_AFTER: &str = r#"-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N WEFT-MASQ-t
-A POSTROUTING -m comment --comment "weft:t:ip6" -j WEFT-MASQ-t
-A WEFT-MASQ-t -s fd00:244::/48 -d fd00:244::/48 -m comment --comment "weft:t:ip6" -j RETURN
-A WEFT-MASQ-t -s fd00:244::/48 ! -d ff00::/8 -m comment --comment "weft:t:ip6" -j MASQUERADE --random-fully
"#;
/// The chains of a host with `table inet filter`, ip6tables-nft's own tables (after the rules of
/// [`spec6`]), and a forward chain in a table of family `ip6` and one of family `ip`, each of
/// someone else's (two captures joined into one listing).
pub(super) const NFT_CHAINS6: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip6", "table": "filter", "name": "WEFT-FWD-t", "handle": 1}}, {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "handle": 6, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"chain": {"family": "ip6", "table": "nat", "name": "WEFT-MASQ-t", "handle": 1}}, {"chain": {"family": "ip6", "table": "nat", "name": "POSTROUTING", "handle": 4, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip6", "table": "mine", "name": "forward6", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mine4", "name": "forward4", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;
/// One `inet` forward chain holding the tunnel rules of both families (handles 9, 8, 7: `weft:t:ip6`;
/// 6, 5, 4: `weft:t`), then a foreign `ip6 saddr fd00:244:0:1::2 drop` and `ct state invalid drop`.
pub(super) const NFT_FORWARD_DUAL: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 9, "comment": "weft:t:ip6", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c2"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:244::", "len": 48}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "fd00:244:0:1::", "len": 64}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 8, "comment": "weft:t:ip6", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:244:0:1::", "len": 64}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 7, "comment": "weft:t:ip6", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "r-c1"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:244::", "len": 48}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "fd00:244:0:1::", "len": 64}}}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 6, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c2"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 5, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "r-c1"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00:244:0:1::2"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;

pub(super) const FILTER_LIST: &str = "iptables -w 5 -t filter -S";
pub(super) const NAT_LIST: &str = "iptables -w 5 -t nat -S";
pub(super) const IP6_FILTER_LIST: &str = "ip6tables -w 5 -t filter -S";
pub(super) const IP6_NAT_LIST: &str = "ip6tables -w 5 -t nat -S";
pub(super) const NFT_CHAINS: &str = "nft -j list chains";
pub(super) const NFT_LIST_FWD: &str = "nft list chain inet filter forward";

/// Records every command (nft JSON rendered as nft syntax) and answers from a table; commands
/// without an entry succeed with empty output.
#[derive(Default)]
pub(super) struct Fake {
    answers: HashMap<String, Result<String, FirewallError>>,
    calls: RefCell<Vec<String>>,
}

impl Fake {
    pub(super) fn with(mut self, command: &str, output: &str) -> Self {
        self.answers.insert(command.to_string(), Ok(output.to_string()));
        self
    }
    pub(super) fn failing(mut self, command: &str, err: FirewallError) -> Self {
        self.answers.insert(command.to_string(), Err(err));
        self
    }
    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
    pub(super) fn writes(&self) -> Vec<String> {
        self.calls().into_iter().filter(|c| !is_listing(c)).collect()
    }
}

pub(super) fn is_listing(c: &str) -> bool {
    c.ends_with(" -S") || c == NFT_CHAINS || c.starts_with("nft list chain ")
}

impl Runner for Fake {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError> {
        let call = describe(program, args);
        self.calls.borrow_mut().push(call.clone());
        self.answers.get(&call).cloned().unwrap_or(Ok(String::new()))
    }
}

pub(super) fn describe(program: &str, args: &[&str]) -> String {
    match (program, args) {
        ("nft", ["-j", doc]) if doc.starts_with('{') => {
            let doc: Value = serde_json::from_str(doc).expect("nft JSON input");
            let cmds = doc["nftables"].as_array().expect("nftables array");
            let lines: Vec<String> = cmds.iter().map(nft_command_text).collect();
            format!("nft {}", lines.join("; "))
        }
        _ => render_command(program, args),
    }
}

pub(super) fn nft_command_text(cmd: &Value) -> String {
    if let Some(c) = cmd.pointer("/list/chain") {
        return format!("list chain {} {} {}", c["family"].as_str().unwrap_or("?"), c["table"], c["name"])
            .replace('"', "");
    }
    if let Some(r) = cmd.pointer("/delete/rule") {
        return format!("delete rule {} {} {} handle {}", r["family"], r["table"], r["chain"], r["handle"])
            .replace('"', "");
    }
    if let Some(r) = cmd.pointer("/insert/rule") {
        let head = format!("insert rule {} {} {}", r["family"], r["table"], r["chain"]).replace('"', "");
        return format!("{head} {} comment {}", nft_expr_text(&r["expr"]), r["comment"]);
    }
    panic!("unexpected nft command {cmd}")
}

/// Just enough of nft's syntax for weft's own rules.
pub(super) fn nft_expr_text(expr: &Value) -> String {
    let mut out = Vec::new();
    for e in expr.as_array().expect("expr array") {
        if e.get("accept").is_some() {
            out.push("accept".to_string());
            continue;
        }
        let m = e.get("match").expect("match");
        let left = if let Some(p) = m["left"].get("payload") {
            format!("{} {}", p["protocol"].as_str().unwrap_or("?"), p["field"].as_str().unwrap_or("?"))
        } else if let Some(k) = m["left"].pointer("/meta/key") {
            k.as_str().unwrap_or("?").to_string()
        } else {
            format!("ct {}", m["left"].pointer("/ct/key").and_then(Value::as_str).unwrap_or("?"))
        };
        let right = match &m["right"] {
            Value::String(s) if left.ends_with("ifname") => format!("\"{s}\""),
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
            v => format!("{}/{}", v.pointer("/prefix/addr").and_then(Value::as_str).unwrap_or("?"), v["prefix"]["len"]),
        };
        let op = if m["op"] == "!=" { "!= " } else { "" };
        out.push(format!("{left} {op}{right}"));
    }
    out.join(" ")
}

pub(super) fn spec(mode: ForwardMode, ip_masq: bool) -> FirewallSpec {
    FirewallSpec {
        network: "t".into(),
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        node_subnet: "10.244.1.0/24".parse().expect("subnet"),
        bridge: "r-c1".into(),
        mode,
        overrides: BTreeMap::new(),
        ip_masq,
    }
}

/// The IPv6 twin of [`spec`]: cluster fd00:244::/48, node fd00:244:0:1::/64.
pub(super) fn spec6(mode: ForwardMode, ip_masq: bool) -> FirewallSpec {
    FirewallSpec {
        cluster_cidr: "fd00:244::/48".parse().expect("cidr"),
        node_subnet: "fd00:244:0:1::/64".parse().expect("subnet"),
        ..spec(mode, ip_masq)
    }
}

pub(super) fn tunnel() -> ForwardMode {
    ForwardMode::Tunnel { tun: "r-c2".into() }
}

pub(super) fn docker_host(filter: &str, nat: &str) -> Fake {
    Fake::default().with(FILTER_LIST, filter).with(NAT_LIST, nat).with(NFT_CHAINS, DOCKER_CHAINS)
}

pub(super) fn nft_host(forward: &str) -> Fake {
    Fake::default()
        .with(FILTER_LIST, EMPTY_FILTER)
        .with(NAT_LIST, EMPTY_NAT)
        .with(NFT_CHAINS, NFT_CHAINS_BEFORE)
        .with(NFT_LIST_FWD, forward)
}

/// A plan's commands as the fake records them (nft JSON rendered as nft syntax).
pub(super) fn rendered(plan: &[Command]) -> Vec<String> {
    plan.iter().map(|c| describe(c.program, &c.args.iter().map(String::as_str).collect::<Vec<_>>())).collect()
}
