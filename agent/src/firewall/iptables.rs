//! The iptables side of the firewall, pure: the parser of `iptables -S`, the renderers of weft's
//! chains and jumps, and the plans that turn a listing into the writes that repair it. An IPv4
//! spec goes through `iptables`, an IPv6 one through `ip6tables`: the same rules, commands and
//! listing format, in the kernel's separate IPv6 tables.

use std::collections::HashSet;

use super::spec::{Family, FirewallSpec};
use super::{Command, ForwardMode, OnFailure};

/// The iptables program (iptables-nft on a current distribution).
pub const IPTABLES: &str = "iptables";
/// Its IPv6 twin.
pub const IP6TABLES: &str = "ip6tables";

/// Seconds `iptables` waits for the xtables lock (matters with iptables-legacy).
const XT_WAIT: &str = "5";

/// The program that holds `family`'s tables.
pub fn program(family: Family) -> &'static str {
    match family {
        Family::V4 => IPTABLES,
        Family::V6 => IP6TABLES,
    }
}

/// Multicast destinations, never masqueraded.
fn multicast(family: Family) -> &'static str {
    match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
}

/// The iptables tables weft writes to, in the order `ensure` and `remove` visit them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `WEFT-FWD-<sfx>`, jumped to from `FORWARD`.
    Filter,
    /// `WEFT-MASQ-<sfx>`, jumped to from `POSTROUTING` (only with `ip_masq`).
    Nat,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// `iptables -w 5 -t <table> <args>` (`ip6tables` for IPv6).
fn xt(family: Family, table: Table, args: Vec<String>, on_failure: OnFailure) -> Command {
    let mut all = words(&["-w", XT_WAIT, "-t", table.name()]);
    all.extend(args);
    Command::new(program(family), all, on_failure)
}

/// The command that lists `table` of `family` (its output is what [`XtTable::parse`] reads).
pub fn listing(family: Family, table: Table) -> Command {
    xt(family, table, words(&["-S"]), OnFailure::Stop)
}

/// The writes that make `table` look like `spec` asks: in `filter`, weft's forward chain and its
/// jump; in `nat`, the masquerade chain and its jump with `ip_masq`, neither without. Empty when
/// all is in place. The commands depend on each other: the executor stops at the first failure.
pub fn plan(spec: &FirewallSpec, table: Table, listing: &XtTable) -> Vec<Command> {
    let tag = spec.tag();
    let family = spec.family();
    match table {
        Table::Filter => {
            let want = XtChain {
                family,
                table,
                chain: spec.forward_chain(),
                hook: "FORWARD",
                rules: xt_forward_rules(spec),
                jump_before_drops: true,
            };
            plan_chain(&want, &tag, listing)
        }
        Table::Nat if spec.ip_masq => {
            let want = XtChain {
                family,
                table,
                chain: spec.masq_chain(),
                hook: "POSTROUTING",
                rules: xt_masq_rules(spec),
                jump_before_drops: false,
            };
            plan_chain(&want, &tag, listing)
        }
        Table::Nat => plan_absent(family, table, &spec.masq_chain(), listing),
    }
}

/// The writes that take weft's chain of `table` (and every jump to it) away. Depends only on
/// `spec.network` and the family; the executor goes on past failures.
pub fn plan_remove(spec: &FirewallSpec, table: Table, listing: &XtTable) -> Vec<Command> {
    let chain = match table {
        Table::Filter => spec.forward_chain(),
        Table::Nat => spec.masq_chain(),
    };
    plan_absent(spec.family(), table, &chain, listing)
}

/// One chain of weft's as it should be.
struct XtChain {
    family: Family,
    table: Table,
    chain: String,
    /// The built-in chain that jumps to `chain`.
    hook: &'static str,
    rules: Vec<Vec<String>>,
    /// The jump must precede every rule of `hook` whose target is DROP or REJECT.
    jump_before_drops: bool,
}

fn plan_chain(want: &XtChain, tag: &str, listing: &XtTable) -> Vec<Command> {
    let (family, table, chain, hook) = (want.family, want.table, want.chain.as_str(), want.hook);
    let name = table.name();
    let tool = program(family);
    let step = |args: Vec<String>| xt(family, table, args, OnFailure::Stop);
    let mut out = Vec::new();

    let have: Vec<&Vec<String>> = listing.rules_in(chain).collect();
    let content_ok =
        have.len() == want.rules.len() && have.iter().zip(&want.rules).all(|(h, w)| xt_groups(h) == xt_groups(w));
    if !listing.chains.contains(chain) {
        out.push(step(words(&["-N", chain])).noting(format!("{tool} -t {name}: created chain {chain}")));
    } else if !content_ok && !have.is_empty() {
        out.push(step(words(&["-F", chain])));
    }
    if !content_ok {
        let n = want.rules.len();
        for (i, rule) in want.rules.iter().enumerate() {
            let cmd = step(with_op(&["-A", chain], rule));
            out.push(if i + 1 == n {
                cmd.noting(format!("{tool} -t {name}: wrote the {n} rules of {chain}"))
            } else {
                cmd
            });
        }
    }

    let jump = jump_rule(tag, chain);
    let hook_rules: Vec<&Vec<String>> = listing.rules_in(hook).collect();
    let jumps: Vec<(usize, &Vec<String>)> =
        hook_rules.iter().enumerate().filter(|(_, r)| xt_target(r) == Some(chain)).map(|(i, r)| (i, *r)).collect();
    let placed_ok = match jumps.as_slice() {
        [(pos, rule)] => {
            xt_groups(rule) == xt_groups(&jump)
                && !(want.jump_before_drops
                    && hook_rules[..*pos].iter().any(|r| matches!(xt_target(r), Some("DROP" | "REJECT"))))
        }
        _ => false,
    };
    if !placed_ok {
        for (_, rule) in &jumps {
            out.push(step(with_op(&["-D", hook], rule)));
        }
        let what = if jumps.is_empty() { "inserted" } else { "re-inserted" };
        out.push(
            step(with_op(&["-I", hook, "1"], &jump))
                .noting(format!("{tool} -t {name}: {what} the jump {hook} -> {chain} at position 1")),
        );
    }
    out
}

/// Deletes every jump to `chain` in `table`, then the chain. Each step stands alone.
fn plan_absent(family: Family, table: Table, chain: &str, listing: &XtTable) -> Vec<Command> {
    let name = table.name();
    let tool = program(family);
    let step = |args: Vec<String>| xt(family, table, args, OnFailure::Continue);
    let mut out = Vec::new();
    for (from, rule) in listing.rules.iter().filter(|(_, r)| xt_target(r) == Some(chain)) {
        out.push(
            step(with_op(&["-D", from], rule)).noting(format!("{tool} -t {name}: deleted the jump {from} -> {chain}")),
        );
    }
    if listing.chains.contains(chain) {
        out.push(step(words(&["-F", chain])));
        out.push(step(words(&["-X", chain])).noting(format!("{tool} -t {name}: deleted chain {chain}")));
    }
    out
}

// ---- desired rules ----

fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn with_op(op: &[&str], rule: &[String]) -> Vec<String> {
    let mut args = words(op);
    args.extend(rule.iter().cloned());
    args
}

fn with_comment(tag: &str, mut rule: Vec<String>, target: &[&str]) -> Vec<String> {
    rule.extend(words(&["-m", "comment", "--comment", tag, "-j"]));
    rule.extend(words(target));
    rule
}

fn jump_rule(tag: &str, chain: &str) -> Vec<String> {
    with_comment(tag, Vec::new(), &[chain])
}

/// The rules of `WEFT-FWD-<sfx>`, in `iptables -S` order of options (see the module
/// documentation for the rule sets).
pub fn xt_forward_rules(spec: &FirewallSpec) -> Vec<Vec<String>> {
    let tag = spec.tag();
    let accept = |parts: &[&str]| with_comment(&tag, words(parts), &["ACCEPT"]);
    let drop = |parts: &[&str]| with_comment(&tag, words(parts), &["DROP"]);
    let cidr = spec.cluster_cidr.trunc().to_string();
    let subnet = spec.node_subnet.trunc().to_string();
    let bridge = spec.bridge.as_str();
    let mut rules = Vec::new();
    match &spec.mode {
        ForwardMode::Open => {
            // Tunnel subnets first: their accepts, then drops for the rest of their traffic.
            let tunnels: Vec<(String, &str)> = spec
                .effective_overrides()
                .filter_map(|(p, m)| match m {
                    ForwardMode::Tunnel { tun } => Some((p.trunc().to_string(), tun.as_str())),
                    ForwardMode::Open => None,
                })
                .collect();
            if !tunnels.is_empty() {
                rules.push(accept(&["-s", &subnet, "-i", bridge]));
            }
            for (peer, tun) in &tunnels {
                rules.push(accept(&["-s", peer, "-d", &subnet, "-i", tun]));
                rules.push(drop(&["-s", peer]));
                rules.push(drop(&["-d", peer]));
            }
            rules.push(accept(&["-s", &cidr]));
            rules.push(accept(&["-d", &cidr]));
        }
        ForwardMode::Tunnel { tun } => {
            rules.push(accept(&["-s", &cidr, "-d", &subnet, "-i", tun]));
            rules.push(accept(&["-s", &subnet, "-i", bridge]));
            rules.push(accept(&[
                "!",
                "-s",
                &cidr,
                "-d",
                &subnet,
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ]));
            for (peer, mode) in spec.effective_overrides() {
                let peer = peer.trunc().to_string();
                match mode {
                    ForwardMode::Open => {
                        rules.push(accept(&["-s", &peer]));
                        rules.push(accept(&["-d", &peer]));
                    }
                    ForwardMode::Tunnel { tun: other } => {
                        rules.push(accept(&["-s", &peer, "-d", &subnet, "-i", other]));
                    }
                }
            }
            rules.push(drop(&["-d", &cidr]));
        }
    }
    rules
}

/// The rules of `WEFT-MASQ-<sfx>`.
pub fn xt_masq_rules(spec: &FirewallSpec) -> Vec<Vec<String>> {
    let tag = spec.tag();
    let cidr = spec.cluster_cidr.trunc().to_string();
    vec![
        with_comment(&tag, words(&["-s", &cidr, "-d", &cidr]), &["RETURN"]),
        with_comment(
            &tag,
            words(&["-s", &cidr, "!", "-d", multicast(spec.family())]),
            &["MASQUERADE", "--random-fully"],
        ),
    ]
}

// ---- listing ----

/// One table as `iptables -S` prints it.
#[derive(Debug, Default)]
pub struct XtTable {
    pub(super) chains: HashSet<String>,
    /// `(chain, arguments after "-A chain")`, in listing order.
    pub(super) rules: Vec<(String, Vec<String>)>,
}

impl XtTable {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut table = XtTable::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut w = split_words(line).map_err(|e| format!("line {}: {e}", n + 1))?.into_iter();
            match (w.next().as_deref(), w.next()) {
                (Some("-P" | "-N"), Some(chain)) => {
                    table.chains.insert(chain);
                }
                (Some("-A"), Some(chain)) => table.rules.push((chain, w.collect())),
                _ => return Err(format!("line {}: unexpected {line:?}", n + 1)),
            }
        }
        Ok(table)
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        self.rules.iter().filter(move |(c, _)| c == chain).map(|(_, r)| r)
    }
}

/// Splits an `iptables -S` line into words (double quotes with backslash escapes).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("unterminated escape".into()),
                        },
                        Some(o) => cur.push(o),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A rule as a sorted list of option groups (`! -s 10.0.0.0/8`, `-m comment`, `-j ACCEPT`), so
/// that the order in which an iptables version prints options does not matter.
fn xt_groups(args: &[String]) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    let mut negate = false;
    for a in args {
        if a == "!" {
            negate = true;
        } else if a.starts_with('-') || groups.is_empty() {
            groups.push(if negate { format!("! {a}") } else { a.clone() });
            negate = false;
        } else if let Some(last) = groups.last_mut() {
            last.push(' ');
            last.push_str(a);
        }
    }
    if negate {
        groups.push("!".into());
    }
    groups.sort();
    groups
}

/// The `-j`/`-g` target of a rule.
fn xt_target(args: &[String]) -> Option<&str> {
    args.windows(2)
        .find(|w| w[0] == "-j" || w[0] == "-g" || w[0] == "--jump" || w[0] == "--goto")
        .map(|w| w[1].as_str())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn iptables_listing_parsing() {
        let table = XtTable::parse(TUNNEL_FILTER_AFTER).expect("parse");
        assert!(table.chains.contains("WEFT-FWD-t") && table.chains.contains("FORWARD"));
        assert_eq!(table.rules_in("WEFT-FWD-t").count(), 4);
        assert_eq!(
            split_words(r#"-A X -m comment --comment "a \"b\" c" -j Y"#).expect("split"),
            ["-A", "X", "-m", "comment", "--comment", "a \"b\" c", "-j", "Y"]
        );
        assert!(split_words(r#"-A X --comment "open"#).is_err());
        assert!(XtTable::parse("# Warning: iptables-legacy tables present\n-P FORWARD DROP\n").is_ok());
        assert!(XtTable::parse("garbage here").is_err());
        // Option order does not matter (iptables-legacy prints -i before -s, for example).
        let nft_order = split_words("-s 10.244.0.0/16 -d 10.244.1.0/24 -i r-c2 -m comment --comment weft:t -j ACCEPT")
            .expect("split");
        let other = split_words("-i r-c2 -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"weft:t\" -j ACCEPT")
            .expect("split");
        assert_eq!(xt_groups(&nft_order), xt_groups(&other));
        let negated = split_words("! -s 10.244.0.0/16 -j ACCEPT").expect("split");
        let plain = split_words("-s 10.244.0.0/16 -j ACCEPT").expect("split");
        assert_ne!(xt_groups(&negated), xt_groups(&plain));
        assert_eq!(xt_target(&negated), Some("ACCEPT"));
        assert_eq!(xt_target(&split_words("-g WEFT").expect("split")), Some("WEFT"));
    }

    const NEW_TAG: &str = "-m comment --comment weft:t";

    fn filter(spec: &FirewallSpec, listing: &str) -> Vec<Command> {
        plan(spec, Table::Filter, &XtTable::parse(listing).expect("listing"))
    }

    fn nat(spec: &FirewallSpec, listing: &str) -> Vec<Command> {
        plan(spec, Table::Nat, &XtTable::parse(listing).expect("listing"))
    }

    fn changes(plan: &[Command]) -> Vec<&str> {
        plan.iter().filter_map(|c| c.change.as_deref()).collect()
    }

    /// The rules of a chain as `-A` lines would carry them (one string per rule).
    fn lines(rules: &[Vec<String>]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    fn with_override(mut s: FirewallSpec, subnet: &str, mode: ForwardMode) -> FirewallSpec {
        s.overrides.insert(subnet.parse().expect("net"), mode);
        s
    }

    #[test]
    fn golden_open_and_tunnel_rules_are_todays() {
        assert_eq!(
            lines(&xt_forward_rules(&spec(ForwardMode::Open, false))),
            [
                "-s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
            ]
        );
        assert_eq!(
            lines(&xt_forward_rules(&spec(tunnel(), false))),
            [
                "-s 10.244.0.0/16 -d 10.244.1.0/24 -i r-c2 -m comment --comment weft:t -j ACCEPT",
                "-s 10.244.1.0/24 -i r-c1 -m comment --comment weft:t -j ACCEPT",
                "! -s 10.244.0.0/16 -d 10.244.1.0/24 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment weft:t -j DROP",
            ]
        );
        assert_eq!(
            lines(&xt_masq_rules(&spec(tunnel(), true))),
            [
                "-s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment weft:t -j RETURN",
                "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment weft:t -j MASQUERADE --random-fully",
            ]
        );
        // Overrides equal to the default change nothing, byte for byte.
        let same = with_override(spec(tunnel(), false), "10.244.2.0/24", tunnel());
        assert_eq!(xt_forward_rules(&same), xt_forward_rules(&spec(tunnel(), false)));
        let same = with_override(spec(ForwardMode::Open, false), "10.244.2.0/24", ForwardMode::Open);
        assert_eq!(xt_forward_rules(&same), xt_forward_rules(&spec(ForwardMode::Open, false)));
    }

    #[test]
    fn open_overrides_under_a_tunnel_default_go_before_the_drop() {
        let s = with_override(
            with_override(spec(tunnel(), false), "10.244.9.0/24", ForwardMode::Open),
            "10.244.2.0/24",
            ForwardMode::Open,
        );
        let rules = lines(&xt_forward_rules(&s));
        assert_eq!(rules.len(), 8);
        assert_eq!(rules[..3], lines(&xt_forward_rules(&spec(tunnel(), false)))[..3]);
        assert_eq!(
            rules[3..],
            [
                "-s 10.244.2.0/24 -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.2.0/24 -m comment --comment weft:t -j ACCEPT",
                "-s 10.244.9.0/24 -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.9.0/24 -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment weft:t -j DROP",
            ]
        );
        // A second tun for one subnet: accepted from that tun only, still before the drop.
        let s = with_override(spec(tunnel(), false), "10.244.4.0/24", ForwardMode::Tunnel { tun: "wg0".into() });
        let rules = lines(&xt_forward_rules(&s));
        assert_eq!(rules[3], "-s 10.244.4.0/24 -d 10.244.1.0/24 -i wg0 -m comment --comment weft:t -j ACCEPT");
        assert_eq!(rules[4], "-d 10.244.0.0/16 -m comment --comment weft:t -j DROP");
    }

    #[test]
    fn tunnel_overrides_under_an_open_default_drop_the_rest_before_the_accepts() {
        let s = with_override(
            with_override(spec(ForwardMode::Open, false), "10.244.3.0/24", tunnel()),
            "10.244.8.0/22",
            ForwardMode::Tunnel { tun: "wg0".into() },
        );
        assert_eq!(
            lines(&xt_forward_rules(&s)),
            [
                "-s 10.244.1.0/24 -i r-c1 -m comment --comment weft:t -j ACCEPT",
                "-s 10.244.3.0/24 -d 10.244.1.0/24 -i r-c2 -m comment --comment weft:t -j ACCEPT",
                "-s 10.244.3.0/24 -m comment --comment weft:t -j DROP",
                "-d 10.244.3.0/24 -m comment --comment weft:t -j DROP",
                "-s 10.244.8.0/22 -d 10.244.1.0/24 -i wg0 -m comment --comment weft:t -j ACCEPT",
                "-s 10.244.8.0/22 -m comment --comment weft:t -j DROP",
                "-d 10.244.8.0/22 -m comment --comment weft:t -j DROP",
                "-s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
            ]
        );
    }

    #[test]
    fn plan_for_a_missing_chain_creates_fills_and_jumps() {
        let plan = filter(&spec(ForwardMode::Open, false), DOCKER_FILTER_BEFORE);
        assert_eq!(
            rendered(&plan),
            [
                "iptables -w 5 -t filter -N WEFT-FWD-t",
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t -j WEFT-FWD-t",
            ]
        );
        assert_eq!(
            changes(&plan),
            [
                "iptables -t filter: created chain WEFT-FWD-t",
                "iptables -t filter: wrote the 2 rules of WEFT-FWD-t",
                "iptables -t filter: inserted the jump FORWARD -> WEFT-FWD-t at position 1",
            ]
        );
        // Each step needs the one before it.
        assert!(plan.iter().all(|c| c.on_failure == OnFailure::Stop));
    }

    #[test]
    fn plan_for_a_flushed_chain_only_refills_it() {
        let plan = filter(&spec(ForwardMode::Open, true), DOCKER_FILTER_FLUSHED);
        assert_eq!(
            rendered(&plan),
            [
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
            ]
        );
    }

    #[test]
    fn plan_for_different_content_flushes_then_refills() {
        // The chain holds the Open rules; the spec asks for Tunnel.
        let plan = filter(&spec(tunnel(), false), DOCKER_FILTER_AFTER);
        let r = rendered(&plan);
        assert_eq!(r.len(), 5, "{r:?}");
        assert_eq!(r[0], "iptables -w 5 -t filter -F WEFT-FWD-t");
        assert!(r[1..].iter().all(|c| c.starts_with("iptables -w 5 -t filter -A WEFT-FWD-t ")), "{r:?}");
        assert_eq!(r[4], format!("iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 {NEW_TAG} -j DROP"));
        assert_eq!(changes(&plan), ["iptables -t filter: wrote the 4 rules of WEFT-FWD-t"]);
        // A new override is a content change too.
        let s = with_override(spec(tunnel(), false), "10.244.2.0/24", ForwardMode::Open);
        let r = rendered(&filter(&s, TUNNEL_FILTER_AFTER));
        assert_eq!(r.len(), 7, "{r:?}");
        assert_eq!(r[0], "iptables -w 5 -t filter -F WEFT-FWD-t");
    }

    #[test]
    fn plan_for_a_missing_jump_only_inserts_it() {
        let listing = DOCKER_FILTER_AFTER.replace("-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n", "");
        let plan = filter(&spec(ForwardMode::Open, false), &listing);
        assert_eq!(rendered(&plan), [format!("iptables -w 5 -t filter -I FORWARD 1 {NEW_TAG} -j WEFT-FWD-t")]);
        assert_eq!(changes(&plan), ["iptables -t filter: inserted the jump FORWARD -> WEFT-FWD-t at position 1"]);
    }

    #[test]
    fn plan_for_duplicated_jumps_keeps_one() {
        let listing = format!("{DOCKER_FILTER_AFTER}-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n");
        let plan = filter(&spec(ForwardMode::Open, false), &listing);
        assert_eq!(
            rendered(&plan),
            [
                format!("iptables -w 5 -t filter -D FORWARD {NEW_TAG} -j WEFT-FWD-t"),
                format!("iptables -w 5 -t filter -D FORWARD {NEW_TAG} -j WEFT-FWD-t"),
                format!("iptables -w 5 -t filter -I FORWARD 1 {NEW_TAG} -j WEFT-FWD-t"),
            ]
        );
        assert_eq!(changes(&plan), ["iptables -t filter: re-inserted the jump FORWARD -> WEFT-FWD-t at position 1"]);
    }

    #[test]
    fn plan_moves_a_jump_placed_after_a_drop_but_not_after_other_rules() {
        let after_drop = DOCKER_FILTER_AFTER.replace(
            "-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n",
            "-A FORWARD -i eth9 -j REJECT\n-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n",
        );
        assert_eq!(
            rendered(&filter(&spec(ForwardMode::Open, false), &after_drop)),
            [
                format!("iptables -w 5 -t filter -D FORWARD {NEW_TAG} -j WEFT-FWD-t"),
                format!("iptables -w 5 -t filter -I FORWARD 1 {NEW_TAG} -j WEFT-FWD-t"),
            ]
        );
        let after_accept = after_drop.replace("-j REJECT", "-j ACCEPT");
        assert!(filter(&spec(ForwardMode::Open, false), &after_accept).is_empty());
        // The nat jump may sit after anything: its RETURN only leaves weft's chain.
        let nat_listing = DOCKER_NAT_AFTER
            .replace("-A POSTROUTING -m comment", "-A POSTROUTING -s 10.9.0.0/16 -j DROP\n-A POSTROUTING -m comment");
        assert!(nat(&spec(ForwardMode::Open, true), &nat_listing).is_empty());
    }

    #[test]
    fn plans_in_sync_are_empty() {
        assert!(filter(&spec(ForwardMode::Open, true), DOCKER_FILTER_AFTER).is_empty());
        assert!(nat(&spec(ForwardMode::Open, true), DOCKER_NAT_AFTER).is_empty());
        assert!(filter(&spec(tunnel(), false), TUNNEL_FILTER_AFTER).is_empty());
        assert!(nat(&spec(tunnel(), false), EMPTY_NAT).is_empty());
        // iptables-legacy prints options in another order: still in sync.
        let legacy = TUNNEL_FILTER_AFTER.replace("-s 10.244.1.0/24 -i r-c1", "-i r-c1 -s 10.244.1.0/24");
        assert!(filter(&spec(tunnel(), false), &legacy).is_empty());
    }

    #[test]
    fn nat_plan_with_ip_masq_builds_the_masquerade_chain() {
        let plan = nat(&spec(ForwardMode::Open, true), DOCKER_NAT_BEFORE);
        assert_eq!(
            rendered(&plan),
            [
                "iptables -w 5 -t nat -N WEFT-MASQ-t",
                "iptables -w 5 -t nat -A WEFT-MASQ-t -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment weft:t -j RETURN",
                "iptables -w 5 -t nat -A WEFT-MASQ-t -s 10.244.0.0/16 '!' -d 224.0.0.0/4 -m comment --comment weft:t -j MASQUERADE --random-fully",
                "iptables -w 5 -t nat -I POSTROUTING 1 -m comment --comment weft:t -j WEFT-MASQ-t",
            ]
        );
        assert!(plan.iter().all(|c| c.on_failure == OnFailure::Stop));
    }

    #[test]
    fn nat_plan_without_ip_masq_takes_the_chain_away_step_by_step() {
        let plan = nat(&spec(ForwardMode::Open, false), DOCKER_NAT_AFTER);
        assert_eq!(
            rendered(&plan),
            [
                format!("iptables -w 5 -t nat -D POSTROUTING {NEW_TAG} -j WEFT-MASQ-t"),
                "iptables -w 5 -t nat -F WEFT-MASQ-t".to_string(),
                "iptables -w 5 -t nat -X WEFT-MASQ-t".to_string(),
            ]
        );
        assert_eq!(
            changes(&plan),
            [
                "iptables -t nat: deleted the jump POSTROUTING -> WEFT-MASQ-t",
                "iptables -t nat: deleted chain WEFT-MASQ-t"
            ]
        );
        assert!(plan.iter().all(|c| c.on_failure == OnFailure::Continue));
        assert!(nat(&spec(ForwardMode::Open, false), DOCKER_NAT_BEFORE).is_empty());
    }

    #[test]
    fn remove_plan_deletes_every_jump_then_the_chain_of_its_network_only() {
        // A second network's chain and jump stay; an untagged jump to weft's chain goes too.
        let listing = format!(
            "{TUNNEL_FILTER_AFTER}-N WEFT-FWD-t2\n-A FORWARD -m comment --comment \"weft:t2\" -j WEFT-FWD-t2\n-A FORWARD -j WEFT-FWD-t\n"
        );
        let table = XtTable::parse(&listing).expect("listing");
        let plan = plan_remove(&spec(tunnel(), false), Table::Filter, &table);
        assert_eq!(
            rendered(&plan),
            [
                format!("iptables -w 5 -t filter -D FORWARD {NEW_TAG} -j WEFT-FWD-t"),
                "iptables -w 5 -t filter -D FORWARD -j WEFT-FWD-t".to_string(),
                "iptables -w 5 -t filter -F WEFT-FWD-t".to_string(),
                "iptables -w 5 -t filter -X WEFT-FWD-t".to_string(),
            ]
        );
        assert!(plan_remove(&spec(tunnel(), false), Table::Nat, &XtTable::parse(EMPTY_NAT).expect("nat")).is_empty());
    }

    #[test]
    fn ipv6_rules_are_the_same_through_ip6tables() {
        let tag6 = "-m comment --comment weft:t:ip6";
        assert_eq!(
            lines(&xt_forward_rules(&spec6(ForwardMode::Open, false))),
            [format!("-s fd00:244::/48 {tag6} -j ACCEPT"), format!("-d fd00:244::/48 {tag6} -j ACCEPT")]
        );
        assert_eq!(
            lines(&xt_forward_rules(&spec6(tunnel(), false))),
            [
                format!("-s fd00:244::/48 -d fd00:244:0:1::/64 -i r-c2 {tag6} -j ACCEPT"),
                format!("-s fd00:244:0:1::/64 -i r-c1 {tag6} -j ACCEPT"),
                format!("! -s fd00:244::/48 -d fd00:244:0:1::/64 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED {tag6} -j ACCEPT"),
                format!("-d fd00:244::/48 {tag6} -j DROP"),
            ]
        );
        assert_eq!(
            lines(&xt_masq_rules(&spec6(tunnel(), true))),
            [
                format!("-s fd00:244::/48 -d fd00:244::/48 {tag6} -j RETURN"),
                format!("-s fd00:244::/48 ! -d ff00::/8 {tag6} -j MASQUERADE --random-fully"),
            ]
        );
        let s = with_override(spec6(tunnel(), false), "fd00:244:0:2::/64", ForwardMode::Open);
        assert_eq!(
            lines(&xt_forward_rules(&s))[3..5],
            [format!("-s fd00:244:0:2::/64 {tag6} -j ACCEPT"), format!("-d fd00:244:0:2::/64 {tag6} -j ACCEPT"),]
        );
        // Through ip6tables, with the same steps and notes as iptables.
        let plan = filter(&spec6(ForwardMode::Open, false), EMPTY_FILTER);
        assert_eq!(
            rendered(&plan),
            [
                "ip6tables -w 5 -t filter -N WEFT-FWD-t",
                "ip6tables -w 5 -t filter -A WEFT-FWD-t -s fd00:244::/48 -m comment --comment weft:t:ip6 -j ACCEPT",
                "ip6tables -w 5 -t filter -A WEFT-FWD-t -d fd00:244::/48 -m comment --comment weft:t:ip6 -j ACCEPT",
                "ip6tables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t:ip6 -j WEFT-FWD-t",
            ]
        );
        assert_eq!(
            changes(&plan),
            [
                "ip6tables -t filter: created chain WEFT-FWD-t",
                "ip6tables -t filter: wrote the 2 rules of WEFT-FWD-t",
                "ip6tables -t filter: inserted the jump FORWARD -> WEFT-FWD-t at position 1",
            ]
        );
        assert_eq!(listing(Family::V6, Table::Nat).render(), "ip6tables -w 5 -t nat -S");
        assert_eq!(listing(Family::V4, Table::Nat).render(), NAT_LIST);
    }

    #[test]
    fn ip6tables_listings_in_sync_are_empty_plans() {
        let table = XtTable::parse(IP6_FILTER_AFTER).expect("parse");
        assert_eq!(table.rules_in("WEFT-FWD-t").count(), 4);
        assert!(filter(&spec6(tunnel(), false), IP6_FILTER_AFTER).is_empty());
        assert!(nat(&spec6(tunnel(), true), IP6_NAT_AFTER).is_empty());
        // Another cluster CIDR: flushed and refilled; without ip_masq the masquerade goes.
        let mut moved = spec6(tunnel(), false);
        moved.cluster_cidr = "fd00:250::/48".parse().expect("net");
        moved.node_subnet = "fd00:250:0:3::/64".parse().expect("net");
        let r = rendered(&filter(&moved, IP6_FILTER_AFTER));
        assert_eq!(r[0], "ip6tables -w 5 -t filter -F WEFT-FWD-t");
        assert_eq!(r.len(), 5, "{r:?}");
        assert_eq!(
            rendered(&nat(&spec6(tunnel(), false), IP6_NAT_AFTER)),
            [
                "ip6tables -w 5 -t nat -D POSTROUTING -m comment --comment weft:t:ip6 -j WEFT-MASQ-t",
                "ip6tables -w 5 -t nat -F WEFT-MASQ-t",
                "ip6tables -w 5 -t nat -X WEFT-MASQ-t",
            ]
        );
    }
}
