//! Datapath tests for the fail-closed rule (spec/fail-closed.md): a packet
//! the kernel could still turn into a new connection to a blocked port is
//! dropped whether or not the programs can parse it. One test per evasion
//! class, each through both programs (XDP, dialed scope; TC, container
//! scope) with the same rules, the verdict and the outcome counted checked
//! for every frame; legitimate traffic of the same shapes keeps passing.

use dockblock_agent::{
    explain::{hook_name, HOOKS},
    rules::{
        RuleOptions,
        Scope::{Container, Dialed},
    },
};
use dockblock_common::{
    hook,
    outcome::{self, *},
    program_names, FragKey,
};
use dockblock_tests::{
    datapath::{Datapath, Verdict},
    packet::*,
};

/// A port both scopes block, one neither does.
const BLOCKED: u16 = 3306;
const OPEN: u16 = 8080;

/// Loads the programs with `spec` blocked in both scopes under `options`.
fn load(tag: &str, spec: &str, options: RuleOptions) -> Datapath {
    let mut dp = Datapath::load(tag);
    dp.block_with(Dialed, spec, options.clone());
    dp.block_with(Container, spec, options);
    dp
}

/// Runs `frame` through the program of `hook` and checks the verdict and
/// that exactly `want` was counted for it.
fn check(dp: &mut Datapath, hook: u32, frame: &[u8], want: u32, what: &str) {
    let counts =
        |dp: &Datapath| (0..outcome::COUNT).map(|o| dp.hook_counter(hook, o).packets).collect::<Vec<_>>();
    let before = counts(dp);
    let verdict = if hook == hook::XDP { dp.xdp(frame) } else { dp.tc(frame) };
    let name = outcome::NAMES[want as usize];
    let expected = if outcome::is_drop(want) { Verdict::Drop } else { Verdict::Pass };
    assert_eq!(verdict, expected, "{what} on {}: verdict (want {name})", hook_name(hook));
    let after = counts(dp);
    for o in 0..outcome::COUNT {
        let grew = after[o as usize] - before[o as usize];
        assert_eq!(
            grew,
            u64::from(o == want),
            "{what} on {}: counted as {}, want {name}",
            hook_name(hook),
            outcome::NAMES[o as usize]
        );
    }
}

/// Runs the frames `seq(hook)` builds in order through each program, each
/// with its expected outcome. The builder gets the hook so sequences can
/// use their own fragment ids.
fn on_both(dp: &mut Datapath, seq: impl Fn(u32) -> Vec<(Vec<u8>, u32, &'static str)>) {
    for hook in HOOKS {
        for (frame, want, what) in seq(hook) {
            check(dp, hook, &frame, want, what);
        }
    }
}

/// The rule stats of the first rule (dialed) and second (container).
fn dropped(dp: &Datapath) -> (u64, u64) {
    let rules = dp.rules();
    (rules[0].stats.dropped.packets, rules[1].stats.dropped.packets)
}

#[test]
fn a_syn_split_after_the_ports_is_dropped_as_evasive_and_its_fragments_too() {
    let mut dp = load("ev-tiny", "3306/tcp", RuleOptions::default());
    on_both(&mut dp, |hook| {
        let id = 100 + hook;
        // Issue 8: the first fragment holds 8 bytes of the TCP header
        // (ports, no flags); the rest comes at offset 1.
        let eight = Packet::syn(BLOCKED).frag_id(id).fragments(&[8]);
        // 16 bytes: flags present, header still short; the rest at offset 2.
        let sixteen = Packet::syn(BLOCKED).frag_id(id + 10).payload(&[0; 8]).fragments(&[16]);
        let six6 = Packet::syn(BLOCKED).v6().frag_id(id + 20).payload(&[0; 8]).fragments(&[16]);
        vec![
            (eight[0].clone(), DROPPED_EVASIVE, "8-byte first fragment"),
            (eight[1].clone(), DROPPED_EVASIVE, "its rest at offset 1"),
            (sixteen[0].clone(), DROPPED_EVASIVE, "16-byte first fragment"),
            (sixteen[1].clone(), DROPPED, "its rest, remembered"),
            (sixteen[1].clone(), PASSED_FRAGMENT, "the last fragment closed the datagram"),
            (six6[0].clone(), DROPPED_EVASIVE, "IPv6 16-byte first fragment"),
            (six6[1].clone(), DROPPED, "IPv6 rest, remembered"),
        ]
    });
    // Each first fragment and each remembered rest counts on its rule.
    assert_eq!(dropped(&dp), (5, 5));
    // A port without a rule: judged by its ports, passes.
    let open = Packet::syn(OPEN).fragments(&[8]);
    on_both(&mut dp, |_| {
        vec![
            (open[0].clone(), PASSED_NO_RULE, "8-byte first fragment to an open port"),
            // Offset 1 could rewrite the flags of any TCP header: dropped
            // whatever the port.
            (open[1].clone(), DROPPED_EVASIVE, "its rest at offset 1"),
        ]
    });
    let open16 = Packet::syn(OPEN).payload(&[0; 8]).fragments(&[16]);
    on_both(&mut dp, |_| {
        vec![
            (open16[0].clone(), PASSED_NO_RULE, "16-byte first fragment to an open port"),
            (open16[1].clone(), PASSED_FRAGMENT, "its rest"),
        ]
    });
}

#[test]
fn a_first_fragment_without_the_ports_is_dropped_as_evasive() {
    let mut dp = load("ev-noports", "3306/tcp", RuleOptions::default());
    on_both(&mut dp, |hook| {
        let id = 200 + hook;
        // The datagram ends before the ports (total length 22); the TCP
        // header sits after it, in what must be read as padding.
        let two = Packet::syn(BLOCKED).frag_id(id).fragment(0, true).ip_len(22).build();
        let none = Packet::syn(OPEN).frag_id(id).fragment(0, true).ip_len(20).build();
        // IPv6 (RFC 7112): the first fragment carries only a destination
        // options header after the fragment header, no upper-layer header.
        let v6 = Packet::syn(BLOCKED)
            .v6()
            .frag_id(id)
            .ext(IPV6_FRAGMENT, 0)
            .ext(IPV6_DEST_OPTS, 1)
            .fragments(&[16]);
        vec![
            (two, DROPPED_EVASIVE, "2 bytes of TCP"),
            (none, DROPPED_EVASIVE, "no TCP byte, to a port without a rule"),
            (v6[0].clone(), DROPPED_EVASIVE, "IPv6 first fragment without the TCP header"),
            // Nothing was remembered: the rest cannot be reassembled alone.
            (v6[1].clone(), PASSED_FRAGMENT, "its rest"),
        ]
    });
    assert_eq!(dropped(&dp), (0, 0), "not judged by a rule, so not counted on one");
}

#[test]
fn tiny_first_fragments_from_allowed_sources_or_to_dry_run_rules_pass() {
    let mut dp = Datapath::load("ev-tiny-allow");
    let allow = Datapath::allow(&["203.0.113.0/24"]);
    dp.block_with(Dialed, "3306/tcp", allow.clone());
    dp.block_with(Container, "3306/tcp", allow);
    dp.block_with(Dialed, "3307/tcp", RuleOptions::new([], true, false));
    dp.block_with(Container, "3307/tcp", RuleOptions::new([], true, false));
    on_both(&mut dp, |hook| {
        let id = 300 + hook;
        let allowed = Packet::syn(BLOCKED).src("203.0.113.9").frag_id(id).payload(&[0; 8]).fragments(&[16]);
        let other = Packet::syn(BLOCKED).src("203.0.114.9").frag_id(id).payload(&[0; 8]).fragments(&[16]);
        let dry = Packet::syn(3307).frag_id(id).payload(&[0; 8]).fragments(&[16]);
        vec![
            (allowed[0].clone(), PASSED_ALLOWED, "allow-listed source"),
            (allowed[1].clone(), PASSED_FRAGMENT, "its rest"),
            (other[0].clone(), DROPPED_EVASIVE, "a source off the list"),
            (other[1].clone(), DROPPED, "its rest"),
            (dry[0].clone(), PASSED_DRY_RUN, "dry-run rule"),
            (dry[1].clone(), PASSED_FRAGMENT, "its rest"),
        ]
    });
    let rules = dp.rules();
    let stats = |port: u16, scope| {
        rules.iter().find(|r| r.rule.ports.lo == port && r.rule.scope == scope).unwrap().stats
    };
    for scope in [Dialed, Container] {
        let s = stats(3306, scope);
        assert_eq!((s.allowed.packets, s.dropped.packets), (1, 2), "{scope:?}");
        assert_eq!(stats(3307, scope).dry_run.packets, 1, "{scope:?}");
    }
}

#[test]
fn a_tcp_fragment_at_offset_one_is_dropped_whatever_the_port() {
    let mut dp = load("ev-off1", "3306/tcp", RuleOptions::default());
    on_both(&mut dp, |_| {
        vec![
            (Packet::tcp(OPEN, ACK).fragment(1, false).build(), DROPPED_EVASIVE, "IPv4 TCP offset 1"),
            (Packet::tcp(OPEN, ACK).fragment(1, true).build(), DROPPED_EVASIVE, "IPv4 TCP offset 1, MF"),
            (Packet::tcp(OPEN, ACK).v6().fragment(1, false).build(), DROPPED_EVASIVE, "IPv6 TCP offset 1"),
            (
                Packet::tcp(OPEN, ACK).fragment(2, false).build(),
                PASSED_FRAGMENT,
                "offset 2 is past the flags",
            ),
            (Packet::udp(OPEN).fragment(1, false).build(), PASSED_FRAGMENT, "UDP at offset 1"),
            (Packet::udp(OPEN).v6().fragment(1, false).build(), PASSED_FRAGMENT, "IPv6 UDP at offset 1"),
        ]
    });
}

#[test]
fn overlapping_fragments_are_each_judged() {
    let mut dp = load("ev-overlap", "3306/tcp", RuleOptions::default());
    for v6 in [false, true] {
        on_both(&mut dp, |hook| {
            let id = 400 + hook + if v6 { 10 } else { 0 };
            let base = |flags| {
                let p = Packet::tcp(BLOCKED, flags).frag_id(id).payload(&[0; 20]);
                if v6 {
                    p.v6()
                } else {
                    p
                }
            };
            // An ACK to the blocked port, whole header in the first fragment:
            // not new. A rewrite of its flags at offset 1, and a second first
            // fragment carrying a SYN, each judged on its own.
            let ack = base(ACK).fragments(&[24]);
            let syn = base(SYN).fragments(&[24]);
            vec![
                (ack[0].clone(), PASSED_NOT_NEW, "first fragment of an ACK"),
                (base(SYN).fragment(1, true).build(), DROPPED_EVASIVE, "flags rewritten at offset 1"),
                (syn[0].clone(), DROPPED, "a SYN first fragment over it"),
                (ack[1].clone(), DROPPED, "the shared rest, remembered"),
            ]
        });
    }
}

#[test]
fn bytes_after_the_ip_datagram_are_never_read_as_headers() {
    let mut dp = load("ev-padding", "3306", RuleOptions::default());
    on_both(&mut dp, |_| {
        vec![
            // Total length 20: the SYN that follows is padding.
            (Packet::syn(BLOCKED).ip_len(20).build(), DROPPED_MALFORMED, "TCP header in the padding"),
            (Packet::syn(BLOCKED).ip_len(28).build(), DROPPED_MALFORMED, "8 TCP bytes, rest in the padding"),
            (Packet::udp(BLOCKED).ip_len(24).build(), DROPPED_MALFORMED, "4 UDP bytes, rest in the padding"),
            (Packet::syn(BLOCKED).v6().ip_len(8).build(), DROPPED_MALFORMED, "IPv6 payload of 8"),
            // Honest padding (a NIC pads short frames to 60 bytes).
            (Packet::syn(BLOCKED).padding(&[0; 6]).build(), DROPPED, "padded SYN"),
            (Packet::udp(OPEN).padding(&[0; 18]).build(), PASSED_NO_RULE, "padded UDP"),
            (Packet::udp(BLOCKED).v6().padding(&[0xff; 20]).build(), DROPPED, "padded IPv6 UDP"),
            // A first fragment whose datagram ends before the ports.
            (
                Packet::syn(BLOCKED).fragment(0, true).ip_len(20).build(),
                DROPPED_EVASIVE,
                "first fragment, ports in the padding",
            ),
        ]
    });
}

#[test]
fn ip_lengths_beyond_the_frame_are_malformed_and_zero_means_to_the_end() {
    let mut dp = load("ev-iplen", "3306", RuleOptions::default());
    on_both(&mut dp, |_| {
        vec![
            (Packet::syn(BLOCKED).ip_len(41).build(), DROPPED_MALFORMED, "total length one past the frame"),
            (Packet::syn(OPEN).ip_len(1500).build(), DROPPED_MALFORMED, "to an open port too"),
            (Packet::syn(BLOCKED).ip_len(19).build(), DROPPED_MALFORMED, "total length below the header"),
            (Packet::syn(BLOCKED).ihl(6).ip_len(22).build(), DROPPED_MALFORMED, "header length beyond it"),
            (Packet::syn(BLOCKED).v6().ip_len(21).build(), DROPPED_MALFORMED, "IPv6 payload one past"),
            // 0: to the end of the packet (BIG TCP GSO), judged as usual.
            (Packet::syn(BLOCKED).ip_len(0).build(), DROPPED, "IPv4 total length 0"),
            (Packet::syn(OPEN).ip_len(0).build(), PASSED_NO_RULE, "IPv4 total length 0, open port"),
            (Packet::syn(BLOCKED).v6().ip_len(0).build(), DROPPED, "IPv6 payload length 0"),
            (Packet::udp(BLOCKED).ip_len(0).ihl(15).build(), DROPPED, "total length 0 with options"),
        ]
    });
}

#[test]
fn ipv6_extension_header_chains_past_the_walk_or_the_packet_are_dropped() {
    let mut dp = load("ev-ext", "3306/tcp", RuleOptions::default());
    let chain = |n: usize, port: u16| (0..n).fold(Packet::syn(port).v6(), |p, _| p.ext(IPV6_DEST_OPTS, 0));
    // A hop-by-hop header whose length points past the packet.
    let mut past = Packet::syn(BLOCKED).v6().ext(IPV6_HOP_BY_HOP, 0).build();
    past[14 + 40 + 1] = 200;
    // A header that starts exactly at the datagram's end: the chain says
    // another header follows, the payload length says it has ended.
    let mut at_end = Packet::syn(OPEN).v6().ext(IPV6_HOP_BY_HOP, 0).ext(IPV6_DEST_OPTS, 0).build();
    at_end[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
    // A first fragment whose options run past the datagram.
    let mut frag_past =
        Packet::syn(BLOCKED).v6().ext(IPV6_FRAGMENT, 0).ext(IPV6_DEST_OPTS, 0).fragment(0, true).build();
    frag_past[14 + 48 + 1] = 100;
    on_both(&mut dp, |_| {
        vec![
            (chain(8, BLOCKED).build(), DROPPED, "8 headers: judged"),
            (chain(8, OPEN).build(), PASSED_NO_RULE, "8 headers, open port"),
            (chain(9, BLOCKED).build(), DROPPED_EVASIVE, "9 headers"),
            (chain(9, OPEN).build(), DROPPED_EVASIVE, "9 headers, open port: could hide any"),
            (chain(12, BLOCKED).build(), DROPPED_EVASIVE, "12 headers"),
            (past.clone(), DROPPED_MALFORMED, "a header length past the packet"),
            (at_end.clone(), DROPPED_MALFORMED, "a header beyond the payload length"),
            (frag_past.clone(), DROPPED_EVASIVE, "a first fragment whose options run past it"),
            // A later fragment ends the walk, whatever follows.
            (
                (0..9)
                    .fold(Packet::syn(BLOCKED).v6().fragment(5, true), |p, _| p.ext(IPV6_DEST_OPTS, 0))
                    .build(),
                DROPPED_EVASIVE,
                "9 headers before a later fragment's header",
            ),
        ]
    });
}

#[test]
fn destination_options_after_the_fragment_header_key_first_and_later_fragments_alike() {
    let mut dp = load("ev-destkey", "3306/tcp", RuleOptions::default());
    on_both(&mut dp, |hook| {
        let id = 500 + hook;
        let frags = Packet::syn(BLOCKED)
            .v6()
            .frag_id(id)
            .ext(IPV6_FRAGMENT, 0)
            .ext(IPV6_DEST_OPTS, 0)
            .payload(&[0; 36])
            .fragments(&[32, 48]);
        vec![
            (frags[0].clone(), DROPPED, "first fragment: options then the SYN"),
            (frags[1].clone(), DROPPED, "middle, keyed by the fragment header's next header"),
            (frags[2].clone(), DROPPED, "last"),
            (frags[2].clone(), PASSED_FRAGMENT, "closed"),
        ]
    });
    // Remembered under the fragment header's next header (60), the same
    // for every fragment; the upper layer (TCP) would miss the later ones.
    let key = FragKey {
        src: "2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        dst: "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        id: 600,
        proto: u32::from(IPV6_DEST_OPTS),
    };
    let first = Packet::syn(BLOCKED)
        .v6()
        .payload(&[0; 36])
        .frag_id(600)
        .ext(IPV6_FRAGMENT, 0)
        .ext(IPV6_DEST_OPTS, 0)
        .fragments(&[32]);
    assert_eq!(dp.xdp(&first[0]), Verdict::Drop);
    let slot = dp.frags().get(&dp.frag_slot(&key), 0).unwrap();
    assert_eq!((slot.key, slot.rule_id), (key, 1));
}

#[test]
fn a_v4_mapped_ipv6_source_is_dropped_before_any_allow_list_or_flow() {
    let mut dp = Datapath::load("ev-mapped");
    let allow = Datapath::allow(&["203.0.113.0/24"]);
    dp.block_with(Dialed, "22/tcp", allow.clone());
    dp.block_with(Container, "22/tcp", allow);
    dp.block(Dialed, "5353/udp");
    dp.block(Container, "5353/udp");
    // The host and a container query 198.18.0.2:53 from port 5353.
    let query = Packet::udp(53).sport(5353).src("198.18.0.1").dst("198.18.0.2").build();
    dp.track(program_names::UPLINK_TRACK, &query);
    dp.track(program_names::BRIDGE_TRACK, &query);
    let reply = Packet::udp(5353).sport(53).src("198.18.0.2").dst("198.18.0.1");
    on_both(&mut dp, |_| {
        vec![
            (Packet::syn(22).src("203.0.113.9").build(), PASSED_ALLOWED, "IPv4 source on the allow-list"),
            (
                Packet::syn(22).src("203.0.113.9").v4_mapped_src().build(),
                DROPPED_EVASIVE,
                "the same, v4-mapped",
            ),
            (reply.build(), PASSED_NOT_NEW, "IPv4 reply to the recorded flow"),
            (reply.clone().v4_mapped_src().build(), DROPPED_EVASIVE, "the same reply, v4-mapped"),
            (
                Packet::syn(OPEN).src("198.18.0.9").v4_mapped_src().build(),
                DROPPED_EVASIVE,
                "to a port without a rule",
            ),
            // ::198.18.0.9 (v4-compatible, deprecated) is a plain IPv6 address.
            (Packet::syn(OPEN).v6().src("::198.18.0.9").build(), PASSED_NO_RULE, "v4-compatible source"),
        ]
    });
}

#[test]
fn a_third_vlan_tag_is_dropped_as_evasive() {
    let mut dp = load("ev-vlan", "3306/tcp", RuleOptions::default());
    let tags = |p: Packet, n: u16| {
        (0..n).fold(p, |p, i| p.vlan(if i == 0 { ETH_P_8021AD } else { ETH_P_8021Q }, i + 1))
    };
    on_both(&mut dp, |_| {
        vec![
            (tags(Packet::syn(BLOCKED), 2).build(), DROPPED, "two tags: judged"),
            (tags(Packet::syn(OPEN), 2).build(), PASSED_NO_RULE, "two tags, open port"),
            (tags(Packet::syn(BLOCKED), 3).build(), DROPPED_EVASIVE, "three tags"),
            (tags(Packet::syn(OPEN), 3).build(), DROPPED_EVASIVE, "three tags, open port"),
            (tags(Packet::syn(BLOCKED).v6(), 3).build(), DROPPED_EVASIVE, "three tags, IPv6"),
            (
                tags(Packet::syn(BLOCKED).ether_type(ETH_P_ARP), 2).build(),
                PASSED_OTHER,
                "ARP behind two tags",
            ),
        ]
    });
}

#[test]
fn icmp_errors_quoting_a_blocked_port_and_other_protocols_pass_as_other() {
    let mut dp = load("ev-icmp", "3306", RuleOptions::default());
    let inner = Packet::syn(BLOCKED).src("198.18.0.1").dst("198.18.0.9");
    on_both(&mut dp, |_| {
        vec![
            (Packet::icmp_error(&inner).build(), PASSED_OTHER, "ICMP port unreachable quoting a SYN"),
            (Packet::icmp_error(&Packet::udp(BLOCKED)).build(), PASSED_OTHER, "quoting UDP"),
            (Packet::icmp_error(&inner.clone().v6()).build(), PASSED_OTHER, "ICMPv6 quoting a SYN"),
            (Packet::syn(BLOCKED).ip_proto(IPPROTO_ICMP).build(), PASSED_OTHER, "ICMP echo"),
            (Packet::syn(BLOCKED).v6().ip_proto(IPPROTO_ICMPV6).build(), PASSED_OTHER, "ICMPv6 echo"),
            (Packet::syn(BLOCKED).ether_type(ETH_P_ARP).build(), PASSED_OTHER, "ARP"),
            (
                Packet::syn(BLOCKED).ip_proto(IPPROTO_ICMP).fragment(0, true).build(),
                PASSED_OTHER,
                "ICMP first fragment",
            ),
            (
                Packet::syn(BLOCKED).ip_proto(47).fragment(3, false).build(),
                PASSED_FRAGMENT,
                "GRE later fragment",
            ),
        ]
    });
}

#[test]
fn truncated_fragments_and_options_are_malformed_or_evasive_at_every_byte() {
    let mut dp = load("ev-trunc", "3306", RuleOptions::default());
    // Cut short anywhere, a whole packet's lengths no longer add up; so do a
    // first fragment's (its total length is still the original).
    let frames = [
        Packet::syn(BLOCKED).tcp_options(&[2, 4, 5, 0xb4, 1, 3, 3, 7]).build(),
        Packet::syn(BLOCKED).fragments(&[8])[0].clone(),
        Packet::udp(BLOCKED)
            .v6()
            .ext(IPV6_FRAGMENT, 0)
            .ext(IPV6_DEST_OPTS, 0)
            .payload(&[0; 16])
            .fragments(&[16])[0]
            .clone(),
    ];
    for hook in HOOKS {
        for full in &frames {
            // The kernel refuses skb test runs shorter than Ethernet and
            // the IP header the ether type names.
            let v6 = full[12..14] == ETH_P_IPV6.to_be_bytes();
            let from = match (hook == hook::XDP, v6) {
                (true, _) => 14,
                (false, false) => 34,
                (false, true) => 54,
            };
            for len in from..full.len() {
                check(
                    &mut dp,
                    hook,
                    &full[..len],
                    DROPPED_MALFORMED,
                    &format!("{len} of {} bytes", full.len()),
                );
            }
        }
    }
}

#[test]
fn legitimate_traffic_of_the_same_shapes_passes() {
    let mut dp = load("ev-legit", "3306", RuleOptions::default());
    // MSS, SACK permitted, timestamps, window scale: what Linux sends.
    let options = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    on_both(&mut dp, |hook| {
        let id = 700 + hook;
        let udp = Packet::udp(OPEN).frag_id(id).payload(&[1; 3000]).fragments(&[1480, 2960]);
        let udp6 = Packet::udp(OPEN).v6().frag_id(id).payload(&[1; 3000]).fragments(&[1448, 2896]);
        let blocked = Packet::udp(BLOCKED).frag_id(id + 10).payload(&[1; 2000]).fragments(&[1480]);
        vec![
            (udp[0].clone(), PASSED_NO_RULE, "fragmented UDP to an open port, first"),
            (udp[1].clone(), PASSED_FRAGMENT, "middle"),
            (udp[2].clone(), PASSED_FRAGMENT, "last"),
            (udp6[0].clone(), PASSED_NO_RULE, "IPv6 fragmented UDP, first"),
            (udp6[1].clone(), PASSED_FRAGMENT, "IPv6 middle"),
            (udp6[2].clone(), PASSED_FRAGMENT, "IPv6 last"),
            (blocked[0].clone(), DROPPED, "fragmented UDP to a blocked port"),
            (blocked[1].clone(), DROPPED, "its rest"),
            (Packet::syn(OPEN).tcp_options(&options).build(), PASSED_NO_RULE, "SYN with options"),
            (Packet::syn(BLOCKED).tcp_options(&options).build(), DROPPED, "SYN with options, blocked"),
            (Packet::tcp(BLOCKED, SYN | ACK).tcp_options(&options).build(), PASSED_NOT_NEW, "SYN-ACK reply"),
            (Packet::tcp(BLOCKED, ACK | PSH).payload(b"data").build(), PASSED_NOT_NEW, "established"),
            (Packet::tcp(BLOCKED, ACK | ECE | CWR).build(), PASSED_NOT_NEW, "ACK with ECN flags"),
            (Packet::tcp(BLOCKED, SYN | ECE | CWR).build(), DROPPED, "ECN-setup SYN"),
            (Packet::udp(OPEN).v6().ext(IPV6_HOP_BY_HOP, 0).build(), PASSED_NO_RULE, "IPv6 hop-by-hop UDP"),
            (
                Packet::syn(BLOCKED).v6().ext(IPV6_HOP_BY_HOP, 0).build(),
                DROPPED,
                "IPv6 hop-by-hop SYN, blocked",
            ),
            (Packet::udp(BLOCKED).v6().ext(IPV6_FRAGMENT, 0).build(), DROPPED, "IPv6 atomic fragment"),
        ]
    });
}
