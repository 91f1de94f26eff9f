use super::*;
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

fn key(b: u8) -> WgKey {
    [b; 32]
}

fn net(s: &str) -> IpNet {
    s.parse().expect("literal")
}

fn peer() -> WgPeer {
    WgPeer {
        public_key: key(7),
        endpoint: Some("172.30.0.12:51820".parse().expect("literal")),
        allowed_ips: vec![net("10.244.2.0/24"), net("fd00:10:244:2::/64")],
        keepalive: 25,
    }
}

/// The message as the kernel would read it: emitted to bytes and parsed back.
fn round_trip(m: &WireguardMessage) -> WireguardMessage {
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    let header = GenlHeader { cmd: m.command(), version: m.version() };
    WireguardMessage::parse_with_param(&buf[..], header).expect("parses back")
}

/// The attribute types (NLA numbers, nested flag dropped) of a byte buffer of attributes.
fn nla_types(buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
        out.push(u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & 0x3fff);
        at += len.div_ceil(4) * 4;
        if len == 0 {
            break;
        }
    }
    out
}

#[test]
fn the_family_and_commands_are_the_kernel_s() {
    assert_eq!(WireguardMessage::family_name(), MODULE);
    let get = get_message(5);
    assert_eq!((get.command(), get.version()), (0, 1), "WG_CMD_GET_DEVICE, WG_GENL_VERSION");
    assert_eq!(get.attributes, vec![WireguardAttribute::IfIndex(5)]);
    assert_eq!(set_message(5, &WgChange::RemovePeer(key(1))).command(), 1, "WG_CMD_SET_DEVICE");
}

#[test]
fn the_device_message_sets_the_key_and_port_and_leaves_peers_alone() {
    let m = set_message(9, &WgChange::Device { private_key: key(3), listen_port: 51820 });
    assert_eq!(
        m.attributes,
        vec![
            WireguardAttribute::IfIndex(9),
            WireguardAttribute::PrivateKey(key(3)),
            WireguardAttribute::ListenPort(51820)
        ]
    );
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    // WGDEVICE_A_IFINDEX, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_LISTEN_PORT; no flags: no
    // WGDEVICE_F_REPLACE_PEERS, so the peers stay as they are.
    assert_eq!(nla_types(&buf), [1, 3, 6]);
    assert_eq!(round_trip(&m), m);
}

#[test]
fn a_set_peer_message_replaces_the_allowed_ips_and_carries_endpoint_and_keepalive() {
    let m = set_message(9, &WgChange::SetPeer(peer()));
    let [WireguardAttribute::IfIndex(9), WireguardAttribute::Peers(peers)] = m.attributes.as_slice() else {
        panic!("unexpected attributes: {:?}", m.attributes);
    };
    assert_eq!(peers.len(), 1);
    let attrs = &peers[0].0;
    assert_eq!(attrs[0], WireguardPeerAttribute::PublicKey(key(7)));
    assert!(attrs.contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps)));
    assert!(!attrs
        .iter()
        .any(|a| matches!(a, WireguardPeerAttribute::Flags(f) if f.contains(WireguardPeerFlags::RemoveMe))));
    assert!(attrs.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
    assert!(attrs.contains(&WireguardPeerAttribute::Endpoint("172.30.0.12:51820".parse().expect("literal"))));
    let ips = attrs
        .iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::AllowedIps(v) => Some(v.clone()),
            _ => None,
        })
        .expect("allowed IPs");
    assert_eq!(
        ips,
        vec![
            WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr("10.244.2.0".parse().expect("literal")),
                WireguardAllowedIpAttr::Cidr(24),
            ]),
            WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
                WireguardAllowedIpAttr::IpAddr("fd00:10:244:2::".parse().expect("literal")),
                WireguardAllowedIpAttr::Cidr(64),
            ]),
        ]
    );
    assert_eq!(round_trip(&m), m);
    // What the kernel reads back is the peer sent.
    let back = parse_device(&[round_trip(&m)]).expect("parse");
    assert_eq!(back.peers, vec![peer()]);
}

#[test]
fn a_remove_message_names_the_key_with_remove_me() {
    let m = set_message(9, &WgChange::RemovePeer(key(4)));
    assert_eq!(
        m.attributes,
        vec![
            WireguardAttribute::IfIndex(9),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key(4)),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])])
        ]
    );
    assert_eq!(round_trip(&m), m);
}

#[test]
fn a_device_split_over_several_answers_is_joined() {
    let part = |ips: &[&str], endpoint: bool| {
        let mut p = vec![WireguardPeerAttribute::PublicKey(key(7))];
        if endpoint {
            p.push(WireguardPeerAttribute::Endpoint("172.30.0.12:51820".parse().expect("literal")));
            p.push(WireguardPeerAttribute::PersistentKeepalive(25));
        }
        p.push(WireguardPeerAttribute::AllowedIps(ips.iter().map(|s| allowed_ip(net(s))).collect()));
        WireguardPeer(p)
    };
    let first = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![
            WireguardAttribute::IfIndex(9),
            WireguardAttribute::PublicKey(key(1)),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Peers(vec![part(&["10.244.2.0/24"], true)]),
        ],
    };
    let second = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![
            WireguardAttribute::IfIndex(9),
            WireguardAttribute::Peers(vec![
                part(&["fd00:10:244:2::/64"], false),
                WireguardPeer(vec![WireguardPeerAttribute::PublicKey(key(8))]),
            ]),
        ],
    };
    let dev = parse_device(&[round_trip(&first), round_trip(&second)]).expect("parse");
    assert_eq!(dev.public_key, Some(key(1)));
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(
        dev.peers,
        vec![peer(), WgPeer { public_key: key(8), endpoint: None, allowed_ips: vec![], keepalive: 0 }]
    );
}

#[test]
fn keys_round_trip_as_base64_and_junk_is_refused() {
    let k = key(0xab);
    assert_eq!(decode_key(&encode_key(&k)).expect("round trip"), k);
    assert_eq!(encode_key(&[0; 32]), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert!(decode_key("not base64!").expect_err("junk").to_string().starts_with("not base64"));
    assert_eq!(decode_key("AAAA").expect_err("short").to_string(), "expected 32 bytes, found 3");
}

#[test]
fn a_private_key_is_never_printed() {
    let c = WgChange::Device { private_key: key(0x41), listen_port: 1 };
    let s = format!("{c:?}");
    assert!(s.contains("(hidden)") && !s.contains("65, 65"), "{s}");
}
