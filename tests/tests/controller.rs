//! weft-controller (issue 16) on the lab: the cluster page in headless Chromium, dead-node
//! eviction and the node's return, the mass-death guard, leader takeover, and labs whose nodes
//! joined only with a token (host-gw and quic). Every test builds its own lab (ids ctl1..ctl7) with controllers in their own namespaces (`weft<id>-c<k>`, at
//! 172.30.0.7 upward); the lab's Drop removes it, also on failure. Figures are printed as
//! `measured:` lines (run with `--nocapture`) and recorded in docs/RELIABILITY.md.
//!
//! Run (as root, one at a time): `cargo build --workspace --bins && cargo test -p weft-tests
//! --test controller -- --test-threads=1 --nocapture`. `WEFT_SCREENSHOT=docs/img/cluster-page.png`
//! also copies the page's screenshot there (relative paths are from the workspace root).

use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_lab::{in_netns, Lab, LabSpec};
use weft_tests::browser::{self, Browser};
use weft_tests::ops::{parse_metrics, Scrape};
use weft_tests::*;

const BASE: &str = "/weft/v1/default/";

/// The lab's controllers scan every second (`config_gen::CONTROLLER_SCAN_SECS`).
const SCAN: Duration = Duration::from_secs(weft_lab::config_gen::CONTROLLER_SCAN_SECS);

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A lab of `nodes` nodes with one pod each and `tweak`ed controllers (one by default).
fn ctl_lab(id: &str, nodes: usize, tweak: impl FnOnce(&mut LabSpec)) -> Lab {
    lab(id, nodes, 1, |s| {
        s.controllers = 1;
        tweak(s);
    })
}

/// `/api/cluster` of replica `k`, parsed.
fn cluster(lab: &Lab, k: usize) -> anyhow::Result<Value> {
    let r = lab.controller_get(k, "/api/cluster")?;
    anyhow::ensure!(r.status == 200, "/api/cluster of c{k}: HTTP {}: {}", r.status, r.body);
    Ok(serde_json::from_str(&r.body)?)
}

/// `/metrics` of replica `k`, parsed.
fn metrics(lab: &Lab, k: usize) -> Scrape {
    try_metrics(lab, k).unwrap_or_else(|e| panic!("scraping c{k}: {e:#}"))
}

/// `/metrics` of replica `k`, or why not.
fn try_metrics(lab: &Lab, k: usize) -> anyhow::Result<Scrape> {
    let r = lab.controller_get(k, "/metrics")?;
    anyhow::ensure!(r.status == 200, "/metrics of c{k}: HTTP {}", r.status);
    parse_metrics(&r.body)
}

/// The replica whose `weft_controller_leader` is 1, if exactly one's is (the gauge changes the
/// moment a term starts or ends; `/api/cluster` is rebuilt every 2 s).
fn leader(lab: &Lab) -> Option<usize> {
    let leading: Vec<usize> = (1..=lab.controllers())
        .filter(|&k| lab.controller_pid(k).is_some())
        .filter(|&k| try_metrics(lab, k).is_ok_and(|m| m.get("weft_controller_leader") == Some(1.0)))
        .collect();
    match leading[..] {
        [k] => Some(k),
        _ => None,
    }
}

fn wait_leader(lab: &Lab, timeout: Duration) -> usize {
    let mut found = None;
    let took = wait_for(timeout, || {
        found = leader(lab);
        found.is_some()
    });
    match (took, found) {
        (Some(_), Some(k)) => k,
        _ => panic!(
            "no controller leads after {} s\n{}",
            timeout.as_secs(),
            weft_lab::plumbing::tail(&lab.controller_log(1), 20)
        ),
    }
}

/// Every key (and value) under `/weft/v1/default/<prefix>`, read with weftctl's certificate
/// from the underlay namespace.
fn etcd_kvs(lab: &Lab, prefix: &str) -> Vec<(String, String)> {
    let opts = lab.etcd_opts();
    let prefix = format!("{BASE}{prefix}");
    in_netns(&lab.names().underlay_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut c = weft_controller::etcd::connect(&opts).await?;
            let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await?;
            anyhow::Ok(
                r.kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            String::from_utf8_lossy(kv.value()).into_owned(),
                        )
                    })
                    .collect(),
            )
        })
    })
    .expect("underlay namespace")
    .unwrap_or_else(|e| panic!("etcd: {e:#}"))
}

/// The eviction records (`controller/evictions/<ms>-<node>`), parsed.
fn evictions(lab: &Lab) -> Vec<Value> {
    etcd_kvs(lab, "controller/evictions/")
        .into_iter()
        .map(|(k, v)| serde_json::from_str(&v).unwrap_or_else(|e| panic!("eviction record {k}: {e}: {v}")))
        .collect()
}

fn evictions_of(lab: &Lab, node: &str) -> Vec<Value> {
    evictions(lab).into_iter().filter(|e| e["node"] == node).collect()
}

fn heartbeat_present(lab: &Lab, node: &str) -> bool {
    let key = format!("{BASE}nodes/{node}");
    etcd_kvs(lab, &format!("nodes/{node}")).iter().any(|(k, _)| *k == key)
}

fn subnet_key(subnet: &str) -> String {
    format!("{BASE}subnets/{}", subnet.replace('/', "-"))
}

fn subnet_held(lab: &Lab, subnet: &str) -> bool {
    let key = subnet_key(subnet);
    etcd_kvs(lab, "subnets/").iter().any(|(k, _)| *k == key)
}

fn subnet_of(lab: &Lab, i: usize) -> String {
    let st = lab.wait_ready(i, Duration::from_secs(30)).unwrap_or_else(|e| panic!("n{i} not ready: {e:#}"));
    st.subnet.unwrap_or_else(|| panic!("n{i} has no subnet"))
}

/// Whether node `i` has a route to `subnet`.
fn routes_to(lab: &Lab, i: usize, subnet: &str) -> bool {
    route_table(lab, i).iter().any(|r| r.starts_with(&format!("{subnet} ")))
}

/// Waits until `f` holds, polling every 100 ms; panics naming `what` after `timeout`.
fn until(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Duration {
    wait_for(timeout, f).unwrap_or_else(|| panic!("{what}: not within {} s", timeout.as_secs()))
}

/// Where the screenshot goes: `WEFT_SCREENSHOT` (relative to the workspace root), if set.
fn screenshot_copy() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("WEFT_SCREENSHOT").filter(|v| !v.is_empty())?);
    Some(if p.is_absolute() { p } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p) })
}

/// How many elements of `dom` carry attribute `attr` = `value` (a plain scan: the page is ours
/// and simple; no HTML parser needed).
fn count_attr(dom: &str, attr: &str, value: &str) -> usize {
    dom.matches(&format!("{attr}=\"{value}\"")).count()
}

#[test]
fn the_cluster_page_shows_every_node_and_the_matrix_in_headless_chromium() {
    let lab = ctl_lab("ctl1", 3, |_| {});
    let subnets: Vec<String> = (1..=3).map(|i| subnet_of(&lab, i)).collect();
    let k = wait_leader(&lab, Duration::from_secs(20));

    // Probes run every 10 s; the matrix is full once every node's round saw every peer.
    let started = Instant::now();
    let mut last = Value::Null;
    let full = wait_for(Duration::from_secs(60), || {
        last = cluster(&lab, k).unwrap_or(Value::Null);
        last["summary"]["pairs"] == 6 && last["summary"]["reachable"] == 6
    });
    assert!(full.is_some(), "the matrix never filled: {:#}", last["summary"]);
    eprintln!("measured: matrix full {} after the lab was up", secs(started.elapsed()));

    // lab status names the controller.
    let out = std::process::Command::new(lab.weftctl_bin())
        .args(["lab", "--id", lab.id(), "status", "--json"])
        .output()
        .expect("weftctl lab status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["controller"]["page"], "http://172.30.0.7:9650/");
    assert_eq!(st["controller"]["bootstrap"], Value::Null);
    assert_eq!(st["controller"]["pid"], lab.controller_pid(1).expect("c1 runs"));
    assert_eq!(st["controllers"].as_array().map(Vec::len), Some(1));

    // The page, from node n1's namespace, after its script polled /api/cluster.
    let web = Browser::in_lab(lab.dir(), &lab.node_ns(1));
    let url = lab.controller_page_url(k);
    let t = Instant::now();
    let dom = web.dump_dom(&url).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("measured: --dump-dom of the page took {} ({} bytes of DOM)", secs(t.elapsed()), dom.len());
    for i in 1..=3 {
        assert!(dom.contains(&format!(">n{i}<")), "node n{i} is not a text of the DOM:\n{dom}");
    }
    for s in &subnets {
        assert!(dom.contains(s.as_str()), "subnet {s} is not in the DOM:\n{dom}");
    }
    for from in 1..=3 {
        for to in (1..=3).filter(|&to| to != from) {
            let cell = format!("data-from=\"n{from}\" data-to=\"n{to}\"");
            assert_eq!(dom.matches(&cell).count(), 1, "no single matrix cell {cell}:\n{dom}");
        }
    }
    assert_eq!(count_attr(&dom, "data-state", "ok"), 6, "six reachable cells:\n{dom}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-page.png");
    let t = Instant::now();
    web.screenshot(&url, &shot, (1400, 900)).unwrap_or_else(|e| panic!("{e:#}"));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    eprintln!("measured: screenshot took {}, {size} bytes, kept at {}", secs(t.elapsed()), shot.display());
    if let Some(copy) = screenshot_copy() {
        std::fs::copy(&shot, &copy).unwrap_or_else(|e| panic!("copying the screenshot to {}: {e}", copy.display()));
        eprintln!("screenshot copied to {}", copy.display());
    }
    // Every Chromium process of the runs has ended.
    let left = browser::processes_of(&web.dir);
    assert!(left.is_empty(), "chromium processes left: {left:?}");

    // lab down stops the controller with everything else.
    let pid = lab.controller_pid(1).expect("c1 runs");
    let report = lab.down();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.signalled.contains(&pid), "c1 (pid {pid}) not signalled: {report:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "c1 (pid {pid}) still runs");
}

#[test]
fn a_stopped_node_is_evicted_after_evict_after_and_rejoins_with_its_subnet() {
    let after = Duration::from_secs(6);
    let lab = ctl_lab("ctl2", 3, |s| s.evict_after = Some(after));
    let subnet3 = subnet_of(&lab, 3);
    let k = wait_leader(&lab, Duration::from_secs(20));
    for i in 1..=2 {
        until(&format!("n{i} routes to n3"), Duration::from_secs(10), || routes_to(&lab, i, &subnet3));
    }

    let stopped = Instant::now();
    lab.stop_agent(3, Signal::SIGTERM).expect("stopping n3");
    let gone = until("n3's heartbeat key gone", Duration::from_secs(40), || !heartbeat_present(&lab, "n3"));
    eprintln!("measured: n3's heartbeat key gone {} after SIGTERM", secs(gone));
    let mut seen = Vec::new();
    let evicted = until("n3 evicted", after + SCAN + Duration::from_secs(10), || {
        seen = evictions_of(&lab, "n3");
        !seen.is_empty() && !subnet_held(&lab, &subnet3)
    });
    // Counted from when the test saw the key gone (polling every 100 ms).
    let since_absent = evicted;
    eprintln!(
        "measured: n3 evicted {} after its heartbeat went ({} after SIGTERM); evict_after {}, scan {}",
        secs(since_absent),
        secs(stopped.elapsed()),
        secs(after),
        secs(SCAN)
    );
    assert!(since_absent + Duration::from_millis(500) >= after, "evicted before evict_after: {since_absent:?}");
    assert!(since_absent <= after + SCAN + Duration::from_secs(3), "evicted late: {since_absent:?}");
    assert_eq!(seen.len(), 1, "one eviction record: {seen:?}");
    let rec = &seen[0];
    assert_eq!(rec["subnet"], subnet3.as_str(), "{rec}");
    assert_eq!(rec["leader"], format!("c{k}"), "{rec}");
    assert!(rec["absent_secs"].as_u64().is_some_and(|s| s >= after.as_secs()), "{rec}");
    assert!(rec["evidence"].as_str().is_some_and(|e| !e.is_empty()), "{rec}");
    assert_eq!(metrics(&lab, k).get("weft_controller_evictions_total"), Some(1.0));
    assert!(etcd_kvs(&lab, "probes/n3").is_empty(), "n3's probe record went with it");

    // Peers drop its routes.
    let t = Instant::now();
    for i in 1..=2 {
        until(&format!("n{i} drops the route to n3"), Duration::from_secs(10), || !routes_to(&lab, i, &subnet3));
    }
    eprintln!("measured: n1 and n2 dropped the route to {subnet3} {} after the eviction", secs(t.elapsed()));

    // n3 comes back: it claims a subnet again, its old one, which is still free.
    let t = Instant::now();
    lab.start_agent(3).expect("starting n3");
    let back = subnet_of(&lab, 3);
    eprintln!("measured: n3 ready again {} after its start, subnet {back}", secs(t.elapsed()));
    assert_eq!(back, subnet3, "n3 takes its old subnet back while it is free");
    for i in 1..=2 {
        until(&format!("n{i} routes to n3 again"), Duration::from_secs(10), || routes_to(&lab, i, &back));
    }
    let p3 = pod_ip(&lab, 3, "p1");
    until("n1/p1 reaches n3/p1", Duration::from_secs(10), || ping(&lab, "n1/p1", p3));
    assert_eq!(evictions_of(&lab, "n3").len(), 1, "no second eviction of the node that came back");
}

#[test]
fn the_mass_death_guard_holds_evictions_while_most_nodes_look_dead() {
    let after = Duration::from_secs(6);
    let lab = ctl_lab("ctl3", 4, |s| s.evict_after = Some(after));
    let subnets: Vec<String> = (1..=4).map(|i| subnet_of(&lab, i)).collect();
    let k = wait_leader(&lab, Duration::from_secs(20));

    for i in 2..=4 {
        lab.stop_agent(i, Signal::SIGTERM).unwrap_or_else(|e| panic!("stopping n{i}: {e:#}"));
    }
    let gone = until("the three heartbeat keys gone", Duration::from_secs(40), || {
        (2..=4).all(|i| !heartbeat_present(&lab, &format!("n{i}")))
    });
    eprintln!("measured: 3 of 4 heartbeats gone {} after SIGTERM", secs(gone));

    // 2 x evict_after with three of four nodes dead: held the whole time, nothing evicted.
    let held = until("the guard says held", SCAN + Duration::from_secs(5), || {
        metrics(&lab, k).get("weft_controller_eviction_held") == Some(1.0)
    });
    eprintln!("measured: guard held {} after the last heartbeat went", secs(held));
    let watch = Instant::now();
    while watch.elapsed() < 2 * after {
        assert!(evictions(&lab).is_empty(), "evicted while the guard should hold: {:?}", evictions(&lab));
        for s in &subnets {
            assert!(subnet_held(&lab, s), "subnet {s} freed while the guard should hold");
        }
        assert_eq!(metrics(&lab, k).get("weft_controller_eviction_held"), Some(1.0), "guard released");
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = metrics(&lab, k);
    assert_eq!(m.get("weft_controller_evictions_total"), Some(0.0));
    let view = cluster(&lab, k).expect("cluster view");
    assert_eq!(view["guard"]["held"], true, "{:#}", view["guard"]);
    assert_eq!((view["guard"]["dead"].as_u64(), view["guard"]["total"].as_u64()), (Some(3), Some(4)));
    eprintln!(
        "measured: nothing evicted for {} (2 x evict_after) with 3 of 4 nodes dead; held scans {:?}",
        secs(watch.elapsed()),
        m.get("weft_controller_eviction_held_scans_total")
    );
}

#[test]
fn a_standby_takes_over_within_ten_seconds_and_nothing_is_evicted_twice() {
    let after = Duration::from_secs(6);
    let lab = ctl_lab("ctl4", 3, |s| {
        s.controllers = 2;
        s.evict_after = Some(after);
    });
    let subnet2 = subnet_of(&lab, 2);
    let subnet3 = subnet_of(&lab, 3);
    let first = wait_leader(&lab, Duration::from_secs(20));
    let standby = 3 - first;

    // The first leader evicts n3.
    lab.stop_agent(3, Signal::SIGTERM).expect("stopping n3");
    until("n3 evicted by the first leader", Duration::from_secs(40), || {
        !evictions_of(&lab, "n3").is_empty() && !subnet_held(&lab, &subnet3)
    });

    // n2 stops; while its grace runs, the leader dies.
    lab.stop_agent(2, Signal::SIGTERM).expect("stopping n2");
    until("n2's heartbeat key gone", Duration::from_secs(40), || !heartbeat_present(&lab, "n2"));
    std::thread::sleep(Duration::from_secs(2));
    lab.stop_controller(first, Signal::SIGKILL).expect("killing the leader");
    let took = until("the standby leads", Duration::from_secs(10), || leader(&lab) == Some(standby));
    eprintln!("measured: c{standby} leads {} after c{first} was killed (SIGKILL)", secs(took));
    assert_eq!(metrics(&lab, standby).get("weft_controller_leader"), Some(1.0));

    // The new leader counts n2's absence from when it first saw it: no eviction before
    // evict_after has passed since the takeover.
    let evicted = until("n2 evicted by the new leader", after + SCAN + Duration::from_secs(10), || {
        !evictions_of(&lab, "n2").is_empty()
    });
    let since_takeover = evicted;
    eprintln!("measured: n2 evicted {} after the takeover", secs(since_takeover));
    assert!(since_takeover + Duration::from_millis(500) >= after, "grace not restarted: {since_takeover:?}");
    assert!(!subnet_held(&lab, &subnet2));

    // Long enough for a second eviction of either, had anyone made one.
    std::thread::sleep(after + 2 * SCAN);
    let all = evictions(&lab);
    let of = |n: &str| all.iter().filter(|e| e["node"] == n).collect::<Vec<_>>();
    assert_eq!(of("n3").len(), 1, "n3 evicted once: {all:?}");
    assert_eq!(of("n2").len(), 1, "n2 evicted once: {all:?}");
    assert_eq!(of("n3")[0]["leader"], format!("c{first}"));
    assert_eq!(of("n2")[0]["leader"], format!("c{standby}"));
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn controller_lab_flags_are_checked_before_anything_is_made() {
    let bad = |spec: LabSpec| Lab::up(spec).expect_err("refused").to_string();
    let e = bad(LabSpec { id: "ctl9".into(), controllers: 4, ..LabSpec::default() });
    assert_eq!(e, "--controllers: expected 1 to 3, found 4");
    let e = bad(LabSpec { id: "ctl9".into(), evict_after: Some(Duration::from_secs(5)), ..LabSpec::default() });
    assert!(e.starts_with("--evict-after: needs --controller"), "{e}");
    let e = bad(LabSpec { id: "ctl9".into(), join: true, ..LabSpec::default() });
    assert!(e.starts_with("--join: needs --controller"), "{e}");
    assert!(!Path::new("/run/weft-lab/ctl9").exists());
}

/// Serves `/` (a page whose script changes its text after a second of page time) and `/hang`
/// (accepted, never answered) on `127.0.0.1:port` inside `ns`, until `stop` is set.
fn serve_test_pages(
    ns: String,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the test server");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            let mut held = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                if head.starts_with("GET /hang ") {
                    held.push(s);
                    continue;
                }
                let body = "<html><body><p id=\"t\">before</p><script>setTimeout(() => \
                            { document.getElementById('t').textContent = 'after a second'; }, 1000);</script></body></html>";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .expect("the test server's namespace");
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("the test server did not start");
    h
}

#[test]
fn the_browser_harness_runs_page_scripts_and_ends_every_chromium_process() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let lab = lab("ctl5", 1, 0, |_| {});
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let server = serve_test_pages(lab.node_ns(1), 8088, stop.clone());
    let mut web = Browser::in_lab(lab.dir(), &lab.node_ns(1));
    web.budget = Duration::from_secs(3);

    let t = Instant::now();
    let dom = web.dump_dom("http://127.0.0.1:8088/").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(dom.contains(">after a second<"), "the page's timer did not run within the budget:\n{dom}");
    eprintln!("measured: --dump-dom with a 3 s virtual budget took {}", secs(t.elapsed()));
    assert!(browser::processes_of(&web.dir).is_empty(), "{:?}", browser::processes_of(&web.dir));

    // A page that never answers: the hard timeout ends the run, and every process with it.
    web.timeout = Duration::from_secs(4);
    let t = Instant::now();
    let e = web.dump_dom("http://127.0.0.1:8088/hang").expect_err("a page that never loads");
    assert!(e.to_string().contains("still running after 4 s; killed"), "{e:#}");
    assert!(t.elapsed() < Duration::from_secs(10), "the timeout took {:?}", t.elapsed());
    let left = browser::processes_of(&web.dir);
    assert!(left.is_empty(), "chromium processes left after the timeout: {left:?}");

    stop.store(true, Ordering::SeqCst);
    server.join().expect("test server");
}

/// With `renew`: certificates of 1 h, renewed 3570 s before expiry, so 30 s after each was
/// signed.
const RENEW_LIFETIME: Duration = Duration::from_secs(3600);
const RENEW_BEFORE: Duration = Duration::from_secs(3570);

/// A 3-node lab with one pod per node whose nodes join with a token: the lab issues no node
/// certificate; each agent is started by the test, which measures its join. With `renew`, the
/// certificates are short-lived and the running agents renew them (see [`renewed_in_place`]).
fn joined_lab(id: &str, backend: weft_config::Backend, renew: bool) {
    let lab = ctl_lab(id, 3, |s| {
        s.join = true;
        s.backend = backend;
        s.deferred_agents = 3;
        if renew {
            s.join_cert_lifetime = Some(RENEW_LIFETIME);
            s.join_renew_before = Some(RENEW_BEFORE);
        }
    });
    let st = lab.lab_status();
    assert_eq!(st.controller.as_ref().and_then(|c| c.bootstrap.as_deref()), Some("https://172.30.0.7:9651"));
    for i in 1..=3 {
        let files = lab.cert_files(&format!("n{i}"));
        assert!(!files.cert.exists() && !files.key.exists(), "the lab issued n{i} a certificate");
        let cfg = lab.node_config(i).expect("agent.toml");
        assert!(cfg.bootstrap.is_some(), "n{i}'s agent.toml has no [bootstrap]");
    }
    for i in 1..=3 {
        let files = lab.cert_files(&format!("n{i}"));
        let t = Instant::now();
        lab.start_agent(i).unwrap_or_else(|e| panic!("starting n{i}: {e:#}"));
        let joined = until(&format!("n{i}'s certificate written"), Duration::from_secs(30), || {
            files.cert.exists() && files.key.exists()
        });
        lab.wait_ready(i, Duration::from_secs(30)).unwrap_or_else(|e| panic!("n{i} not ready: {e:#}"));
        eprintln!(
            "measured: {backend} n{i} joined (certificate written) {} after its start, ready {} after it",
            secs(joined),
            secs(t.elapsed())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600, "n{i}'s key file mode {mode:o}");
    }
    let pods = all_pods(&lab, 3, &["p1"]);
    let mut failures = Vec::new();
    let took = wait_for(Duration::from_secs(20), || {
        failures = cross_node_ping_failures(&lab, &pods);
        failures.is_empty()
    });
    assert!(took.is_some(), "{backend}: pod pairs that never answered: {failures:?}");
    eprintln!(
        "measured: {backend} ping matrix of the joined nodes passes {} after the last was ready",
        secs(took.unwrap_or_default())
    );
    let m = metrics(&lab, 1);
    assert_eq!(m.get("weft_controller_join_issued_total"), Some(3.0), "{:?}", m.series);
    let tokens = etcd_kvs(&lab, "tokens/");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let t: Value = serde_json::from_str(&tokens[0].1).expect("token record");
    assert_eq!(t["uses_left"], 0, "three joins used the three uses: {t}");
    assert!(t.get("secret").is_none() && t["secret_sha256"].is_string(), "only the secret's hash is kept: {t}");
    if renew {
        renewed_in_place(&lab, &pods);
    }
}

/// Every agent renews its certificate before expiry without a restart: the files change, the
/// pids stay, the quic backend serves the new certificate (its expiry moves later by the time
/// between the two signatures), the controller counts the renewals, and the matrix passes.
fn renewed_in_place(lab: &Lab, pods: &[(usize, &str, std::net::Ipv4Addr)]) {
    let expires_in = |i: usize| -> i64 {
        let st = lab.wait_ready(i, Duration::from_secs(10)).unwrap_or_else(|e| panic!("n{i}: {e:#}"));
        st.quic.map(|q| q.cert_expires_in_secs).unwrap_or_else(|| panic!("n{i} reports no quic status"))
    };
    let t0 = Instant::now();
    let before: Vec<(u32, Vec<u8>, i64)> = (1..=3)
        .map(|i| {
            let pem = std::fs::read(lab.cert_files(&format!("n{i}")).cert).expect("certificate");
            (lab.agent_pid(i).expect("pid"), pem, expires_in(i))
        })
        .collect();
    let renewed =
        until("every node's certificate renewed", RENEW_LIFETIME - RENEW_BEFORE + Duration::from_secs(30), || {
            (1..=3).all(|i| std::fs::read(lab.cert_files(&format!("n{i}")).cert).is_ok_and(|p| p != before[i - 1].1))
        });
    eprintln!("measured: every node's certificate renewed {} after the check began", secs(renewed));
    // The backend takes the new files at its next full reconcile: the expiry it reports is then
    // that of a certificate signed after the first one.
    let served = until("the quic backend serves the renewed certificates", Duration::from_secs(20), || {
        let waited = t0.elapsed().as_secs() as i64;
        (1..=3).all(|i| expires_in(i) > before[i - 1].2 - waited + 10)
    });
    eprintln!("measured: the agents serve the renewed certificates {} after the renewal", secs(served));
    for i in 1..=3 {
        assert_eq!(lab.agent_pid(i), Some(before[i - 1].0), "n{i}'s agent restarted");
    }
    let renewals = metrics(lab, 1).get("weft_controller_renewals_total").unwrap_or(0.0);
    assert!(renewals >= 3.0, "renewals counted: {renewals}");
    let mut failures = Vec::new();
    let took = wait_for(Duration::from_secs(20), || {
        failures = cross_node_ping_failures(lab, pods);
        failures.is_empty()
    });
    assert!(took.is_some(), "after the renewals: pod pairs that never answered: {failures:?}");
}

#[test]
fn a_lab_joined_only_by_tokens_passes_the_host_gw_ping_matrix() {
    joined_lab("ctl6", weft_config::Backend::HostGw, false);
}

#[test]
fn a_lab_joined_only_by_tokens_passes_the_quic_ping_matrix_and_renews_without_a_restart() {
    joined_lab("ctl7", weft_config::Backend::Quic, true);
}
