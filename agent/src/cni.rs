//! The `weft-cni` plugin's decisions (CNI spec 1.0): reading the runtime's environment and
//! network config, naming the pod, building the result and the error objects. The effects (the
//! agent's socket, namespaces) live in `src/bin/weft-cni.rs`.
//!
//! ADD asks the local agent for a pod whose namespace is `CNI_NETNS` (a path): the agent
//! bind-mounts it at `/run/netns/<pod>`, puts a veth into it on the node bridge and gives it an
//! address from the node subnet, so the plugin and the agent can never hand out one address
//! twice. DEL removes that pod (idempotent), CHECK verifies it against `prevResult`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use weft_config::api::PodAddr;
use weft_config::dns::DnsSettings;
use weft_config::subnet::Family;

/// CNI versions whose result format this plugin writes.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Default agent socket (agent.toml's `paths.socket` default).
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// CNI's well-known error codes (spec section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100+): the agent refused the request.
    pub const AGENT_REFUSED: u32 = 100;
    /// Plugin-specific: CHECK found the attachment different from what it should be.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The runtime's environment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; may be empty for DEL (the namespace can be gone already).
    pub netns: Option<String>,
    pub ifname: String,
}

fn valid_container_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Reads the CNI_* variables through `get`.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let bad = |msg: String| CniError::new(code::INVALID_ENV, msg, "");
    let command = match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some(other) => return Err(bad(format!("unknown CNI_COMMAND {other:?}; expected ADD, DEL, CHECK or VERSION"))),
        None => return Err(bad("CNI_COMMAND is not set".into())),
    };
    if command == Command::Version {
        return Ok(Env { command, container_id: String::new(), netns: None, ifname: String::new() });
    }
    let container_id =
        get("CNI_CONTAINERID").filter(|s| !s.is_empty()).ok_or_else(|| bad("CNI_CONTAINERID is not set".into()))?;
    if !valid_container_id(&container_id) {
        return Err(bad(format!("CNI_CONTAINERID {container_id:?} may only hold letters, digits, '_', '-' and '.'")));
    }
    let ifname = get("CNI_IFNAME").filter(|s| !s.is_empty()).ok_or_else(|| bad("CNI_IFNAME is not set".into()))?;
    if !weft_config::agent::valid_ifname(&ifname) {
        return Err(bad(format!("CNI_IFNAME {ifname:?} is not a valid interface name (1 to 15 characters)")));
    }
    let netns = get("CNI_NETNS").filter(|s| !s.is_empty());
    if netns.is_none() && command != Command::Del {
        return Err(bad("CNI_NETNS is not set".into()));
    }
    if let Some(n) = &netns {
        crate::netns_path::check_path(n).map_err(|e| bad(format!("CNI_NETNS: {e}")))?;
    }
    Ok(Env { command, container_id, netns, ifname })
}

/// The network configuration from stdin, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The local agent's API socket (`"socket"`, default /run/weft/agent.sock).
    pub socket: String,
    pub prev_result: Option<Value>,
    /// The resolver settings asked for: the runtime's `runtimeConfig.dns` (the `dns`
    /// capability) over the network configuration's `dns`.
    pub dns: Option<DnsSettings>,
    /// What is wrong with the network configuration's `dns`: ADD fails with it, DEL and CHECK
    /// go on without it.
    pub dns_error: Option<CniError>,
}

/// The cniVersion of whatever came on stdin, for error objects (falls back to 1.0.0).
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_string())
}

pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, "network configuration is not valid JSON", e.to_string()))?;
    let obj =
        v.as_object().ok_or_else(|| CniError::new(code::DECODE, "network configuration is not a JSON object", ""))?;
    let s = |k: &str| -> Result<Option<String>, CniError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(CniError::new(code::INVALID_CONFIG, format!("\"{k}\" must be a string"), "")),
        }
    };
    let cni_version =
        s("cniVersion")?.ok_or_else(|| CniError::new(code::INVALID_CONFIG, "\"cniVersion\" is required", ""))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {cni_version} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let name = s("name")?.ok_or_else(|| CniError::new(code::INVALID_CONFIG, "\"name\" is required", ""))?;
    if !valid_container_id(&name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network name {name:?} may only hold letters, digits, '_', '-' and '.'"),
            "",
        ));
    }
    let socket = s("socket")?.unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    if !socket.starts_with('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("\"socket\" must be an absolute path, found {socket:?}"),
            "",
        ));
    }
    if let Some(ipam) = obj.get("ipam").filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty())) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "\"ipam\" is not supported: weft-cni takes addresses from the node's weft subnet",
            ipam.to_string(),
        ));
    }
    // The operator's `dns` is checked, but only ADD fails on it (DEL and CHECK must work
    // whatever it holds); the runtime's is taken leniently: weft only hands it back.
    let (conf_dns, dns_error) = match dns_of(obj.get("dns"), "dns", "nameservers", "search", false) {
        Ok(d) => (d, None),
        Err(e) => (None, Some(e)),
    };
    let runtime_dns =
        dns_of(obj.get("runtimeConfig").and_then(|r| r.get("dns")), "runtimeConfig.dns", "servers", "searches", true)
            .unwrap_or(None);
    let dns = match (runtime_dns, conf_dns) {
        (Some(r), Some(c)) => Some(r.over(&c)),
        (r, c) => r.or(c),
    };
    let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
    Ok(NetConf { cni_version, name, socket, prev_result, dns, dns_error })
}

/// A DNS object of the network configuration (`{"nameservers", "domain", "search", "options"}`)
/// or of the runtime's `dns` capability (`{"servers", "searches", "options"}`); the two spell the
/// lists differently. `domain` goes first in the search list, as resolv.conf(5) treats it.
fn dns_of(
    v: Option<&Value>,
    field: &str,
    servers_key: &str,
    search_key: &str,
    lenient: bool,
) -> Result<Option<DnsSettings>, CniError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let bad = |what: String| CniError::new(code::INVALID_CONFIG, format!("\"{field}\" {what}"), v.to_string());
    let obj = v.as_object().ok_or_else(|| bad("must be an object".into()))?;
    // Strings of one list; a lenient read skips what is not a string.
    let list = |key: &str| -> Result<Vec<String>, CniError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if lenient => {
                Ok(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| bad(format!("{key:?} must hold strings"))))
                .collect(),
            Some(_) if lenient => Ok(Vec::new()),
            Some(_) => Err(bad(format!("{key:?} must be an array of strings"))),
        }
    };
    let mut servers = Vec::new();
    for s in list(servers_key)? {
        match s.parse() {
            Ok(ip) => servers.push(ip),
            Err(_) if lenient => {} // e.g. a zone index (fe80::1%eth0), which resolv.conf cannot hold
            Err(_) => return Err(bad(format!("{servers_key:?} holds {s:?}, not an IP address"))),
        }
    }
    let mut search = list(search_key)?;
    if let Some(domain) = obj.get("domain").and_then(Value::as_str).filter(|d| !d.is_empty()) {
        search.retain(|d| d != domain);
        search.insert(0, domain.to_string());
    }
    let mut dns = DnsSettings { servers, search, options: list("options")? };
    if lenient {
        dns = dns.sanitized();
    } else {
        dns.check("network configuration", field).map_err(|e| bad(e.message))?;
    }
    Ok((!dns.is_empty()).then_some(dns))
}

/// The agent's pod name (and /run/netns name) for one attachment: stable for the same
/// container and interface, 25 characters, a valid weft pod name.
pub fn pod_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("weft-cni-{hex}")
}

/// What ADD made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub host_veth: String,
    pub host_mac: String,
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    /// One address per family of the network (IPv4 first), each with its gateway.
    pub addrs: Vec<PodAddr>,
    /// The pod's resolver settings, as the agent answered them.
    pub dns: Option<DnsSettings>,
}

/// The ADD result in the format of `version`: every address of the pod with its gateway, and
/// a default route per family.
pub fn result(version: &str, a: &Attachment) -> Value {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for addr in &a.addrs {
        let family = Family::of(addr.ip);
        let mut ip = Map::new();
        if version.starts_with("0.") {
            ip.insert("version".into(), json!(if family == Family::V4 { "4" } else { "6" }));
        }
        let default = if family == Family::V4 { "0.0.0.0/0" } else { "::/0" };
        ip.insert("address".into(), json!(format!("{}/{}", addr.ip, addr.prefix_len)));
        ip.insert("gateway".into(), json!(addr.gateway.to_string()));
        ip.insert("interface".into(), json!(1));
        ips.push(Value::Object(ip));
        routes.push(json!({ "dst": default, "gw": addr.gateway.to_string() }));
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": a.host_veth, "mac": a.host_mac },
            { "name": a.ifname, "mac": a.mac, "sandbox": a.sandbox },
        ],
        "ips": ips,
        "routes": routes,
        "dns": cni_dns(a.dns.as_ref()),
    })
}

/// A result's `dns` object: `nameservers`, `search`, `options`, each present when set.
fn cni_dns(dns: Option<&DnsSettings>) -> Value {
    let mut o = Map::new();
    if let Some(d) = dns {
        if !d.servers.is_empty() {
            o.insert("nameservers".into(), json!(d.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
        }
        if !d.search.is_empty() {
            o.insert("search".into(), json!(d.search));
        }
        if !d.options.is_empty() {
            o.insert("options".into(), json!(d.options));
        }
    }
    Value::Object(o)
}

/// From a `prevResult`: the address of `family` (with prefix) it gave `ifname` in `sandbox`
/// (a dual-stack result holds one per family).
pub fn prev_address(prev: &Value, ifname: &str, sandbox: &str, family: Family) -> Result<(IpAddr, u8), CniError> {
    let bad = |m: &str| CniError::new(code::INVALID_CONFIG, format!("prevResult: {m}"), prev.to_string());
    let ifaces = prev.get("interfaces").and_then(Value::as_array).ok_or_else(|| bad("no interfaces"))?;
    let idx = ifaces
        .iter()
        .position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
        })
        .ok_or_else(|| bad(&format!("no interface {ifname} in sandbox {sandbox}")))?;
    let ips = prev.get("ips").and_then(Value::as_array).ok_or_else(|| bad("no ips"))?;
    let mut addrs = ips
        .iter()
        .filter(|ip| ip.get("interface").and_then(Value::as_u64) == Some(idx as u64))
        .filter_map(|ip| ip.get("address")?.as_str())
        .peekable();
    if addrs.peek().is_none() {
        return Err(bad(&format!("no address for interface {ifname}")));
    }
    for addr in addrs {
        let (a, p) = addr.split_once('/').ok_or_else(|| bad("address without prefix length"))?;
        match (a.parse::<IpAddr>(), p.parse::<u8>()) {
            (Ok(a), Ok(p)) if p <= Family::of(a).bits() => {
                if Family::of(a) == family {
                    return Ok((a, p));
                }
            }
            _ => return Err(bad(&format!("address {addr:?} is not an address/prefix"))),
        }
    }
    Err(bad(&format!("no {family} address for interface {ifname}")))
}

/// The VERSION answer.
pub fn version_info(requested: &str) -> Value {
    json!({ "cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_env(|k| m.get(k).cloned())
    }

    #[test]
    fn environment() {
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/proc/1/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("valid");
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.netns.as_deref(), Some("/proc/1/ns/net"));
        let del = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")])
            .expect("DEL without netns");
        assert_eq!(del.netns, None);
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).expect("version").command, Command::Version);
        for (vars, want) in [
            (vec![], "CNI_COMMAND is not set"),
            (vec![("CNI_COMMAND", "FOO")], "unknown CNI_COMMAND \"FOO\"; expected ADD, DEL, CHECK or VERSION"),
            (vec![("CNI_COMMAND", "ADD")], "CNI_CONTAINERID is not set"),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a/b")],
                "CNI_CONTAINERID \"a/b\" may only hold letters, digits, '_', '-' and '.'",
            ),
            (vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")], "CNI_NETNS is not set"),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "an-interface-too-long")],
                "CNI_IFNAME \"an-interface-too-long\" is not a valid interface name (1 to 15 characters)",
            ),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "ns1")],
                "CNI_NETNS: namespace path must be an absolute path, found \"ns1\"",
            ),
        ] {
            let e = env(&vars).expect_err("invalid");
            assert_eq!((e.code, e.msg.as_str()), (code::INVALID_ENV, want));
        }
    }

    #[test]
    fn network_config() {
        let c =
            parse_conf(br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":"/run/x.sock","extra":1}"#)
                .expect("valid");
        assert_eq!((c.cni_version.as_str(), c.name.as_str(), c.socket.as_str()), ("1.0.0", "weft", "/run/x.sock"));
        let d =
            parse_conf(br#"{"cniVersion":"0.4.0","name":"weft","type":"weft-cni","ipam":{}}"#).expect("empty ipam ok");
        assert_eq!(d.socket, DEFAULT_SOCKET);
        for (input, code_, msg) in [
            (&b"{nope"[..], code::DECODE, "network configuration is not valid JSON"),
            (b"[]", code::DECODE, "network configuration is not a JSON object"),
            (br#"{"name":"w"}"#, code::INVALID_CONFIG, "\"cniVersion\" is required"),
            (br#"{"cniVersion":"9.9.9","name":"w"}"#, code::INCOMPATIBLE_VERSION, "CNI version 9.9.9 is not supported"),
            (br#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG, "\"name\" is required"),
            (br#"{"cniVersion":"1.0.0","name":3}"#, code::INVALID_CONFIG, "\"name\" must be a string"),
            (
                br#"{"cniVersion":"1.0.0","name":"w","socket":"rel"}"#,
                code::INVALID_CONFIG,
                "\"socket\" must be an absolute path, found \"rel\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"w","ipam":{"type":"host-local"}}"#,
                code::UNSUPPORTED_FIELD,
                "\"ipam\" is not supported: weft-cni takes addresses from the node's weft subnet",
            ),
        ] {
            let e = parse_conf(input).expect_err("invalid");
            assert_eq!((e.code, e.msg.as_str()), (code_, msg), "{}", String::from_utf8_lossy(input));
        }
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(version_of(b"garbage"), "1.0.0");
    }

    /// Pod `c1`'s eth0 with address `ip`/`prefix_len` and gateway `gateway`.
    fn attachment(ip: &str, prefix_len: u8, gateway: &str) -> Attachment {
        Attachment {
            host_veth: "wv01234567".into(),
            host_mac: "aa:bb:cc:dd:ee:01".into(),
            ifname: "eth0".into(),
            mac: "aa:bb:cc:dd:ee:02".into(),
            sandbox: "/var/run/netns/c1".into(),
            addrs: vec![PodAddr { ip: ip.parse().expect("lit"), prefix_len, gateway: gateway.parse().expect("lit") }],
            dns: None,
        }
    }

    #[test]
    fn resolvers_come_from_the_runtime_over_the_network_and_go_back_in_the_result() {
        let c = parse_conf(
            br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni",
                 "dns":{"nameservers":["10.96.0.10"],"domain":"lab.weft","search":["weft"],"options":["ndots:5"]},
                 "runtimeConfig":{"dns":{"servers":["203.0.113.2"],"options":["ndots:2","edns0"]}}}"#,
        )
        .expect("valid");
        let dns = c.dns.expect("dns");
        assert_eq!(dns.servers, vec!["203.0.113.2".parse::<IpAddr>().expect("lit")], "the runtime's servers win");
        assert_eq!(dns.search, vec!["lab.weft".to_string(), "weft".to_string()], "domain first, then search");
        assert_eq!(dns.options, vec!["ndots:2".to_string(), "edns0".to_string()]);
        let none = parse_conf(br#"{"cniVersion":"1.0.0","name":"weft","dns":{}}"#).expect("valid");
        assert_eq!(none.dns, None);
        for bad in [
            &br#"{"cniVersion":"1.0.0","name":"w","dns":[]}"#[..],
            br#"{"cniVersion":"1.0.0","name":"w","dns":{"nameservers":["dns.example"]}}"#,
            br#"{"cniVersion":"1.0.0","name":"w","dns":{"search":"one"}}"#,
        ] {
            let c = parse_conf(bad).expect("parsed: DEL and CHECK must still work");
            let e = c.dns_error.expect("the operator's bad dns is kept for ADD");
            assert_eq!(e.code, code::INVALID_CONFIG, "{}", String::from_utf8_lossy(bad));
        }
        // The runtime's settings are passed on leniently: what resolv.conf cannot hold is dropped.
        let lenient = parse_conf(
            br#"{"cniVersion":"1.0.0","name":"w","runtimeConfig":{"dns":{"servers":["fe80::1%eth0","10.96.0.10"],
                 "searches":["a.example","b c","d.example","e","f","g","h","i"],"options":["a b","ndots:5"]}}}"#,
        )
        .expect("valid");
        assert!(lenient.dns_error.is_none());
        let d = lenient.dns.expect("dns");
        assert_eq!(d.servers, vec!["10.96.0.10".parse::<IpAddr>().expect("lit")]);
        assert_eq!(d.search, ["a.example", "d.example", "e", "f", "g", "h"]);
        assert_eq!(d.options, ["ndots:5"]);
        let mut a = attachment("10.244.1.5", 24, "10.244.1.1");
        assert_eq!(result("1.0.0", &a)["dns"], json!({}));
        a.dns = Some(dns);
        assert_eq!(
            result("1.0.0", &a)["dns"],
            json!({"nameservers":["203.0.113.2"],"search":["lab.weft","weft"],"options":["ndots:2","edns0"]})
        );
    }

    #[test]
    fn a_dual_stack_result_lists_both_addresses_and_both_routes() {
        let mut a = attachment("10.244.1.5", 24, "10.244.1.1");
        a.addrs.extend(attachment("fd00:10:244:1::5", 64, "fd00:10:244:1::1").addrs);
        let r = result("1.0.0", &a);
        assert_eq!(
            r["ips"],
            json!([
                {"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":1},
                {"address":"fd00:10:244:1::5/64","gateway":"fd00:10:244:1::1","interface":1},
            ])
        );
        assert_eq!(r["routes"], json!([{"dst":"0.0.0.0/0","gw":"10.244.1.1"}, {"dst":"::/0","gw":"fd00:10:244:1::1"}]));
        let old = result("0.4.0", &a);
        assert_eq!((old["ips"][0]["version"].as_str(), old["ips"][1]["version"].as_str()), (Some("4"), Some("6")));
        let sb = "/var/run/netns/c1";
        assert_eq!(prev_address(&r, "eth0", sb, Family::V4), Ok(("10.244.1.5".parse().expect("lit"), 24)));
        assert_eq!(prev_address(&r, "eth0", sb, Family::V6), Ok(("fd00:10:244:1::5".parse().expect("lit"), 64)));
    }

    #[test]
    fn ipv6_results_and_dual_stack_prev_results() {
        let a = attachment("fd00:10:244:1::5", 64, "fd00:10:244:1::1");
        let r = result("0.4.0", &a);
        assert_eq!(r["ips"][0]["version"], "6");
        assert_eq!(r["ips"][0]["address"], "fd00:10:244:1::5/64");
        assert_eq!(r["routes"][0], json!({"dst":"::/0","gw":"fd00:10:244:1::1"}));
        let sb = "/var/run/netns/c1";
        assert_eq!(prev_address(&r, "eth0", sb, Family::V6), Ok(("fd00:10:244:1::5".parse().expect("lit"), 64)));
        let e = prev_address(&r, "eth0", sb, Family::V4).expect_err("no v4");
        assert_eq!(e.msg, "prevResult: no IPv4 address for interface eth0");
        let mut dual = r.clone();
        dual["ips"] = json!([
            {"address": "fd00:10:244:1::5/64", "interface": 1},
            {"address": "10.244.1.5/24", "interface": 1},
        ]);
        assert_eq!(prev_address(&dual, "eth0", sb, Family::V4), Ok(("10.244.1.5".parse().expect("lit"), 24)));
        dual["ips"][1]["address"] = json!("10.244.1.5/33");
        let e = prev_address(&dual, "eth0", sb, Family::V4).expect_err("bad prefix");
        assert_eq!(e.msg, "prevResult: address \"10.244.1.5/33\" is not an address/prefix");
    }

    #[test]
    fn names_and_results() {
        let n = pod_name("0123456789abcdef0123456789abcdef", "eth0");
        assert_eq!(n, pod_name("0123456789abcdef0123456789abcdef", "eth0"));
        assert_ne!(n, pod_name("0123456789abcdef0123456789abcdef", "eth1"));
        assert!(weft_config::agent::valid_name(&n) && n.len() == 25, "{n}");
        let a = attachment("10.244.1.5", 24, "10.244.1.1");
        let r = result("1.0.0", &a);
        assert_eq!(r["ips"][0], json!({"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":1}));
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/c1");
        assert_eq!(r["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.244.1.1"}));
        assert_eq!(result("0.4.0", &a)["ips"][0]["version"], "4");
        assert_eq!(
            prev_address(&r, "eth0", "/var/run/netns/c1", Family::V4),
            Ok(("10.244.1.5".parse().expect("lit"), 24))
        );
        assert_eq!(
            prev_address(&r, "eth1", "/var/run/netns/c1", Family::V4).expect_err("other if").code,
            code::INVALID_CONFIG
        );
        assert_eq!(version_info("1.0.0")["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]));
        assert_eq!(
            CniError::new(7, "m", "d").to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":7,"msg":"m","details":"d"})
        );
    }
}
