//! Lab nodes behind one interface. A node is what an agent runs on: today a network namespace
//! on this machine ([`NetnsNode`]); the VM issue adds a VM beside it. The lab never asks what a
//! node is made of: it makes it ([`LabNode::create`]), starts its agent
//! ([`LabNode::agent_command`]), runs commands on it ([`LabNode::command`]), asks its agent for
//! status ([`LabNode::agent_client`]) and removes it ([`LabNode::destroy`]).
//!
//! The kind is part of the [`LabSpec`] and so of `state.json`: `lab down --id`
//! finds the kind of every node there, with no running `Lab` needed.
//!
//! ## Adding a node kind
//! 1. A variant of [`NodeKind`] (serialised in `state.json`; old files default to `netns`).
//! 2. A type implementing [`LabNode`]; [`node`] returns it for the new variant.
//! 3. Whatever the kind starts beside the agent (a VM's QEMU) is recorded in `state.json`
//!    through the `record` callback of [`LabNode::create`] before it is started, so `down`
//!    can undo a lab whose `up` crashed half-way.

use crate::names::{self, LabNames};
use crate::teardown::DownReport;
use crate::{netns, plumbing, IpFamily, LabSpec, Topology};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use weft_controller::agent_client::AgentClient;

/// What lab nodes are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A network namespace on this machine, wired to the underlay by a veth pair.
    #[default]
    Netns,
    /// A QEMU virtual machine with its own kernel and systemd, on a tap in the underlay
    /// namespace, configured by the VM guide's cloud-init file (see [`crate::vm_node`]).
    Vm,
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeKind::Netns => "netns",
            NodeKind::Vm => "vm",
        })
    }
}

/// Something the lab is about to make for a node, reported to `state.json` before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    Namespace(String),
}

/// One lab node, whatever it is made of.
pub trait LabNode: Send + Sync {
    /// `n3`.
    fn name(&self) -> String;

    /// Where the node is, for status and errors: its namespace (or a VM's name).
    fn location(&self) -> String;

    /// Makes the node and attaches it to its underlay segment. `record` is called with every
    /// resource before it is made; an error from it stops the creation.
    fn create(&self, record: &dyn Fn(Made) -> anyhow::Result<()>) -> anyhow::Result<()>;

    /// A command that runs `program` on the node and ends with it.
    fn command(&self, program: &OsStr) -> anyhow::Result<Command>;

    /// A command that starts the node's agent `agent_bin`: a daemon that outlives the terminal
    /// that started it. The caller adds the arguments, output and records the child.
    fn agent_command(&self, agent_bin: &Path) -> anyhow::Result<Command>;

    /// A client for the node's agent, whose config names `socket`.
    fn agent_client(&self, socket: &Path) -> AgentClient;

    /// Removes what the node is made of, after its processes were stopped. Idempotent: a node
    /// already gone is no error. Failures go into `report`, and the teardown goes on.
    fn destroy(&self, report: &mut DownReport);
}

/// Node `i` (1-based) of lab `names` built as `spec` says (its kind, topology, families).
pub fn node(spec: &LabSpec, names: &LabNames, i: usize) -> Box<dyn LabNode> {
    match spec.node_kind {
        NodeKind::Netns => {
            Box::new(NetnsNode { names: names.clone(), topology: spec.topology, family: spec.ip_family, index: i })
        }
        NodeKind::Vm => Box::new(crate::vm_node::VmNode::new(names, i)),
    }
}

/// A node as a network namespace `weft<id>-n<i>` on a veth pair `vn<i>` to its segment's
/// bridge in the underlay namespace. Its agent's pods are namespaces `weft<id>-n<i>-<pod>`.
#[derive(Debug, Clone)]
pub struct NetnsNode {
    names: LabNames,
    topology: Topology,
    family: IpFamily,
    index: usize,
}

impl NetnsNode {
    fn ns(&self) -> String {
        self.names.node_ns(self.index)
    }
}

impl LabNode for NetnsNode {
    fn name(&self) -> String {
        LabNames::node_name(self.index)
    }

    fn location(&self) -> String {
        self.ns()
    }

    fn create(&self, record: &dyn Fn(Made) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let ns = self.ns();
        record(Made::Namespace(ns.clone()))?;
        plumbing::add_netns(&ns)?;
        let addr = names::node_addr(self.topology, self.index);
        plumbing::attach(&self.names, &ns, &format!("vn{}", self.index), addr, self.family, true)
    }

    fn command(&self, program: &OsStr) -> anyhow::Result<Command> {
        Ok(netns::command_in(&self.ns(), program)?)
    }

    fn agent_command(&self, agent_bin: &Path) -> anyhow::Result<Command> {
        let mut cmd = Command::new(agent_bin);
        netns::enter_on_exec(&mut cmd, &self.ns(), true)?;
        Ok(cmd)
    }

    fn agent_client(&self, socket: &Path) -> AgentClient {
        AgentClient::new(socket)
    }

    /// The node's pod namespaces named by the lab's rule, then the node's own. Pods the agent
    /// named otherwise, and the lab's shared namespaces, go in `down`'s sweep of the prefix.
    fn destroy(&self, report: &mut DownReport) {
        let ns = self.ns();
        let pods = format!("{ns}-");
        let mine: Vec<String> = match netns::list() {
            Ok(all) => all.into_iter().filter(|n| n.starts_with(&pods)).chain([ns.clone()]).collect(),
            Err(e) => {
                report.errors.push(e.to_string());
                return;
            }
        };
        for n in mine {
            if netns::ns_id(&n).is_none() {
                continue;
            }
            match netns::remove(&n) {
                Ok(()) => report.namespaces_removed.push(n),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_recorded_and_defaults_to_netns() {
        assert_eq!(serde_json::to_string(&NodeKind::Netns).expect("json"), "\"netns\"");
        assert_eq!(serde_json::from_str::<NodeKind>("\"netns\"").expect("json"), NodeKind::Netns);
        assert_eq!(serde_json::from_str::<NodeKind>("\"vm\"").expect("json"), NodeKind::Vm);
        assert!(serde_json::from_str::<NodeKind>("\"lxc\"").is_err(), "no such kind");
        assert_eq!(NodeKind::default().to_string(), "netns");
    }

    #[test]
    fn a_netns_node_is_named_by_the_lab_rule() {
        let names = LabNames::new("7").expect("id");
        let spec = LabSpec { topology: Topology::Routed, ..LabSpec::default() };
        let n = node(&spec, &names, 4);
        assert_eq!(n.name(), "n4");
        assert_eq!(n.location(), "weft7-n4");
        let e = n.command(OsStr::new("true")).expect_err("no such namespace");
        assert!(e.to_string().starts_with("opening network namespace /run/netns/weft7-n4"), "{e}");
    }

    #[test]
    fn destroying_a_node_that_is_gone_is_no_error() {
        let names = LabNames::new("zz6").expect("id");
        let mut report = DownReport::default();
        node(&LabSpec::default(), &names, 1).destroy(&mut report);
        assert!(report.is_ok() && report.namespaces_removed.is_empty(), "{report:?}");
    }
}
