//! The nftables side of the firewall, pure: the parsers of `nft -j` listings, the renderers of
//! weft's rule expressions, and the plans that turn a chain's listing into one nft transaction.
//! An IPv4 spec writes `ip saddr`/`ip daddr` matches into the forward chains of families `ip`
//! and `inet`, an IPv6 one `ip6 saddr`/`ip6 daddr` matches into those of `ip6` and `inet`.

use serde_json::{json, Value};

use super::spec::{Family, FirewallSpec};
use super::{Command, ForwardMode, OnFailure};
use ipnet::IpNet;

/// The nftables command-line tool.
pub const NFT: &str = "nft";

/// Tables iptables-nft (ip6tables-nft) creates in family `ip` (`ip6`); their `FORWARD` chain is
/// handled through iptables (ip6tables).
const IPTABLES_NFT_TABLES: [&str; 5] = ["filter", "mangle", "raw", "security", "nat"];

/// The nft family of `family`'s own tables, and the protocol of its address matches.
fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The command that lists every chain (read by [`parse_nft_forward_chains`]).
pub fn list_chains() -> Command {
    Command::new(NFT, vec!["-j".into(), "list".into(), "chains".into()], OnFailure::Stop)
}

/// The command that lists one chain's rules (read by [`parse_nft_rules`]). Names go through
/// JSON, never through nft's command-line parser, so spaces in them are harmless.
pub fn list_chain(chain: &NftChain) -> Command {
    let list = json!({ "list": { "chain": { "family": chain.family, "table": chain.table, "name": chain.name } } });
    transaction(vec![list], OnFailure::Stop)
}

/// One atomic `nft -j` transaction.
fn transaction(commands: Vec<Value>, on_failure: OnFailure) -> Command {
    let text = json!({ "nftables": commands }).to_string();
    Command::new(NFT, vec!["-j".into(), text], on_failure)
}

/// The write that puts weft's rules for `spec` at the top of `chain`, given the chain's current
/// `rules`: nothing when they are there in order with no foreign drop/reject before the last of
/// them; otherwise one transaction deleting weft's rules (by handle) and inserting the wanted ones.
pub fn plan(spec: &FirewallSpec, chain: &NftChain, rules: &[NftRule]) -> Vec<Command> {
    if !chain.carries(spec.family()) {
        return Vec::new();
    }
    let tag = spec.tag();
    let want = nft_rule_exprs(spec);
    let ours: Vec<(usize, &NftRule)> =
        rules.iter().enumerate().filter(|(_, r)| r.comment.as_deref() == Some(tag.as_str())).collect();
    let content_ok = ours.len() == want.len()
        && ours.iter().zip(&want).all(|((_, r), w)| normalize_json(&r.expr) == normalize_json(w));
    let placed_ok = match ours.last() {
        Some((last, _)) => {
            !rules[..*last].iter().any(|r| r.comment.as_deref() != Some(tag.as_str()) && nft_drops(&r.expr))
        }
        None => want.is_empty(),
    };
    if content_ok && placed_ok {
        return Vec::new();
    }
    let mut commands: Vec<Value> = ours.iter().map(|(_, r)| chain.delete_rule(r.handle)).collect();
    // Each insert goes to the top, so the last wanted rule is inserted first.
    commands.extend(want.iter().rev().map(|expr| {
        json!({ "insert": { "rule": {
            "family": chain.family, "table": chain.table, "chain": chain.name, "comment": tag, "expr": expr,
        } } })
    }));
    let what = if ours.is_empty() { "inserted" } else { "replaced" };
    vec![transaction(commands, OnFailure::Stop)
        .noting(format!("nft {chain}: {what} {} weft rules at the top", want.len()))]
}

/// The write that deletes every rule tagged for `spec.network` from `chain`; nothing when none is.
pub fn plan_remove(spec: &FirewallSpec, chain: &NftChain, rules: &[NftRule]) -> Vec<Command> {
    let tag = spec.tag();
    let commands: Vec<Value> = rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some(tag.as_str()))
        .map(|r| chain.delete_rule(r.handle))
        .collect();
    if commands.is_empty() {
        return Vec::new();
    }
    let n = commands.len();
    vec![transaction(commands, OnFailure::Continue).noting(format!("nft {chain}: deleted {n} weft rules"))]
}

// ---- desired rules ----

pub(super) fn nft_match(op: &str, left: Value, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}

fn nft_addr(family: Family, field: &str) -> Value {
    json!({ "payload": { "protocol": nft_family(family), "field": field } })
}

fn nft_meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}

/// A prefix the way `nft -j` lists it (a /32 or /128 is a plain address).
pub(super) fn nft_prefix(net: IpNet) -> Value {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
    }
}

/// The `expr` arrays of weft's nft rules, in chain order, as `nft -j` lists them (see the module
/// documentation for the rule sets).
pub fn nft_rule_exprs(spec: &FirewallSpec) -> Vec<Value> {
    let addr = |field: &str| nft_addr(spec.family(), field);
    let cidr = nft_prefix(spec.cluster_cidr);
    let subnet = nft_prefix(spec.node_subnet);
    let accept = json!({ "accept": null });
    let from_tun = |tun: &str, src: Value| {
        json!([
            nft_match("==", nft_meta("iifname"), json!(tun)),
            nft_match("==", addr("saddr"), src),
            nft_match("==", addr("daddr"), subnet.clone()),
            accept
        ])
    };
    match &spec.mode {
        // Tunnel overrides add only accepts these two already cover; their drops are iptables'.
        ForwardMode::Open => vec![
            json!([nft_match("==", addr("saddr"), cidr.clone()), accept]),
            json!([nft_match("==", addr("daddr"), cidr), accept]),
        ],
        ForwardMode::Tunnel { tun } => {
            let mut rules = vec![
                from_tun(tun, cidr.clone()),
                json!([
                    nft_match("==", nft_meta("iifname"), json!(spec.bridge)),
                    nft_match("==", addr("saddr"), subnet.clone()),
                    accept
                ]),
                json!([
                    nft_match("==", nft_meta("oifname"), json!(spec.bridge)),
                    nft_match("!=", addr("saddr"), cidr),
                    nft_match("==", addr("daddr"), subnet.clone()),
                    nft_match("in", json!({ "ct": { "key": "state" } }), json!(["established", "related"])),
                    accept
                ]),
            ];
            for (peer, mode) in spec.effective_overrides() {
                match mode {
                    ForwardMode::Open => {
                        rules.push(json!([nft_match("==", addr("saddr"), nft_prefix(*peer)), accept]));
                        rules.push(json!([nft_match("==", addr("daddr"), nft_prefix(*peer)), accept]));
                    }
                    ForwardMode::Tunnel { tun: other } => rules.push(from_tun(other, nft_prefix(*peer))),
                }
            }
            rules
        }
    }
}

// ---- listing ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub name: String,
}

impl NftChain {
    /// Whether the chain sees `family`'s packets (an `inet` chain sees both).
    pub fn carries(&self, family: Family) -> bool {
        self.family == "inet" || self.family == nft_family(family)
    }

    fn delete_rule(&self, handle: u64) -> Value {
        let rule = json!({ "family": self.family, "table": self.table, "chain": self.name, "handle": handle });
        json!({ "delete": { "rule": rule } })
    }
}

impl std::fmt::Display for NftChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.name)
    }
}

/// One rule of a chain as `nft -j` lists it.
#[derive(Debug, Clone)]
pub struct NftRule {
    pub handle: u64,
    pub comment: Option<String>,
    pub expr: Value,
}

/// The objects of an `nft -j` answer (`{"nftables": [...]}`); empty output means nothing.
fn nft_items(text: &str) -> Result<Vec<Value>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match doc.get_mut("nftables").map(Value::take) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err("no \"nftables\" array".into()),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Foreign forward base chains that see `family`'s packets (families ip or ip6, and inet;
/// iptables-nft's own excluded).
pub fn parse_nft_forward_chains(text: &str, spec_family: Family) -> Result<Vec<NftChain>, String> {
    let mut chains = Vec::new();
    for item in nft_items(text)? {
        let Some(c) = item.get("chain") else { continue };
        if str_field(c, "hook") != Some("forward") {
            continue;
        }
        let (Some(family), Some(table), Some(name)) =
            (str_field(c, "family"), str_field(c, "table"), str_field(c, "name"))
        else {
            return Err(format!("forward chain without family, table or name: {c}"));
        };
        let chain = NftChain { family: family.into(), table: table.into(), name: name.into() };
        if !chain.carries(spec_family) {
            continue;
        }
        if family == nft_family(spec_family) && name == "FORWARD" && IPTABLES_NFT_TABLES.contains(&table) {
            continue;
        }
        chains.push(chain);
    }
    Ok(chains)
}

/// The rules of `chain` in an `nft -j list chain` answer, in chain order.
pub fn parse_nft_rules(text: &str, chain: &NftChain) -> Result<Vec<NftRule>, String> {
    let mut rules = Vec::new();
    for item in nft_items(text)? {
        let Some(r) = item.get("rule") else { continue };
        if str_field(r, "family") != Some(&chain.family)
            || str_field(r, "table") != Some(&chain.table)
            || str_field(r, "chain") != Some(&chain.name)
        {
            continue;
        }
        let handle = r.get("handle").and_then(Value::as_u64).ok_or_else(|| format!("rule without handle: {r}"))?;
        let comment = str_field(r, "comment").map(str::to_string);
        let expr = r.get("expr").cloned().unwrap_or(Value::Array(Vec::new()));
        rules.push(NftRule { handle, comment, expr });
    }
    Ok(rules)
}

/// Sorts arrays of plain strings (set elements such as ct states), recursively.
pub(super) fn normalize_json(v: &Value) -> Value {
    match v {
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let mut items = items.clone();
            items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            Value::Array(items)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize_json).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize_json(v))).collect()),
        other => other.clone(),
    }
}

/// Whether a rule has a top-level `drop` or `reject` verdict.
pub(super) fn nft_drops(expr: &Value) -> bool {
    expr.as_array().is_some_and(|items| items.iter().any(|e| e.get("drop").is_some() || e.get("reject").is_some()))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn nft_rule_parsing_is_tolerant_but_needs_handles() {
        let chain = NftChain { family: "inet".into(), table: "filter".into(), name: "forward".into() };
        let rules = parse_nft_rules(NFT_FORWARD_TUNNEL, &chain).expect("parse");
        assert_eq!(rules.iter().map(|r| r.handle).collect::<Vec<_>>(), [12, 11, 10, 9, 8, 5, 2]);
        assert_eq!(rules[3].comment.as_deref(), Some("weft:t2"));
        assert!(nft_drops(&rules[5].expr) && !nft_drops(&rules[0].expr));
        let no_handle =
            r#"{"nftables": [{"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": []}}]}"#;
        assert!(parse_nft_rules(no_handle, &chain).is_err());
        // Our expressions are exactly what nft lists, up to the order of set elements.
        let listed: Vec<Value> =
            rules.iter().filter(|r| r.comment.as_deref() == Some("weft:t")).map(|r| r.expr.clone()).collect();
        let want = nft_rule_exprs(&spec(tunnel(), false));
        assert_eq!(
            listed.iter().map(normalize_json).collect::<Vec<_>>(),
            want.iter().map(normalize_json).collect::<Vec<_>>()
        );
        let ct = json!({ "ct": { "key": "state" } });
        let swapped = json!([nft_match("in", ct.clone(), json!(["related", "established"]))]);
        let listed = json!([{ "match": { "op": "in", "left": ct, "right": ["established", "related"] } }]);
        assert_eq!(normalize_json(&swapped), normalize_json(&listed));
        // A /32 is listed as a plain address.
        assert_eq!(nft_prefix("10.1.2.3/32".parse().expect("net")), json!("10.1.2.3"));
        assert_eq!(
            nft_prefix("10.1.2.3/16".parse().expect("net")),
            json!({ "prefix": { "addr": "10.1.0.0", "len": 16 } })
        );
    }

    fn fwd() -> NftChain {
        NftChain { family: "inet".into(), table: "filter".into(), name: "forward".into() }
    }

    fn rules(listing: &str) -> Vec<NftRule> {
        parse_nft_rules(listing, &fwd()).expect("rules")
    }

    /// Moves the rule with `handle` in a listing to the end of the chain (rules are listed in
    /// chain order).
    fn move_to_end(listing: &str, handle: u64) -> Vec<NftRule> {
        let mut r = rules(listing);
        let i = r.iter().position(|x| x.handle == handle).expect("handle");
        let moved = r.remove(i);
        r.push(moved);
        r
    }

    #[test]
    fn golden_nft_rules_are_todays() {
        let accept = json!({ "accept": null });
        let ip = |f: &str| json!({ "payload": { "protocol": "ip", "field": f } });
        let cidr = json!({ "prefix": { "addr": "10.244.0.0", "len": 16 } });
        let subnet = json!({ "prefix": { "addr": "10.244.1.0", "len": 24 } });
        let m = |op: &str, l: Value, r: Value| json!({ "match": { "op": op, "left": l, "right": r } });
        assert_eq!(
            nft_rule_exprs(&spec(ForwardMode::Open, false)),
            [json!([m("==", ip("saddr"), cidr.clone()), accept]), json!([m("==", ip("daddr"), cidr.clone()), accept])]
        );
        assert_eq!(
            nft_rule_exprs(&spec(tunnel(), false)),
            [
                json!([
                    m("==", json!({ "meta": { "key": "iifname" } }), json!("r-c2")),
                    m("==", ip("saddr"), cidr.clone()),
                    m("==", ip("daddr"), subnet.clone()),
                    accept
                ]),
                json!([
                    m("==", json!({ "meta": { "key": "iifname" } }), json!("r-c1")),
                    m("==", ip("saddr"), subnet.clone()),
                    accept
                ]),
                json!([
                    m("==", json!({ "meta": { "key": "oifname" } }), json!("r-c1")),
                    m("!=", ip("saddr"), cidr),
                    m("==", ip("daddr"), subnet),
                    m("in", json!({ "ct": { "key": "state" } }), json!(["established", "related"])),
                    accept
                ]),
            ]
        );
    }

    #[test]
    fn nft_override_rules_are_accepts_after_the_tunnel_rules() {
        let mut s = spec(tunnel(), false);
        s.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        s.overrides.insert("10.244.5.0/24".parse().expect("net"), ForwardMode::Tunnel { tun: "wg0".into() });
        s.overrides.insert("10.244.6.0/24".parse().expect("net"), tunnel());
        let text: Vec<String> = nft_rule_exprs(&s).iter().map(nft_expr_text).collect();
        assert_eq!(
            text[3..],
            [
                "ip saddr 10.244.2.0/24 accept",
                "ip daddr 10.244.2.0/24 accept",
                "iifname \"wg0\" ip saddr 10.244.5.0/24 ip daddr 10.244.1.0/24 accept",
            ]
        );
        assert_eq!(nft_rule_exprs(&s)[..3], nft_rule_exprs(&spec(tunnel(), false))[..]);
        // Under an open default the two open accepts already cover a tunnel subnet's accepts.
        let mut open = spec(ForwardMode::Open, false);
        open.overrides.insert("10.244.2.0/24".parse().expect("net"), tunnel());
        assert_eq!(nft_rule_exprs(&open), nft_rule_exprs(&spec(ForwardMode::Open, false)));
    }

    #[test]
    fn plan_for_a_foreign_chain_with_drop_policy_inserts_at_the_top() {
        let chains = parse_nft_forward_chains(NFT_CHAINS_BEFORE, Family::V4).expect("chains");
        assert_eq!(chains, [fwd()]);
        let plan = plan(&spec(ForwardMode::Open, false), &chains[0], &rules(NFT_FORWARD_BEFORE));
        assert_eq!(
            rendered(&plan),
            ["nft insert rule inet filter forward ip daddr 10.244.0.0/16 accept comment \"weft:t\"; \
              insert rule inet filter forward ip saddr 10.244.0.0/16 accept comment \"weft:t\""]
        );
        assert_eq!(plan[0].change.as_deref(), Some("nft inet filter forward: inserted 2 weft rules at the top"));
    }

    #[test]
    fn plan_replaces_weft_rules_out_of_order() {
        // saddr (handle 4) after daddr (handle 3): same rules, wrong order.
        let r = move_to_end(NFT_FORWARD_AFTER, 4);
        let p = plan(&spec(ForwardMode::Open, false), &fwd(), &r);
        assert_eq!(
            rendered(&p),
            ["nft delete rule inet filter forward handle 3; delete rule inet filter forward handle 4; \
              insert rule inet filter forward ip daddr 10.244.0.0/16 accept comment \"weft:t\"; \
              insert rule inet filter forward ip saddr 10.244.0.0/16 accept comment \"weft:t\""]
        );
        assert_eq!(p[0].change.as_deref(), Some("nft inet filter forward: replaced 2 weft rules at the top"));
    }

    #[test]
    fn plan_replaces_weft_rules_behind_a_foreign_drop_but_not_behind_an_accept() {
        // The foreign `ct state invalid drop` (handle 2) moved to the top: weft's rules are below it.
        let mut r = rules(NFT_FORWARD_AFTER);
        r.rotate_right(1);
        assert_eq!(r[0].handle, 2);
        let p = plan(&spec(ForwardMode::Open, false), &fwd(), &r);
        assert_eq!(p.len(), 1);
        assert!(rendered(&p)[0].starts_with(
            "nft delete rule inet filter forward handle 4; delete rule inet filter forward handle 3; insert"
        ));
        // A reject counts as a drop; a foreign accept does not.
        r[0].expr = json!([{ "reject": null }]);
        assert_eq!(plan(&spec(ForwardMode::Open, false), &fwd(), &r).len(), 1);
        r[0].expr = json!([{ "accept": null }]);
        assert!(plan(&spec(ForwardMode::Open, false), &fwd(), &r).is_empty());
    }

    #[test]
    fn plans_in_sync_are_empty() {
        assert!(plan(&spec(ForwardMode::Open, false), &fwd(), &rules(NFT_FORWARD_AFTER)).is_empty());
        // Other networks' rules and foreign drops after weft's rules are fine.
        assert!(plan(&spec(tunnel(), false), &fwd(), &rules(NFT_FORWARD_TUNNEL)).is_empty());
        // Set elements listed in another order are still in sync.
        let swapped = NFT_FORWARD_TUNNEL.replace(r#"["established", "related"]"#, r#"["related", "established"]"#);
        assert!(plan(&spec(tunnel(), false), &fwd(), &rules(&swapped)).is_empty());
        // A missing override rule is not in sync.
        let mut s = spec(tunnel(), false);
        s.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        let p = plan(&s, &fwd(), &rules(NFT_FORWARD_TUNNEL));
        assert_eq!(p[0].change.as_deref(), Some("nft inet filter forward: replaced 5 weft rules at the top"));
    }

    #[test]
    fn remove_plan_deletes_only_its_networks_rules() {
        let p = plan_remove(&spec(tunnel(), false), &fwd(), &rules(NFT_FORWARD_TUNNEL));
        assert_eq!(
            rendered(&p),
            ["nft delete rule inet filter forward handle 12; delete rule inet filter forward handle 11; \
              delete rule inet filter forward handle 10"]
        );
        assert_eq!(p[0].change.as_deref(), Some("nft inet filter forward: deleted 3 weft rules"));
        assert!(plan_remove(&spec(tunnel(), false), &fwd(), &rules(NFT_FORWARD_BEFORE)).is_empty());
    }

    #[test]
    fn ipv6_rules_match_ip6_addresses_as_nft_lists_them() {
        let ip6 = |f: &str| json!({ "payload": { "protocol": "ip6", "field": f } });
        let cidr = json!({ "prefix": { "addr": "fd00:244::", "len": 48 } });
        let m = |op: &str, l: Value, r: Value| json!({ "match": { "op": op, "left": l, "right": r } });
        let accept = json!({ "accept": null });
        assert_eq!(
            nft_rule_exprs(&spec6(ForwardMode::Open, false)),
            [json!([m("==", ip6("saddr"), cidr.clone()), accept]), json!([m("==", ip6("daddr"), cidr), accept])]
        );
        // The tunnel rules are exactly what nft listed for them (captured).
        let dual = rules(NFT_FORWARD_DUAL);
        let listed: Vec<Value> = dual
            .iter()
            .filter(|r| r.comment.as_deref() == Some("weft:t:ip6"))
            .map(|r| normalize_json(&r.expr))
            .collect();
        let want: Vec<Value> = nft_rule_exprs(&spec6(tunnel(), false)).iter().map(normalize_json).collect();
        assert_eq!(listed, want);
        let text: Vec<String> = nft_rule_exprs(&spec6(tunnel(), false)).iter().map(nft_expr_text).collect();
        assert_eq!(
            text,
            [
                "iifname \"r-c2\" ip6 saddr fd00:244::/48 ip6 daddr fd00:244:0:1::/64 accept",
                "iifname \"r-c1\" ip6 saddr fd00:244:0:1::/64 accept",
                "oifname \"r-c1\" ip6 saddr != fd00:244::/48 ip6 daddr fd00:244:0:1::/64 ct state established,related accept",
            ]
        );
        let mut s = spec6(tunnel(), false);
        s.overrides.insert("fd00:244:0:2::/64".parse().expect("net"), ForwardMode::Open);
        let text: Vec<String> = nft_rule_exprs(&s).iter().map(nft_expr_text).collect();
        assert_eq!(text[3..], ["ip6 saddr fd00:244:0:2::/64 accept", "ip6 daddr fd00:244:0:2::/64 accept"]);
        // A /128 is listed as a plain address.
        assert_eq!(nft_prefix("fd00::7/128".parse().expect("net")), json!("fd00::7"));
        assert_eq!(
            nft_prefix("fd00::7/64".parse().expect("net")),
            json!({ "prefix": { "addr": "fd00::", "len": 64 } })
        );
    }

    #[test]
    fn each_family_keeps_and_removes_only_its_own_rules_in_an_inet_chain() {
        let dual = rules(NFT_FORWARD_DUAL);
        // Both families' rules in place (the other family's accepts are no drop before ours).
        assert!(plan(&spec6(tunnel(), false), &fwd(), &dual).is_empty());
        assert!(plan(&spec(tunnel(), false), &fwd(), &dual).is_empty());
        // A change of one family replaces that family's rules only.
        let p = plan(&spec6(ForwardMode::Open, false), &fwd(), &dual);
        assert_eq!(
            rendered(&p),
            ["nft delete rule inet filter forward handle 9; delete rule inet filter forward handle 8; \
              delete rule inet filter forward handle 7; \
              insert rule inet filter forward ip6 daddr fd00:244::/48 accept comment \"weft:t:ip6\"; \
              insert rule inet filter forward ip6 saddr fd00:244::/48 accept comment \"weft:t:ip6\""]
        );
        assert_eq!(
            rendered(&plan_remove(&spec6(tunnel(), false), &fwd(), &dual)),
            ["nft delete rule inet filter forward handle 9; delete rule inet filter forward handle 8; \
              delete rule inet filter forward handle 7"]
        );
        assert_eq!(
            rendered(&plan_remove(&spec(tunnel(), false), &fwd(), &dual)),
            ["nft delete rule inet filter forward handle 6; delete rule inet filter forward handle 5; \
              delete rule inet filter forward handle 4"]
        );
        // The foreign `ip6 ... drop` (handle 3) moved to the top: both families' rules move back
        // above it (a drop of either family counts).
        let mut below = dual.clone();
        let drop = below.remove(below.iter().position(|r| r.handle == 3).expect("handle 3"));
        below.insert(0, drop);
        assert_eq!(plan(&spec6(tunnel(), false), &fwd(), &below).len(), 1);
        assert_eq!(plan(&spec(tunnel(), false), &fwd(), &below).len(), 1);
    }

    #[test]
    fn forward_chains_are_picked_by_family() {
        let names = |family| -> Vec<String> {
            parse_nft_forward_chains(NFT_CHAINS6, family).expect("parse").iter().map(ToString::to_string).collect()
        };
        // ip6tables-nft's own `ip6 filter FORWARD` is handled through ip6tables.
        assert_eq!(names(Family::V6), ["inet filter forward", "ip6 mine forward6"]);
        assert_eq!(names(Family::V4), ["inet filter forward", "ip mine4 forward4"]);
        let v6_only = NftChain { family: "ip6".into(), table: "mine".into(), name: "forward6".into() };
        let v4_only = NftChain { family: "ip".into(), table: "mine4".into(), name: "forward4".into() };
        assert!(v6_only.carries(Family::V6) && !v6_only.carries(Family::V4));
        assert!(v4_only.carries(Family::V4) && !v4_only.carries(Family::V6));
        assert!(fwd().carries(Family::V4) && fwd().carries(Family::V6));
        // A plan never writes a family's rules into a chain that cannot see its packets.
        assert!(plan(&spec6(tunnel(), false), &v4_only, &[]).is_empty());
        assert!(plan(&spec(tunnel(), false), &v6_only, &[]).is_empty());
        assert_eq!(plan(&spec6(tunnel(), false), &v6_only, &[]).len(), 1);
    }
}
