//! Datapath tests: the loaded kernel programs judge crafted packets through
//! BPF_PROG_TEST_RUN. Rules go in through the same RuleStore the CLI uses.

use dockblock_agent::rules::Scope::{Container, Dialed};
use dockblock_common::outcome;
use dockblock_tests::{
    datapath::{Datapath, Verdict::*},
    packet::*,
};

#[test]
fn tcp_syn_to_a_blocked_dialed_port_is_dropped_at_the_uplink_only() {
    let mut dp = Datapath::load("syn");
    let syn = Packet::syn(3306).build();
    assert_eq!(dp.xdp(&syn), Pass, "no rule yet");
    dp.block(Dialed, "3306/tcp");
    assert_eq!(dp.xdp(&syn), Drop);
    assert_eq!(dp.tc(&syn), Pass, "dialed rules are not judged at the bridge");
    assert_eq!(dp.xdp(&Packet::syn(3307).build()), Pass);
    assert_eq!(dp.xdp(&Packet::udp(3306).build()), Pass, "tcp rule leaves udp open");
    dp.unblock(Dialed, "3306/tcp");
    assert_eq!(dp.xdp(&syn), Pass, "unblocked");
}

#[test]
fn container_port_rules_are_judged_at_the_bridge_only() {
    let mut dp = Datapath::load("ctr");
    dp.block(Container, "80/tcp");
    let syn = Packet::syn(80).build();
    assert_eq!(dp.tc(&syn), Drop);
    assert_eq!(dp.xdp(&syn), Pass);
    assert_eq!(dp.tc(&Packet::syn(8080).build()), Pass);
}

#[test]
fn established_tcp_passes_before_any_rule_is_looked_up() {
    let mut dp = Datapath::load("reply");
    dp.block(Dialed, "40000/tcp");
    dp.block(Container, "40000/tcp");
    for flags in [SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK, 0, FIN] {
        // On the blocked port and on one without a rule alike.
        for port in [40000, 40001] {
            let frame = Packet::tcp(port, flags).build();
            assert_eq!(dp.xdp(&frame), Pass, "flags {flags:#x}");
            assert_eq!(dp.tc(&frame), Pass, "flags {flags:#x}");
        }
    }
    assert_eq!(dp.xdp(&Packet::tcp(40000, SYN).build()), Drop);
    assert_eq!(dp.xdp(&Packet::tcp(40000, SYN | FIN).build()), Drop, "a SYN without ACK opens");
    let rules = dp.rules();
    // Counted on no rule: the rule was never looked up.
    assert!(rules.iter().all(|r| r.stats.passed.packets == 0), "{rules:?}");
    assert_eq!(rules.iter().map(|r| r.stats.dropped.packets).sum::<u64>(), 2);
    assert_eq!(dp.xdp_counter(outcome::PASSED_NOT_NEW).packets, 16);
    assert_eq!(dp.xdp_counter(outcome::PASSED_NO_RULE).packets, 0);
}

#[test]
fn udp_and_protocol_less_specs() {
    let mut dp = Datapath::load("udp");
    dp.block(Dialed, "5353/udp");
    dp.block(Dialed, "8080");
    assert_eq!(dp.xdp(&Packet::udp(5353).build()), Drop);
    assert_eq!(dp.xdp(&Packet::syn(5353).build()), Pass);
    assert_eq!(dp.xdp(&Packet::udp(8080).build()), Drop);
    assert_eq!(dp.xdp(&Packet::syn(8080).build()), Drop);
    assert_eq!(dp.xdp(&Packet::udp(53).build()), Pass);
    dp.unblock(Dialed, "8080/tcp");
    assert_eq!(dp.xdp(&Packet::syn(8080).build()), Pass);
    assert_eq!(dp.xdp(&Packet::udp(8080).build()), Drop, "udp half stays");
}

#[test]
fn ranges_cover_exactly_their_ports_and_split_on_unblock() {
    let mut dp = Datapath::load("range");
    dp.block(Dialed, "30000-30010/tcp");
    for (port, want) in [(29999, Pass), (30000, Drop), (30005, Drop), (30010, Drop), (30011, Pass)] {
        assert_eq!(dp.xdp(&Packet::syn(port).build()), want, "port {port}");
    }
    dp.unblock(Dialed, "30005/tcp");
    for (port, want) in [(30004, Drop), (30005, Pass), (30006, Drop)] {
        assert_eq!(dp.xdp(&Packet::syn(port).build()), want, "port {port} after split");
    }
}

#[test]
fn every_port_blocked_drops_every_port() {
    let mut dp = Datapath::load("all");
    dp.block(Dialed, "1-65535/tcp");
    for port in [1, 22, 443, 32768, 65535] {
        assert_eq!(dp.xdp(&Packet::syn(port).build()), Drop, "port {port}");
    }
    assert_eq!(dp.xdp(&Packet::udp(53).build()), Pass);
}

#[test]
fn overlapping_rules_count_on_the_narrowest() {
    let mut dp = Datapath::load("overlap");
    dp.block(Dialed, "1-65535/tcp");
    dp.block(Dialed, "3306/tcp");
    assert_eq!(dp.xdp(&Packet::syn(3306).build()), Drop);
    assert_eq!(dp.xdp(&Packet::syn(22).build()), Drop);
    let rules = dp.rules();
    assert_eq!((rules[0].stats.dropped.packets, rules[1].stats.dropped.packets), (1, 1));
    dp.unblock(Dialed, "3306/tcp");
    assert_eq!(dp.xdp(&Packet::syn(3306).build()), Pass, "unblock opens the port in every rule");
}

#[test]
fn ipv4_options_are_skipped_by_header_length() {
    let mut dp = Datapath::load("ihl");
    dp.block(Dialed, "3306/tcp");
    dp.block(Dialed, "257/tcp");
    for ihl in 5..=15 {
        let frame = Packet::syn(3306).ihl(ihl).build();
        assert_eq!(dp.xdp(&frame), Drop, "ihl {ihl}");
        assert_eq!(dp.xdp(&Packet::syn(3307).ihl(ihl).build()), Pass, "ihl {ihl}");
    }
    // NOP options read as ports 0x0101 = 257 if the options were not skipped.
    assert_eq!(dp.xdp(&Packet::syn(1000).sport(9).ihl(6).build()), Pass);
}

#[test]
fn bad_ip_headers_are_dropped_as_malformed() {
    let mut dp = Datapath::load("badip");
    dp.block(Dialed, "3306/tcp");
    for ihl in 0..5 {
        assert_eq!(dp.xdp(&Packet::syn(3306).ihl(ihl).build()), Drop, "ihl {ihl}");
        assert_eq!(dp.xdp(&Packet::syn(22).ihl(ihl).build()), Drop, "ihl {ihl}, port without a rule");
    }
    assert_eq!(dp.xdp(&Packet::syn(3306).ip_version(6).build()), Drop, "version 6 in an IPv4 ethertype");
    assert_eq!(dp.xdp_counter(outcome::DROPPED_MALFORMED).packets, 11);
    assert_eq!(dp.xdp_counter(outcome::DROPPED).packets, 0);
}

#[test]
fn truncated_at_every_byte_is_dropped_as_malformed() {
    let mut dp = Datapath::load("trunc");
    dp.block(Dialed, "3306");
    dp.block(Container, "3306");
    let (mut xdp_runs, mut tc_runs) = (0, 0);
    for full in [
        Packet::syn(3306).build(),
        Packet::udp(3306).build(),
        Packet::syn(3306).ihl(8).build(),
        Packet::syn(22).build(),
    ] {
        // The kernel refuses XDP test runs shorter than an Ethernet header,
        // and skb test runs shorter than Ethernet + a basic IPv4 header (the
        // stack never hands such an skb to the bridge either). Cut short,
        // the IP lengths no longer add up: the kernel would discard it.
        for len in 14..full.len() {
            assert_eq!(dp.xdp(&full[..len]), Drop, "xdp, {len} of {} bytes", full.len());
            xdp_runs += 1;
        }
        for len in 34..full.len() {
            assert_eq!(dp.tc(&full[..len]), Drop, "tc, {len} of {} bytes", full.len());
            tc_runs += 1;
        }
    }
    assert_eq!(dp.xdp(&Packet::syn(3306).build()), Drop, "the whole packet is judged");
    assert_eq!(dp.tc(&Packet::syn(3306).build()), Drop, "the whole packet is judged");
    assert_eq!(dp.xdp(&Packet::syn(22).build()), Pass);
    assert_eq!(dp.xdp_counter(outcome::DROPPED_MALFORMED).packets, xdp_runs);
    assert_eq!(dp.tc_counter(outcome::DROPPED_MALFORMED).packets, tc_runs);
}

#[test]
fn non_ip_and_other_protocols_pass_as_other() {
    let mut dp = Datapath::load("nonip");
    dp.block(Dialed, "1-65535");
    let frames = [
        Packet::syn(80).ether_type(ETH_P_ARP).build(),
        Packet::syn(80).ip_proto(IPPROTO_ICMP).build(),
        Packet::syn(80).v6().ip_proto(IPPROTO_ICMPV6).build(),
        Packet::syn(80).vlan(ETH_P_8021Q, 2).ether_type(ETH_P_ARP).build(),
    ];
    for frame in &frames {
        assert_eq!(dp.xdp(frame), Pass);
    }
    assert_eq!(dp.xdp_counter(outcome::PASSED_OTHER).packets, frames.len() as u64);
    // A third VLAN tag is more than the parser walks: it may hide IP.
    let three = Packet::syn(80).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).vlan(ETH_P_8021Q, 3).build();
    assert_eq!(dp.xdp(&three), Drop);
    assert_eq!(dp.xdp_counter(outcome::DROPPED_EVASIVE).packets, 1);
}

#[test]
fn counters_add_packets_and_bytes_per_hook_and_rule() {
    let mut dp = Datapath::load("count");
    dp.block(Dialed, "3306/tcp");
    let syn = Packet::syn(3306).payload(&[0; 100]).build();
    let other = Packet::syn(22).build();
    for _ in 0..3 {
        dp.xdp(&syn);
        dp.xdp(&other);
        dp.tc(&other);
    }
    let dropped = dp.xdp_counter(outcome::DROPPED);
    assert_eq!((dropped.packets, dropped.bytes), (3, 3 * syn.len() as u64));
    assert_eq!(dp.xdp_counter(outcome::PASSED_NO_RULE).packets, 3);
    assert_eq!(dp.tc_counter(outcome::PASSED_NO_RULE).packets, 3);
    let rule = dp.rules()[0].stats.dropped;
    assert_eq!((rule.packets, rule.bytes), (3, 3 * syn.len() as u64));
}

#[test]
fn a_reused_rule_id_starts_from_zero() {
    let mut dp = Datapath::load("reuse");
    dp.block(Dialed, "3306/tcp");
    dp.xdp(&Packet::syn(3306).build());
    dp.unblock(Dialed, "3306/tcp");
    dp.block(Dialed, "5432/tcp");
    let rules = dp.rules();
    assert_eq!(rules[0].rule.id, 1, "id 1 was free again");
    assert_eq!(rules[0].stats.dropped.packets, 0);
}

#[test]
fn every_shared_map_is_pinned() {
    let dp = Datapath::load("pins");
    for name in dockblock_common::map_names::ALL {
        assert!(dp.pins.map(name).exists(), "{name} pinned");
    }
}

/// Program cost of the common path, printed (run by hand: `cargo test
/// --release -p dockblock-tests --test datapath -- --ignored --nocapture
/// program_cost`): median of 5 rounds of 2M test runs, raw (the test-run
/// floor included), and the verifier-translated size.
#[test]
#[ignore]
fn program_cost_of_the_common_path() {
    let mut dp = Datapath::load("cost");
    dp.block(Dialed, "18080");
    dp.block(Container, "18080");
    let frames = [
        ("syn_blocked", Packet::syn(18080).build()),
        ("syn_allowed", Packet::syn(18081).build()),
        ("ack_blocked", Packet::tcp(18080, ACK).build()),
        ("udp_blocked", Packet::udp(18080).build()),
        ("udp_allowed", Packet::udp(18081).build()),
        ("syn6_blocked", Packet::syn(18080).v6().build()),
        ("first_frag", Packet::syn(18080).fragment(0, true).build()),
        ("later_frag", Packet::syn(18080).fragment(185, false).build()),
    ];
    for tc in [false, true] {
        for (name, frame) in &frames {
            let mut runs: Vec<_> = (0..5).map(|_| dp.time(tc, frame, 2_000_000).0.as_nanos()).collect();
            runs.sort();
            let insns = dp.time(tc, frame, 1).1;
            let hook = if tc { "tc" } else { "xdp" };
            println!("cost {hook:3} {name:13} median {:3} ns, min {:3} ns, {insns} insns", runs[2], runs[0]);
        }
    }
}
