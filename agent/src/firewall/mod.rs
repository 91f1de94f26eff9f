//! Forward-accept and masquerade rules for pod traffic (DESIGN "Agent lifecycle" step 4).
//!
//! # Layout: decisions apart from effects (like `routes::plan`)
//! - [`spec`]: what the firewall should look like ([`FirewallSpec`], [`ForwardMode`],
//!   [`ForwardPolicy`], [`Family`]), the names weft owns, validation.
//! - [`iptables`] and [`nft`]: per tool, the parser of the current listing (`iptables -S` text,
//!   `nft -j` JSON), the renderers of weft's rules, and pure plans
//!   (`plan(spec, .., &listing) -> Vec<Command>`) that return exactly the writes needed, in order;
//!   nothing when everything is in place.
//! - this module: the [`Runner`] seam (the real programs, or a recording fake in tests) and the
//!   [`Executor`]: it lists through the runner, asks the plans, runs their [`Command`]s, logs
//!   and reports each change and collects the errors.
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
//! ## Per-subnet overrides (a node whose peers use different backends)
//! [`FirewallSpec::mode`] is the default for the whole cluster CIDR; [`FirewallSpec::overrides`]
//! gives a peer subnet `P` another mode. With no overrides (or only overrides equal to the
//! default) the rules are exactly the ones above. Otherwise, in address order of `P`:
//! - `P` Open under a Tunnel default: `-s P -j ACCEPT`, `-d P -j ACCEPT` after rule 3, before
//!   the `-d C -j DROP` (which stays the default, so a subnet not yet known is never forwarded
//!   in plaintext);
//! - `P` Tunnel{`T2`} under a Tunnel{`T`} default with `T2 != T`: `-s P -d S -i T2 -j ACCEPT`
//!   at the same place;
//! - `P` Tunnel{`T`} under an Open default, placed before the Open accepts: once
//!   `-s S -i B -j ACCEPT` (local pods out), then per `P`: `-s P -d S -i T -j ACCEPT` (from the
//!   tun), `-s P -j DROP`, `-d P -j DROP` (anything else from or to `P`, say plaintext on the
//!   underlay).
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
//! - Overrides, only accepts for the same reason: under a Tunnel default, an Open `P` adds
//!   `ip saddr P accept`, `ip daddr P accept`, a Tunnel{`T2`} `P` adds
//!   `iifname "T2" ip saddr P ip daddr S accept`, after the three rules above. Under an Open
//!   default a Tunnel `P` adds nothing: its accepts are covered by the two Open rules and its
//!   drops are the iptables chain's.
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
//! Every part (filter table, nat table, each nft chain) runs even when another fails; within a
//! part that builds something the first failure stops that part (later steps depend on it),
//! while a part that takes something away goes on. The errors are returned together (one error
//! as itself, several as [`FirewallError::Multiple`]). A missing `iptables` or `nft` yields
//! [`FirewallError::MissingProgram`] naming it (`ip6tables` for an IPv6 spec). A change counts once its command succeeded
//! ([`Command::change`]); all of them are logged (`info`) at the end of the call, also when a
//! step failed, so changes made before a failure are not lost from the log.
//!
//! `remove` (node leaves) deletes weft's jumps and chains and every rule tagged `weft:<net>` in
//! foreign forward chains, going on past failures. It depends only on `spec.network` and the
//! spec's family.
//!
//! # Address families
//! A spec is for one family, the cluster CIDR's; all of its addresses have it
//! ([`FirewallSpec::validate`]). An IPv4 spec is everything above. An IPv6 spec makes the same
//! rules through `ip6tables` (its own filter and nat tables, so the chain names are the same),
//! with `ff00::/8` for the multicast that is never masqueraded, and in nftables `ip6 saddr`/
//! `ip6 daddr` matches in the foreign forward chains of families `ip6` and `inet` (ip6tables-nft's
//! own `ip6` tables excluded, as iptables-nft's `ip` ones are). Its tag is `weft:<net>:ip6`, so in
//! an `inet` chain, which sees both families, each family's spec keeps and removes only its own
//! rules. A dual-stack node runs one spec per family (`firewall_glue::NodeFirewall`), each
//! with its own masquerade switch (`ip_masq`, `ip_masq6`).
//!
//! Calls are blocking (a few short-lived processes). Not handled: a `bridge`-family
//! forward chain with `policy drop` (only relevant with `br_netfilter`), and a host whose
//! `iptables` is iptables-legacy while something else keeps iptables-nft `FORWARD` rules.

pub mod iptables;
pub mod nft;
pub mod spec;

#[cfg(test)]
mod fixtures;

use std::io::ErrorKind;
use std::path::Path;

use tracing::{debug, info};

pub use iptables::{Table, IP6TABLES, IPTABLES};
pub use nft::{NftChain, NftRule, NFT};
pub use spec::{Family, FirewallSpec, ForwardMode, ForwardPolicy};

/// Directories tried when a program is not found in `PATH` (agents started with a user's PATH).
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

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
        use std::process::Command;
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

/// What a failed [`Command`] means for the rest of its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Later commands depend on this one: skip them.
    Stop,
    /// Later commands stand alone (teardown): run them anyway.
    Continue,
}

/// One process a plan asks for: a program and its arguments (for nft, `-j` and one JSON
/// transaction), plus the change to report once it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: &'static str,
    pub args: Vec<String>,
    /// Reported and logged once this command succeeded; `None` for intermediate steps.
    pub change: Option<String>,
    pub on_failure: OnFailure,
}

impl Command {
    pub fn new(program: &'static str, args: Vec<String>, on_failure: OnFailure) -> Self {
        Self { program, args, change: None, on_failure }
    }

    /// The same command, reporting `change` once it succeeded.
    pub fn noting(mut self, change: String) -> Self {
        self.change = Some(change);
        self
    }

    /// The command as a shell would take it (for logs and error messages).
    pub fn render(&self) -> String {
        render_command(self.program, &self.arg_strs())
    }

    fn arg_strs(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
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

/// Runs the plans for a [`FirewallSpec`] through its [`Runner`]: keeps and repairs weft's firewall
/// rules. Blocking: each call runs a few short processes. The agent reaches it through
/// `firewall_glue::NodeFirewall`, which builds the spec from its config.
#[derive(Debug, Clone, Default)]
pub struct Executor<R: Runner = SystemRunner> {
    runner: R,
}

impl Executor<SystemRunner> {
    /// An executor driving the real `iptables` and `nft`.
    pub fn system() -> Self {
        Self { runner: SystemRunner }
    }
}

/// Changes made and errors met so far by one `ensure` or `remove`.
#[derive(Default)]
struct Progress {
    changed: Vec<String>,
    errors: Vec<FirewallError>,
}

impl<R: Runner> Executor<R> {
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
        let p = self.run_plans(
            spec.family(),
            |table, listing| iptables::plan(spec, table, listing),
            |chain, rules| nft::plan(spec, chain, rules),
        );
        for c in &p.changed {
            info!(network = %spec.network, change = %c, "firewall repaired");
        }
        into_result(p.errors).map(|()| Report { changed: p.changed })
    }

    /// Deletes everything weft wrote for `spec.network`: jumps, chains, tagged nft rules. Goes on
    /// past failures and returns all of them. Other networks' and foreign rules stay.
    pub fn remove(&self, spec: &FirewallSpec) -> Result<(), Vec<FirewallError>> {
        spec::validate_network(&spec.network).map_err(|e| vec![e])?;
        let p = self.run_plans(
            spec.family(),
            |table, listing| iptables::plan_remove(spec, table, listing),
            |chain, rules| nft::plan_remove(spec, chain, rules),
        );
        for c in &p.changed {
            info!(network = %spec.network, change = %c, "firewall rule removed");
        }
        let errors = dedup(p.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Lists every iptables (ip6tables) table and every foreign nft forward chain that sees
    /// `family`'s packets, and runs the plan each listing asks for; a listing that fails is noted
    /// and the others still run.
    fn run_plans(
        &self,
        family: Family,
        xt: impl Fn(Table, &iptables::XtTable) -> Vec<Command>,
        nft: impl Fn(&NftChain, &[NftRule]) -> Vec<Command>,
    ) -> Progress {
        let mut p = Progress::default();
        for table in Table::ALL {
            match self.xt_list(family, table) {
                Ok(listing) => self.execute(xt(table, &listing), &mut p),
                Err(e) => p.errors.push(e),
            }
        }
        match self.nft_forward_chains(family) {
            Ok(chains) => {
                for chain in &chains {
                    match self.nft_chain_rules(chain) {
                        Ok(rules) => self.execute(nft(chain, &rules), &mut p),
                        Err(e) => p.errors.push(e),
                    }
                }
            }
            Err(e) => p.errors.push(e),
        }
        p
    }

    /// Runs a plan's commands in order, noting each change; see [`OnFailure`].
    fn execute(&self, plan: Vec<Command>, p: &mut Progress) {
        for cmd in plan {
            match self.runner.run(cmd.program, &cmd.arg_strs()) {
                Ok(_) => p.changed.extend(cmd.change),
                Err(e) => {
                    p.errors.push(e);
                    if cmd.on_failure == OnFailure::Stop {
                        return;
                    }
                }
            }
        }
    }

    /// Runs a listing command and parses its output.
    fn list<T>(&self, cmd: Command, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, FirewallError> {
        let out = self.runner.run(cmd.program, &cmd.arg_strs())?;
        parse(&out).map_err(|detail| FirewallError::Parse { command: cmd.render(), detail })
    }

    fn xt_list(&self, family: Family, table: Table) -> Result<iptables::XtTable, FirewallError> {
        self.list(iptables::listing(family, table), iptables::XtTable::parse)
    }

    /// Foreign forward base chains that see `family`'s packets (families ip or ip6, and inet;
    /// iptables-nft's own excluded).
    fn nft_forward_chains(&self, family: Family) -> Result<Vec<NftChain>, FirewallError> {
        self.list(nft::list_chains(), |out| nft::parse_nft_forward_chains(out, family))
    }

    fn nft_chain_rules(&self, chain: &NftChain) -> Result<Vec<NftRule>, FirewallError> {
        self.list(nft::list_chain(chain), |out| nft::parse_nft_rules(out, chain))
    }
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
    use super::fixtures::*;
    use super::nft::parse_nft_forward_chains;
    use super::*;

    #[test]
    fn first_ensure_on_a_docker_host_writes_chain_jump_and_masquerade() {
        let fw = Executor::new(docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE));
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
        let fw = Executor::new(nft_host(NFT_FORWARD_BEFORE));
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
        let fw = Executor::new(nft_host(NFT_FORWARD_BEFORE));
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
        let fw = Executor::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, true)).expect("ensure");
        assert!(report.is_unchanged(), "{report:?}");
        assert_eq!(fw.runner().calls(), [FILTER_LIST, NAT_LIST, NFT_CHAINS]);

        let nft = Fake::default()
            .with(FILTER_LIST, TUNNEL_FILTER_AFTER)
            .with(NAT_LIST, EMPTY_NAT)
            .with(NFT_CHAINS, NFT_CHAINS_AFTER)
            .with(NFT_LIST_FWD, NFT_FORWARD_TUNNEL);
        let fw = Executor::new(nft);
        let report = fw.ensure(&spec(tunnel(), false)).expect("ensure");
        assert!(report.is_unchanged(), "{report:?}");
        // iptables-nft's own ip filter FORWARD is not listed through nft.
        assert_eq!(fw.runner().calls(), [FILTER_LIST, NAT_LIST, NFT_CHAINS, NFT_LIST_FWD]);
    }

    #[test]
    fn a_flushed_chain_is_refilled_and_nothing_else_is_touched() {
        let fw = Executor::new(docker_host(DOCKER_FILTER_FLUSHED, DOCKER_NAT_AFTER));
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
        let fw = Executor::new(
            nft_host(NFT_FORWARD_BEFORE).with(FILTER_LIST, DOCKER_FILTER_BEFORE).with(NFT_CHAINS, NFT_CHAINS_AFTER),
        );
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(report.changed.len(), 4, "{report:?}");
        assert!(fw.runner().writes().iter().any(|w| w.starts_with("nft insert rule inet filter forward")));
    }

    #[test]
    fn ip_masq_false_removes_only_weft_masquerade() {
        let fw = Executor::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_AFTER));
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
        let fw = Executor::new(docker_host(DOCKER_FILTER_AFTER, DOCKER_NAT_BEFORE));
        assert!(fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure").is_unchanged());
        assert!(fw.runner().writes().is_empty());
    }

    #[test]
    fn changed_cidr_or_mode_replaces_the_rules() {
        let mut s = spec(ForwardMode::Open, false);
        s.cluster_cidr = "10.250.0.0/16".parse().expect("cidr");
        s.node_subnet = "10.250.3.0/24".parse().expect("subnet");
        let fw = Executor::new(
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
        let fw = Executor::new(
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
            Executor::new(docker_host(&filter, DOCKER_NAT_AFTER))
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
            Executor::new(nft_host(&forward).with(FILTER_LIST, DOCKER_FILTER_AFTER).with(NFT_CHAINS, NFT_CHAINS_AFTER));
        let report = fw.ensure(&spec(ForwardMode::Open, false)).expect("ensure");
        assert_eq!(report.changed, ["nft inet filter forward: replaced 2 weft rules at the top"]);
        // Other networks' accepts above weft's rules are fine.
        let fw = Executor::new(
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
        let fw = Executor::new(
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
        let fw = Executor::new(
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
        let fw = Executor::new(
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
        let fw = Executor::new(
            docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE)
                .failing(NFT_CHAINS, FirewallError::MissingProgram { program: "nft".into() }),
        );
        let err = fw.ensure(&spec(ForwardMode::Open, true)).expect_err("nft missing");
        assert_eq!(err, FirewallError::MissingProgram { program: "nft".into() });
        assert!(err.to_string().starts_with("`nft` not found"), "{err}");
        assert_eq!(fw.runner().writes().len(), 8);

        let gone = FirewallError::MissingProgram { program: "iptables".into() };
        let fw = Executor::new(
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
        let fw = Executor::new(
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
        let chains = parse_nft_forward_chains(listing, Family::V4).expect("parse");
        let names: Vec<String> = chains.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ip filter forward", "inet firewalld filter_FORWARD", "ip my fw fwd x"]);
        assert!(parse_nft_forward_chains("", Family::V4).expect("empty").is_empty());
        assert!(parse_nft_forward_chains(DOCKER_CHAINS, Family::V4).expect("docker").is_empty());
        assert!(parse_nft_forward_chains("not json", Family::V4).is_err());
        assert!(parse_nft_forward_chains(r#"{"x": 1}"#, Family::V4).is_err());
        // Names with spaces go through JSON, never through nft's command-line parser.
        let fw = Executor::new(Fake::default());
        let chain = NftChain { family: "ip".into(), table: "my fw".into(), name: "fwd x".into() };
        fw.nft_chain_rules(&chain).expect("list");
        assert_eq!(fw.runner().calls(), ["nft list chain ip my fw fwd x"]);
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
            let fw = Executor::new(Fake::default());
            let err = fw.ensure(&s).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
            assert!(fw.runner().calls().is_empty());
        }
        let fw = Executor::new(Fake::default());
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

    #[test]
    fn a_failed_step_stops_its_part_only() {
        let broken =
            FirewallError::CommandFailed { command: "x".into(), status: "exit status 1".into(), stderr: "no".into() };
        let fw = Executor::new(docker_host(DOCKER_FILTER_BEFORE, DOCKER_NAT_BEFORE).failing(
            "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.0.0/16 -m comment --comment weft:t -j ACCEPT",
            broken.clone(),
        ));
        assert_eq!(fw.ensure(&spec(ForwardMode::Open, true)), Err(broken));
        let writes = fw.runner().writes();
        // Neither the second rule nor the jump of the filter part; the nat part in full.
        assert!(!writes.iter().any(|w| w.contains("-A WEFT-FWD-t -d") || w.contains("-I FORWARD")));
        assert_eq!(writes.iter().filter(|w| w.contains("-t nat")).count(), 4, "{writes:?}");
    }

    #[test]
    fn ensure_with_overrides_writes_both_tools_rules() {
        let mut s = spec(tunnel(), false);
        s.overrides.insert("10.244.2.0/24".parse().expect("net"), ForwardMode::Open);
        let fw = Executor::new(nft_host(NFT_FORWARD_BEFORE));
        let report = fw.ensure(&s).expect("ensure");
        let writes = fw.runner().writes();
        assert_eq!(
            writes[4..7],
            [
                "iptables -w 5 -t filter -A WEFT-FWD-t -s 10.244.2.0/24 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.2.0/24 -m comment --comment weft:t -j ACCEPT",
                "iptables -w 5 -t filter -A WEFT-FWD-t -d 10.244.0.0/16 -m comment --comment weft:t -j DROP",
            ]
        );
        assert!(
            writes.last().is_some_and(|w| w.starts_with(
                "nft insert rule inet filter forward ip daddr 10.244.2.0/24 accept comment \"weft:t\"; \
                 insert rule inet filter forward ip saddr 10.244.2.0/24 accept comment \"weft:t\"; "
            )),
            "{writes:?}"
        );
        assert_eq!(
            report.changed.last().map(String::as_str),
            Some("nft inet filter forward: inserted 5 weft rules at the top")
        );
        // An override outside the cluster is refused before any command.
        s.overrides.insert("10.99.0.0/24".parse().expect("net"), ForwardMode::Open);
        let fw = Executor::new(Fake::default());
        assert!(matches!(fw.ensure(&s), Err(FirewallError::InvalidSpec(_))));
        assert!(fw.runner().calls().is_empty());
    }

    #[test]
    fn a_bad_listing_is_a_parse_error_naming_the_command() {
        let fw = Executor::new(docker_host("garbage here", DOCKER_NAT_AFTER));
        let err = fw.ensure(&spec(ForwardMode::Open, true)).expect_err("parse");
        assert_eq!(
            err,
            FirewallError::Parse {
                command: "iptables -w 5 -t filter -S".into(),
                detail: "line 1: unexpected \"garbage here\"".into()
            }
        );
        // Only listings were run: the bad table got no writes and the rest was in place.
        assert!(fw.runner().writes().is_empty(), "{:?}", fw.runner().writes());
    }

    fn ip6_host(filter: &str, nat: &str, forward: &str) -> Fake {
        Fake::default()
            .with(IP6_FILTER_LIST, filter)
            .with(IP6_NAT_LIST, nat)
            .with(NFT_CHAINS, NFT_CHAINS_BEFORE)
            .with(NFT_LIST_FWD, forward)
    }

    #[test]
    fn an_ipv6_spec_goes_through_ip6tables_and_ip6_matches() {
        let fw = Executor::new(ip6_host(EMPTY_FILTER, EMPTY_NAT, NFT_FORWARD_BEFORE));
        let report = fw.ensure(&spec6(tunnel(), true)).expect("ensure");
        let tag = "-m comment --comment weft:t:ip6";
        assert_eq!(
            fw.runner().calls(),
            [
                IP6_FILTER_LIST.to_string(),
                "ip6tables -w 5 -t filter -N WEFT-FWD-t".into(),
                format!("ip6tables -w 5 -t filter -A WEFT-FWD-t -s fd00:244::/48 -d fd00:244:0:1::/64 -i r-c2 {tag} -j ACCEPT"),
                format!("ip6tables -w 5 -t filter -A WEFT-FWD-t -s fd00:244:0:1::/64 -i r-c1 {tag} -j ACCEPT"),
                format!("ip6tables -w 5 -t filter -A WEFT-FWD-t '!' -s fd00:244::/48 -d fd00:244:0:1::/64 -o r-c1 -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
                format!("ip6tables -w 5 -t filter -A WEFT-FWD-t -d fd00:244::/48 {tag} -j DROP"),
                format!("ip6tables -w 5 -t filter -I FORWARD 1 {tag} -j WEFT-FWD-t"),
                IP6_NAT_LIST.into(),
                "ip6tables -w 5 -t nat -N WEFT-MASQ-t".into(),
                format!("ip6tables -w 5 -t nat -A WEFT-MASQ-t -s fd00:244::/48 -d fd00:244::/48 {tag} -j RETURN"),
                format!("ip6tables -w 5 -t nat -A WEFT-MASQ-t -s fd00:244::/48 '!' -d ff00::/8 {tag} -j MASQUERADE --random-fully"),
                format!("ip6tables -w 5 -t nat -I POSTROUTING 1 {tag} -j WEFT-MASQ-t"),
                NFT_CHAINS.into(),
                NFT_LIST_FWD.into(),
                "nft insert rule inet filter forward oifname \"r-c1\" ip6 saddr != fd00:244::/48 ip6 daddr fd00:244:0:1::/64 ct state established,related accept comment \"weft:t:ip6\"; \
                 insert rule inet filter forward iifname \"r-c1\" ip6 saddr fd00:244:0:1::/64 accept comment \"weft:t:ip6\"; \
                 insert rule inet filter forward iifname \"r-c2\" ip6 saddr fd00:244::/48 ip6 daddr fd00:244:0:1::/64 accept comment \"weft:t:ip6\"".into(),
            ]
        );
        assert_eq!(report.changed.len(), 7, "{report:?}");
        assert_eq!(report.changed[0], "ip6tables -t filter: created chain WEFT-FWD-t");

        // In place (the chain also holds the IPv4 rules): listings only.
        let fw = Executor::new(ip6_host(IP6_FILTER_AFTER, IP6_NAT_AFTER, NFT_FORWARD_DUAL));
        assert!(fw.ensure(&spec6(tunnel(), true)).expect("ensure").is_unchanged());
        assert_eq!(fw.runner().calls(), [IP6_FILTER_LIST, IP6_NAT_LIST, NFT_CHAINS, NFT_LIST_FWD]);
    }

    #[test]
    fn removing_the_ipv6_rules_leaves_the_ipv4_ones() {
        let fw = Executor::new(ip6_host(IP6_FILTER_AFTER, IP6_NAT_AFTER, NFT_FORWARD_DUAL));
        fw.remove(&spec6(tunnel(), true)).expect("remove");
        assert_eq!(
            fw.runner().writes(),
            [
                "ip6tables -w 5 -t filter -D FORWARD -m comment --comment weft:t:ip6 -j WEFT-FWD-t",
                "ip6tables -w 5 -t filter -F WEFT-FWD-t",
                "ip6tables -w 5 -t filter -X WEFT-FWD-t",
                "ip6tables -w 5 -t nat -D POSTROUTING -m comment --comment weft:t:ip6 -j WEFT-MASQ-t",
                "ip6tables -w 5 -t nat -F WEFT-MASQ-t",
                "ip6tables -w 5 -t nat -X WEFT-MASQ-t",
                // Handles 6, 5, 4 (weft:t, IPv4) stay.
                "nft delete rule inet filter forward handle 9; delete rule inet filter forward handle 8; \
                 delete rule inet filter forward handle 7",
            ]
        );
    }

    #[test]
    fn a_missing_ip6tables_is_named() {
        let gone = FirewallError::MissingProgram { program: "ip6tables".into() };
        let fw = Executor::new(
            ip6_host(EMPTY_FILTER, EMPTY_NAT, NFT_FORWARD_BEFORE)
                .failing(IP6_FILTER_LIST, gone.clone())
                .failing(IP6_NAT_LIST, gone.clone()),
        );
        assert_eq!(fw.ensure(&spec6(ForwardMode::Open, true)), Err(gone));
        assert!(fw.runner().writes().iter().any(|w| w.starts_with("nft insert")));
        // A spec of mixed families is refused before any command.
        let fw = Executor::new(Fake::default());
        let mixed = FirewallSpec { node_subnet: "10.244.1.0/24".parse().expect("net"), ..spec6(tunnel(), false) };
        assert!(matches!(fw.ensure(&mixed), Err(FirewallError::InvalidSpec(_))));
        assert!(fw.runner().calls().is_empty());
    }
}
