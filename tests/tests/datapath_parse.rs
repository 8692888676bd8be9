//! Datapath tests for the parser's harder branches: IPv6 and its extension
//! headers, VLAN and QinQ tags, fragments, truncation.

use std::net::{Ipv4Addr, Ipv6Addr};

use dockblock_agent::{
    loader::Capacities,
    rules::Scope::{Container, Dialed},
    store,
};
use dockblock_common::{map_names, outcome, FragKey, FragSlot, FRAG_KEY_WORDS};
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
    assert_eq!(dp.xdp(&too_long.build()), Drop, "beyond the walk bound: may hide anything");
    assert_eq!(dp.xdp_counter(outcome::DROPPED_EVASIVE).packets, 1);
    let bad_version = Packet::syn(3306).v6().ip_version(4).build();
    assert_eq!(dp.xdp(&bad_version), Drop);
    assert_eq!(dp.xdp_counter(outcome::DROPPED_MALFORMED).packets, 1);
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
    // A tag cut short cannot carry IP; an IP header cut short is malformed.
    for len in 14..22 {
        assert_eq!(dp.xdp(&tagged[..len]), Pass, "truncated at {len}, in a tag");
    }
    for len in 22..tagged.len() {
        assert_eq!(dp.xdp(&tagged[..len]), Drop, "truncated at {len}");
    }
    assert_eq!(dp.xdp_counter(outcome::PASSED_OTHER).packets, 8);
    assert_eq!(dp.xdp_counter(outcome::DROPPED_MALFORMED).packets, (tagged.len() - 22) as u64);
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
        assert_eq!(dp.xdp_counter(outcome::PASSED_FRAGMENT).packets, 1 + u64::from(v6) * 2);
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

/// The FRAGS key of a UDP datagram between `Packet`'s default addresses.
fn udp_frag_key(v6: bool, id: u32) -> FragKey {
    let (src, dst) = if v6 {
        ("2001:db8::2".parse::<Ipv6Addr>().unwrap(), "2001:db8::1".parse::<Ipv6Addr>().unwrap())
    } else {
        (Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped(), Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped())
    };
    FragKey { src: src.octets(), dst: dst.octets(), id, proto: u32::from(IPPROTO_UDP) }
}

#[test]
fn fragments_of_two_datagrams_are_told_apart() {
    let mut dp = Datapath::load("frag2");
    dp.block(Dialed, "5000/udp");
    for v6 in [false, true] {
        let base = if v6 { Packet::udp(5000).v6() } else { Packet::udp(5000) };
        let frame = |id, offset, more| base.clone().fragment(offset, more).frag_id(id).build();
        // Two datagrams in different slots, so each is remembered.
        let a = 100;
        let b = (a + 1..).find(|&b| dp.frag_slot(&udp_frag_key(v6, b)) != dp.frag_slot(&udp_frag_key(v6, a)));
        let b = b.unwrap();
        assert_eq!(dp.xdp(&frame(a, 0, true)), Drop, "v6={v6}");
        assert_eq!(dp.xdp(&frame(b, 9, true)), Pass, "v6={v6}: another id is another datagram");
        let tcp = if v6 { Packet::syn(5000).v6() } else { Packet::syn(5000) };
        let tcp = tcp.fragment(9, true).frag_id(a).build();
        assert_eq!(dp.xdp(&tcp), Pass, "v6={v6}: same id, another protocol");
        assert_eq!(dp.xdp(&frame(a, 9, true)), Drop, "v6={v6}");
        assert_eq!(dp.xdp(&frame(b, 0, true)), Drop, "v6={v6}");
        assert_eq!(dp.xdp(&frame(b, 9, false)), Drop, "v6={v6}: both remembered");
        assert_eq!(dp.xdp(&frame(a, 18, false)), Drop, "v6={v6}: closing one left the other");
        assert_eq!(dp.xdp(&frame(a, 18, false)), Pass, "v6={v6}: both closed");
        assert_eq!(dp.xdp(&frame(b, 9, false)), Pass, "v6={v6}: both closed");
    }
    assert_eq!(dp.rules()[0].stats.dropped.packets, 10, "5 fragments dropped per family");
}

#[test]
fn a_newer_datagram_in_the_same_slot_evicts_the_older() {
    let caps =
        Capacities { max_rules: Some(64), max_allow: Some(64), max_frags: Some(16), ..Default::default() };
    let mut dp = Datapath::load_with("frag-evict", caps);
    dp.block(Dialed, "5000/udp");
    let key = |id| udp_frag_key(false, id);
    let (a, slot) = (1, dp.frag_slot(&key(1)));
    let b = (2..).find(|&b| dp.frag_slot(&key(b)) == slot).unwrap();
    let frame = |id, offset, more| Packet::udp(5000).fragment(offset, more).frag_id(id).build();
    assert_eq!(dp.xdp(&frame(a, 0, true)), Drop);
    assert_eq!(dp.frags().get(&slot, 0).unwrap(), FragSlot { key: key(a), rule_id: 1 });
    assert_eq!(dp.xdp(&frame(b, 0, true)), Drop);
    assert_eq!(dp.frags().get(&slot, 0).unwrap(), FragSlot { key: key(b), rule_id: 1 }, "b took a's slot");
    assert_eq!(dp.xdp(&frame(a, 9, true)), Pass, "a was evicted: its later fragments pass");
    assert_eq!(dp.xdp(&frame(b, 9, true)), Drop);
    assert_eq!(dp.xdp(&frame(b, 18, false)), Drop);
    assert_eq!(dp.frags().get(&slot, 0).unwrap().rule_id, 0, "the last fragment emptied the slot");
    assert_eq!(dp.xdp(&frame(b, 18, false)), Pass);
}

#[test]
fn the_fragment_table_is_a_power_of_two_with_a_random_seed_kept_by_reload() {
    let caps =
        Capacities { max_rules: Some(64), max_allow: Some(64), max_frags: Some(100), ..Default::default() };
    let mut dp = Datapath::load_with("frag-size", caps);
    assert_eq!(store::max_entries(&dp.pins, map_names::FRAGS).unwrap(), 128, "100 rounded up");
    let config = dp.store.config().unwrap();
    assert_eq!(config.frag_mask, 127);
    assert_ne!(config.frag_seed, [0; FRAG_KEY_WORDS]);
    let other = Datapath::load("frag-seed");
    assert_ne!(other.store.config().unwrap().frag_seed, config.frag_seed, "a seed per install");
    dp.block(Dialed, "5000/udp");
    let frame = |offset, more| Packet::udp(5000).fragment(offset, more).build();
    assert_eq!(dp.xdp(&frame(0, true)), Drop);
    // Programs replaced in place keep the table, its seed and its mask; a
    // mask that does not fit the map is set again from the map.
    dp.set_config(|c| c.frag_mask = 3);
    dp.reload();
    let reloaded = dp.store.config().unwrap();
    assert_eq!((reloaded.frag_mask, reloaded.frag_seed), (127, config.frag_seed));
    assert_eq!(dp.xdp(&frame(9, true)), Drop, "still remembered after the reload");
}

#[test]
fn truncated_ipv6_at_every_byte_is_dropped_as_malformed() {
    let mut dp = Datapath::load("trunc6");
    dp.block(Dialed, "3306");
    let (mut malformed, mut other) = (0, 0);
    for full in [
        Packet::syn(3306).v6().build(),
        Packet::udp(3306).v6().ext(IPV6_HOP_BY_HOP, 1).fragment(0, true).build(),
        Packet::syn(3306).v6().vlan(ETH_P_8021Q, 5).build(),
    ] {
        let l3 = if full[12..14] == ETH_P_8021Q.to_be_bytes() { 18 } else { 14 };
        for len in 14..full.len() {
            // Inside the VLAN tag: cannot carry IP. After: lengths that do
            // not add up.
            let want = if len < l3 { Pass } else { Drop };
            assert_eq!(dp.xdp(&full[..len]), want, "{len} of {} bytes", full.len());
            if len < l3 {
                other += 1;
            } else {
                malformed += 1;
            }
        }
        assert_eq!(dp.xdp(&full), Drop);
    }
    assert_eq!(dp.xdp_counter(outcome::DROPPED_MALFORMED).packets, malformed);
    assert_eq!(dp.xdp_counter(outcome::PASSED_OTHER).packets, other);
}
