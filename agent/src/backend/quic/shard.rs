//! How the quic data path's threads share the peers, pure: thread `i` of a node talks only to
//! thread `i` of each peer (its UDP port is the peer's advertised port + `i`), and a pair of
//! nodes uses the smaller of their thread counts, P. A thread `i >= P` has no connection to that
//! peer: the packets it reads for it go to thread `i mod P`, always the same one, so a flow
//! (which the kernel keeps on one tun queue, so on one thread) is never reordered.

use super::PeerSpec;
use ipnet::IpNet;
use weft_config::agent::QUIC_THREADS_AUTO_MAX;
use weft_config::subnet::PerFamily;

/// What one data path thread does with the peer set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadPlan {
    /// The peers this thread connects to: each at its own thread's endpoint (the advertised
    /// port + this thread's index), with `threads` = the count the pair uses.
    pub peers: Vec<PeerSpec>,
    /// The peers whose pair uses fewer threads than this thread's index: where their packets go.
    pub hand_off: Vec<HandOff>,
}

/// The packets to `node`'s subnets are carried by thread `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOff {
    pub node: String,
    pub subnets: PerFamily<IpNet>,
    pub to: usize,
}

/// The threads a node with `mine` threads uses with `peer`: the smaller count, and no more than
/// the peer's ports above its advertised one allow (a record is not trusted to fit).
pub fn pair_threads(mine: usize, peer: &PeerSpec) -> usize {
    let ports = usize::from(u16::MAX) + 1 - usize::from(peer.endpoint.port());
    mine.min(peer.threads).min(ports).max(1)
}

/// The plan of each of `threads` threads for the peer set `peers` (as the driver read it:
/// `threads` = what each peer advertises).
pub fn plan(threads: usize, peers: &[PeerSpec]) -> Vec<ThreadPlan> {
    let threads = threads.max(1);
    let mut out = vec![ThreadPlan::default(); threads];
    for p in peers {
        let pair = pair_threads(threads, p);
        for (i, t) in out.iter_mut().enumerate() {
            if i < pair {
                let mut spec = p.clone();
                // pair_threads kept port + i within u16.
                spec.endpoint.set_port(p.endpoint.port() + i as u16);
                spec.threads = pair;
                t.peers.push(spec);
            } else {
                t.hand_off.push(HandOff { node: p.node.clone(), subnets: p.subnets, to: i % pair });
            }
        }
    }
    out
}

/// `quic.threads` unset ("auto"): the machine's `cores`, at most [`QUIC_THREADS_AUTO_MAX`], and
/// no more than the UDP ports from `port` up allow.
pub fn auto_threads(cores: usize, port: u16) -> usize {
    let ports = usize::from(u16::MAX) + 1 - usize::from(port);
    cores.clamp(1, QUIC_THREADS_AUTO_MAX).min(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn spec(node: &str, n: u8, threads: usize) -> PeerSpec {
        PeerSpec {
            node: node.to_string(),
            subnets: PerFamily::V4(format!("10.244.{n}.0/24").parse().expect("a valid subnet")),
            endpoint: SocketAddr::from(([192, 0, 2, n], 7946)),
            epoch: 1,
            threads,
        }
    }

    /// Per thread: (node, endpoint port, pair threads) of its peers, and (node, to) of its hand-offs.
    #[allow(clippy::type_complexity)]
    fn summary(plans: &[ThreadPlan]) -> Vec<(Vec<(&str, u16, usize)>, Vec<(&str, usize)>)> {
        plans
            .iter()
            .map(|t| {
                (
                    t.peers.iter().map(|p| (p.node.as_str(), p.endpoint.port(), p.threads)).collect(),
                    t.hand_off.iter().map(|h| (h.node.as_str(), h.to)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn equal_counts_pair_thread_for_thread_without_hand_off() {
        let plans = plan(2, &[spec("b", 2, 2), spec("c", 3, 2)]);
        assert_eq!(
            summary(&plans),
            [(vec![("b", 7946, 2), ("c", 7946, 2)], vec![]), (vec![("b", 7947, 2), ("c", 7947, 2)], vec![]),]
        );
        assert_eq!(plans[1].peers[0].endpoint.ip(), spec("b", 2, 2).endpoint.ip(), "only the port moves");
    }

    #[test]
    fn two_threads_against_one_hand_thread_1s_packets_to_thread_0() {
        let plans = plan(2, &[spec("b", 2, 1)]);
        assert_eq!(summary(&plans), [(vec![("b", 7946, 1)], vec![]), (vec![], vec![("b", 0)])]);
        assert_eq!(plans[1].hand_off[0].subnets, spec("b", 2, 1).subnets);
        // The other side: one thread, one connection to thread 0.
        assert_eq!(summary(&plan(1, &[spec("a", 1, 2)])), [(vec![("a", 7946, 1)], vec![])]);
    }

    #[test]
    fn four_against_two_and_three_against_two_hand_off_modulo_the_pair() {
        assert_eq!(
            summary(&plan(4, &[spec("b", 2, 2), spec("c", 3, 4)])),
            [
                (vec![("b", 7946, 2), ("c", 7946, 4)], vec![]),
                (vec![("b", 7947, 2), ("c", 7947, 4)], vec![]),
                (vec![("c", 7948, 4)], vec![("b", 0)]),
                (vec![("c", 7949, 4)], vec![("b", 1)]),
            ]
        );
        assert_eq!(
            summary(&plan(3, &[spec("b", 2, 2)])),
            [(vec![("b", 7946, 2)], vec![]), (vec![("b", 7947, 2)], vec![]), (vec![], vec![("b", 0)])]
        );
        // The peer with more threads than this node: only this node's count is used.
        assert_eq!(
            summary(&plan(2, &[spec("c", 3, 4)])),
            [(vec![("c", 7946, 2)], vec![]), (vec![("c", 7947, 2)], vec![])]
        );
    }

    #[test]
    fn a_peer_without_threads_is_one_thread_and_ports_past_65535_are_not_used() {
        // The driver reads a record without `threads` as 1 (see driver::peer_threads).
        assert_eq!(summary(&plan(2, &[spec("b", 2, 1)]))[0], (vec![("b", 7946, 1)], vec![]));
        let mut top = spec("b", 2, 8);
        top.endpoint.set_port(65534);
        assert_eq!(pair_threads(4, &top), 2, "ports 65534 and 65535 only");
        let plans = plan(4, &[top]);
        assert_eq!(plans[1].peers[0].endpoint.port(), 65535);
        assert_eq!(plans[3].hand_off[0].to, 1);
        assert_eq!(plan(0, &[]), [ThreadPlan::default()], "at least one thread");
    }

    #[test]
    fn auto_is_the_core_count_up_to_eight_within_the_ports() {
        assert_eq!(auto_threads(2, 7946), 2);
        assert_eq!(auto_threads(1, 7946), 1);
        assert_eq!(auto_threads(32, 7946), 8);
        assert_eq!(auto_threads(0, 7946), 1);
        assert_eq!(auto_threads(4, 65534), 2);
    }
}
