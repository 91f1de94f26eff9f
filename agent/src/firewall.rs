//! Forward-accept and masquerade rules for pod traffic (DESIGN "Agent lifecycle" step 4).
//!
//! # Why the rules go into other people's chains
//! A packet is dropped if *any* base chain at its hook drops it, so an accept in a table of
//! weft's own cannot undo Docker's `iptables -P FORWARD DROP` or a `policy drop` in a hand-written
//! `table inet filter`. Like flannel's `FLANNEL-FWD`, weft therefore places its accepts in the
//! chains that exist:
//! - iptables (the `iptables` binary, normally iptables-nft): a chain of weft's own, jumped to
//!   from the built-in `FORWARD` chain (filter table) and, with `ip_masq`, from `POSTROUTING`
//!   (nat table);
//! - nftables: weft's rules at the top of every *foreign* forward base chain (`hook forward`, family
//!   `ip` or `inet`). Chains of iptables-nft (family `ip`, table `filter`/`mangle`/`raw`/
//!   `security`/`nat`, chain `FORWARD`) are skipped there: they are handled through `iptables`
//!   above. Exception: a hand-written `table ip filter` whose forward chain is *not* called
//!   `FORWARD` is foreign and handled through `nft`.
//!
//! # Ownership (several weft networks on one host never touch each other's rules)
//! - iptables chains are per network: `WEFT-FWD-<sfx>` (filter) and `WEFT-MASQ-<sfx>` (nat), where
//!   `<sfx>` is the network name when it has at most 18 characters, else its first 8 characters,
//!   `-H` and 8 upper-case hex digits of the FNV-1a hash of the whole name (network names are
//!   lower case, so a hashed suffix never equals a literal one; chain names stay within
//!   iptables' 28 characters).
//! - Every rule weft writes (jumps included) carries the comment `weft:<network>`; in nftables
//!   chains that exact comment is what identifies weft's rules. Nothing else is ever changed.
//!
//! # Rule sets (`C` = cluster CIDR, `S` = node subnet, `B` = bridge, `T` = tun)
//! iptables, filter table, `-I FORWARD 1 -m comment --comment weft:<net> -j WEFT-FWD-<sfx>`, then
//! in `WEFT-FWD-<sfx>` (each rule also has `-m comment --comment weft:<net>`):
//! - [`ForwardMode::Open`] (host-gw): `-s C -j ACCEPT`, `-d C -j ACCEPT`.
//! - [`ForwardMode::Tunnel`] (quic, fail closed):
//!   1. `-s C -d S -i T -j ACCEPT` — decapsulated pod traffic for local pods;
//!   2. `-s S -i B -j ACCEPT` — local pods to anywhere they route (tun, underlay, other pods);
//!   3. `! -s C -d S -o B -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` — replies from
//!      outside the cluster (masqueraded or routed); the `! -s C` keeps a spoofed plaintext
//!      "reply" from a peer pod's address on the underlay out;
//!   4. `-d C -j DROP` — any other pod-addressed traffic (plaintext on the underlay, spoofed
//!      sources on the tun or bridge) is dropped even when the host's policy is ACCEPT. This also
//!      drops new connections to pods from other local interfaces (say, Docker containers) and
//!      DNAT from the underlay to pods: in quic mode pods are reached through the tunnel only.
//!
//! iptables, nat table, only with `ip_masq`: `-I POSTROUTING 1 ... -j WEFT-MASQ-<sfx>`, inside:
//! `-s C -d C -j RETURN` (pod to pod is never masqueraded), then
//! `-s C ! -d 224.0.0.0/4 -j MASQUERADE --random-fully`. Without `ip_masq` the jump and chain are
//! made absent.
//!
//! nftables, at the top of each foreign forward base chain, each rule with `comment "weft:<net>"`:
//! - Open: `ip saddr C accept`, `ip daddr C accept`.
//! - Tunnel: `iifname "T" ip saddr C ip daddr S accept`, `iifname "B" ip saddr S accept`,
//!   `oifname "B" ip saddr != C ip daddr S ct state established,related accept`. No drop: the drop
//!   in the iptables chain already applies at the same hook.
//!
//! # `ensure` (every reconcile)
//! Reads `iptables -t filter -S`, `iptables -t nat -S`, `nft -j list chains` and one
//! `nft -j list chain` per foreign forward base chain, compares, and writes only what is missing
//! or different; with everything in place it issues no write. Repairs:
//! - weft's iptables chain missing → created and filled; content different (flushed by a Docker
//!   or firewalld reload, CIDR changed) → flushed and refilled;
//! - the jump missing, duplicated, different, or placed after a rule with target `DROP`/`REJECT`
//!   → removed and inserted at position 1. A jump that is not first but preceded only by other
//!   rules (Docker re-inserting `DOCKER-USER` at the top, another weft network) is left alone, so
//!   nobody fights over position 1. (A foreign `DROP` before the jump is thus overtaken, not
//!   deleted.) The nat jump may be anywhere: its `RETURN` only leaves weft's chain, so a host-wide
//!   `MASQUERADE` elsewhere in `POSTROUTING` is the host's business either way;
//! - nft: weft's rules in a chain must equal the wanted list in order, with no foreign rule
//!   carrying a `drop`/`reject` verdict before the last of them; otherwise they are deleted (by
//!   handle) and re-inserted at the top in one atomic nft transaction.
//!
//! Every part runs even when another fails; the errors are returned together (one error as
//! itself, several as [`FirewallError::Multiple`]). A missing `iptables` or `nft` yields
//! [`FirewallError::MissingProgram`] naming it. Each change is logged (`info`) as it is made, so
//! changes made before a failure are not lost from the log.
//!
//! `remove` (node leaves) deletes weft's jumps and chains and every rule tagged `weft:<net>` in
//! foreign forward chains, going on past failures. It depends only on `spec.network`.
//!
//! Calls are blocking (a few short-lived processes); IPv4 only. Not handled: a `bridge`-family
//! forward chain with `policy drop` (only relevant with `br_netfilter`), and a host whose
//! `iptables` is iptables-legacy while something else keeps iptables-nft `FORWARD` rules.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tracing::{debug, info};

/// The iptables program (iptables-nft on a current distribution).
pub const IPTABLES: &str = "iptables";
/// The nftables command-line tool.
pub const NFT: &str = "nft";

/// Seconds `iptables` waits for the xtables lock (matters with iptables-legacy).
const XT_WAIT: &str = "5";
/// Longest network name used verbatim in a chain name (`WEFT-MASQ-` + 18 = 28 characters).
const MAX_CHAIN_SUFFIX: usize = 18;
const MULTICAST: &str = "224.0.0.0/4";
/// Tables iptables-nft creates in family `ip`; their `FORWARD` chain is handled through iptables.
const IPTABLES_NFT_TABLES: [&str; 5] = ["filter", "mangle", "raw", "security", "nat"];
/// Directories tried when a program is not found in `PATH` (agents started with a user's PATH).
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// What the firewall should look like for one weft network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Network name (also the ownership tag `weft:<network>`).
    pub network: String,
    pub cluster_cidr: Ipv4Net,
    /// This node's pod subnet; must lie inside `cluster_cidr`.
    pub node_subnet: Ipv4Net,
    /// The pod bridge, e.g. `weft0`.
    pub bridge: String,
    pub mode: ForwardMode,
    /// Masquerade pod traffic that leaves the cluster CIDR.
    pub ip_masq: bool,
}

/// Which forwarded pod traffic is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardMode {
    /// host-gw: accept forwarded traffic from or to the cluster CIDR.
    Open,
    /// quic: accept pod traffic only from the tun device and the bridge; never pod-addressed
    /// traffic arriving on another interface (the underlay), which would bypass the tunnel's
    /// authentication.
    Tunnel { tun: String },
}

impl FirewallSpec {
    /// The comment on every rule weft writes for this network.
    pub fn tag(&self) -> String {
        tag(&self.network)
    }

    /// weft's chain in the iptables filter table for this network.
    pub fn forward_chain(&self) -> String {
        format!("WEFT-FWD-{}", chain_suffix(&self.network))
    }

    /// weft's chain in the iptables nat table for this network.
    pub fn masq_chain(&self) -> String {
        format!("WEFT-MASQ-{}", chain_suffix(&self.network))
    }

    /// Checks everything that ends up in a command line.
    pub fn validate(&self) -> Result<(), FirewallError> {
        validate_network(&self.network)?;
        validate_ifname("bridge", &self.bridge)?;
        if let ForwardMode::Tunnel { tun } = &self.mode {
            validate_ifname("tun", tun)?;
            if tun == &self.bridge {
                return Err(FirewallError::InvalidSpec(format!("tun and bridge are both {tun:?}")));
            }
        }
        if self.cluster_cidr.prefix_len() == 0 {
            return Err(FirewallError::InvalidSpec("cluster CIDR must not be 0.0.0.0/0".into()));
        }
        if !self.cluster_cidr.contains(&self.node_subnet) {
            return Err(FirewallError::InvalidSpec(format!(
                "node subnet {} is not inside the cluster CIDR {}",
                self.node_subnet, self.cluster_cidr
            )));
        }
        Ok(())
    }
}

/// Runs a program and returns its standard output; a non-zero exit is an error.
pub trait Runner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError>;
}

impl<T: Runner + ?Sized> Runner for &T {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError> {
        (**self).run(program, args)
    }
}

/// Runs the real programs (`std::process::Command`), looking in `PATH`, then the sbin directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError> {
        let command = render_command(program, args);
        debug!(%command, "firewall");
        let mut output = Command::new(program).args(args).env("LC_ALL", "C").output();
        if matches!(&output, Err(e) if e.kind() == ErrorKind::NotFound) && !program.contains('/') {
            if let Some(path) = SBIN_DIRS.iter().map(|d| Path::new(d).join(program)).find(|p| p.is_file()) {
                output = Command::new(path).args(args).env("LC_ALL", "C").output();
            }
        }
        let output = output.map_err(|e| match e.kind() {
            ErrorKind::NotFound => FirewallError::MissingProgram { program: program.to_string() },
            _ => FirewallError::Spawn { command: command.clone(), message: e.to_string() },
        })?;
        if !output.status.success() {
            let status = match output.status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_string(),
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
            return Err(FirewallError::CommandFailed { command, status, stderr });
        }
        String::from_utf8(output.stdout)
            .map_err(|_| FirewallError::Parse { command, detail: "standard output is not UTF-8".into() })
    }
}

/// What one `ensure` did (each entry has also been logged at `info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Human-readable list of what was (re)added or fixed; empty when all was in place.
    pub changed: Vec<String>,
}

impl Report {
    pub fn is_unchanged(&self) -> bool {
        self.changed.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    #[error("`{program}` not found (searched PATH and the sbin directories); weft needs it for its forwarding rules")]
    MissingProgram { program: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: String, stderr: String },
    #[error("cannot run `{command}`: {message}")]
    Spawn { command: String, message: String },
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
    #[error("invalid firewall spec: {0}")]
    InvalidSpec(String),
    #[error("{} firewall steps failed: {}", .0.len(), join_errors(.0))]
    Multiple(Vec<FirewallError>),
}

fn join_errors(errors: &[FirewallError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")
}

/// Keeps and repairs weft's firewall rules. Blocking: each call runs a few short processes.
#[derive(Debug, Clone, Default)]
pub struct Firewall<R: Runner = SystemRunner> {
    runner: R,
}

impl Firewall<SystemRunner> {
    /// A firewall driving the real `iptables` and `nft`.
    pub fn system() -> Self {
        Self { runner: SystemRunner }
    }
}

impl<R: Runner> Firewall<R> {
    pub fn new(runner: R) -> Self {
        Self { runner }
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Makes the rules for `spec` present (and the masquerade absent without `ip_masq`). Cheap and
    /// write-free when everything is in place; repairs whatever is missing or different.
    pub fn ensure(&self, spec: &FirewallSpec) -> Result<Report, FirewallError> {
        spec.validate()?;
        let tag = spec.tag();
        let mut changed = Vec::new();
        let mut errors = Vec::new();

        let forward = XtChain {
            table: "filter",
            chain: spec.forward_chain(),
            hook: "FORWARD",
            rules: xt_forward_rules(spec),
            jump_before_drops: true,
        };
        if let Err(e) = self.ensure_xt_chain(&forward, &tag, &mut changed) {
            errors.push(e);
        }
        if spec.ip_masq {
            let masq = XtChain {
                table: "nat",
                chain: spec.masq_chain(),
                hook: "POSTROUTING",
                rules: xt_masq_rules(spec),
                jump_before_drops: false,
            };
            if let Err(e) = self.ensure_xt_chain(&masq, &tag, &mut changed) {
                errors.push(e);
            }
        } else {
            errors.extend(self.absent_xt_chain("nat", &spec.masq_chain(), &mut changed));
        }

        match self.nft_forward_chains() {
            Ok(chains) => {
                let want = nft_rule_exprs(spec);
                for chain in &chains {
                    if let Err(e) = self.ensure_nft_chain(chain, &tag, &want, &mut changed) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }

        for c in &changed {
            info!(network = %spec.network, change = %c, "firewall repaired");
        }
        into_result(errors).map(|()| Report { changed })
    }

    /// Deletes everything weft wrote for `spec.network`: jumps, chains, tagged nft rules. Goes on
    /// past failures and returns all of them. Other networks' and foreign rules stay.
    pub fn remove(&self, spec: &FirewallSpec) -> Result<(), Vec<FirewallError>> {
        validate_network(&spec.network).map_err(|e| vec![e])?;
        let tag = spec.tag();
        let mut changed = Vec::new();
        let mut errors = Vec::new();
        errors.extend(self.absent_xt_chain("filter", &spec.forward_chain(), &mut changed));
        errors.extend(self.absent_xt_chain("nat", &spec.masq_chain(), &mut changed));
        match self.nft_forward_chains() {
            Ok(chains) => {
                for chain in &chains {
                    if let Err(e) = self.remove_nft_rules(chain, &tag, &mut changed) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        for c in &changed {
            info!(network = %spec.network, change = %c, "firewall rule removed");
        }
        let errors = dedup(errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    // ---- iptables ----

    fn xt(&self, table: &str, args: &[&str]) -> Result<String, FirewallError> {
        let mut all = vec!["-w", XT_WAIT, "-t", table];
        all.extend_from_slice(args);
        self.runner.run(IPTABLES, &all)
    }

    fn xt_rule(&self, table: &str, op: &[&str], rule: &[String]) -> Result<String, FirewallError> {
        let mut args: Vec<&str> = op.to_vec();
        args.extend(rule.iter().map(String::as_str));
        self.xt(table, &args)
    }

    fn xt_list(&self, table: &str) -> Result<XtTable, FirewallError> {
        let out = self.xt(table, &["-S"])?;
        XtTable::parse(&out).map_err(|detail| FirewallError::Parse {
            command: render_command(IPTABLES, &["-w", XT_WAIT, "-t", table, "-S"]),
            detail,
        })
    }

    fn ensure_xt_chain(&self, want: &XtChain, tag: &str, changed: &mut Vec<String>) -> Result<(), FirewallError> {
        let (table, chain, hook) = (want.table, want.chain.as_str(), want.hook);
        let listing = self.xt_list(table)?;

        let have: Vec<&Vec<String>> = listing.rules_in(chain).collect();
        let content_ok =
            have.len() == want.rules.len() && have.iter().zip(&want.rules).all(|(h, w)| xt_groups(h) == xt_groups(w));
        if !listing.chains.contains(chain) {
            self.xt(table, &["-N", chain])?;
            changed.push(format!("iptables -t {table}: created chain {chain}"));
        } else if !content_ok && !have.is_empty() {
            self.xt(table, &["-F", chain])?;
        }
        if !content_ok {
            for rule in &want.rules {
                self.xt_rule(table, &["-A", chain], rule)?;
            }
            changed.push(format!("iptables -t {table}: wrote the {} rules of {chain}", want.rules.len()));
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
                self.xt_rule(table, &["-D", hook], rule)?;
            }
            self.xt_rule(table, &["-I", hook, "1"], &jump)?;
            let what = if jumps.is_empty() { "inserted" } else { "re-inserted" };
            changed.push(format!("iptables -t {table}: {what} the jump {hook} -> {chain} at position 1"));
        }
        Ok(())
    }

    /// Deletes every jump to `chain` in `table`, then the chain. Goes on past failures.
    fn absent_xt_chain(&self, table: &str, chain: &str, changed: &mut Vec<String>) -> Vec<FirewallError> {
        let listing = match self.xt_list(table) {
            Ok(l) => l,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for (from, rule) in listing.rules.iter().filter(|(_, r)| xt_target(r) == Some(chain)) {
            match self.xt_rule(table, &["-D", from], rule) {
                Ok(_) => changed.push(format!("iptables -t {table}: deleted the jump {from} -> {chain}")),
                Err(e) => errors.push(e),
            }
        }
        if listing.chains.contains(chain) {
            if let Err(e) = self.xt(table, &["-F", chain]) {
                errors.push(e);
            }
            match self.xt(table, &["-X", chain]) {
                Ok(_) => changed.push(format!("iptables -t {table}: deleted chain {chain}")),
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    // ---- nftables ----

    fn nft_batch(&self, commands: Vec<Value>) -> Result<String, FirewallError> {
        let text = json!({ "nftables": commands }).to_string();
        self.runner.run(NFT, &["-j", &text])
    }

    /// Foreign forward base chains (families ip and inet, iptables-nft's own excluded).
    fn nft_forward_chains(&self) -> Result<Vec<NftChain>, FirewallError> {
        let args = ["-j", "list", "chains"];
        let out = self.runner.run(NFT, &args)?;
        parse_nft_forward_chains(&out)
            .map_err(|detail| FirewallError::Parse { command: render_command(NFT, &args), detail })
    }

    fn nft_chain_rules(&self, chain: &NftChain) -> Result<Vec<NftRule>, FirewallError> {
        let list = json!({ "list": { "chain": { "family": chain.family, "table": chain.table, "name": chain.name } } });
        let text = json!({ "nftables": [list] }).to_string();
        let out = self.runner.run(NFT, &["-j", &text])?;
        parse_nft_rules(&out, chain)
            .map_err(|detail| FirewallError::Parse { command: render_command(NFT, &["-j", &text]), detail })
    }

    fn ensure_nft_chain(
        &self,
        chain: &NftChain,
        tag: &str,
        want: &[Value],
        changed: &mut Vec<String>,
    ) -> Result<(), FirewallError> {
        let rules = self.nft_chain_rules(chain)?;
        let ours: Vec<(usize, &NftRule)> =
            rules.iter().enumerate().filter(|(_, r)| r.comment.as_deref() == Some(tag)).collect();
        let content_ok = ours.len() == want.len()
            && ours.iter().zip(want).all(|((_, r), w)| normalize_json(&r.expr) == normalize_json(w));
        let placed_ok = match ours.last() {
            Some((last, _)) => !rules[..*last].iter().any(|r| r.comment.as_deref() != Some(tag) && nft_drops(&r.expr)),
            None => want.is_empty(),
        };
        if content_ok && placed_ok {
            return Ok(());
        }
        let mut commands: Vec<Value> = ours.iter().map(|(_, r)| chain.delete_rule(r.handle)).collect();
        // Each insert goes to the top, so the last wanted rule is inserted first.
        commands.extend(want.iter().rev().map(|expr| {
            json!({ "insert": { "rule": {
                "family": chain.family, "table": chain.table, "chain": chain.name, "comment": tag, "expr": expr,
            } } })
        }));
        self.nft_batch(commands)?;
        let what = if ours.is_empty() { "inserted" } else { "replaced" };
        changed.push(format!("nft {chain}: {what} {} weft rules at the top", want.len()));
        Ok(())
    }

    fn remove_nft_rules(&self, chain: &NftChain, tag: &str, changed: &mut Vec<String>) -> Result<(), FirewallError> {
        let rules = self.nft_chain_rules(chain)?;
        let commands: Vec<Value> =
            rules.iter().filter(|r| r.comment.as_deref() == Some(tag)).map(|r| chain.delete_rule(r.handle)).collect();
        if commands.is_empty() {
            return Ok(());
        }
        let n = commands.len();
        self.nft_batch(commands)?;
        changed.push(format!("nft {chain}: deleted {n} weft rules"));
        Ok(())
    }
}

// ---- desired rules ----

struct XtChain {
    table: &'static str,
    chain: String,
    /// The built-in chain that jumps to `chain`.
    hook: &'static str,
    rules: Vec<Vec<String>>,
    /// The jump must precede every rule of `hook` whose target is DROP or REJECT.
    jump_before_drops: bool,
}

fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn with_comment(tag: &str, mut rule: Vec<String>, target: &[&str]) -> Vec<String> {
    rule.extend(words(&["-m", "comment", "--comment", tag, "-j"]));
    rule.extend(words(target));
    rule
}

fn jump_rule(tag: &str, chain: &str) -> Vec<String> {
    with_comment(tag, Vec::new(), &[chain])
}

/// The rules of `WEFT-FWD-<sfx>`, in `iptables -S` order of options.
fn xt_forward_rules(spec: &FirewallSpec) -> Vec<Vec<String>> {
    let tag = spec.tag();
    let cidr = spec.cluster_cidr.trunc().to_string();
    let subnet = spec.node_subnet.trunc().to_string();
    match &spec.mode {
        ForwardMode::Open => vec![
            with_comment(&tag, words(&["-s", &cidr]), &["ACCEPT"]),
            with_comment(&tag, words(&["-d", &cidr]), &["ACCEPT"]),
        ],
        ForwardMode::Tunnel { tun } => vec![
            with_comment(&tag, words(&["-s", &cidr, "-d", &subnet, "-i", tun]), &["ACCEPT"]),
            with_comment(&tag, words(&["-s", &subnet, "-i", &spec.bridge]), &["ACCEPT"]),
            with_comment(
                &tag,
                words(&[
                    "!",
                    "-s",
                    &cidr,
                    "-d",
                    &subnet,
                    "-o",
                    &spec.bridge,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                ]),
                &["ACCEPT"],
            ),
            with_comment(&tag, words(&["-d", &cidr]), &["DROP"]),
        ],
    }
}

/// The rules of `WEFT-MASQ-<sfx>`.
fn xt_masq_rules(spec: &FirewallSpec) -> Vec<Vec<String>> {
    let tag = spec.tag();
    let cidr = spec.cluster_cidr.trunc().to_string();
    vec![
        with_comment(&tag, words(&["-s", &cidr, "-d", &cidr]), &["RETURN"]),
        with_comment(&tag, words(&["-s", &cidr, "!", "-d", MULTICAST]), &["MASQUERADE", "--random-fully"]),
    ]
}

fn nft_match(op: &str, left: Value, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}

fn nft_addr(field: &str) -> Value {
    json!({ "payload": { "protocol": "ip", "field": field } })
}

fn nft_meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}

/// A prefix the way `nft -j` lists it (a /32 is a plain address).
fn nft_prefix(net: Ipv4Net) -> Value {
    let net = net.trunc();
    if net.prefix_len() == 32 {
        json!(net.addr().to_string())
    } else {
        json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
    }
}

/// The `expr` arrays of weft's nft rules, in chain order, as `nft -j` lists them.
fn nft_rule_exprs(spec: &FirewallSpec) -> Vec<Value> {
    let cidr = nft_prefix(spec.cluster_cidr);
    let subnet = nft_prefix(spec.node_subnet);
    let accept = json!({ "accept": null });
    match &spec.mode {
        ForwardMode::Open => vec![
            json!([nft_match("==", nft_addr("saddr"), cidr.clone()), accept]),
            json!([nft_match("==", nft_addr("daddr"), cidr), accept]),
        ],
        ForwardMode::Tunnel { tun } => vec![
            json!([
                nft_match("==", nft_meta("iifname"), json!(tun)),
                nft_match("==", nft_addr("saddr"), cidr.clone()),
                nft_match("==", nft_addr("daddr"), subnet.clone()),
                accept
            ]),
            json!([
                nft_match("==", nft_meta("iifname"), json!(spec.bridge)),
                nft_match("==", nft_addr("saddr"), subnet.clone()),
                accept
            ]),
            json!([
                nft_match("==", nft_meta("oifname"), json!(spec.bridge)),
                nft_match("!=", nft_addr("saddr"), cidr),
                nft_match("==", nft_addr("daddr"), subnet),
                nft_match("in", json!({ "ct": { "key": "state" } }), json!(["established", "related"])),
                accept
            ]),
        ],
    }
}

// ---- names ----

fn tag(network: &str) -> String {
    format!("weft:{network}")
}

/// The network name, or a short form with a hash when a chain name would get too long.
fn chain_suffix(network: &str) -> String {
    if network.len() <= MAX_CHAIN_SUFFIX {
        return network.to_string();
    }
    let head: String = network.chars().take(8).collect();
    format!("{head}-H{:08X}", fnv1a32(network.as_bytes()))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

fn validate_network(network: &str) -> Result<(), FirewallError> {
    let ok = !network.is_empty()
        && network.len() <= 63
        && network.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        && !network.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(FirewallError::InvalidSpec(format!(
            "network name {network:?}: expected lowercase letters, digits, '-', '_' or '.', 1 to 63 characters"
        )))
    }
}

fn validate_ifname(what: &str, name: &str) -> Result<(), FirewallError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.starts_with(['-', '!', '.'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(FirewallError::InvalidSpec(format!(
            "{what} interface name {name:?}: expected 1 to 15 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

// ---- iptables listing ----

/// One table as `iptables -S` prints it.
#[derive(Debug, Default)]
struct XtTable {
    chains: HashSet<String>,
    /// `(chain, arguments after "-A chain")`, in listing order.
    rules: Vec<(String, Vec<String>)>,
}

impl XtTable {
    fn parse(text: &str) -> Result<Self, String> {
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

// ---- nft listing ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct NftChain {
    family: String,
    table: String,
    name: String,
}

impl NftChain {
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

#[derive(Debug, Clone)]
struct NftRule {
    handle: u64,
    comment: Option<String>,
    expr: Value,
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

fn parse_nft_forward_chains(text: &str) -> Result<Vec<NftChain>, String> {
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
        if !matches!(family, "ip" | "inet") {
            continue;
        }
        if family == "ip" && name == "FORWARD" && IPTABLES_NFT_TABLES.contains(&table) {
            continue;
        }
        chains.push(NftChain { family: family.into(), table: table.into(), name: name.into() });
    }
    Ok(chains)
}

fn parse_nft_rules(text: &str, chain: &NftChain) -> Result<Vec<NftRule>, String> {
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
fn normalize_json(v: &Value) -> Value {
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
fn nft_drops(expr: &Value) -> bool {
    expr.as_array().is_some_and(|items| items.iter().any(|e| e.get("drop").is_some() || e.get("reject").is_some()))
}

// ---- helpers ----

fn render_command(program: &str, args: &[&str]) -> String {
    let mut out = program.to_string();
    for a in args {
        out.push(' ');
        if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:,=@".contains(&b)) {
            out.push_str(a);
        } else {
            out.push('\'');
            out.push_str(&a.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    out
}

fn dedup(errors: Vec<FirewallError>) -> Vec<FirewallError> {
    let mut out: Vec<FirewallError> = Vec::new();
    for e in errors {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

fn into_result(errors: Vec<FirewallError>) -> Result<(), FirewallError> {
    let mut errors = dedup(errors);
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(FirewallError::Multiple(errors)),
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures are real outputs captured on Debian 12 (iptables 1.8.9 nf_tables, nft 1.0.6) inside a
    //! scratch network namespace; spec: network `t`, cluster 10.244.0.0/16, node 10.244.1.0/24,
    //! bridge `r-c1`, tun `r-c2`.
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    const DOCKER_FILTER_BEFORE: &str = "-P INPUT ACCEPT
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
    const DOCKER_FILTER_AFTER: &str = r#"-P INPUT ACCEPT
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
    const DOCKER_FILTER_FLUSHED: &str = r#"-P INPUT ACCEPT
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
    const DOCKER_NAT_BEFORE: &str = "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
";
    const DOCKER_NAT_AFTER: &str = r#"-P PREROUTING ACCEPT
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
    const DOCKER_CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-ISOLATION-STAGE-1", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 3}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 6, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip", "table": "filter", "name": "WEFT-FWD-t", "handle": 11}}, {"chain": {"family": "ip", "table": "nat", "name": "DOCKER", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 2, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "nat", "name": "WEFT-MASQ-t", "handle": 4}}]}"#;
    const TUNNEL_FILTER_AFTER: &str = r#"-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N WEFT-FWD-t
-A FORWARD -m comment --comment "weft:t" -j WEFT-FWD-t
-A WEFT-FWD-t -s 10.244.0.0/16 -d 10.244.1.0/24 -i r-c2 -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t -s 10.244.1.0/24 -i r-c1 -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t ! -s 10.244.0.0/16 -d 10.244.1.0/24 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft:t" -j ACCEPT
-A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment "weft:t" -j DROP
"#;
    const EMPTY_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";
    const EMPTY_NAT: &str = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
    /// A pure nftables host: `table inet filter { chain forward { ...; policy drop; ct state invalid drop; } }`.
    const NFT_CHAINS_BEFORE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
    const NFT_CHAINS_AFTER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip", "table": "filter", "name": "WEFT-FWD-t", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;
    const NFT_FORWARD_BEFORE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;
    const NFT_FORWARD_AFTER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;
    /// Tunnel rules of `t`, open rules of a second network `t2`, a foreign `ip saddr 10.244.1.2 drop`
    /// and `ct state invalid drop`.
    const NFT_FORWARD_TUNNEL: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 12, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c2"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 11, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "r-c1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 10, "comment": "weft:t", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "r-c1"}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 9, "comment": "weft:t2", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 8, "comment": "weft:t2", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.245.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.244.1.2"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}]}"#;

    const FILTER_LIST: &str = "iptables -w 5 -t filter -S";
    const NAT_LIST: &str = "iptables -w 5 -t nat -S";
    const NFT_CHAINS: &str = "nft -j list chains";
    const NFT_LIST_FWD: &str = "nft list chain inet filter forward";

    /// Records every command (nft JSON rendered as nft syntax) and answers from a table; commands
    /// without an entry succeed with empty output.
    #[derive(Default)]
    struct Fake {
        answers: HashMap<String, Result<String, FirewallError>>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn with(mut self, command: &str, output: &str) -> Self {
            self.answers.insert(command.to_string(), Ok(output.to_string()));
            self
        }
        fn failing(mut self, command: &str, err: FirewallError) -> Self {
            self.answers.insert(command.to_string(), Err(err));
            self
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
        fn writes(&self) -> Vec<String> {
            self.calls().into_iter().filter(|c| !is_listing(c)).collect()
        }
    }

    fn is_listing(c: &str) -> bool {
        c.ends_with(" -S") || c == NFT_CHAINS || c.starts_with("nft list chain ")
    }

    impl Runner for Fake {
        fn run(&self, program: &str, args: &[&str]) -> Result<String, FirewallError> {
            let call = describe(program, args);
            self.calls.borrow_mut().push(call.clone());
            self.answers.get(&call).cloned().unwrap_or(Ok(String::new()))
        }
    }

    fn describe(program: &str, args: &[&str]) -> String {
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

    fn nft_command_text(cmd: &Value) -> String {
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
    fn nft_expr_text(expr: &Value) -> String {
        let mut out = Vec::new();
        for e in expr.as_array().expect("expr array") {
            if e.get("accept").is_some() {
                out.push("accept".to_string());
                continue;
            }
            let m = e.get("match").expect("match");
            let left = if let Some(p) = m["left"].get("payload") {
                format!("ip {}", p["field"].as_str().unwrap_or("?"))
            } else if let Some(k) = m["left"].pointer("/meta/key") {
                k.as_str().unwrap_or("?").to_string()
            } else {
                format!("ct {}", m["left"].pointer("/ct/key").and_then(Value::as_str).unwrap_or("?"))
            };
            let right = match &m["right"] {
                Value::String(s) if left.ends_with("ifname") => format!("\"{s}\""),
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                v => format!(
                    "{}/{}",
                    v.pointer("/prefix/addr").and_then(Value::as_str).unwrap_or("?"),
                    v["prefix"]["len"]
                ),
            };
            let op = if m["op"] == "!=" { "!= " } else { "" };
            out.push(format!("{left} {op}{right}"));
        }
        out.join(" ")
    }

    fn spec(mode: ForwardMode, ip_masq: bool) -> FirewallSpec {
        FirewallSpec {
            network: "t".into(),
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            node_subnet: "10.244.1.0/24".parse().expect("subnet"),
            bridge: "r-c1".into(),
            mode,
            ip_masq,
        }
    }

    fn tunnel() -> ForwardMode {
        ForwardMode::Tunnel { tun: "r-c2".into() }
    }

    fn docker_host(filter: &str, nat: &str) -> Fake {
        Fake::default().with(FILTER_LIST, filter).with(NAT_LIST, nat).with(NFT_CHAINS, DOCKER_CHAINS)
    }

    fn nft_host(forward: &str) -> Fake {
        Fake::default()
            .with(FILTER_LIST, EMPTY_FILTER)
            .with(NAT_LIST, EMPTY_NAT)
            .with(NFT_CHAINS, NFT_CHAINS_BEFORE)
            .with(NFT_LIST_FWD, forward)
    }

    #[test]
    fn first_ensure_on_a_docker_host_writes_chain_jump_and_masquerade() {
        let fw = Firewall::new(docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE));
        let report = fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert_eq!(
            fw.runner().calls(),
            [
                "iptables -w 5 -t filter -S",
                "iptables -w 5 -t filter -N WEFT-FWD-t",
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t -j WEFT-FWD-t",
                "iptables -w 5 -t nat -S",
                "iptables -w 5 -t nat -N WEFT-MASQ-t",
                "iptables -w 5 -t nat -A WEFT-MASQ-t -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment weft:t -j RETURN",
                "iptables -w 5 -t nat -A WEFT-MASQ-t -s 10.244.0.0/16 '!' -d 224.0.0.0/4 -m comment --comment weft:t -j MASQUERADE --random-fully",
                "iptables -w 5 -t nat -I POSTROUTING 1 -m comment --comment weft:t -j WEFT-MASQ-t",
                "nft -j list chains",
            ]
        );
        assert_eq!(report.changed.len(), 6, "{report:?}");
    }

    #[test]
    fn first_ensure_on_a_pure_nftables_host_inserts_at_the_top_of_the_forward_chain() {
        let fw = Firewall::new(nft_host(NFT_FORWARD_BEFORE));
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(
            fw.runner().calls(),
            [
                "iptables -w 5 -t filter -S",
                "iptables -w 5 -t filter -N WEFT-FWD-t",
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t -j WEFT-FWD-t",
                "iptables -w 5 -t nat -S",
                "nft -j list chains",
                "nft list chain inet filter forward",
                // One transaction; each insert goes to the top, hence the reverse order.
                "nft insert rule inet filter forward ip daddr 10.244.0.0/16 accept comment \"weft:t\"; \
                 insert rule inet filter forward ip saddr 10.244.0.0/16 accept comment \"weft:t\"",
            ]
        );
        assert_eq!(
            report.changed.last().map(String::as_str),
            Some("nft inet filter forward: inserted 2 weft rules at the top")
        );
    }

    #[test]
    fn tunnel_rules_on_first_ensure() {
        let fw = Firewall::new(nft_host(NFT_FORWARD_BEFORE));
        fw.ensure(&spec(tunnel(), false)).expect("ensure");
        let writes = fw.runner().writes();
        assert_eq!(
            writes[1..5],
            [
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -d 10.244.1.0/24 -i r-c2 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.1.0/24 -i r-c1 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t '!' -s 10.244.0.0/16 -d 10.244.1.0/24 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j DROP",
            ]
        );
        assert_eq!(
            writes.last().map(String::as_str),
            Some(
                "nft insert rule inet filter forward oifname \"r-c1\" ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 ct state established,related accept comment \"weft:t\"; \
                 insert rule inet filter forward iifname \"r-c1\" ip saddr 10.244.1.0/24 accept comment \"weft:t\"; \
                 insert rule inet filter forward iifname \"r-c2\" ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 accept comment \"weft:t\""
            )
        );
    }

    #[test]
    fn second_ensure_with_everything_in_place_only_lists() {
        let fw = Firewall::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert!(report.is_unchanged(), "{report:?}");
        assert_eq!(fw.runner().calls(), [FILTER_LIST, NAT_LIST, NFT_CHAINS]);

        let nft = Fake::default()
            .with(FILTER_LIST, TUNNEL_FILTER_AFTER)
            .with(NAT_LIST, EMPTY_NAT)
            .with(NFT_CHAINS, NFT_CHAINS_AFTER)
            .with(NFT_LIST_FWD, NFT_FORWARD_TUNNEL);
        let fw = Firewall::new(nft);
        let report = fw.ensure(&spec(tunnel(), false)).expect("ensure");
        assert!(report.is_unchanged(), "{report:?}");
        // iptables-nft's own ip filter FORWARD is not listed through nft.
        assert_eq!(fw.runner().calls(), [FILTER_LIST, NAT_LIST, NFT_CHAINS, NFT_LIST_FWD]);
    }

    #[test]
    fn a_flushed_chain_is_refilled_and_nothing_else_is_touched() {
        let fw = Firewall::new(docker_host(DOCKER_FILTER_FLUSHED, DOCKER_NAT_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
            ]
        );
        assert_eq!(report.changed, ["iptables -t filter: wrote the 2 rules of WEFT-FWD-t"]);

        // A firewall reload that dropped everything: chain, jump and nft rules come back.
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_BEFORE).with(FILTER_LIST, DOCKER_FILTER_BEFORE).with(NFT_CHAINS, NFT_CHAINS_AFTER),
        );
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(report.changed.len(), 4, "{report:?}");
        assert!(fw.runner().writes().iter().any(|w| w.starts_with("nft insert rule inet filter forward")));
    }

    #[test]
    fn ip_masq_false_removes_only_weft_masquerade() {
        let fw = Firewall::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t nat -D POSTROUTING -m comment --comment weft:t -j WEFT-MASQ-t",
                "iptables -w 5 -t nat -F WEFT-MASQ-t",
                "iptables -w 5 -t nat -X WEFT-MASQ-t",
            ]
        );
        assert_eq!(report.changed.len(), 2);
        // Already absent: no writes.
        let fw = Firewall::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_BEFORE));
        assert!(fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure").is_unchanged());
        assert!(fw.runner().writes().is_empty());
    }

    #[test]
    fn changed_cidr_or_mode_replaces_the_rules() {
        let mut s = spec(ForwardMode::Open, false);
        s.cluster_cidr = "10.250.0.0/16".parse().expect("cidr");
        s.node_subnet = "10.250.3.0/24".parse().expect("subnet");
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_AFTER).with(FILTER_LIST, DOCKER_FILTER_AFTER).with(NFT_CHAINS, NFT_CHAINS_AFTER),
        );
        let report = fw.ensure(&s).expect("ensure");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t filter -F WEFT-FWD-t",
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.250.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.250.0.0/16 -m comment --comment weft:t -j ACCEPT",
                "nft delete rule inet filter forward handle 4; delete rule inet filter forward handle 3; \
                 insert rule inet filter forward ip daddr 10.250.0.0/16 accept comment \"weft:t\"; \
                 insert rule inet filter forward ip saddr 10.250.0.0/16 accept comment \"weft:t\"",
            ]
        );
        assert_eq!(report.changed.len(), 2);

        // Open -> Tunnel on the same CIDR: chain refilled, nft rules replaced.
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_AFTER).with(FILTER_LIST, DOCKER_FILTER_AFTER).with(NFT_CHAINS, NFT_CHAINS_AFTER),
        );
        fw.ensure(&spec(tunnel(), false)).expect("ensure");
        let writes = fw.runner().writes();
        assert_eq!(writes[0], "iptables -w 5 -t filter -F WEFT-FWD-t");
        assert!(writes[5].starts_with(
            "nft delete rule inet filter forward handle 4; delete rule inet filter forward handle 3; insert"
        ));
    }

    #[test]
    fn jump_placement() {
        let with_forward = |forward: &str| {
            let filter = DOCKER_FILTER_AFTER.replace(
                "-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n-A FORWARD -j DOCKER-USER\n",
                forward,
            );
            Firewall::new(docker_host(&filter, DOCKER_NAT_AFTER))
        };
        // Docker re-inserted DOCKER-USER at the top: left alone, no fight over position 1.
        let fw = with_forward("-A FORWARD -j DOCKER-USER\n-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n");
        assert!(fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure").is_unchanged());
        assert!(fw.runner().writes().is_empty());

        // A DROP before the jump: the jump moves to the top.
        let fw = with_forward(
            "-A FORWARD -s 10.244.0.0/16 -j DROP\n-A FORWARD -m comment --comment \"weft:t\" -j WEFT-FWD-t\n-A FORWARD -j DOCKER-USER\n",
        );
        fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t filter -D FORWARD -m comment --comment weft:t -j WEFT-FWD-t",
                "iptables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t -j WEFT-FWD-t",
            ]
        );

        // Duplicate or untagged jumps are replaced by one tagged jump.
        let fw = with_forward("-A FORWARD -j WEFT-FWD-t\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j WEFT-FWD-t\n");
        fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t filter -D FORWARD -j WEFT-FWD-t",
                "iptables -w 5 -t filter -D FORWARD -j WEFT-FWD-t",
                "iptables -w 5 -t filter -I FORWARD 1 -m comment --comment weft:t -j WEFT-FWD-t",
            ]
        );
    }

    #[test]
    fn nft_rules_below_a_foreign_drop_move_back_to_the_top() {
        // What `nft insert rule inet filter forward ip saddr 10.244.1.2 drop` after weft looks like.
        let forward = NFT_FORWARD_AFTER.replace(
            r#"{"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4,"#,
            r#"{"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.244.1.2"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4,"#,
        );
        let fw =
            Firewall::new(nft_host(&forward).with(FILTER_LIST, DOCKER_FILTER_AFTER).with(NFT_CHAINS, NFT_CHAINS_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(report.changed, ["nft inet filter forward: replaced 2 weft rules at the top"]);
        // Other networks' accepts above weft's rules are fine.
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_TUNNEL).with(FILTER_LIST, TUNNEL_FILTER_AFTER).with(NFT_CHAINS, NFT_CHAINS_AFTER),
        );
        let mut t2 = spec(ForwardMode::Open, false);
        t2.network = "t2".into();
        t2.cluster_cidr = "10.245.0.0/16".parse().expect("cidr");
        t2.node_subnet = "10.245.1.0/24".parse().expect("subnet");
        fw.ensure(&t2).expect("ensure");
        assert!(!fw.runner().writes().iter().any(|w| w.starts_with("nft")), "{:?}", fw.runner().writes());
    }

    #[test]
    fn remove_deletes_only_weft_rules_of_its_network() {
        let fw = Firewall::new(
            docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER)
                .with(NFT_CHAINS, NFT_CHAINS_AFTER)
                .with(NFT_LIST_FWD, NFT_FORWARD_TUNNEL),
        );
        fw.remove(&spec(tunnel(), true)).expect("remove");
        assert_eq!(
            fw.runner().writes(),
            [
                "iptables -w 5 -t filter -D FORWARD -m comment --comment weft:t -j WEFT-FWD-t",
                "iptables -w 5 -t filter -F WEFT-FWD-t",
                "iptables -w 5 -t filter -X WEFT-FWD-t",
                "iptables -w 5 -t nat -D POSTROUTING -m comment --comment weft:t -j WEFT-MASQ-t",
                "iptables -w 5 -t nat -F WEFT-MASQ-t",
                "iptables -w 5 -t nat -X WEFT-MASQ-t",
                // Handles 9 and 8 (network t2), 5 and 2 (foreign) stay.
                "nft delete rule inet filter forward handle 12; delete rule inet filter forward handle 11; \
                 delete rule inet filter forward handle 10",
            ]
        );
        // Nothing of weft's left: only listings.
        let fw = Firewall::new(
            docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE)
                .with(NFT_CHAINS, NFT_CHAINS_BEFORE)
                .with(NFT_LIST_FWD, NFT_FORWARD_BEFORE),
        );
        fw.remove(&spec(ForwardMode::Open, false)).expect("remove");
        assert!(fw.runner().writes().is_empty(), "{:?}", fw.runner().writes());
    }

    #[test]
    fn remove_goes_on_past_failures_and_reports_all() {
        let busy = FirewallError::CommandFailed {
            command: "iptables".into(),
            status: "exit status 4".into(),
            stderr: "Resource temporarily unavailable".into(),
        };
        let fw = Firewall::new(
            docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER)
                .failing("iptables -w 5 -t filter -D FORWARD -m comment --comment weft:t -j WEFT-FWD-t", busy.clone())
                .failing("iptables -w 5 -t filter -X WEFT-FWD-t", busy.clone())
                .failing(NFT_CHAINS, FirewallError::MissingProgram { program: "nft".into() }),
        );
        let errors = fw.remove(&spec(ForwardMode::Open, true)).expect_err("failures");
        assert_eq!(errors, [busy, FirewallError::MissingProgram { program: "nft".into() }]);
        let writes = fw.runner().writes();
        assert!(writes.contains(&"iptables -w 5 -t filter -F WEFT-FWD-t".to_string()));
        assert!(writes.contains(&"iptables -w 5 -t nat -X WEFT-MASQ-t".to_string()));
        assert_eq!(fw.runner().calls().last().map(String::as_str), Some(NFT_CHAINS));
    }

    #[test]
    fn missing_programs_are_named_and_the_rest_still_applied() {
        let fw = Firewall::new(
            docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE)
                .failing(NFT_CHAINS, FirewallError::MissingProgram { program: "nft".into() }),
        );
        let err = fw.ensure(&spec(ForwardMode::Open, true)).expect_err("nft missing");
        assert_eq!(err, FirewallError::MissingProgram { program: "nft".into() });
        assert!(err.to_string().starts_with("`nft` not found"), "{err}");
        assert_eq!(fw.runner().writes().len(), 8);

        let gone = FirewallError::MissingProgram { program: "iptables".into() };
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_BEFORE).failing(FILTER_LIST, gone.clone()).failing(NAT_LIST, gone.clone()),
        );
        // Reported once although both tables failed; nft rules were still written.
        assert_eq!(fw.ensure(&spec(ForwardMode::Open, true)), Err(gone));
        assert!(fw.runner().writes().iter().any(|w| w.starts_with("nft insert")));
    }

    #[test]
    fn several_failures_are_all_returned() {
        let broken =
            FirewallError::CommandFailed { command: "x".into(), status: "exit status 1".into(), stderr: "no".into() };
        let fw = Firewall::new(
            nft_host(NFT_FORWARD_BEFORE)
                .failing("iptables -w 5 -t filter -N WEFT-FWD-t", broken.clone())
                .failing(NFT_LIST_FWD, FirewallError::Parse { command: "nft".into(), detail: "bad".into() }),
        );
        let err = fw.ensure(&spec(ForwardMode::Open, true)).expect_err("failures");
        let FirewallError::Multiple(errors) = &err else { panic!("expected Multiple, got {err:?}") };
        assert_eq!(errors.len(), 2);
        assert!(err.to_string().starts_with("2 firewall steps failed: "), "{err}");
        // The nat part ran although the filter part failed.
        assert!(fw.runner().writes().iter().any(|w| w.contains("-t nat -I POSTROUTING 1")));
    }

    #[test]
    fn forward_chains_of_iptables_nft_and_other_families_are_skipped() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "mangle", "name": "FORWARD", "handle": 2, "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip6", "table": "filter", "name": "forward", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "bridge", "table": "f", "name": "forward", "handle": 5, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "handle": 6, "type": "filter", "hook": "forward", "prio": 10, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT", "handle": 7, "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "my fw", "name": "fwd x", "handle": 8, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"table": {"family": "inet", "name": "x", "handle": 9}}, {"set": {"whatever": true}}]}"#;
        let chains = parse_nft_forward_chains(listing).expect("parse");
        let names: Vec<String> = chains.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ip filter forward", "inet firewalld filter_FORWARD", "ip my fw fwd x"]);
        assert!(parse_nft_forward_chains("").expect("empty").is_empty());
        assert!(parse_nft_forward_chains(DOCKER_CHAINS).expect("docker").is_empty());
        assert!(parse_nft_forward_chains("not json").is_err());
        assert!(parse_nft_forward_chains(r#"{"x": 1}"#).is_err());
        // Names with spaces go through JSON, never through nft's command-line parser.
        let fw = Firewall::new(Fake::default());
        let chain = NftChain { family: "ip".into(), table: "my fw".into(), name: "fwd x".into() };
        fw.nft_chain_rules(&chain).expect("list");
        assert_eq!(fw.runner().calls(), ["nft list chain ip my fw fwd x"]);
    }

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

    #[test]
    fn chain_names_are_per_network_and_short_enough() {
        let mut s = spec(ForwardMode::Open, false);
        assert_eq!(
            (s.forward_chain(), s.masq_chain(), s.tag()),
            ("WEFT-FWD-t".into(), "WEFT-MASQ-t".into(), "weft:t".into())
        );
        s.network = "a".repeat(18);
        assert_eq!(s.masq_chain(), format!("WEFT-MASQ-{}", "a".repeat(18)));
        assert_eq!(s.masq_chain().len(), 28);
        s.network = "production-cluster-eu-west-1".into();
        assert_eq!(s.forward_chain(), format!("WEFT-FWD-producti-H{:08X}", fnv1a32(b"production-cluster-eu-west-1")));
        let other = FirewallSpec { network: "production-cluster-eu-west-2".into(), ..s.clone() };
        assert_ne!(s.forward_chain(), other.forward_chain());
        s.network = "x".repeat(63);
        assert!(s.masq_chain().len() <= 28 && s.forward_chain().len() <= 28);
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    }

    #[test]
    fn invalid_specs_are_refused_before_any_command() {
        let cases: Vec<(FirewallSpec, &str)> = vec![
            (FirewallSpec { network: "Bad Name".into(), ..spec(ForwardMode::Open, false) }, "network name"),
            (FirewallSpec { bridge: "-j".into(), ..spec(ForwardMode::Open, false) }, "bridge interface"),
            (FirewallSpec { bridge: "a\"b".into(), ..spec(ForwardMode::Open, false) }, "bridge interface"),
            (spec(ForwardMode::Tunnel { tun: "sixteen-chars-xx".into() }, false), "tun interface"),
            (spec(ForwardMode::Tunnel { tun: "r-c1".into() }, false), "both"),
            (
                FirewallSpec { node_subnet: "10.99.1.0/24".parse().expect("net"), ..spec(ForwardMode::Open, false) },
                "not inside",
            ),
            (
                FirewallSpec { cluster_cidr: "0.0.0.0/0".parse().expect("net"), ..spec(ForwardMode::Open, false) },
                "0.0.0.0/0",
            ),
        ];
        for (s, needle) in cases {
            let fw = Firewall::new(Fake::default());
            let err = fw.ensure(&s).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
            assert!(fw.runner().calls().is_empty());
        }
        let fw = Firewall::new(Fake::default());
        assert!(fw.remove(&FirewallSpec { network: String::new(), ..spec(ForwardMode::Open, false) }).is_err());
        assert!(fw.runner().calls().is_empty());
    }

    #[test]
    fn system_runner_errors() {
        // Harmless programs only: nothing here touches a firewall.
        let r = SystemRunner;
        assert_eq!(
            r.run("weft-no-such-program", &[]),
            Err(FirewallError::MissingProgram { program: "weft-no-such-program".into() })
        );
        assert_eq!(r.run("sh", &["-c", "echo out"]).as_deref(), Ok("out\n"));
        match r.run("sh", &["-c", "echo 'line one' >&2; echo two >&2; exit 3"]) {
            Err(FirewallError::CommandFailed { command, status, stderr }) => {
                assert_eq!(command, "sh -c 'echo '\\''line one'\\'' >&2; echo two >&2; exit 3'");
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr, "line one; two");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
