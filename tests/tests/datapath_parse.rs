//! Datapath tests for the parser's harder branches: IPv6 and its extension
//! headers, VLAN and QinQ tags, fragments, truncation.

use dockblock_agent::rules::Scope::{Container, Dialed};
use dockblock_common::outcome;
use dockblock_tests::{
    datapath::{Datapath, Verdict::*},
    packet::*,
};

#[test]
fn ipv6_is_judged_like_ipv4_through_extension_headers() {
    let mut dp = Datapath::load("v6");
    dp.block(Dialed, "3306/tcp");
    dp.block(Container, "53/udp");
    assert_eq!(dp.xdp(&Packet::syn(3306).v6().build()), Drop);
    assert_eq!(dp.xdp(&Packet::syn(3307).v6().build()), Pass);
    assert_eq!(dp.xdp(&Packet::tcp(3306, SYN | ACK).v6().build()), Pass, "a reply");
    assert_eq!(dp.tc(&Packet::udp(53).v6().build()), Drop);
    let chains: [&[(u8, u8)]; 4] = [
        &[(IPV6_HOP_BY_HOP, 0)],
        &[(IPV6_HOP_BY_HOP, 0), (IPV6_ROUTING, 2), (IPV6_DEST_OPTS, 1)],
        &[(IPV6_AUTH, 1), (IPV6_DEST_OPTS, 0)],
        &[(IPV6_DEST_OPTS, 0); 8],
    ];
    for chain in chains {
        let packet = chain.iter().fold(Packet::syn(3306).v6(), |p, (kind, extra)| p.ext(*kind, *extra));
        assert_eq!(dp.xdp(&packet.build()), Drop, "{chain:?}");
    }
    let too_long = (0..9).fold(Packet::syn(3306).v6(), |p, _| p.ext(IPV6_DEST_OPTS, 0));
    assert_eq!(dp.xdp(&too_long.build()), Pass, "beyond the walk bound: unjudged");
    assert_eq!(dp.xdp_counter(outcome::PASSED_UNPARSED).packets, 1);
    let bad_version = Packet::syn(3306).v6().ip_version(4).build();
    assert_eq!(dp.xdp(&bad_version), Pass);
    assert_eq!(dp.xdp_counter(outcome::PASSED_MALFORMED).packets, 1);
}

#[test]
fn vlan_and_qinq_tagged_frames_are_judged() {
    let mut dp = Datapath::load("vlan");
    dp.block(Dialed, "3306/tcp");
    for frame in [
        Packet::syn(3306).vlan(ETH_P_8021Q, 100).build(),
        Packet::syn(3306).vlan(ETH_P_8021AD, 100).vlan(ETH_P_8021Q, 200).build(),
        Packet::syn(3306).v6().vlan(ETH_P_8021Q, 7).build(),
    ] {
        assert_eq!(dp.xdp(&frame), Drop);
    }
    assert_eq!(dp.xdp(&Packet::syn(80).vlan(ETH_P_8021Q, 100).build()), Pass);
    let tagged = Packet::syn(3306).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).build();
    for len in 14..tagged.len() {
        assert_eq!(dp.xdp(&tagged[..len]), Pass, "truncated at {len}");
    }
    assert_eq!(dp.xdp_counter(outcome::PASSED_MALFORMED).packets, (tagged.len() - 14) as u64);
}

#[test]
fn a_later_fragment_of_a_dropped_datagram_is_dropped_too() {
    let mut dp = Datapath::load("frag");
    dp.block(Dialed, "5000/udp");
    dp.block(Container, "5000/udp");
    for v6 in [false, true] {
        let base = if v6 { Packet::udp(5000).v6() } else { Packet::udp(5000) };
        let first = base.clone().fragment(0, true).payload(&[0; 64]).build();
        let middle = base.clone().fragment(9, true).build();
        let last = base.clone().fragment(18, false).build();
        let stranger =
            base.clone().src(if v6 { "2001:db8::9" } else { "198.18.0.9" }).fragment(9, true).build();
        assert_eq!(dp.xdp(&stranger), Pass, "v6={v6}: no ports, its first fragment never seen");
        assert_eq!(dp.xdp(&first), Drop, "v6={v6}: the first fragment carries the ports");
        assert_eq!(dp.xdp(&middle), Drop, "v6={v6}");
        assert_eq!(dp.xdp(&last), Drop, "v6={v6}");
        assert_eq!(dp.xdp(&last), Pass, "v6={v6}: the last fragment closed the datagram");
        // The bridge sees what the host re-fragments after reassembly, and
        // judges it the same way.
        assert_eq!(dp.tc(&first), Drop, "v6={v6}");
        assert_eq!(dp.tc(&middle), Drop, "v6={v6}");
    }
    assert_eq!(dp.rules()[0].stats.dropped.packets, 6, "fragments count on the rule");
    let open = Packet::udp(5001).src("198.18.0.5");
    assert_eq!(dp.xdp(&open.clone().fragment(0, true).build()), Pass);
    assert_eq!(dp.xdp(&open.fragment(9, false).build()), Pass, "fragments of allowed datagrams pass");
}

#[test]
fn truncated_ipv6_at_every_byte_passes_as_malformed() {
    let mut dp = Datapath::load("trunc6");
    dp.block(Dialed, "3306");
    let mut runs = 0;
    for full in [
        Packet::syn(3306).v6().build(),
        Packet::udp(3306).v6().ext(IPV6_HOP_BY_HOP, 1).fragment(0, true).build(),
        Packet::syn(3306).v6().vlan(ETH_P_8021Q, 5).build(),
    ] {
        for len in 14..full.len() {
            assert_eq!(dp.xdp(&full[..len]), Pass, "{len} of {} bytes", full.len());
            runs += 1;
        }
        assert_eq!(dp.xdp(&full), Drop);
    }
    assert_eq!(dp.xdp_counter(outcome::PASSED_MALFORMED).packets, runs);
}
