//! weft-controller against a real etcd: two replicas in the lab's underlay namespace, started by
//! the test itself (the lab does not run controllers here). One leads; SIGKILL of the leader
//! lets the other lead within 10 s; an agent killed for good is evicted `after_secs` after its
//! heartbeat went, exactly once, its peers drop its routes, and it claims its subnet again when
//! it comes back; with two of three agents killed at once the mass-death guard holds every
//! eviction. Plus, without root: the systemd unit verifies and install.sh stages the
//! controller. Root tests run one at a time under `flock /tmp/weft-lab-tests.lock`.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_lab::{netns, Lab};
use weft_tests::ops::{http_get, parse_metrics};
use weft_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn controller_bin() -> PathBuf {
    let p = weft_lab::bins::bin_dir().expect("bin dir").join("weft-controller");
    assert!(p.exists(), "{} missing: run cargo build --workspace --bins first", p.display());
    p
}

/// Controller replicas this test started, killed (SIGKILL) and reaped when dropped.
struct Controllers {
    ns: String,
    procs: Vec<(String, SocketAddr, Option<Child>)>,
}

impl Controllers {
    fn start(lab: &Lab, names: &[&str], after_secs: u64) -> Self {
        let ns = lab.names().underlay_ns();
        let ca = lab.ca_files().cert;
        let me = lab.cert_files("weftctl");
        let endpoints: Vec<String> = lab.etcd_endpoints().iter().map(|e| format!("{e:?}")).collect();
        let mut procs = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.1:{}", 9650 + k).parse().expect("lit");
            let cfg = format!(
                "name = \"{name}\"\n[etcd]\nendpoints = [{}]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [http]\nlisten = \"{addr}\"\n[election]\nsession_ttl_secs = 5\n[evict]\nafter_secs = {after_secs}\nscan_secs = 1\n",
                endpoints.join(", "),
                ca.display(),
                me.cert.display(),
                me.key.display()
            );
            let path = lab.dir().join(format!("controller-{name}.toml"));
            std::fs::write(&path, cfg).expect("write controller.toml");
            let check = Command::new(controller_bin()).arg("--config").arg(&path).arg("--check").output().expect("run");
            assert!(check.status.success(), "--check: {}", String::from_utf8_lossy(&check.stderr));
            procs.push((name.to_string(), addr, None));
        }
        let mut c = Controllers { ns, procs };
        for k in 0..c.procs.len() {
            c.spawn(lab, k);
        }
        c
    }

    fn spawn(&mut self, lab: &Lab, k: usize) {
        let name = self.procs[k].0.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab.dir().join(format!("controller-{name}.log")))
            .expect("log");
        let mut cmd = netns::command_in(&self.ns, controller_bin()).expect("command in the underlay namespace");
        cmd.arg("--config")
            .arg(lab.dir().join(format!("controller-{name}.toml")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.procs[k].2 = Some(cmd.spawn().expect("start weft-controller"));
    }

    fn kill(&mut self, k: usize, sig: Signal) {
        if let Some(mut child) = self.procs[k].2.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
            let _ = child.wait();
        }
    }

    fn get(&self, k: usize, path: &str) -> Option<String> {
        match http_get(&self.ns, self.procs[k].1, path) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    fn metric(&self, k: usize, series: &str) -> Option<f64> {
        parse_metrics(&self.get(k, "/metrics")?).ok()?.get(series)
    }

    fn cluster(&self, k: usize) -> Option<Value> {
        serde_json::from_str(&self.get(k, "/api/cluster")?).ok()
    }

    /// The replicas (by index, among those running) that say they lead.
    fn leaders(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|k| self.procs[*k].2.is_some() && self.metric(*k, "weft_controller_leader") == Some(1.0))
            .collect()
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for k in 0..self.procs.len() {
            self.kill(k, Signal::SIGKILL);
        }
    }
}

#[test]
fn controllers_elect_take_over_and_evict_a_dead_node() {
    let lab = lab("ctd", 3, 1, |_| {});
    for i in 1..=3 {
        lab.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    let mut c = Controllers::start(&lab, &["c1", "c2"], 6);

    // One leads, the other stands by; both serve the page and the same view.
    let t = Instant::now();
    assert!(wait_for(Duration::from_secs(20), || c.leaders().len() == 1).is_some(), "no single leader");
    eprintln!("measured: first leader after {:.1} s", t.elapsed().as_secs_f64());
    let leader = c.leaders()[0];
    let standby = 1 - leader;
    let names = ["c1", "c2"];
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.leaders(), [leader], "still exactly one leader");
    let view = c.cluster(standby).expect("standby serves /api/cluster");
    assert_eq!(view["leader"], names[leader]);
    assert_eq!(view["is_leader"], false);
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
    let page = c.get(standby, "/").expect("standby serves the page");
    assert!(page.contains("/api/cluster"));
    assert_eq!(c.metric(standby, "weft_controller_nodes"), Some(3.0));
    assert_eq!(c.metric(standby, "weft_controller_nodes_alive"), Some(3.0));

    // SIGKILL the leader: no resign, its session lease has to expire.
    c.kill(leader, Signal::SIGKILL);
    let took = wait_for(Duration::from_secs(15), || c.leaders() == [standby]);
    let took = took.unwrap_or_else(|| panic!("the standby did not take over within 15 s"));
    eprintln!("measured: takeover after SIGKILL of the leader: {:.1} s (session TTL 5 s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    // The killed one comes back as a standby.
    c.spawn(&lab, leader);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.leaders(), [standby], "a returning replica does not depose the leader");
    let (leader, standby) = (standby, leader);

    // Kill n3's agent for good: its heartbeat expires (TTL), then 6 s later it is evicted.
    let n3_subnet = lab.wait_ready(3, Duration::from_secs(5)).expect("n3").subnet.expect("n3 subnet");
    let route_to_n3 = |i: usize| route_table(&lab, i).iter().any(|r| r.starts_with(&format!("{n3_subnet} ")));
    assert!(route_to_n3(1) && route_to_n3(2), "peers route n3's subnet before");
    let killed = Instant::now();
    lab.stop_agent(3, Signal::SIGKILL).expect("kill n3's agent");
    let alive_false = || {
        c.cluster(leader).is_some_and(|v| {
            v["nodes"].as_array().is_some_and(|n| n.iter().any(|r| r["node"] == "n3" && r["alive"] == false))
        })
    };
    let hb_gone = wait_for(Duration::from_secs(40), alive_false).expect("n3's heartbeat never expired");
    let evicted = |v: &Value| v["evictions"].as_array().is_some_and(|e| e.iter().any(|r| r["node"] == "n3"));
    let after_hb = Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), || c.cluster(leader).is_some_and(|v| evicted(&v))).is_some(),
        "n3 not evicted"
    );
    let evict_delay = after_hb.elapsed();
    eprintln!(
        "measured: n3 heartbeat gone {:.1} s after SIGKILL; evicted {:.1} s after the page saw it absent (after_secs 6, scan 1 s, page refresh 2 s); {:.1} s after the kill",
        hb_gone.as_secs_f64(),
        evict_delay.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    assert!(evict_delay >= Duration::from_secs(3), "evicted too early: {evict_delay:?} after the heartbeat went");
    let v = c.cluster(leader).expect("view");
    let rec = v["evictions"].as_array().expect("evictions").iter().find(|r| r["node"] == "n3").cloned().expect("n3");
    assert_eq!(rec["subnet"], n3_subnet.as_str());
    assert_eq!(rec["leader"], names[leader]);
    assert!(rec["evidence"].as_str().is_some_and(|e| e.contains("absent for")), "{rec}");
    assert!(rec["absent_secs"].as_u64().is_some_and(|s| s >= 6), "{rec}");
    assert!(v["nodes"].as_array().expect("nodes").iter().all(|r| r["node"] != "n3"), "n3's record is gone: {v}");
    assert_eq!(c.metric(leader, "weft_controller_evictions_total"), Some(1.0));
    assert_eq!(c.metric(standby, "weft_controller_evictions_total"), Some(0.0));
    // Peers drop its routes.
    let t = Instant::now();
    assert!(wait_for(Duration::from_secs(20), || !route_to_n3(1) && !route_to_n3(2)).is_some(), "routes to n3 stay");
    eprintln!("measured: peers dropped n3's route {:.1} s after the eviction was seen", t.elapsed().as_secs_f64());
    // Exactly one record, also some scans later and on the standby's view.
    std::thread::sleep(Duration::from_secs(4));
    for k in [leader, standby] {
        let v = c.cluster(k).expect("view");
        let n = v["evictions"].as_array().expect("evictions").iter().filter(|r| r["node"] == "n3").count();
        assert_eq!(n, 1, "one eviction record of n3 on replica {}: {v}", names[k]);
    }

    // n3 comes back: it claims a subnet again (its old one, still free).
    lab.start_agent(3).expect("start n3");
    let st = lab.wait_ready(3, Duration::from_secs(30)).expect("n3 ready again");
    assert_eq!(st.subnet.as_deref(), Some(n3_subnet.as_str()), "the old subnet, still free");
    assert!(wait_for(Duration::from_secs(20), || route_to_n3(1) && route_to_n3(2)).is_some(), "routes come back");

    // Mass death: n1 and n2 killed at once, 2 of 3 nodes look dead (more than half): nothing
    // is evicted, however long; the guard shows in the metrics, the view and the log (once).
    for i in [1, 2] {
        lab.stop_agent(i, Signal::SIGKILL).expect("kill");
    }
    let dead = |v: &Value| {
        v["nodes"].as_array().map_or(0, |n| n.iter().filter(|r| r["alive"] == false && r["subnet"].is_string()).count())
    };
    assert!(
        wait_for(Duration::from_secs(40), || c.cluster(leader).is_some_and(|v| dead(&v) == 2)).is_some(),
        "n1 and n2 never looked dead"
    );
    assert!(
        wait_for(Duration::from_secs(5), || c.metric(leader, "weft_controller_eviction_held") == Some(1.0)).is_some(),
        "the guard does not hold"
    );
    std::thread::sleep(Duration::from_secs(6 + 4));
    let v = c.cluster(leader).expect("view");
    assert_eq!(v["guard"]["held"], true, "{v}");
    assert_eq!((v["guard"]["dead"].as_u64(), v["guard"]["total"].as_u64()), (Some(2), Some(3)), "{v}");
    assert_eq!(v["evictions"].as_array().map(Vec::len), Some(1), "only n3's eviction: {v}");
    assert_eq!(c.metric(leader, "weft_controller_evictions_total"), Some(1.0));
    assert!(c.metric(leader, "weft_controller_eviction_held_scans_total").is_some_and(|n| n >= 6.0));
    let log = std::fs::read_to_string(lab.dir().join(format!("controller-{}.log", names[leader]))).expect("log");
    assert_eq!(log.matches("mass-death guard:").count(), 1, "logged once per episode:\n{log}");
    eprintln!(
        "measured: mass-death guard: 2 of 3 nodes dead, nothing evicted 10 s after they looked dead (after_secs 6)"
    );
    for i in [1, 2] {
        lab.start_agent(i).expect("start");
        lab.wait_ready(i, Duration::from_secs(30)).expect("ready again");
    }
    assert!(
        wait_for(Duration::from_secs(10), || c.metric(leader, "weft_controller_eviction_held") == Some(0.0)).is_some(),
        "the guard did not release"
    );

    // SIGTERM resigns: the other replica leads at once (well under the session TTL).
    c.kill(leader, Signal::SIGTERM);
    let took = wait_for(Duration::from_secs(10), || c.leaders() == [standby]).expect("no takeover after SIGTERM");
    eprintln!("measured: takeover after SIGTERM (resign) of the leader: {:.1} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(4), "resign should hand over at once: {took:?}");
}

/// `systemd-analyze verify` passes on the unit with ExecStart pointing at the built binary, and
/// install.sh stages the controller, its unit and the example config.
#[test]
fn the_controller_unit_verifies_and_install_stages_it() {
    let bin = controller_bin();
    let text = std::fs::read_to_string(repo().join("deploy/systemd/weft-controller.service")).expect("unit");
    let scratch = std::env::temp_dir().join(format!("weft-ctl-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    let unit = scratch.join("weft-controller.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/weft-controller", &bin.display().to_string())).expect("write");
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && stderr.trim().is_empty(), "verify: {stderr}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in ["Restart=on-failure", "RestartPreventExitStatus=2", "CapabilityBoundingSet=", "NoNewPrivileges=yes"] {
        assert!(lines.contains(&want), "unit lacks {want:?}");
    }
    // The example config is what --check accepts.
    let example = repo().join("deploy/controller.toml.example");
    let check = Command::new(&bin).arg("--config").arg(&example).arg("--check").output().expect("run");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // A bad one: one line, exit 2.
    let bad = scratch.join("bad.toml");
    std::fs::write(&bad, "[etcd]\nendpoints = [\"http://a:1\"]\n[evict]\nmax_dead_share = 2\n").expect("write");
    let out = Command::new(&bin).arg("--config").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("evict.max_dead_share: expected a number from 0 to 1, found 2"), "{err}");

    let bins = bin.parent().expect("bin dir").to_path_buf();
    let dest = scratch.join("stage");
    let out = Command::new(repo().join("deploy/install.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .env("DESTDIR", &dest)
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for p in [
        "usr/local/bin/weft-controller",
        "etc/systemd/system/weft-controller.service",
        "etc/weft/controller.toml.example",
    ] {
        assert!(dest.join(p).exists(), "{p} not staged");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
