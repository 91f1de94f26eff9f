//! VM nodes (`lab up --vms N`): QEMU virtual machines with Debian's kernel and systemd as init,
//! configured only by the VM guide's cloud-init file (deploy/vm/user-data-node.yaml), agents
//! under the project's systemd unit, joined through the lab's controller with a token. Each
//! test boots its own VMs (software emulation: minutes) and the lab's Drop removes them, QEMU
//! killed by pid, also when an assertion fails. Needs deploy/vm-assets.sh (install-deps.sh runs
//! it). Root only; they never skip.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use weft_config::api::Status;
use weft_lab::{Lab, LabSpec};
use weft_tests::*;

fn vm_lab(id: &str, n: usize, tweak: impl FnOnce(&mut LabSpec)) -> Lab {
    require_root();
    let mut spec = LabSpec { pods: 1, ..LabSpec::vms(id, n) };
    tweak(&mut spec);
    let start = Instant::now();
    let lab = Lab::up(spec).unwrap_or_else(|e| panic!("VM lab {id} did not come up: {e:#}"));
    eprintln!("lab {id}: {n} VMs booted, joined and ready with a pod each in {:.0?}", start.elapsed());
    lab
}

/// The agent's own status on VM `i` (through `weftctl agent status --json` in the guest).
fn status(lab: &Lab, i: usize) -> Status {
    let s = lab.node_status(i);
    s.agent.unwrap_or_else(|| panic!("n{i}: no agent status: {}", s.error.unwrap_or_default()))
}

fn vm_pod_ip(lab: &Lab, i: usize, pod: &str) -> Ipv4Addr {
    let st = status(lab, i);
    st.pods
        .iter()
        .find(|p| p.name == pod)
        .map(|p| v4(p.ip))
        .unwrap_or_else(|| panic!("n{i} has no pod {pod}: {:?}", st.pods))
}

/// Runs `script` with `sh -c` on `target` and insists it succeeds; returns stdout.
fn sh(lab: &Lab, target: &str, script: &str) -> String {
    run_ok(lab, target, &["sh", "-c", script])
}

/// Pings between the first pods of every pair of VMs; the failures.
fn pod_ping_failures(lab: &Lab, n: usize) -> Vec<String> {
    let ips: Vec<Ipv4Addr> = (1..=n).map(|i| vm_pod_ip(lab, i, "p1")).collect();
    let mut failures = Vec::new();
    for i in 1..=n {
        for (j, ip) in ips.iter().enumerate() {
            if j + 1 != i && !ping_within(lab, &format!("n{i}/p1"), *ip, "5") {
                failures.push(format!("n{i}/p1 -> n{}/p1 {ip}", j + 1));
            }
        }
    }
    failures
}

/// A unit property of weft-agent on VM `i`.
fn unit(lab: &Lab, i: usize, prop: &str) -> String {
    sh(lab, &format!("n{i}"), &format!("systemctl show -p {prop} --value weft-agent")).trim().to_string()
}

fn boot_id(lab: &Lab, i: usize) -> Option<String> {
    let out = lab.exec_vm(i, &["cat", "/proc/sys/kernel/random/boot_id"], Duration::from_secs(10)).ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn the_vm_guide_runs_end_to_end_on_three_vms() {
    let lab = vm_lab("vg", 3, |_| {});

    // What the guide configured: cloud-init done, agent.toml 0600 with this node's name, the
    // agent under the project's unit (Type=notify with a watchdog), READY, a machine id each.
    let mut ids = std::collections::BTreeSet::new();
    for i in 1..=3 {
        let t = format!("n{i}");
        assert!(sh(&lab, &t, "cloud-init status").contains("done"), "cloud-init on {t}");
        assert_eq!(sh(&lab, &t, "stat -c %a /etc/weft/agent.toml").trim(), "600");
        assert!(sh(&lab, &t, "cat /etc/weft/agent.toml").contains(&format!("node_name = \"n{i}\"")));
        assert_eq!(unit(&lab, i, "ActiveState"), "active", "weft-agent on {t}");
        assert_eq!(unit(&lab, i, "Type"), "notify");
        assert_eq!(unit(&lab, i, "WatchdogUSec"), "1min");
        assert!(unit(&lab, i, "StatusText").starts_with("ready"), "{t}: {}", unit(&lab, i, "StatusText"));
        assert_eq!(unit(&lab, i, "FragmentPath"), "/etc/systemd/system/weft-agent.service", "installed by install.sh");
        ids.insert(sh(&lab, &t, "cat /etc/machine-id").trim().to_string());
        // The machine's own services are not running in the VM.
        for other in ["etcd", "docker", "containerd"] {
            let state = lab.exec(&t, &["systemctl", "is-active", other]).expect("exec");
            assert!(!state.status.success(), "{other} runs on {t}");
        }
        let st = status(&lab, i);
        assert_eq!(st.node, t);
        assert_eq!(st.peers.len(), 2, "{t}: {:?}", st.peers);
    }
    assert_eq!(ids.len(), 3, "one machine id per VM: {ids:?}");

    // Pods ping across VMs, and the receiver sees the sender's pod address (no NAT).
    let failures = pod_ping_failures(&lab, 3);
    assert!(failures.is_empty(), "pings failed: {failures:?}");

    // `systemctl restart weft-agent` on both ends loses no pod traffic: a UDP stream with
    // sequence numbers (iperf3 counts lost datagrams) runs across the restarts.
    let server = vm_pod_ip(&lab, 2, "p1");
    sh(&lab, "n2/p1", "iperf3 -s -1 -D -p 5301 --logfile /tmp/iperf3-server.log");
    sh(
        &lab,
        "n1/p1",
        &format!(
            "setsid sh -c 'iperf3 -u -c {server} -p 5301 -b 200K -l 200 -t 25 --json > /tmp/udp.json 2>&1' \
             < /dev/null > /dev/null 2>&1 &"
        ),
    );
    std::thread::sleep(Duration::from_secs(5));
    for i in [1, 2] {
        let before = unit(&lab, i, "MainPID");
        sh(&lab, &format!("n{i}"), "systemctl restart weft-agent");
        assert_ne!(unit(&lab, i, "MainPID"), before, "n{i}: restarted");
        assert_eq!(unit(&lab, i, "ActiveState"), "active");
    }
    let done = wait_for(Duration::from_secs(90), || {
        sh(&lab, "n1", "cat /tmp/udp.json 2>/dev/null || true").trim_end().ends_with('}')
    });
    assert!(done.is_some(), "the UDP stream did not finish: {}", sh(&lab, "n1", "cat /tmp/udp.json || true"));
    let report: serde_json::Value =
        serde_json::from_str(&sh(&lab, "n1", "cat /tmp/udp.json")).expect("iperf3 --json output");
    let sum = &report["end"]["sum"];
    let (lost, packets) = (sum["lost_packets"].as_u64(), sum["packets"].as_u64());
    assert!(packets.is_some_and(|p| p > 1000), "too few datagrams: {sum}");
    assert_eq!(lost, Some(0), "datagrams lost across the agents' restarts: {sum}");

    // The watchdog restarts a stuck agent: SIGSTOP it and systemd kills and restarts it.
    let stuck = unit(&lab, 3, "MainPID");
    let restarts = unit(&lab, 3, "NRestarts");
    sh(&lab, "n3", &format!("kill -STOP {stuck}"));
    let start = Instant::now();
    let back = wait_for(Duration::from_secs(300), || {
        let pid = unit(&lab, 3, "MainPID");
        pid != stuck && pid != "0" && unit(&lab, 3, "ActiveState") == "active"
    });
    assert!(
        back.is_some(),
        "the watchdog did not restart the stopped agent: {}",
        sh(&lab, "n3", "systemctl status --no-pager weft-agent || true")
    );
    eprintln!("watchdog: stopped agent replaced after {:.0?}", start.elapsed());
    assert_ne!(unit(&lab, 3, "NRestarts"), restarts);
    assert!(
        sh(&lab, "n3", "journalctl -u weft-agent --no-pager").contains("Watchdog timeout"),
        "killed by the watchdog"
    );

    // A rebooted VM comes back with its subnet and its pod's address (state on its disk).
    let subnet = status(&lab, 3).subnet.expect("a subnet");
    let pod = vm_pod_ip(&lab, 3, "p1");
    let boot = boot_id(&lab, 3).expect("boot id");
    sh(&lab, "n3", "setsid sh -c 'sleep 1; systemctl reboot' < /dev/null > /dev/null 2>&1 &");
    let start = Instant::now();
    let rebooted = wait_for(Duration::from_secs(300), || boot_id(&lab, 3).is_some_and(|b| b != boot));
    assert!(rebooted.is_some(), "n3 did not come back from the reboot");
    let ready = wait_for(Duration::from_secs(300), || lab.vm_readyz(3).is_ok());
    assert!(ready.is_some(), "n3's agent not ready after the reboot");
    eprintln!("reboot: n3 back and ready in {:.0?}", start.elapsed());
    assert_eq!(status(&lab, 3).subnet.as_deref(), Some(subnet.as_str()), "the subnet survives the reboot");
    let pod_back = wait_for(Duration::from_secs(60), || {
        status(&lab, 3).pods.iter().any(|p| p.name == "p1" && p.ip == Some(pod.into()))
    });
    assert!(pod_back.is_some(), "n3/p1 lost {pod}: {:?}", status(&lab, 3).pods);
    assert!(ping_within(&lab, "n1/p1", pod, "5"), "n1/p1 cannot reach n3/p1 after the reboot");
}

#[test]
fn the_wireguard_backend_carries_pods_across_vms_encrypted() {
    let lab = vm_lab("vw", 2, |s| s.backend = weft_config::Backend::WireGuard);
    let failures = pod_ping_failures(&lab, 2);
    assert!(failures.is_empty(), "pings failed: {failures:?}");
    let (a, b) = (vm_pod_ip(&lab, 1, "p1"), vm_pod_ip(&lab, 2, "p1"));

    // The receiver sees the sender's pod address.
    sh(&lab, "n2/p1", "setsid sh -c 'timeout 60 nc -n -v -l 7001 > /tmp/tcp.log 2>&1' < /dev/null > /dev/null 2>&1 &");
    std::thread::sleep(Duration::from_secs(2));
    sh(&lab, "n1/p1", &format!("echo hello | nc -N -w 10 {b} 7001"));
    let seen = wait_for(Duration::from_secs(30), || sh(&lab, "n2", "cat /tmp/tcp.log").contains("hello"));
    assert!(seen.is_some(), "nothing received: {}", sh(&lab, "n2", "cat /tmp/tcp.log"));
    let log = sh(&lab, "n2", "cat /tmp/tcp.log");
    assert!(log.contains(&format!("Connection received on {a}")), "the receiver must see {a}: {log}");

    // On the VMs' bridge only WireGuard datagrams carry the pods' traffic: no frame there has
    // the pods' addresses in it.
    let frames = capture_while(&lab, Duration::from_secs(4), || {
        let _ = lab.exec("n1/p1", &["ping", "-c", "5", "-i", "0.3", &b.to_string()]);
    });
    let wg: Vec<&Vec<u8>> = frames.iter().filter(|f| udp_port_is(f, 51820) && wg_data(f)).collect();
    assert!(wg.len() >= 5, "no WireGuard transport data on the bridge ({} frames)", frames.len());
    let plain: Vec<&Vec<u8>> = frames.iter().filter(|f| contains(f, &a.octets()) || contains(f, &b.octets())).collect();
    assert!(plain.is_empty(), "{} frame(s) on the bridge carry a pod address in clear", plain.len());

    // A peer's key change is picked up: n2 gets a new key, n1 learns it, pods talk again.
    let key_before = sh(&lab, "n1", "wg show all peers");
    sh(&lab, "n2", "systemctl stop weft-agent && rm -f /var/lib/weft/wireguard.key && ip link del weft-wg0 || true");
    sh(&lab, "n2", "systemctl start weft-agent");
    // `systemctl start` returns once the agent is READY, with its new key on weft-wg0.
    let n2_key = sh(&lab, "n2", "wg show all public-key");
    let new_key = n2_key.split_whitespace().last().unwrap_or("?").to_string();
    assert!(
        new_key.len() == 44 && !key_before.contains(&new_key),
        "n2 has no new key: {n2_key:?}, n1 had {key_before:?}"
    );
    let picked = wait_for(Duration::from_secs(120), || sh(&lab, "n1", "wg show all peers").contains(&new_key));
    assert!(picked.is_some(), "n1 never took n2's new key {new_key}; it had {key_before:?}");
    assert!(
        wait_for(Duration::from_secs(60), || ping_within(&lab, "n1/p1", b, "2")).is_some(),
        "n1/p1 cannot reach n2/p1 after the key change"
    );
}

/// Every frame seen on any interface of the lab's underlay namespace (the VMs' bridge and taps)
/// while `during` runs.
fn capture_while(lab: &Lab, window: Duration, during: impl FnOnce()) -> Vec<Vec<u8>> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let ns = lab.names().underlay_ns();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        weft_lab::in_netns(&ns, || -> anyhow::Result<Vec<Vec<u8>>> {
            let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), SockProtocol::EthAll)?;
            let file = std::fs::File::from(fd);
            let tv = nix::sys::time::TimeVal::new(0, 200_000);
            nix::sys::socket::setsockopt(&file, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
            let _ = tx.send(());
            let mut frames = Vec::new();
            let end = Instant::now() + window;
            let mut buf = vec![0u8; 65536];
            while Instant::now() < end {
                use std::io::Read;
                if let Ok(n) = (&file).read(&mut buf) {
                    frames.push(buf[..n].to_vec());
                }
            }
            Ok(frames)
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("capture socket");
    during();
    handle.join().expect("capture thread").expect("netns").expect("capture")
}

/// An Ethernet frame with IPv4/UDP to or from `port`.
fn udp_port_is(f: &[u8], port: u16) -> bool {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return false;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    f.len() >= udp + 8 && (f[udp..udp + 2] == port.to_be_bytes() || f[udp + 2..udp + 4] == port.to_be_bytes())
}

/// A WireGuard transport data message (type 4, three reserved zero bytes) in the UDP payload.
fn wg_data(f: &[u8]) -> bool {
    let udp = 14 + usize::from(f[14] & 0x0f) * 4;
    f.get(udp + 8..udp + 12) == Some(&[4, 0, 0, 0])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
