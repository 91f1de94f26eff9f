//! weft-cni: a CNI plugin (spec 1.0) that attaches containers to weft through the local agent.
//! Runtimes call it with CNI_COMMAND=ADD|DEL|CHECK|VERSION, CNI_CONTAINERID, CNI_NETNS (a path),
//! CNI_IFNAME and the network config on stdin; it prints the result (or a CNI error object) on
//! stdout. The decisions are in `weft_agent::cni`; this file does the I/O.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use weft_agent::cni::{self, code, Attachment, CniError, Command, Env, NetConf};
use weft_agent::kernel::{Kernel, Netlink};
use weft_config::api::{PodInfo, Request, Response, MAX_REQUEST_BYTES};
use weft_config::subnet::Family;

/// Largest network config read from stdin.
const MAX_STDIN: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        return fail(&CniError::new(code::IO_FAILURE, "reading the network config from stdin", e.to_string()), "1.0.0");
    }
    let version = cni::version_of(&stdin);
    match run(&stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e, &version),
    }
}

fn fail(e: &CniError, version: &str) -> ExitCode {
    println!("{}", e.to_json(version));
    eprintln!("weft-cni: {} ({})", e.msg, e.details);
    ExitCode::FAILURE
}

fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let env = cni::parse_env(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "1.0.0".into());
        return Ok(Some(cni::version_info(&requested)));
    }
    let conf = cni::parse_conf(stdin)?;
    let pod = cni::pod_name(&env.container_id, &env.ifname);
    match env.command {
        Command::Add => add(&env, &conf, &pod).map(Some),
        Command::Del => del(&env, &conf, &pod).map(|()| None),
        Command::Check => check(&env, &conf, &pod).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// One request to the agent. Err(Ok(e)) when the agent could not be reached at all (so DEL may
/// clean up offline), Err(Err(e)) for every other failure.
fn ask(socket: &str, req: &Request) -> Result<Response, Result<CniError, CniError>> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        Ok(CniError::new(code::TRY_AGAIN_LATER, format!("the weft agent is not reachable at {socket}"), e.to_string()))
    })?;
    let io = |e: std::io::Error| Err(CniError::new(code::TRY_AGAIN_LATER, "talking to the weft agent", e.to_string()));
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line =
        serde_json::to_vec(req).map_err(|e| Err(CniError::new(code::IO_FAILURE, "encoding", e.to_string())))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut out = Vec::new();
    BufReader::new(s).take(MAX_REQUEST_BYTES as u64 * 16).read_until(b'\n', &mut out).map_err(io)?;
    serde_json::from_slice(&out)
        .map_err(|e| Err(CniError::new(code::IO_FAILURE, "the weft agent's answer is not valid", e.to_string())))
}

/// The agent's error message as a CNI error: not ready yet is transient.
fn refused(message: String) -> CniError {
    if message.contains("not ready") || message.contains("no subnet yet") {
        CniError::new(code::TRY_AGAIN_LATER, "the weft agent is not ready yet", message)
    } else {
        CniError::new(code::AGENT_REFUSED, "the weft agent refused the request", message)
    }
}

fn ask_pods(socket: &str) -> Result<Vec<PodInfo>, Result<CniError, CniError>> {
    match ask(socket, &Request::PodList)? {
        Response::Pods { pods } => Ok(pods),
        Response::Error { message } => Err(Err(refused(message))),
        other => Err(Err(CniError::new(code::IO_FAILURE, "unexpected answer from the agent", format!("{other:?}")))),
    }
}

fn flatten<T>(r: Result<T, Result<CniError, CniError>>) -> Result<T, CniError> {
    r.map_err(|e| e.unwrap_or_else(|e| e))
}

fn add(env: &Env, conf: &NetConf, pod: &str) -> Result<serde_json::Value, CniError> {
    if let Some(e) = &conf.dns_error {
        return Err(e.clone());
    }
    let netns = env.netns.clone().unwrap_or_default();
    let req = Request::PodAdd {
        name: pod.to_string(),
        netns: Some(pod.to_string()),
        ifname: Some(env.ifname.clone()),
        netns_path: Some(netns.clone()),
        dns: conf.dns.clone(),
    };
    let info = match flatten(ask(&conf.socket, &req))? {
        Response::Pod(p) => *p,
        Response::Error { message } => return Err(refused(message)),
        other => return Err(CniError::new(code::IO_FAILURE, "unexpected answer from the agent", format!("{other:?}"))),
    };
    let io = |what: &str, e: std::io::Error| CniError::new(code::IO_FAILURE, what.to_string(), e.to_string());
    let host_mac = hwaddr(&info.host_veth).map_err(|e| io("reading the host veth's MAC address", e))?;
    let ifname = env.ifname.clone();
    let mac = in_netns_path(&netns, move || hwaddr(&ifname))
        .and_then(|r| r)
        .map_err(|e| io("reading the container interface's MAC address", e))?;
    let addrs = info.addrs();
    let a = Attachment {
        host_veth: info.host_veth,
        host_mac,
        ifname: env.ifname.clone(),
        mac,
        sandbox: netns,
        addrs,
        dns: info.dns,
    };
    Ok(cni::result(&conf.cni_version, &a))
}

fn del(env: &Env, conf: &NetConf, pod: &str) -> Result<(), CniError> {
    let pods = match ask_pods(&conf.socket) {
        Ok(p) => p,
        Err(Ok(unreachable)) => {
            return del_offline(env, pod)
                .map_err(|e| CniError { details: format!("{}; {}", unreachable.details, e.details), ..e })
        }
        Err(Err(e)) => return Err(e),
    };
    if !pods.iter().any(|p| p.name == pod) {
        return Ok(()); // never added, or already deleted: DEL is idempotent
    }
    match flatten(ask(&conf.socket, &Request::PodDel { name: pod.to_string() }))? {
        Response::Done => Ok(()),
        Response::Error { message } if message.starts_with("no pod named") => Ok(()),
        Response::Error { message } => Err(refused(message)),
        other => Err(CniError::new(code::IO_FAILURE, "unexpected answer from the agent", format!("{other:?}"))),
    }
}

/// DEL with no agent running: remove the host veth and the agent's bind mount of the
/// namespace. The agent forgets a CNI pod whose mount is gone when it starts again.
fn del_offline(env: &Env, pod: &str) -> Result<(), CniError> {
    let io = |what: &str, e: String| CniError::new(code::IO_FAILURE, what.to_string(), e);
    let veth = weft_agent::pods::host_veth_name(pod, &env.ifname);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io("starting a runtime", e.to_string()))?;
    rt.block_on(async {
        let nl = Netlink::open()?;
        if let Some(l) = nl.link(&veth).await? {
            nl.del_link(l.index).await?;
        }
        anyhow::Ok(())
    })
    .map_err(|e| io("removing the host veth with the agent down", format!("{e:#}")))?;
    weft_agent::netns::remove(pod)
        .map_err(|e| io("removing the namespace bind mount with the agent down", e.to_string()))
}

fn check(env: &Env, conf: &NetConf, pod: &str) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "CHECK needs CNI version 0.4.0 or later",
            &conf.cni_version,
        ));
    }
    let netns = env.netns.clone().unwrap_or_default();
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult in the network config", ""))?;
    let pods = flatten(ask_pods(&conf.socket))?;
    let info = pods.iter().find(|p| p.name == pod).ok_or_else(|| {
        CniError::new(code::UNKNOWN_CONTAINER, format!("the weft agent has no pod {pod} for this container"), "")
    })?;
    let failed = |m: String| CniError::new(code::CHECK_FAILED, m, "");
    // Every family the agent gave the pod an address of (the network's), IPv4 first.
    let given = info.addrs();
    if given.is_empty() {
        return Err(failed(format!("the agent lists no address for pod {pod}")));
    }
    let mut want = Vec::new();
    for a in &given {
        let (want_ip, want_len) = cni::prev_address(prev, &env.ifname, &netns, Family::of(a.ip))?;
        if (a.ip, a.prefix_len) != (want_ip, want_len) {
            return Err(failed(format!(
                "the agent gave {}/{} but prevResult says {want_ip}/{want_len}",
                a.ip, a.prefix_len
            )));
        }
        want.push((Family::of(a.ip), want_ip, want_len));
    }
    match weft_agent::netns_path::is_attached(pod, Path::new(&netns)) {
        Ok(true) => {}
        Ok(false) => return Err(failed(format!("the pod's namespace /run/netns/{pod} is not CNI_NETNS {netns}"))),
        Err(e) => {
            return Err(CniError::new(code::UNKNOWN_CONTAINER, format!("cannot open CNI_NETNS {netns}"), e.to_string()))
        }
    }
    let ifname = env.ifname.clone();
    let families: Vec<Family> = want.iter().map(|w| w.0).collect();
    let inside = in_netns_path(&netns, move || inspect(&ifname, &families))
        .map_err(|e| CniError::new(code::IO_FAILURE, "entering CNI_NETNS", e.to_string()))?
        .map_err(|e| CniError::new(code::IO_FAILURE, "inspecting the container interface", format!("{e:#}")))?;
    let Some((up, addrs, default_oif_ok)) = inside else {
        return Err(failed(format!("interface {} is missing in the container", env.ifname)));
    };
    if !up {
        return Err(failed(format!("interface {} is down", env.ifname)));
    }
    for (family, want_ip, want_len) in want {
        if !addrs.iter().any(|a| a.addr() == want_ip && a.prefix_len() == want_len) {
            return Err(failed(format!("interface {} lacks {want_ip}/{want_len} (has {addrs:?})", env.ifname)));
        }
        if !default_oif_ok.contains(&family) {
            let which = if family == Family::V4 { "" } else { "IPv6 " };
            return Err(failed(format!("the container's {which}default route does not leave through {}", env.ifname)));
        }
    }
    let host = info.host_veth.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "starting a runtime", e.to_string()))?;
    let link = rt
        .block_on(async { Netlink::open()?.link(&host).await })
        .map_err(|e| CniError::new(code::IO_FAILURE, "inspecting the host veth", format!("{e:#}")))?;
    match link {
        Some(l) if l.up && l.controller.is_some() => Ok(()),
        Some(_) => Err(failed(format!("host veth {host} is down or not on the bridge"))),
        None => Err(failed(format!("host veth {host} is missing"))),
    }
}

type Inside = Option<(bool, Vec<ipnet::IpNet>, Vec<Family>)>;

/// Inside the container (on a thread that entered it): the interface's state, its addresses,
/// and which of `families`' default routes leave through it.
fn inspect(ifname: &str, families: &[Family]) -> anyhow::Result<Inside> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let nl = Netlink::open()?;
        let Some(link) = nl.link(ifname).await? else { return Ok(None) };
        let addrs = nl.addrs(link.index).await?;
        let mut default_ok = Vec::new();
        for family in families {
            if nl.default_route_oif(*family).await? == Some(link.index) {
                default_ok.push(*family);
            }
        }
        Ok(Some((link.up, addrs, default_ok)))
    })
}

/// Runs `f` on a fresh thread that entered the network namespace at `path`.
fn in_netns_path<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    weft_agent::netns::run_in_file(std::fs::File::open(path)?, f)
}

/// The MAC address of `ifname` in the calling thread's namespace.
fn hwaddr(ifname: &str) -> std::io::Result<String> {
    use std::os::fd::AsRawFd;
    let (sock, mut req) = weft_agent::netns::ifreq(ifname)?;
    // SAFETY: valid socket and ifreq; SIOCGIFHWADDR fills ifr_hwaddr.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(data.iter().take(6).map(|b| format!("{:02x}", *b as u8)).collect::<Vec<_>>().join(":"))
}
