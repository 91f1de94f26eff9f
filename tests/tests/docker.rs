//! Docker containers on the weft network: real dockerd and containerd (Debian's `docker.io`) on
//! two lab nodes, each in its node's namespace (`weftctl lab docker`), with the agent's plugin
//! as network and IPAM driver. Containers on different nodes reach each other and the lab's
//! pods by their own addresses (no NAT), `docker rm` and `docker network rm` give everything
//! back, and the agent's and the Docker daemon's restarts keep or restore connectivity. The
//! lab's `Drop` (also on a failed assertion) removes containers, daemons, mounts and files.
//! Run one at a time (`--test-threads=1`).
//! The lab's daemons get the network's resolvers (`lab up --dns-*`) in their daemon.json, and a
//! container looks a name up in the lab's dnsmasq.

use serde_json::Value;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use weft_lab::docker::{DockerPaths, DOCKER_NETWORK, IMAGE};
use weft_lab::{in_netns, Lab};
use weft_tests::*;

/// `docker ARGS` on node `i`; its stdout, trimmed. Fails the test with stderr otherwise.
fn docker(lab: &Lab, i: usize, args: &[&str]) -> String {
    let out = lab.docker(i, args).unwrap_or_else(|e| panic!("docker {args:?} on n{i}: {e:#}"));
    assert!(
        out.status.success(),
        "docker {args:?} on n{i} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether `docker ARGS` on node `i` exits 0.
fn docker_ok(lab: &Lab, i: usize, args: &[&str]) -> bool {
    lab.docker(i, args).is_ok_and(|o| o.status.success())
}

/// A container's address on the weft network.
fn container_ip(lab: &Lab, i: usize, name: &str) -> Ipv4Addr {
    let f = format!("{{{{(index .NetworkSettings.Networks \"{DOCKER_NETWORK}\").IPAddress}}}}");
    let ip = docker(lab, i, &["inspect", "--format", &f, name]);
    ip.parse().unwrap_or_else(|_| panic!("container {name} on n{i} has no address on {DOCKER_NETWORK}: {ip:?}"))
}

/// `docker run -d --network weft --name NAME [EXTRA...] weft-busybox sleep 600` on node `i`.
fn run_sleeper(lab: &Lab, i: usize, name: &str, extra: &[&str]) -> Ipv4Addr {
    let mut args = vec!["run", "-d", "--network", DOCKER_NETWORK, "--name", name];
    args.extend(extra);
    args.extend([IMAGE, "sleep", "600"]);
    docker(lab, i, &args);
    container_ip(lab, i, name)
}

/// One ping from container `name` on node `i`.
fn ping_from(lab: &Lab, i: usize, name: &str, to: impl std::fmt::Display) -> bool {
    docker_ok(lab, i, &["exec", name, "ping", "-c1", "-W2", &to.to_string()])
}

/// The agent's Docker pods on node `i` as (name, ip).
fn docker_pods(lab: &Lab, i: usize) -> Vec<(String, Option<IpAddr>)> {
    let pods = lab.client(i).expect("client").pod_list().expect("pod list");
    pods.into_iter().filter(|p| p.source == "docker").map(|p| (p.name, p.ip)).collect()
}

/// Names of the veths in node `i`'s namespace.
fn veths(lab: &Lab, i: usize) -> Vec<String> {
    let out = lab.exec(&format!("n{i}"), &["ip", "-j", "link", "show", "type", "veth"]).expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let mut names: Vec<String> =
        v.as_array().expect("array").iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect();
    names.sort();
    names
}

/// MTU of `ifname` inside pod `pod` of node `i`.
fn pod_mtu(lab: &Lab, i: usize, pod: &str) -> u64 {
    let out = lab.exec(&format!("n{i}/{pod}"), &["ip", "-j", "link", "show", "eth0"]).expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v[0]["mtu"].as_u64().expect("mtu")
}

/// What a finished lab must not leave: namespaces, mounts under its directory, its
/// directory, the containers' cgroup parents, and the machine's Docker directories.
fn assert_nothing_left(id: &str, nodes: usize, had_run_docker: bool) {
    let ns: Vec<String> = weft_lab::netns::list()
        .expect("netns list")
        .into_iter()
        .filter(|n| n.starts_with(&format!("weft{id}-")))
        .collect();
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = format!("/run/weft-lab/{id}");
    assert!(!info.contains(&dir), "mounts left under {dir}:\n{info}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
    for i in 1..=nodes {
        let cg = format!("/sys/fs/cgroup/memory/weft-lab-{id}-n{i}");
        assert!(!std::path::Path::new(&cg).exists(), "{cg} left");
    }
    assert_eq!(std::path::Path::new("/run/docker").exists(), had_run_docker, "the machine's /run/docker was touched");
}

#[test]
fn containers_reach_containers_and_pods_across_nodes_by_their_own_address() {
    let had_run_docker = std::path::Path::new("/run/docker").exists();
    let lab = lab("dk1", 2, 1, |s| {
        s.ip_masq = true; // the resolver in the external namespace has no route to pod subnets
        s.dns = Some(weft_config::dns::DnsSettings {
            servers: vec![weft_tests::dns::RESOLVER.parse().expect("literal")],
            search: vec!["weft.test".into()],
            options: vec![],
        });
    });
    let _resolver = weft_tests::dns::Dnsmasq::start(&lab, &[("web.weft.test", "203.0.113.80")]).expect("dnsmasq");
    let veths_before = [veths(&lab, 1), veths(&lab, 2)];

    // The daemons start on first use, inside the nodes, with the image and the network.
    assert_eq!(
        docker(&lab, 1, &["network", "inspect", "--format", "{{.Driver}} {{.IPAM.Driver}}", DOCKER_NETWORK]),
        "weft weft"
    );
    assert!(docker(&lab, 2, &["image", "ls", "--format", "{{.Repository}}"]).lines().any(|l| l == IMAGE));
    let p = DockerPaths::new(lab.names(), 1);
    assert!(p.spec_file.exists(), "the agent wrote its spec file in the node's plugin dir");
    let dockerd = lab.dockerd_pid(1).expect("dockerd of n1 runs");
    assert_eq!(
        weft_lab::netns::pid_ns_id(dockerd),
        weft_lab::netns::ns_id(&lab.node_ns(1)),
        "dockerd runs in the node's network namespace"
    );

    // `weftctl lab docker` passes the CLI's output and exit status through.
    let cli = std::process::Command::new(lab.agent_bin().with_file_name("weftctl"))
        .args(["lab", "--id", "dk1", "docker", "n1", "--", "run", "--rm", "--network", "none", IMAGE])
        .args(["sh", "-c", "echo out; echo err >&2; exit 7"])
        .output()
        .expect("weftctl lab docker");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!((cli.status.code(), text(&cli.stdout), text(&cli.stderr)), (Some(7), "out\n".into(), "err\n".into()));

    // Time from `docker run` to the first reply across hosts (container start included).
    let pod2 = pod_ip(&lab, 2, "p1");
    let target = run_sleeper(&lab, 2, "cb", &[]);
    let script = format!("until ping -c1 -W1 {target} >/dev/null; do sleep 0.05; done");
    let t0 = Instant::now();
    let out = lab
        .docker(1, &["run", "--rm", "--network", DOCKER_NETWORK, IMAGE, "timeout", "30", "sh", "-c", &script])
        .expect("docker run");
    let first_reply = t0.elapsed();
    assert!(out.status.success(), "no reply from n2's container {target}: {}", String::from_utf8_lossy(&out.stderr));
    println!("docker run to first cross-host reply: {} ms", first_reply.as_millis());

    // The container's attachment: eth0 with its address in n1's subnet, the pod MTU, the
    // bridge as gateway; the agent lists it as a docker pod.
    let a = run_sleeper(&lab, 1, "ca", &[]);
    let st = lab.wait_ready(1, Duration::from_secs(10)).expect("ready");
    let subnet = weft_config::subnet::parse_cidr(&st.subnet.expect("subnet")).expect("subnet");
    assert!(subnet.contains(&IpAddr::V4(a)), "{a} in {subnet}");
    let addr = docker(&lab, 1, &["exec", "ca", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {a}/{}", subnet.prefix_len())), "{addr}");
    // Over netlink: a /sys read through `docker exec` can show another namespace's interfaces
    // when the lab runs inside a chroot, where eth0 is the machine's.
    let link = docker(&lab, 1, &["exec", "ca", "ip", "-o", "link", "show", "eth0"]);
    let mtu = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1).and_then(|m| m.parse::<u64>().ok());
    assert_eq!(mtu, Some(pod_mtu(&lab, 1, "p1")), "container MTU is the pod MTU: {link}");
    let o = a.octets();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    assert!(link.contains(&format!("link/ether {mac} ")), "MAC from the address: {link}");
    let route = docker(&lab, 1, &["exec", "ca", "ip", "route"]);
    let gw = weft_config::subnet::gateway(subnet);
    assert!(route.contains(&format!("default via {gw}")), "{route}");
    let pods = docker_pods(&lab, 1);
    let id =
        docker(&lab, 1, &["inspect", "--format", "{{(index .NetworkSettings.Networks \"weft\").EndpointID}}", "ca"]);
    assert!(
        pods.contains(&(format!("docker-{}", &id[..12]), Some(IpAddr::V4(a)))),
        "n1's pod list has the container as docker-<endpoint>: {pods:?}"
    );

    // Containers, pods, across nodes, both ways.
    assert!(ping_from(&lab, 1, "ca", target), "n1 container -> n2 container");
    assert!(ping_from(&lab, 2, "cb", a), "n2 container -> n1 container");
    assert!(ping_from(&lab, 1, "ca", pod2), "n1 container -> n2 pod");
    assert!(ping(&lab, "n2/p1", a), "n2 pod -> n1 container");

    // The container resolves with the network's settings (the daemon's dns): on a user-defined
    // network Docker's embedded resolver (127.0.0.11) forwards to them, here to dnsmasq.
    // A new container's own process (not `docker exec`: when the lab runs inside a chroot, an
    // exec'd process joins the container's mount namespace at that namespace's root, the
    // machine's files, not the container's).
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", DOCKER_NETWORK, IMAGE];
        all.extend(args);
        docker(&lab, 1, &all)
    };
    let conf = run(&["cat", "/etc/resolv.conf"]);
    assert!(conf.contains("search weft.test"), "{conf}");
    let answer = run(&["nslookup", "web.weft.test"]);
    assert!(answer.contains("203.0.113.80"), "lookup from a container: {answer}");

    // A TCP receiver in n2's pod sees the container's own address.
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = lab.pod_ns(2, 1);
    let recv = std::thread::spawn(move || {
        in_netns(&ns, || {
            let l = TcpListener::bind(SocketAddr::from((pod2, 7700))).expect("bind");
            let _ = tx.send(());
            l.set_nonblocking(false).expect("blocking");
            let (mut s, peer) = l.accept().expect("accept");
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            (peer, got)
        })
        .expect("receiver namespace")
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("receiver listening");
    docker(&lab, 1, &["exec", "ca", "sh", "-c", &format!("echo hello | nc -w 3 {pod2} 7700")]);
    let (peer, got) = recv.join().expect("receiver");
    assert_eq!((peer.ip(), got.trim()), (IpAddr::V4(a), "hello"), "the receiver sees the container's address");

    // With FORWARD's policy DROP in both nodes (as a machine dockerd would leave it), traffic
    // still flows.
    for i in [1, 2] {
        let out = lab.exec(&format!("n{i}"), &["iptables", "-P", "FORWARD", "DROP"]).expect("iptables");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(ping_from(&lab, 1, "ca", target), "n1 container -> n2 container with FORWARD DROP");
    assert!(ping_from(&lab, 1, "ca", pod2), "n1 container -> n2 pod with FORWARD DROP");
    assert!(ping(&lab, "n2/p1", a), "n2 pod -> n1 container with FORWARD DROP");

    // docker rm and docker network rm give everything back.
    docker(&lab, 1, &["rm", "-f", "ca"]);
    assert!(docker_pods(&lab, 1).is_empty(), "{:?}", docker_pods(&lab, 1));
    assert_eq!(veths(&lab, 1), veths_before[0], "n1's veths after docker rm");
    docker(&lab, 2, &["rm", "-f", "cb"]);
    docker(&lab, 2, &["network", "rm", DOCKER_NETWORK]);
    assert!(docker_pods(&lab, 2).is_empty(), "{:?}", docker_pods(&lab, 2));
    assert_eq!(veths(&lab, 2), veths_before[1], "n2's veths after docker network rm");
    // A fresh network on the same node works again.
    docker(&lab, 2, &["network", "create", "--driver", "weft", "--ipam-driver", "weft", DOCKER_NETWORK]);
    let c = run_sleeper(&lab, 2, "cc", &[]);
    assert!(ping(&lab, "n1/p1", c), "n1 pod -> n2's new container");

    // A container is left running: lab down removes it with the rest.
    let report = lab.down();
    assert!(report.is_ok(), "{report:?}");
    assert_nothing_left("dk1", 2, had_run_docker);
}

#[test]
fn agent_and_docker_restarts_keep_running_containers_reachable() {
    let had_run_docker = std::path::Path::new("/run/docker").exists();
    let lab = lab("dk2", 2, 1, |_| {});
    let pod2 = pod_ip(&lab, 2, "p1");
    let r = run_sleeper(&lab, 1, "cr", &["--restart=always"]);
    assert!(wait_for(Duration::from_secs(10), || ping(&lab, "n2/p1", r)).is_some(), "n2 pod -> {r}");

    // Agent restart: the container keeps its address, the agent its record, traffic flows.
    lab.stop_agent(1, nix::sys::signal::Signal::SIGTERM).expect("stop agent");
    lab.start_agent(1).expect("start agent");
    lab.wait_ready(1, Duration::from_secs(30)).expect("ready again");
    assert_eq!(container_ip(&lab, 1, "cr"), r);
    assert!(docker_pods(&lab, 1).iter().any(|(_, ip)| *ip == Some(IpAddr::V4(r))), "{:?}", docker_pods(&lab, 1));
    assert!(
        wait_for(Duration::from_secs(10), || ping(&lab, "n2/p1", r)).is_some(),
        "n2 pod -> {r} after agent restart"
    );
    assert!(ping_from(&lab, 1, "cr", pod2), "{r} -> n2 pod after agent restart");
    // A new container on the restarted agent's node.
    let s = run_sleeper(&lab, 1, "cs", &[]);
    assert_ne!(s, r);
    assert!(ping_from(&lab, 1, "cs", pod2), "new container -> n2 pod");
    docker(&lab, 1, &["rm", "-f", "cs"]);

    // Docker daemon restart: dockerd stops its containers; the one with --restart=always comes
    // back attached, and new containers attach.
    let before = lab.dockerd_pid(1).expect("dockerd");
    lab.restart_dockerd(1).expect("restart dockerd");
    assert_ne!(lab.dockerd_pid(1), Some(before), "a new dockerd");
    let running = wait_for(Duration::from_secs(30), || {
        docker_ok(&lab, 1, &["inspect", "--format", "{{.State.Running}}", "cr"])
            && docker(&lab, 1, &["inspect", "--format", "{{.State.Running}}", "cr"]) == "true"
    });
    assert!(running.is_some(), "container r did not come back after the daemon restart");
    let r2 = container_ip(&lab, 1, "cr");
    if wait_for(Duration::from_secs(15), || ping(&lab, "n2/p1", r2)).is_none() {
        let inside =
            lab.docker(1, &["exec", "cr", "ip", "addr"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let log = weft_lab::plumbing::tail(&lab.names().node_paths(1).log, 40);
        let dlog = weft_lab::plumbing::tail(&DockerPaths::new(lab.names(), 1).dockerd_log, 30);
        let links = lab
            .exec("n1", &["sh", "-c", &format!("ip -br link; bridge link; ip neigh show {r2}")])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        panic!(
            "n2 pod -> {r2} after dockerd restart: no reply\npods of n1: {:?}\ninside cr: {inside:?}\nn1 links: {links:?}\n{log}\n{dlog}",
            lab.client(1).and_then(|c| Ok(c.pod_list()?))
        );
    }
    assert!(ping_from(&lab, 1, "cr", pod2), "{r2} -> n2 pod after dockerd restart");
    let out =
        docker(&lab, 1, &["run", "--rm", "--network", DOCKER_NETWORK, IMAGE, "ping", "-c1", "-W2", &pod2.to_string()]);
    assert!(out.contains("1 packets received"), "{out}");
    let pods = docker_pods(&lab, 1);
    assert_eq!(pods.len(), 1, "only r is left in the agent's list: {pods:?}");

    let report = lab.down();
    assert!(report.is_ok(), "{report:?}");
    assert_nothing_left("dk2", 2, had_run_docker);
}
