//! Per-packet work of the quic data path, without devices or sockets: header validation, the
//! peer lookup, the tun offload (GSO split of what the kernel hands over, GRO coalescing of what
//! is written back, both done by tun-rs in user space) and the copy into the sender's arena.
//!
//! `cargo bench -p weft-agent --bench datapath -- --warm-up-time 1 --measurement-time 3`
//!
//! Every benchmark sets its throughput in packets (elements), so criterion reports packets/s.
//! Packets are full-size for a 1434-byte tun MTU (1500-byte underlay): IPv4 (20) + TCP with
//! timestamps (32) + 1382 bytes of payload.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};
use weft_agent::quic::packet::{check_inbound, outbound_dst, Prefix, SubnetTable};

/// The tun MTU on a 1500-byte underlay (`tun_mtu_for(1500)`).
const PKT: usize = 1434;
const IP_HDR: usize = 20;
/// TCP header with the timestamp option (what Linux sends by default).
const TCP_HDR: usize = 32;
/// Payload of a full-size segment: the MSS minus the timestamp option.
const MSS: usize = PKT - IP_HDR - TCP_HDR;
/// The sender's packet arena (`ARENA` in agent/src/quic/mod.rs).
const ARENA: usize = 2 << 20;
/// Datagrams written to the tun together (`RX_BATCH` in agent/src/quic/mod.rs).
const RX_BATCH: usize = 64;

const FLAG_ACK: u8 = 0x10;

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// Ones' complement sum of `data` added to `sum`, not folded.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP packet (ACK, timestamps option) with `payload_len` bytes of payload and valid IP
/// and TCP checksums, as a pod would send it (GRO checks the checksums before coalescing).
/// `id` is the IPv4 identification (consecutive within a flow).
fn build_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, id: u16, seq: u32, payload_len: usize) -> Vec<u8> {
    let total = IP_HDR + TCP_HDR + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("fits an IPv4 packet").to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_csum = fold(sum16(&p[..IP_HDR], 0));
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());

    let t = IP_HDR;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
    p[t + 12] = ((TCP_HDR / 4) as u8) << 4;
    p[t + 13] = FLAG_ACK;
    p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
    // NOP, NOP, timestamps (kind 8, length 10, value, echo reply)
    p[t + 20..t + 24].copy_from_slice(&[1, 1, 8, 10]);
    p[t + 24..t + 28].copy_from_slice(&1000u32.to_be_bytes());
    p[t + 28..t + 32].copy_from_slice(&900u32.to_be_bytes());
    for (i, b) in p[t + TCP_HDR..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let tcp_len = u32::try_from(total - IP_HDR).expect("fits");
    let pseudo = sum16(&p[12..20], 6 + tcp_len);
    let tcp_csum = fold(sum16(&p[t..], pseudo));
    p[t + 16..t + 18].copy_from_slice(&tcp_csum.to_be_bytes());
    p
}

/// Deterministic pseudo-random numbers (xorshift64*), so no `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn validation(c: &mut Criterion) {
    let peer = Prefix::new("10.244.2.0/24".parse::<ipnet::IpNet>().expect("literal"));
    let local = Prefix::new("10.244.1.0/24".parse::<ipnet::IpNet>().expect("literal"));
    let good = build_tcp(ip(10, 244, 2, 5), ip(10, 244, 1, 7), 40000, 1, 1, MSS);
    assert_eq!(good.len(), PKT);
    assert!(outbound_dst(&good).is_ok());
    assert!(check_inbound(&good, &peer, &local).is_ok());
    // the IPv4 total length says 1434 but 1433 bytes arrived
    let malformed = &good[..PKT - 1];
    assert!(outbound_dst(malformed).is_err());

    let mut g = c.benchmark_group("validation");
    g.throughput(Throughput::Elements(1));
    g.bench_function("outbound_dst/tcp_1434", |b| b.iter(|| outbound_dst(black_box(&good))));
    g.bench_function("outbound_dst/malformed", |b| b.iter(|| outbound_dst(black_box(malformed))));
    g.bench_function("check_inbound/tcp_1434", |b| {
        b.iter(|| check_inbound(black_box(&good), black_box(&peer), black_box(&local)))
    });
    g.bench_function("check_inbound/malformed", |b| {
        b.iter(|| check_inbound(black_box(malformed), black_box(&peer), black_box(&local)))
    });
    g.finish();
}

/// Destinations looked up per iteration (a power of two).
const LOOKUPS: usize = 1024;

fn peer_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_lookup");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for peers in [1u32, 10, 100, 1000] {
        // /24 subnets from 10.244.0.0 up (past 10.244.255.0 into 10.245.0.0/16 and on for 1000)
        let base = u32::from(ip(10, 244, 0, 0));
        let mut table = SubnetTable::new(Prefix::new(ipnet::Ipv4Net::new(ip(10, 244, 0, 0), 24).expect("literal")));
        for i in 0..peers {
            let subnet = ipnet::Ipv4Net::new(Ipv4Addr::from(base + (i << 8)), 24).expect("literal");
            assert!(table.insert(subnet, Arc::new(i)));
        }
        assert_eq!(table.len(), peers as usize);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(peers));
        let dsts: Vec<u32> = (0..LOOKUPS)
            .map(|_| {
                let r = rng.next();
                let subnet = (r >> 32) as u32 % peers;
                base + (subnet << 8) + 1 + (r as u32 % 254)
            })
            .collect();
        assert!(dsts.iter().all(|&d| table.lookup(Ipv4Addr::from(d).into()).is_some()));
        g.bench_with_input(BenchmarkId::from_parameter(peers), &dsts, |b, dsts| {
            b.iter(|| {
                let mut found = 0usize;
                for &d in dsts {
                    if let Some(link) = table.lookup(Ipv4Addr::from(black_box(d)).into()) {
                        found += **link as usize & 1;
                    }
                }
                found
            })
        });
    }
    g.finish();
}

/// A TCP super-packet as the kernel hands it over a tun with TSO: a virtio_net_hdr then one
/// IPv4/TCP header and up to 64 KB of payload, cut by `gso_split` into MSS-sized segments.
fn gso_input() -> (Vec<u8>, usize) {
    let segments = (65535 - IP_HDR - TCP_HDR) / MSS;
    let pkt = build_tcp(ip(10, 244, 1, 7), ip(10, 244, 2, 5), 40000, 1, 1, segments * MSS);
    let hdr = VirtioNetHdr {
        flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: (IP_HDR + TCP_HDR) as u16,
        gso_size: MSS as u16,
        csum_start: IP_HDR as u16,
        csum_offset: 16,
    };
    let mut buf = vec![0u8; VIRTIO_NET_HDR_LEN];
    hdr.encode(&mut buf).expect("room for the header");
    buf.extend_from_slice(&pkt);
    (buf, segments)
}

fn segmentation(c: &mut Criterion) {
    let (mut original, segments) = gso_input();
    // what tun_reader passes to recv_multiple
    let mut bufs = vec![vec![0u8; PKT + 64]; tun_rs::IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
    let split = |original: &mut [u8], bufs: &mut [Vec<u8>], sizes: &mut [usize]| {
        let hdr = VirtioNetHdr::decode(original).expect("header");
        tun_rs::gso_split(&mut original[VIRTIO_NET_HDR_LEN..], hdr, bufs, sizes, 0, false).expect("split")
    };
    let n = split(&mut original, &mut bufs, &mut sizes);
    assert_eq!(n, segments);
    assert!(sizes[..n].iter().all(|&s| s == PKT));
    assert!(bufs[..n].iter().all(|b| outbound_dst(&b[..PKT]).is_ok()));

    let mut g = c.benchmark_group("tun_offload");
    g.throughput(Throughput::Elements(segments as u64));
    g.bench_function(BenchmarkId::new("gso_split_64k", format!("{segments}x{PKT}")), |b| {
        b.iter(|| split(black_box(&mut original), &mut bufs, &mut sizes))
    });
    g.finish();
}

/// The receiver's per-datagram copy into a reused tun buffer (virtio header room + packet).
fn fill(bufs: &mut [BytesMut], pkts: &[Vec<u8>]) {
    for (b, p) in bufs.iter_mut().zip(pkts) {
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(p);
    }
}

fn coalescing(c: &mut Criterion) {
    let src = ip(10, 244, 2, 5);
    let dst = ip(10, 244, 1, 7);
    // one bulk flow: consecutive segments, coalesced into 64 KB writes
    let one_flow: Vec<Vec<u8>> =
        (0..RX_BATCH).map(|i| build_tcp(src, dst, 40000, i as u16, 1 + (i * MSS) as u32, MSS)).collect();
    // one segment each of 64 flows: nothing to coalesce, one table entry per packet
    let many_flows: Vec<Vec<u8>> = (0..RX_BATCH).map(|i| build_tcp(src, dst, 40000 + i as u16, 1, 1, MSS)).collect();
    // the receiver's buffers, reused batch after batch
    let mut bufs: Vec<BytesMut> = (0..RX_BATCH).map(|_| BytesMut::with_capacity(VIRTIO_NET_HDR_LEN + 65536)).collect();
    let mut gro = tun_rs::GROTable::default();
    fill(&mut bufs, &one_flow);
    gro.apply_gro(&mut bufs, VIRTIO_NET_HDR_LEN, false).expect("gro");
    let heads = bufs.iter().filter(|b| b.len() > VIRTIO_NET_HDR_LEN + PKT).count();
    assert!(heads > 0, "the segments of one flow were coalesced");

    let mut g = c.benchmark_group("tun_offload");
    g.throughput(Throughput::Elements(RX_BATCH as u64));
    g.bench_function(BenchmarkId::new("rx_copy", format!("{RX_BATCH}x{PKT}")), |b| {
        b.iter(|| fill(&mut bufs, black_box(&one_flow)))
    });
    for (name, pkts) in [("copy_gro_1_flow", &one_flow), ("copy_gro_64_flows", &many_flows)] {
        g.bench_function(BenchmarkId::new(name, format!("{RX_BATCH}x{PKT}")), |b| {
            b.iter(|| {
                fill(&mut bufs, black_box(pkts));
                gro.apply_gro(&mut bufs, VIRTIO_NET_HDR_LEN, false)
            })
        });
    }
    g.finish();
}

fn arena_copy(c: &mut Criterion) {
    let pkt = build_tcp(ip(10, 244, 1, 7), ip(10, 244, 2, 5), 40000, 1, 1, MSS);
    let mut arena = BytesMut::with_capacity(ARENA);
    let mut g = c.benchmark_group("tx_arena");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("copy_split_freeze", PKT), |b| {
        b.iter(|| {
            let pkt = black_box(&pkt[..]);
            if arena.capacity() < pkt.len() {
                arena = BytesMut::with_capacity(ARENA);
            }
            arena.extend_from_slice(pkt);
            arena.split().freeze()
        })
    });
    g.finish();
}

criterion_group!(benches, validation, peer_lookup, segmentation, coalescing, arena_copy);
criterion_main!(benches);
