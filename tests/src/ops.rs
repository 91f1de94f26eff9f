//! Helpers for the operations tests (issue 6): HTTP against an agent's metrics endpoint from
//! inside a lab namespace, a strict-enough parser of the Prometheus/OpenMetrics text, a CNI
//! "runtime" that runs plugins the way libcni does (env vars, config on stdin, a conflist's
//! chain with prevResult and runtimeConfig), and guards for namespaces a test makes.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use weft_lab::{in_netns, netns, Lab};

/// One HTTP exchange from inside namespace `ns`: sends `raw` as is, returns (status, head, body).
pub fn http_raw(ns: &str, addr: SocketAddr, raw: &[u8]) -> Result<(u16, String, String)> {
    let raw = raw.to_vec();
    let bytes = in_netns(ns, move || -> Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&raw)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })??;
    let text = String::from_utf8(bytes).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("response without an end of head")?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

/// `GET path` from inside `ns`.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let (status, _, body) = http_raw(ns, addr, format!("GET {path} HTTP/1.1\r\nHost: weft\r\n\r\n").as_bytes())?;
    Ok((status, body))
}

/// A scrape: series (`name{labels}` exactly as exposed) -> value, and family -> type.
#[derive(Debug, Default)]
pub struct Scrape {
    pub series: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }
}

/// Parses OpenMetrics text: `# TYPE`/`# HELP` lines, samples `name[{labels}] value`, `# EOF` last.
/// Every sample must belong to a declared family (its name, or the name plus `_total` for
/// counters), every value must parse.
pub fn parse_metrics(text: &str) -> Result<Scrape> {
    let mut s = Scrape::default();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.pop() != Some("# EOF") {
        bail!("exposition does not end with # EOF");
    }
    for line in lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE line without a type")?;
            s.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            bail!("unexpected line {line:?}");
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("sample without value: {line:?}"))?;
        let name = series.split('{').next().unwrap_or_default();
        let family = name.strip_suffix("_total").filter(|f| s.types.get(*f).is_some_and(|t| t == "counter"));
        if !s.types.contains_key(name) && family.is_none() {
            bail!("sample {series} of an undeclared family");
        }
        let v: f64 = value.parse().with_context(|| format!("value of {series}: {value:?}"))?;
        s.series.insert(series.to_string(), v);
    }
    Ok(s)
}

/// Removes named namespaces (by name under /run/netns) when dropped, also on a failed assertion.
pub struct NsGuard(pub Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            if let Err(e) = netns::remove(n) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The built `weft-cni`: next to the lab's `weft-agent`.
pub fn weft_cni_bin(lab: &Lab) -> PathBuf {
    let p = lab.agent_bin().with_file_name("weft-cni");
    assert!(p.exists(), "{} missing: run cargo build --workspace --bins first", p.display());
    p
}

/// Debian's containernetworking-plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// What one plugin run returned.
#[derive(Debug)]
pub struct PluginRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// A container as the runtime sees it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// `CNI_NETNS`: a path.
    pub netns: String,
    pub ifname: String,
}

/// Runs one plugin binary in namespace `host_ns` exactly as a runtime does.
pub fn run_plugin(
    host_ns: &str,
    bin: &Path,
    command: &str,
    c: &Container,
    config: &Value,
    cni_path: &str,
) -> Result<PluginRun> {
    let mut cmd = netns::command_in(host_ns, bin)?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &c.id)
        .env("CNI_NETNS", &c.netns)
        .env("CNI_IFNAME", &c.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    child.stdin.take().context("stdin")?.write_all(config.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The config one plugin of a conflist gets (libcni's rules): the plugin's object plus the
/// list's `cniVersion` and `name`, `prevResult` if any, and `runtimeConfig` holding the
/// runtime's arguments for each capability the plugin declares.
pub fn plugin_config(list: &Value, plugin: &Value, prev: Option<&Value>, capability_args: &Value) -> Value {
    let mut c: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    c.insert("cniVersion".into(), list["cniVersion"].clone());
    c.insert("name".into(), list["name"].clone());
    if let Some(p) = prev {
        c.insert("prevResult".into(), p.clone());
    }
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(arg) = capability_args.get(cap) {
                    rc.insert(cap.clone(), arg.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        c.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(c)
}

/// Where each plugin of a conflist lives: weft-cni is the one we built, the rest Debian's.
pub fn plugin_bin(lab: &Lab, kind: &str) -> PathBuf {
    if kind == "weft-cni" {
        weft_cni_bin(lab)
    } else {
        Path::new(DEBIAN_CNI_DIR).join(kind)
    }
}

/// ADD through the whole list; returns the final result. Any failing plugin fails it.
pub fn conflist_add(lab: &Lab, host_ns: &str, list: &Value, c: &Container, args: &Value) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for p in list["plugins"].as_array().context("plugins")? {
        let kind = p["type"].as_str().context("type")?;
        let conf = plugin_config(list, p, prev.as_ref(), args);
        let r = run_plugin(host_ns, &plugin_bin(lab, kind), "ADD", c, &conf, DEBIAN_CNI_DIR)?;
        if r.code != 0 {
            bail!("{kind} ADD failed ({}): {}{}", r.code, r.stdout, r.stderr);
        }
        prev = Some(r.json());
    }
    prev.context("empty plugin list")
}

/// CHECK or DEL through the list (DEL in reverse order), each with the cached ADD result.
pub fn conflist_run(
    lab: &Lab,
    host_ns: &str,
    list: &Value,
    c: &Container,
    args: &Value,
    command: &str,
    result: &Value,
) -> Result<()> {
    let mut plugins: Vec<&Value> = list["plugins"].as_array().context("plugins")?.iter().collect();
    if command == "DEL" {
        plugins.reverse();
    }
    for p in plugins {
        let kind = p["type"].as_str().context("type")?;
        let conf = plugin_config(list, p, Some(result), args);
        let r = run_plugin(host_ns, &plugin_bin(lab, kind), command, c, &conf, DEBIAN_CNI_DIR)?;
        if r.code != 0 {
            bail!("{kind} {command} failed ({}): {}{}", r.code, r.stdout, r.stderr);
        }
    }
    Ok(())
}

/// A single-plugin network config for weft-cni talking to node `i`'s agent.
pub fn weft_conf(lab: &Lab, i: usize, version: &str) -> Value {
    let socket = lab.node_config(i).expect("node config").paths.socket;
    json!({ "cniVersion": version, "name": "weft", "type": "weft-cni", "socket": socket })
}
