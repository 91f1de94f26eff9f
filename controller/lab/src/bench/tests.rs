//! Tests of the bench's parsers, rows and report (pure parts; the rows run in the lab tests).

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use weft_config::subnet::Family;
use weft_config::Backend;

/// `iperf3 -c 127.0.0.1 -t 2 -i 1 -J` (iperf 3.12) in a namespace of its own; only the
/// indentation (tabs) was changed.
const IPERF_SAMPLE: &str = r#"{
  "start": {
"connected": [{
    "socket": 5,
    "local_host": "127.0.0.1",
    "local_port": 52230,
    "remote_host": "127.0.0.1",
    "remote_port": 5201
  }],
"version": "iperf 3.12",
"system_info": "Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
"timestamp": {
  "time": "Sun, 22 Nov 2026 20:11:58 GMT",
  "timesecs": 1795378318
},
"connecting_to": {
  "host": "127.0.0.1",
  "port": 5201
},
"cookie": "t3qlc62bhecba4soqalqietm7wvvcmxw3ueb",
"tcp_mss_default": 32768,
"target_bitrate": 0,
"sock_bufsize": 0,
"sndbuf_actual": 16384,
"rcvbuf_actual": 131072,
"test_start": {
  "protocol": "TCP",
  "num_streams": 1,
  "blksize": 131072,
  "omit": 0,
  "duration": 2,
  "bytes": 0,
  "blocks": 0,
  "reverse": 0,
  "tos": 0,
  "target_bitrate": 0
}
  },
  "intervals": [{
  "streams": [{
      "socket": 5,
      "start": 0,
      "end": 1.02344,
      "seconds": 1.0234400033950806,
      "bytes": 1276641280,
      "bits_per_second": 9979217351.40287,
      "retransmits": 31,
      "snd_cwnd": 785796,
      "snd_wnd": 24953856,
      "rtt": 1753,
      "rttvar": 1301,
      "pmtu": 65535,
      "omitted": false,
      "sender": true
    }],
  "sum": {
    "start": 0,
    "end": 1.02344,
    "seconds": 1.0234400033950806,
    "bytes": 1276641280,
    "bits_per_second": 9979217351.40287,
    "retransmits": 31,
    "omitted": false,
    "sender": true
  }
}, {
  "streams": [{
      "socket": 5,
      "start": 1.02344,
      "end": 2.00018,
      "seconds": 0.976740002632141,
      "bytes": 1867776000,
      "bits_per_second": 15298040378.947723,
      "retransmits": 27,
      "snd_cwnd": 1178694,
      "snd_wnd": 24953856,
      "rtt": 116,
      "rttvar": 95,
      "pmtu": 65535,
      "omitted": false,
      "sender": true
    }],
  "sum": {
    "start": 1.02344,
    "end": 2.00018,
    "seconds": 0.976740002632141,
    "bytes": 1867776000,
    "bits_per_second": 15298040378.947723,
    "retransmits": 27,
    "omitted": false,
    "sender": true
  }
}],
  "end": {
"streams": [{
    "sender": {
      "socket": 5,
      "start": 0,
      "end": 2.00018,
      "seconds": 2.00018,
      "bytes": 3144417280,
      "bits_per_second": 12576537231.649153,
      "retransmits": 58,
      "max_snd_cwnd": 1178694,
      "max_snd_wnd": 24953856,
      "max_rtt": 1753,
      "min_rtt": 116,
      "mean_rtt": 934,
      "sender": true
    },
    "receiver": {
      "socket": 5,
      "start": 0,
      "end": 2.000202,
      "seconds": 2.00018,
      "bytes": 3144417280,
      "bits_per_second": 12576398903.710726,
      "sender": true
    }
  }],
"sum_sent": {
  "start": 0,
  "end": 2.00018,
  "seconds": 2.00018,
  "bytes": 3144417280,
  "bits_per_second": 12576537231.649153,
  "retransmits": 58,
  "sender": true
},
"sum_received": {
  "start": 0,
  "end": 2.000202,
  "seconds": 2.000202,
  "bytes": 3144417280,
  "bits_per_second": 12576398903.710726,
  "sender": true
},
"cpu_utilization_percent": {
  "host_total": 63.74483902967264,
  "host_user": 0.057341339809375,
  "host_system": 63.687447740961,
  "remote_total": 50.8486557992063,
  "remote_user": 0.644728435143699,
  "remote_system": 50.203927364062586
},
"sender_tcp_congestion": "bbr",
"receiver_tcp_congestion": "bbr"
  }
}"#;

#[test]
fn iperf_json() {
    let r = parse_iperf_json(IPERF_SAMPLE).expect("parse");
    assert_eq!(r.bits_per_second, 12576398903.710726);
    assert_eq!(r.retransmits, Some(58));
    assert_eq!(r.bytes, Some(3_144_417_280));
    assert!((r.gbps() - 12.5764).abs() < 1e-3);
    let e = parse_iperf_json(
        r#"{"start":{"connected":[]},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#,
    )
    .expect_err("error");
    assert_eq!(e, "iperf3: unable to connect to server: Connection refused");
    assert!(parse_iperf_json("").expect_err("empty").starts_with("iperf3 output is not JSON"));
    assert_eq!(
        parse_iperf_json(r#"{"end":{"sum_sent":{}}}"#).expect_err("missing"),
        "iperf3 output has no end.sum_received.bits_per_second"
    );
    let r = parse_iperf_json(r#"{"end":{"sum_received":{"bits_per_second":5e9}}}"#).expect("udp-like");
    assert_eq!(r, IperfResult { bits_per_second: 5e9, retransmits: None, bytes: None });
}

#[test]
fn ping_output() {
    let text = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
        64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.240 ms\n\
        64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.031 ms\n\
        64 bytes from 10.244.2.2: icmp_seq=3 ttl=62 time=0.040 ms\n\
        64 bytes from 10.244.2.2: icmp_seq=4 ttl=62 time=1.05 ms\n\
        \n--- 10.244.2.2 ping statistics ---\n\
        5 packets transmitted, 4 received, 20% packet loss, time 211ms\n\
        rtt min/avg/max/mdev = 0.031/0.340/1.050/0.412 ms\n";
    let s = parse_ping(text).expect("parse");
    assert_eq!((s.transmitted, s.received), (5, 4));
    assert_eq!(s.times_ms, vec![0.240, 0.031, 0.040, 1.05]);
    assert_eq!(s.median_ms(), Some((0.040 + 0.240) / 2.0));
    let lost = "PING 10.9.9.9 (10.9.9.9) 56(84) bytes of data.\n\n--- 10.9.9.9 ping statistics ---\n\
        3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2046ms\n";
    let s = parse_ping(lost).expect("parse");
    assert_eq!((s.transmitted, s.received, s.median_ms()), (3, 0, None));
    assert!(parse_ping("ping: connect: Network is unreachable\n").is_err());
}

#[test]
fn paths() {
    let peer = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 12));
    let gw = "10.244.2.2 via 172.30.0.12 dev eth0 src 172.30.0.11 uid 0 \\    cache";
    assert_eq!(check_path(Backend::HostGw, gw, peer), Ok(()));
    let e = check_path(Backend::Quic, gw, peer).expect_err("not quic");
    assert!(e.contains("over the underlay instead of through the quic tun"), "{e}");
    let tun = "10.244.2.2 dev weft-tun0 src 10.244.1.1 uid 0 \\    cache";
    assert_eq!(check_path(Backend::Quic, tun, peer), Ok(()));
    assert!(check_path(Backend::HostGw, tun, peer).expect_err("not host-gw").contains("not via 172.30.0.12"));
    let default = "10.244.2.2 via 172.30.0.1 dev eth0 src 172.30.0.11 uid 0";
    assert!(check_path(Backend::Quic, default, peer).is_err());
    assert!(check_path(Backend::HostGw, default, peer).is_err());
    let vx = "10.244.2.2 via 10.244.2.0 dev weft-vxlan src 10.244.1.0 uid 0 \\    cache";
    assert_eq!(check_path(Backend::Vxlan, vx, peer), Ok(()));
    assert!(check_path(Backend::Vxlan, gw, peer).expect_err("not vxlan").contains("not through a weft-vxlan device"));
    assert!(check_path(Backend::Quic, tun, peer).is_ok() && check_path(Backend::Vxlan, tun, peer).is_err());
}

#[test]
fn medians() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
}

#[test]
fn proc_files() {
    let status = "Name:\tweft-agent\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 8000 kB\n";
    assert_eq!(parse_vm_rss_kib(status), Some(12345));
    assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    assert!(vm_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
        \x20  0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
        \x20  1: 0100007F:CB46 0100007F:1451 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
    assert!(tcp_listening(tcp, 5201));
    assert!(!tcp_listening(tcp, 52038), "an established socket is not listening");
    let tcp6 = "  sl  local_address                         remote_address                        st\n\
        \x20  0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 0\n";
    assert!(tcp_listening(tcp6, 5201));
    assert!(!tcp_listening(tcp6, 5202));
    let cpu = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\n";
    assert_eq!(parse_cpu_model(cpu).as_deref(), Some("Intel(R) Xeon(R) Processor @ 2.80GHz"));
    assert_eq!(parse_cpu_model("processor\t: 0\n"), None);
}

#[test]
fn proc_stat_cpu_ticks() {
    // A command name with spaces and parentheses, even ") S 1 2": fields count from the last ')'.
    let tricky = "4242 (a) S 1 (x) y) R 1 4242 4242 0 -1 4194560 812 0 0 0 137 45 7 9 20 0 6 0 9876 12345 678";
    assert_eq!(parse_stat_ticks(tricky), Some(182), "utime 137 + stime 45; cutime and cstime not counted");
    let plain = "17 (wireguard-go) S 1 17 17 0 -1 4194560 3 0 0 0 0 0 0 0 20 0 9 0 555 1000 200";
    assert_eq!(parse_stat_ticks(plain), Some(0));
    let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    assert!(parse_stat_ticks(&own).is_some(), "{own}");
    assert_eq!(parse_stat_ticks("17 (x) S 1 17 17 0 -1 4194560 3 0 0 0 abc 1"), None);
    assert_eq!(parse_stat_ticks("17 (x) S 1"), None, "cut short");
    assert_eq!(parse_stat_ticks("17 no parenthesis S 1 2 3 4 5 6 7 8 9 10 11 12 13"), None);
}

#[test]
fn cpu_per_gigabyte() {
    let span = |side, before, after| TickSpan { side, before, after };
    // Two sender processes (an agent and a helper) and one receiver, ticks of 1/100 s.
    let spans = [
        span(Side::Sender, Some(100), Some(350)),
        span(Side::Sender, Some(5), Some(55)),
        span(Side::Receiver, Some(1000), Some(1150)),
    ];
    let cpu = RunCpu::from_ticks(&spans, 100.0, Some(2_000_000_000));
    assert_eq!((cpu.sender_s, cpu.receiver_s), (Some(3.0), Some(1.5)));
    assert_eq!((cpu.sender_s_per_gb(), cpu.receiver_s_per_gb()), (Some(1.5), Some(0.75)));
    // A process that could not be read (it exited) leaves its side without a figure; so does
    // a count that went down (the pid is another process) and a side without processes.
    let gone = RunCpu::from_ticks(
        &[span(Side::Sender, Some(1), None), span(Side::Receiver, Some(9), Some(8))],
        100.0,
        Some(1),
    );
    assert_eq!((gone.sender_s, gone.receiver_s), (None, None));
    let one = RunCpu::from_ticks(&[span(Side::Receiver, Some(0), Some(0))], 100.0, Some(5_000_000_000));
    assert_eq!((one.sender_s, one.receiver_s, one.receiver_s_per_gb()), (None, Some(0.0), Some(0.0)));
    // Nothing moved, or no byte count: no figure.
    assert_eq!(cpu_s_per_gb(Some(1.0), Some(0)), None);
    assert_eq!(cpu_s_per_gb(Some(1.0), None), None);
    assert_eq!(cpu_s_per_gb(None, Some(1)), None);
    assert_eq!(cpu_s_per_gb(Some(0.5), Some(250_000_000)), Some(2.0));
}

#[test]
fn dates() {
    assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339_utc(1_795_378_318), "2026-11-22T20:11:58Z");
    assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
}

#[test]
fn rows_flag() {
    let k = RowKind::Kernel;
    assert_eq!(parse_rows("host-gw,quic", false).expect("ok"), vec![k, RowKind::HostGw, RowKind::Quic]);
    assert_eq!(parse_rows("quic, kernel,quic", false).expect("ok"), vec![k, RowKind::Quic]);
    assert_eq!(parse_rows("", false).expect("ok"), vec![k]);
    assert_eq!(
        parse_rows("quinn-raw,boringtun", false).expect("ok"),
        vec![k, RowKind::QuinnRaw, RowKind::PeerTunnel(PeerTunnel::Boringtun)]
    );
    let all = parse_rows("quic,boringtun", true).expect("ok");
    assert_eq!(
        all,
        vec![
            k,
            RowKind::Quic,
            RowKind::PeerTunnel(PeerTunnel::Boringtun),
            RowKind::PeerTunnel(PeerTunnel::Quincy),
            RowKind::PeerTunnel(PeerTunnel::WireguardGo),
            RowKind::PeerTunnel(PeerTunnel::WireguardGo2022)
        ]
    );
    assert_eq!(
        parse_rows("quic,wireguard-go,wireguard-go-2022", false).expect("ok"),
        vec![
            k,
            RowKind::Quic,
            RowKind::PeerTunnel(PeerTunnel::WireguardGo),
            RowKind::PeerTunnel(PeerTunnel::WireguardGo2022)
        ]
    );
    assert_eq!(parse_rows("vxlan,kernel-vxlan", false).expect("ok"), vec![k, RowKind::Vxlan, RowKind::KernelVxlan]);
    let e = parse_rows("host-gw,ipip", false).expect_err("bad");
    assert_eq!(
        e.to_string(),
        "--backends: expected one of kernel, host-gw, quic, kernel-vxlan, vxlan, quinn-raw, quincy, wireguard-go, \
         wireguard-go-2022, boringtun, found \"ipip\""
    );
}

#[test]
fn options_are_checked() {
    let ok = BenchOpts {
        id: "b1".into(),
        seconds: 10,
        pings: 50,
        rows: vec![RowKind::Kernel],
        ip_family: IpFamily::V4,
        parallel: 4,
        agent_bin: None,
        weftctl_bin: None,
        ready_timeout_secs: 60,
        quic_threads: None,
    };
    assert!(ok.validate().is_ok());
    let e = BenchOpts { seconds: 0, ..ok.clone() }.validate().expect_err("bad");
    assert_eq!(e.to_string(), "--seconds: expected 1 to 600, found 0");
    let e = BenchOpts { pings: 0, ..ok.clone() }.validate().expect_err("bad");
    assert_eq!(e.to_string(), "--pings: expected 1 to 10000, found 0");
    let e = BenchOpts { id: "B".into(), ..ok }.validate().expect_err("bad");
    assert!(e.to_string().starts_with("--id: "), "{e}");
}

fn measured(gbps: f64, rtt: f64, rss: &[u64]) -> anyhow::Result<Measurement> {
    // 10 s at `gbps`; rows with processes: the sender spent 2 s of CPU per GB, the receiver 1 s.
    let bytes = (gbps * 1e9 / 8.0 * 10.0).round() as u64;
    let gb = gbps / 8.0 * 10.0;
    Ok(Measurement {
        iperf: IperfResult { bits_per_second: gbps * 1e9, retransmits: Some(3), bytes: Some(bytes) },
        iperf_parallel: Some(IperfResult { bits_per_second: gbps * 1.1e9, retransmits: Some(4), bytes: None }),
        idle_cpu_pct: Some(0.2),
        ping: PingSummary { transmitted: 3, received: 3, times_ms: vec![rtt, rtt, rtt * 2.0] },
        rss: rss
            .iter()
            .enumerate()
            .map(|(i, &k)| RssPeak { name: format!("n{}", i + 1), pid: 100, start_kib: Some(k / 2), peak_kib: Some(k) })
            .collect(),
        path: None,
        cpu: (!rss.is_empty()).then_some(RunCpu { sender_s: Some(2.0 * gb), receiver_s: Some(gb), bytes: Some(bytes) }),
        program: None,
    })
}

fn sample_rows() -> Vec<RowResult> {
    let mut rows = vec![
        RowResult::new("kernel", measured(20.0, 0.040, &[])),
        RowResult::new("host-gw", measured(19.0, 0.050, &[10_240, 12_800])),
        RowResult::new("quic", Err(anyhow::anyhow!("building lab b1: agent of n1 exited\nlast lines of log"))),
    ];
    fill_ratios(&mut rows);
    rows
}

#[test]
fn ratios() {
    let rows = sample_rows();
    assert_eq!(rows[0].gbps_vs_kernel, Some(1.0));
    assert_eq!(rows[1].gbps_vs_kernel, Some(0.95));
    assert!((rows[1].rtt_vs_kernel.expect("ratio") - 1.25).abs() < 1e-9);
    assert_eq!((rows[2].gbps_vs_kernel, rows[2].rtt_vs_kernel), (None, None));
    assert_eq!(rows[1].max_rss_kib(), Some(12_800));
    let mut no_kernel = vec![RowResult::new("host-gw", measured(19.0, 0.05, &[]))];
    fill_ratios(&mut no_kernel);
    assert_eq!(no_kernel[0].gbps_vs_kernel, None);
}

#[test]
fn table() {
    let t = render_table(&sample_rows());
    let want = "\
row      Gbit/s  x kernel  -P N Gbit/s  RTT ms  x kernel  RSS MiB  idle CPU %  snd CPU s/GB  rcv CPU s/GB  error
kernel    20.00      1.00        22.00   0.040      1.00        -         0.2             -             -
host-gw   19.00      0.95        20.90   0.050      1.25     12.5         0.2          2.00          1.00
quic          -         -            -       -         -        -           -             -             -  building lab b1: agent of n1 exited
";
    assert_eq!(t, want, "\n{t}");
    let report = BenchReport {
        machine: Machine {
            nproc: 2,
            kernel: "6.18.44".into(),
            cpu_model: "Xeon".into(),
            date: "2026-11-22T20:11:58Z".into(),
            iperf3: "iperf 3.12".into(),
            loadavg: "0.10 0.20 0.30".into(),
        },
        command: "weftctl lab bench --backends host-gw,quic".into(),
        agent_bin: None,
        seconds: 10,
        pings: 50,
        ping_interval_s: PING_INTERVAL_S,
        parallel: 4,
        ip_family: IpFamily::V4,
        rows: sample_rows(),
        notes: Vec::new(),
    };
    assert!(!report.all_ok());
    let full = render(&report);
    assert!(
        full.starts_with("2 cores, Xeon, Linux 6.18.44, 2026-11-22T20:11:58Z (load 0.10 0.20 0.30); iperf3 1 TCP"),
        "{full}"
    );
    assert!(full.ends_with("\nquic failed: building lab b1: agent of n1 exited\nlast lines of log\n"), "{full}");
    let md = render_markdown(&report);
    assert!(
        md.contains(
            "| row | Gbit/s | × kernel | -P 4 Gbit/s | RTT median ms | × kernel | RSS peak MiB | idle CPU % \
             | sender CPU s/GB | receiver CPU s/GB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        ),
        "{md}"
    );
    assert!(md.contains("| host-gw | 19.00 | 0.95 | 20.90 | 0.050 | 1.25 | 12.5 | 0.2 | 2.00 | 1.00 |\n"), "{md}");
    assert!(md.contains("| kernel | 20.00 | 1.00 | 22.00 | 0.040 | 1.00 | - | 0.2 | - | - |\n"), "{md}");
    assert!(md.contains("| quic | failed: building lab b1: agent of n1 exited | | | | | | | | |\n"), "{md}");
    let json: serde_json::Value = serde_json::to_value(&report).expect("json");
    assert_eq!(json["rows"][1]["gbps"], 19.0);
    assert_eq!(json["rows"][1]["sender_cpu_s_per_gb"], 2.0);
    assert_eq!(json["rows"][1]["receiver_cpu_s_per_gb"], 1.0);
    assert_eq!(json["rows"][1]["cpu"]["bytes"], 23_750_000_000u64);
    assert!(json["rows"][0]["sender_cpu_s_per_gb"].is_null(), "no process watched in the kernel row");
    assert_eq!(json["rows"][1]["agent_rss"][1]["peak_kib"], 12_800);
    assert_eq!(json["machine"]["nproc"], 2);
}

#[test]
fn targets_compare_quic_with_the_other_rows_of_the_run() {
    let mut rows = vec![
        RowResult::new("kernel", measured(10.0, 0.1, &[])),
        RowResult::new("quic", measured(2.0, 0.4, &[])),
        RowResult::new("quinn-raw", measured(2.5, 0.1, &[])),
        RowResult::new("quincy", measured(0.8, 0.9, &[])),
        RowResult::new("wireguard-go", measured(0.25, 0.3, &[])),
        RowResult::new("boringtun", Err(anyhow::anyhow!("down"))),
    ];
    rows[1].gbps_parallel = Some(1.9);
    let t = targets(&rows);
    let got: Vec<(&str, String, bool)> =
        t.iter().map(|t| (t.what.as_str(), format!("{:.2}", t.value), t.met)).collect();
    assert_eq!(
        got,
        vec![
            ("quic / quincy >= 2", "2.50".to_string(), true),
            ("quic / best WireGuard > 1", "8.00".to_string(), true),
            ("quic / quinn-raw >= 0.8", "0.80".to_string(), true),
            ("quic -P N / quic 1 stream >= 1", "0.95".to_string(), false),
            ("quic RTT - best peer RTT <= 0 ms", "0.10".to_string(), false),
        ]
    );
    assert!(render_targets(&rows).contains("target quic RTT - best peer RTT <= 0 ms: 0.10 NOT met\n"));
    // Without a quic row (or with a failed one) there is nothing to compare.
    assert!(targets(&rows[2..]).is_empty());
}

#[test]
fn commands_time_out_and_collect_output() {
    let out = run_timeout(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        None,
        Duration::from_secs(5),
        "sh",
    )
    .expect("ran");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()),
        (Some(3), &b"out\n"[..], &b"err\n"[..])
    );
    let out = run_timeout(&mut Command::new("cat"), Some(b"fed"), Duration::from_secs(5), "cat").expect("ran");
    assert_eq!(out.stdout, b"fed");
    let started = Instant::now();
    let e = run_timeout(Command::new("sleep").arg("10"), None, Duration::from_millis(200), "sleep").expect_err("slow");
    assert_eq!(e.to_string(), "sleep: no result within 0.2 s, killed");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn rss_sampling_sees_this_process() {
    let me = std::process::id();
    let (v, peaks) = with_rss_sampling(&[("self".into(), me)], Duration::from_millis(5), || {
        std::thread::sleep(Duration::from_millis(30));
        7
    });
    assert_eq!(v, 7);
    assert_eq!(peaks.len(), 1);
    assert!(peaks[0].peak_kib >= peaks[0].start_kib && peaks[0].peak_kib.is_some(), "{peaks:?}");
    let (_, none) = with_rss_sampling(&[], RSS_EVERY, || ());
    assert!(none.is_empty());
}

#[test]
fn host_pair_addresses() {
    assert_eq!(HostPair::underlay_ip(2), Ipv4Addr::new(192, 168, 100, 2));
    assert_eq!(HostPair::pod_ip(1), Ipv4Addr::new(10, 244, 1, 2));
    assert_eq!(HostPair::gateway(2), Ipv4Addr::new(10, 244, 2, 1));
    assert_eq!(HostPair::pod_subnet(2), "10.244.2.0/24");
    let names = LabNames::new("b7").expect("id");
    let pair = HostPair { prefix: names.prefix(), made: Vec::new(), v6: false };
    assert_eq!(pair.endpoints().client_ns, "weftb7-kc1");
    assert_eq!(pair.host_ns(2), "weftb7-kh2");
    assert!(names.owns_ns(&pair.underlay_ns()), "lab down removes what a crashed bench left");
}

/// `weftctl lab bench` arguments as clap parses them.
#[derive(clap::Parser, Debug)]
struct BenchCli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench_args(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    use clap::Parser;
    BenchCli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
}

#[test]
fn ip_family_flag() {
    assert_eq!(bench_args(&[]).expect("defaults").ip_family, IpFamily::V4, "IPv4 rows only, as before");
    for (arg, want) in [("v4", IpFamily::V4), ("v6", IpFamily::V6), ("dual", IpFamily::Dual)] {
        assert_eq!(bench_args(&["--ip-family", arg]).expect(arg).ip_family, want);
    }
    let e = bench_args(&["--ip-family", "ipv6"]).expect_err("bad family").to_string();
    assert!(e.contains("expected v4, v6 or dual, found \"ipv6\""), "{e}");
    let e = bench_args(&["--scale", "10", "--ip-family", "dual"]).expect_err("scale is IPv4").to_string();
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn rows_per_family() {
    let rows = parse_rows("host-gw,quic,quinn-raw,boringtun", false).expect("rows");
    let v4 = [Family::V4].to_vec();
    let both = [Family::V4, Family::V6].to_vec();
    let planned = |kinds: &[(RowKind, &Vec<Family>)]| -> Vec<PlannedRow> {
        kinds.iter().map(|(kind, families)| PlannedRow { kind: *kind, families: families.to_vec() }).collect()
    };
    // v4: every row once, over IPv4, no notes (the report of before).
    let (p, notes) = plan_rows(&rows, IpFamily::V4);
    assert_eq!(p, rows.iter().map(|&kind| PlannedRow { kind, families: v4.clone() }).collect::<Vec<_>>());
    assert!(notes.is_empty());
    // dual: kernel and the lab rows over both families, the others over IPv4 with a note.
    let boringtun = RowKind::PeerTunnel(PeerTunnel::Boringtun);
    let (p, notes) = plan_rows(&rows, IpFamily::Dual);
    assert_eq!(
        p,
        planned(&[
            (RowKind::Kernel, &both),
            (RowKind::HostGw, &both),
            (RowKind::Quic, &both),
            (RowKind::QuinnRaw, &v4),
            (boringtun, &v4)
        ])
    );
    assert_eq!(notes, vec!["no IPv6 rows for quinn-raw, boringtun (IPv4 only in the bench): measured over IPv4 only"]);
    // v6: the IPv4-only rows are left out.
    let v6 = [Family::V6].to_vec();
    let (p, notes) = plan_rows(&rows, IpFamily::V6);
    assert_eq!(p, planned(&[(RowKind::Kernel, &v6), (RowKind::HostGw, &v6), (RowKind::Quic, &v6)]));
    assert_eq!(notes, vec!["no IPv6 rows for quinn-raw, boringtun (IPv4 only in the bench): left out"]);
    assert!(plan_rows(&[RowKind::Kernel, RowKind::Quic], IpFamily::Dual).1.is_empty());
    // One lab per backend holds every family of its rows.
    assert_eq!(lab_family(&both), IpFamily::Dual);
    assert_eq!(lab_family(&v6), IpFamily::V6);
    assert_eq!(lab_family(&v4), IpFamily::V4);
}

#[test]
fn row_names_per_family() {
    assert_eq!(RowKind::HostGw.name_in(Family::V4), "host-gw");
    assert_eq!(RowKind::HostGw.name_in(Family::V6), "host-gw/ipv6");
    assert_eq!(RowKind::Kernel.name_in(Family::V6), "kernel/ipv6");
    assert_eq!(RowKind::Quic.name_in(Family::V6), "quic/ipv6");
    let with_v6: Vec<&str> = RowKind::ALL.iter().filter(|r| r.has_ipv6()).map(|r| r.name()).collect();
    assert_eq!(with_v6, ["kernel", "host-gw", "quic", "vxlan"], "kernel-vxlan is IPv4 only");
}

#[test]
fn ipv6_commands_and_paths() {
    let v6: IpAddr = "fd00:10:244:2::2".parse().expect("address");
    assert_eq!(family_args(v6), ["-6"]);
    assert!(family_args(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2))).is_empty(), "IPv4 command lines unchanged");
    let peer: IpAddr = "fd00:172:30::12".parse().expect("address");
    let gw =
        "fd00:10:244:2::2 from :: via fd00:172:30::12 dev eth0 proto 213 src fd00:172:30::11 metric 1024 pref medium";
    assert_eq!(check_path(Backend::HostGw, gw, peer), Ok(()));
    assert!(check_path(Backend::Quic, gw, peer).is_err());
    let tun = "fd00:10:244:2::2 from :: dev weft-tun0 proto 213 src fd00:10:244:1::1 metric 1024 pref medium";
    assert_eq!(check_path(Backend::Quic, tun, peer), Ok(()));
    assert!(check_path(Backend::HostGw, tun, peer).expect_err("not host-gw").contains("not via fd00:172:30::12"));
}

#[test]
fn host_pair_ipv6_addresses() {
    assert_eq!(HostPair::underlay_ip6(2), "fd00:192:168:100::2".parse::<Ipv6Addr>().expect("address"));
    assert_eq!(HostPair::gateway6(1), "fd00:10:244:1::1".parse::<Ipv6Addr>().expect("address"));
    assert_eq!(HostPair::pod_ip6(2), "fd00:10:244:2::2".parse::<Ipv6Addr>().expect("address"));
    assert_eq!(HostPair::pod_subnet6(2), "fd00:10:244:2::/64");
    let names = LabNames::new("b7").expect("id");
    let dual = HostPair { prefix: names.prefix(), made: Vec::new(), v6: true };
    let ep = dual.endpoints_in(Family::V6).expect("IPv6");
    assert_eq!((ep.client_ns.as_str(), ep.server_ip), ("weftb7-kc1", IpAddr::V6(HostPair::pod_ip6(2))));
    assert_eq!(dual.endpoints_in(Family::V4).expect("IPv4"), dual.endpoints());
    let v4 = HostPair { prefix: names.prefix(), made: Vec::new(), v6: false };
    let e = v4.endpoints_in(Family::V6).expect_err("no IPv6");
    assert_eq!(e.to_string(), "the host pair weftb7-k* has no IPv6 addresses");
}

fn dual_rows() -> Vec<RowResult> {
    let mut rows = vec![
        RowResult::new("kernel", measured(20.0, 0.040, &[])),
        RowResult::in_family("kernel/ipv6", Family::V6, measured(10.0, 0.050, &[])),
        RowResult::new("host-gw", measured(19.0, 0.050, &[10_240, 12_800])),
        RowResult::in_family("host-gw/ipv6", Family::V6, measured(9.0, 0.100, &[10_240, 12_800])),
        RowResult::in_family("quic/ipv6", Family::V6, Err(anyhow::anyhow!("no reply"))),
    ];
    fill_ratios(&mut rows);
    rows
}

#[test]
fn ipv6_rows_compare_with_the_ipv6_kernel_row() {
    let rows = dual_rows();
    assert_eq!(rows[0].gbps_vs_kernel, Some(1.0));
    assert_eq!(rows[1].gbps_vs_kernel, Some(1.0));
    assert_eq!(rows[2].gbps_vs_kernel, Some(0.95));
    assert_eq!(rows[3].gbps_vs_kernel, Some(0.9));
    assert!((rows[3].rtt_vs_kernel.expect("ratio") - 2.0).abs() < 1e-9);
    // Without an IPv6 kernel row (or a failed one) the IPv6 rows have no ratios.
    let mut no_v6_kernel = vec![
        RowResult::new("kernel", measured(20.0, 0.040, &[])),
        RowResult::in_family("kernel/ipv6", Family::V6, Err(anyhow::anyhow!("down"))),
        RowResult::in_family("host-gw/ipv6", Family::V6, measured(9.0, 0.1, &[])),
    ];
    fill_ratios(&mut no_v6_kernel);
    assert_eq!((no_v6_kernel[2].gbps_vs_kernel, no_v6_kernel[2].rtt_vs_kernel), (None, None));
    assert_eq!(no_v6_kernel[0].gbps_vs_kernel, Some(1.0));
}

#[test]
fn reports_with_ipv6_rows() {
    let report = BenchReport {
        machine: Machine {
            nproc: 2,
            kernel: "6.18.44".into(),
            cpu_model: "Xeon".into(),
            date: "2026-11-30T15:00:00Z".into(),
            iperf3: "iperf 3.12".into(),
            loadavg: "1.10 1.20 1.30".into(),
        },
        command: "weftctl lab bench --backends host-gw,quic,quinn-raw --ip-family dual".into(),
        agent_bin: None,
        seconds: 5,
        pings: 50,
        ping_interval_s: PING_INTERVAL_S,
        parallel: 4,
        ip_family: IpFamily::Dual,
        rows: dual_rows(),
        notes: vec!["no IPv6 rows for quinn-raw (IPv4 only in the bench): measured over IPv4 only".into()],
    };
    let t = render(&report);
    let want_table = "\
row           Gbit/s  x kernel  -P N Gbit/s  RTT ms  x kernel  RSS MiB  idle CPU %  snd CPU s/GB  rcv CPU s/GB  error
kernel         20.00      1.00        22.00   0.040      1.00        -         0.2             -             -
kernel/ipv6    10.00      1.00        11.00   0.050      1.00        -         0.2             -             -
host-gw        19.00      0.95        20.90   0.050      1.25     12.5         0.2          2.00          1.00
host-gw/ipv6    9.00      0.90         9.90   0.100      2.00     12.5         0.2          2.00          1.00
quic/ipv6          -         -            -       -         -        -           -             -             -  no reply
";
    assert!(t.contains(want_table), "\n{t}");
    assert!(
        t.starts_with(
            "2 cores, Xeon, Linux 6.18.44, 2026-11-30T15:00:00Z (load 1.10 1.20 1.30); iperf3 1 TCP stream 5 s, \
             ping median of 50 every 0.05 s; pods over IPv4, then IPv6 in the same topology (rows ROW and \
             ROW/ipv6, x kernel against the kernel row of the same family)\n\n"
        ),
        "{t}"
    );
    assert!(
        t.contains("\nnote: no IPv6 rows for quinn-raw (IPv4 only in the bench): measured over IPv4 only\n"),
        "{t}"
    );
    assert!(t.ends_with("\nquic/ipv6 failed: no reply\n"), "{t}");
    let md = render_markdown(&report);
    assert!(md.contains("| host-gw/ipv6 | 9.00 | 0.90 | 9.90 | 0.100 | 2.00 | 12.5 | 0.2 | 2.00 | 1.00 |\n"), "{md}");
    assert!(md.contains("at the start; pods over IPv4, then IPv6"), "{md}");
    assert!(md.contains("ROW/ipv6, × kernel against"), "{md}");
    assert!(md.contains("\nnote: no IPv6 rows for quinn-raw"), "{md}");

    // JSON: the family per row and the run's --ip-family, beside the fields of before.
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["ip_family"], "dual");
    assert_eq!(json["rows"][0]["family"], "ipv4");
    assert_eq!(
        (json["rows"][3]["row"].as_str(), json["rows"][3]["family"].as_str()),
        (Some("host-gw/ipv6"), Some("ipv6"))
    );
    assert_eq!(json["rows"][3]["gbps"], 9.0);
    assert_eq!(json["notes"][0], report.notes[0].as_str());
    let back: BenchReport = serde_json::from_value(json.clone()).expect("read back");
    assert_eq!(back, report);

    // A report written before IPv6 rows (no family, no ip_family, no notes) and before the
    // CPU figures and programs reads as IPv4, without them.
    let mut old = json;
    for r in old["rows"].as_array_mut().expect("rows") {
        let r = r.as_object_mut().expect("row");
        for key in ["family", "sender_cpu_s_per_gb", "receiver_cpu_s_per_gb", "cpu", "program"] {
            r.remove(key);
        }
    }
    let obj = old.as_object_mut().expect("report");
    obj.remove("ip_family");
    obj.remove("notes");
    let back: BenchReport = serde_json::from_value(old).expect("old report");
    assert_eq!(back.ip_family, IpFamily::V4);
    assert!(back.notes.is_empty() && back.rows.iter().all(|r| r.family == Family::V4));
    assert!(back.rows.iter().all(|r| r.sender_cpu_s_per_gb.is_none() && r.cpu.is_none() && r.program.is_none()));
}

#[test]
fn peer_programs_are_printed_once_under_the_table() {
    let mut rows = vec![
        RowResult::new("kernel", measured(10.0, 0.1, &[])),
        RowResult::new("wireguard-go", measured(1.5, 0.7, &[40_000, 40_000])),
        RowResult::new("wireguard-go-2022", measured(0.4, 0.6, &[40_000, 40_000])),
    ];
    rows[1].program =
        Some("/usr/local/bin/wireguard-go -> /usr/local/lib/x/wireguard-go (wireguard-go v0.0.20230223)".into());
    rows[2].program = Some("/usr/bin/wireguard-go (wireguard-go v0.0.20220316)".into());
    let report = BenchReport {
        machine: Machine {
            nproc: 2,
            kernel: "6.18.44".into(),
            cpu_model: "Xeon".into(),
            date: "2026-12-01T10:00:00Z".into(),
            iperf3: "iperf 3.12".into(),
            loadavg: "1.00 1.00 1.00".into(),
        },
        command: "weftctl lab bench --backends wireguard-go,wireguard-go-2022".into(),
        agent_bin: None,
        seconds: 3,
        pings: 50,
        ping_interval_s: PING_INTERVAL_S,
        parallel: 4,
        ip_family: IpFamily::V4,
        rows,
        notes: Vec::new(),
    };
    let programs = "\nprogram of wireguard-go: /usr/local/bin/wireguard-go -> /usr/local/lib/x/wireguard-go \
                    (wireguard-go v0.0.20230223)\n\
                    program of wireguard-go-2022: /usr/bin/wireguard-go (wireguard-go v0.0.20220316)\n";
    let t = render(&report);
    assert!(t.ends_with(programs), "{t}");
    assert!(render_markdown(&report).ends_with(programs));
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["rows"][2]["program"], "/usr/bin/wireguard-go (wireguard-go v0.0.20220316)");
    assert!(json["rows"][0]["program"].is_null());
}

#[test]
fn cpu_per_gigabyte_is_held_against_the_thriftiest_current_wireguard_on_each_side() {
    let mut rows = vec![
        RowResult::new("quic", measured(2.0, 0.5, &[])),
        RowResult::new("wireguard-go", measured(1.6, 0.7, &[])),
        RowResult::new("boringtun", measured(0.5, 0.4, &[])),
        RowResult::new("wireguard-go-2022", measured(0.35, 0.4, &[])),
    ];
    for (r, snd, rcv) in [(0, 1.5, 2.5), (1, 2.0, 3.0), (2, 4.0, 2.0), (3, 0.1, 0.1)] {
        rows[r].sender_cpu_s_per_gb = Some(snd);
        rows[r].receiver_cpu_s_per_gb = Some(rcv);
    }
    let got: Vec<(String, String, bool)> = targets(&rows)
        .iter()
        .filter(|t| t.what.contains("CPU"))
        .map(|t| (t.what.clone(), format!("{:.2}", t.value), t.met))
        .collect();
    assert_eq!(
        got,
        vec![
            ("quic sender CPU/GB / best WireGuard's < 1".to_string(), "0.75".to_string(), true),
            ("quic receiver CPU/GB / best WireGuard's < 1".to_string(), "1.25".to_string(), false),
        ],
        "wireguard-go-2022 is no target; the lowest current figure of each side is"
    );
}

#[test]
fn the_2022_wireguard_go_is_no_target() {
    // Its figures only keep older reports comparable: quic is held against the current peers.
    let rows = vec![
        RowResult::new("quic", measured(2.0, 0.5, &[])),
        RowResult::new("wireguard-go", measured(1.6, 0.7, &[])),
        RowResult::new("wireguard-go-2022", measured(0.35, 0.4, &[])),
    ];
    let got: Vec<(String, String)> =
        targets(&rows).iter().map(|t| (t.what.clone(), format!("{:.2}", t.value))).collect();
    assert_eq!(
        got,
        vec![
            ("quic / best WireGuard > 1".to_string(), "1.25".to_string()),
            ("quic -P N / quic 1 stream >= 1".to_string(), "1.10".to_string()),
            ("quic RTT - best peer RTT <= 0 ms".to_string(), "-0.20".to_string()),
        ]
    );
}
