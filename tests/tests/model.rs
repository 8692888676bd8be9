//! The reference model (dockblock_agent::model) on hand-built frames, one
//! test per rule of spec/fail-closed.md. Pure: no kernel involved (the fuzz
//! holds the model against the kernel).

use dockblock_agent::{
    model::{Judgement, Model, Verdict},
    ports::PortSpec,
    rules::{Rule, RuleOptions, Scope},
};
use dockblock_common::{config_flag, hook, outcome::*, scope, Config, FlowKey, FRAG_KEY_WORDS};
use dockblock_tests::packet::*;

fn rule(id: u32, scope: Scope, ports: &str, options: RuleOptions) -> Rule {
    Rule { id, scope, ports: PortSpec::parse(ports).unwrap(), options, target: Default::default() }
}

fn config() -> Config {
    Config { frag_mask: 63, frag_seed: [7; FRAG_KEY_WORDS], ..Config::default() }
}

/// Rule 1: dialed 3306/tcp; rule 2: container 53/udp; rule 3: dialed
/// 5000/udp; rule 4: dialed 8443/tcp allow-listed; rule 5: dialed 9000 dry-run.
fn model() -> Model {
    let allow = RuleOptions::new(
        ["203.0.113.0/24".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()],
        false,
        false,
    );
    let rules = [
        rule(1, Scope::Dialed, "3306/tcp", RuleOptions::default()),
        rule(2, Scope::Container, "53/udp", RuleOptions::default()),
        rule(3, Scope::Dialed, "5000/udp", RuleOptions::default()),
        rule(4, Scope::Dialed, "8443/tcp", allow),
        rule(5, Scope::Dialed, "9000", RuleOptions::new([], true, true)),
    ];
    Model::new(&rules, &config())
}

fn xdp(m: &mut Model, frame: &[u8]) -> Judgement {
    m.judge(hook::XDP, frame, false)
}

fn tc(m: &mut Model, frame: &[u8]) -> Judgement {
    m.judge(hook::TC, frame, false)
}

#[track_caller]
fn is(j: Judgement, outcome: u32, rule_id: Option<u32>) {
    assert_eq!((j.outcome_name(), j.rule_id), (NAMES[outcome as usize], rule_id), "{j:?}");
    let want = if is_drop(outcome) { Verdict::Drop } else { Verdict::Pass };
    assert_eq!(j.verdict, want);
}

/// Sets a big-endian u16 at `at`.
fn set16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn rules_decide_by_scope_protocol_and_port() {
    let mut m = model();
    is(xdp(&mut m, &Packet::syn(3306).build()), DROPPED, Some(1));
    is(tc(&mut m, &Packet::syn(3306).build()), PASSED_NO_RULE, None);
    is(xdp(&mut m, &Packet::udp(3306).build()), PASSED_NO_RULE, None);
    is(xdp(&mut m, &Packet::syn(3307).build()), PASSED_NO_RULE, None);
    is(tc(&mut m, &Packet::udp(53).build()), DROPPED, Some(2));
    is(xdp(&mut m, &Packet::udp(53).build()), PASSED_NO_RULE, None);
    is(xdp(&mut m, &Packet::syn(3306).v6().build()), DROPPED, Some(1));
}

#[test]
fn host_traffic_passes_at_the_bridge_unless_judged() {
    let mut m = model();
    let query = Packet::udp(53).build();
    is(m.judge(hook::TC, &query, true), PASSED_HOST, None);
    is(m.judge(hook::XDP, &Packet::syn(3306).build(), true), DROPPED, Some(1));
    let config = Config { flags: config_flag::JUDGE_HOST_TRAFFIC, ..config() };
    let mut judged = Model::new(m.rules(), &config);
    is(judged.judge(hook::TC, &query, true), DROPPED, Some(2));
}

#[test]
fn ethernet_short_non_ip_and_vlan_tags() {
    let mut m = model();
    let syn = Packet::syn(3306).build();
    for len in 0..14 {
        is(xdp(&mut m, &syn[..len]), PASSED_OTHER, None);
    }
    is(xdp(&mut m, &Packet::syn(3306).ether_type(ETH_P_ARP).build()), PASSED_OTHER, None);
    let one = Packet::syn(3306).vlan(ETH_P_8021Q, 1).build();
    let two = Packet::syn(3306).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).build();
    let three = Packet::syn(3306).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).vlan(ETH_P_8021Q, 3).build();
    is(xdp(&mut m, &one), DROPPED, Some(1));
    is(xdp(&mut m, &two), DROPPED, Some(1));
    is(xdp(&mut m, &three), DROPPED_EVASIVE, None);
    is(xdp(&mut m, &three[..22]), DROPPED_EVASIVE, None);
    // A tag cut short cannot carry IP.
    for len in [15, 17, 19, 21] {
        is(xdp(&mut m, &two[..len]), PASSED_OTHER, None);
        is(xdp(&mut m, &three[..len]), PASSED_OTHER, None);
    }
    is(xdp(&mut m, &two[..22]), DROPPED_MALFORMED, None);
}

#[test]
fn ipv4_header_checks_are_malformed() {
    let mut m = model();
    let syn = Packet::syn(3306).build();
    for len in 14..34 {
        is(xdp(&mut m, &syn[..len]), DROPPED_MALFORMED, None);
    }
    is(xdp(&mut m, &Packet::syn(3306).ip_version(6).build()), DROPPED_MALFORMED, None);
    for ihl in 0..5 {
        is(xdp(&mut m, &Packet::syn(3306).ihl(ihl).build()), DROPPED_MALFORMED, None);
    }
    let mut bent = syn.clone();
    set16(&mut bent, 16, 19);
    is(xdp(&mut m, &bent), DROPPED_MALFORMED, None);
    set16(&mut bent, 16, 41);
    is(xdp(&mut m, &bent), DROPPED_MALFORMED, None);
    // Options (IHL 15) beyond the total length.
    let mut long = Packet::syn(3306).ihl(15).build();
    set16(&mut long, 16, 40);
    is(xdp(&mut m, &long), DROPPED_MALFORMED, None);
    is(xdp(&mut m, &Packet::syn(3306).ihl(15).build()), DROPPED, Some(1));
}

#[test]
fn ipv4_total_length_bounds_every_read_and_zero_means_to_the_end() {
    let mut m = model();
    let syn = Packet::syn(3306).build();
    let mut big_tcp = syn.clone();
    set16(&mut big_tcp, 16, 0);
    is(xdp(&mut m, &big_tcp), DROPPED, Some(1));
    // Ethernet padding after the datagram is never read as a header.
    let mut padded = syn[..34 + 10].to_vec();
    set16(&mut padded, 16, 30);
    padded.extend_from_slice(&syn[44..]);
    is(xdp(&mut m, &padded), DROPPED_MALFORMED, None);
    let mut zero_padded = syn.clone();
    zero_padded.extend_from_slice(&[0; 20]);
    is(xdp(&mut m, &zero_padded), DROPPED, Some(1));
    assert_eq!(m.tally().hook(hook::XDP, DROPPED).bytes, (syn.len() * 2 + 20) as u64);
}

#[test]
fn ipv6_header_checks_and_v4_mapped_sources() {
    let mut m = model();
    let syn = Packet::syn(3306).v6().build();
    for len in 14..54 {
        is(xdp(&mut m, &syn[..len]), DROPPED_MALFORMED, None);
    }
    is(xdp(&mut m, &Packet::syn(3306).v6().ip_version(4).build()), DROPPED_MALFORMED, None);
    let mut long = syn.clone();
    set16(&mut long, 18, 21);
    is(xdp(&mut m, &long), DROPPED_MALFORMED, None);
    let mut to_end = syn.clone();
    set16(&mut to_end, 18, 0);
    is(xdp(&mut m, &to_end), DROPPED, Some(1));
    let mut short = syn.clone();
    set16(&mut short, 18, 19);
    is(xdp(&mut m, &short), DROPPED_MALFORMED, None);
    // v4-mapped: would match IPv4 allow-list entries and flows.
    let mapped = Packet::syn(8443).v6().src("::ffff:203.0.113.9").build();
    is(xdp(&mut m, &mapped), DROPPED_EVASIVE, None);
    let mapped = Packet::syn(80).v6().src("::ffff:198.18.0.9").build();
    is(xdp(&mut m, &mapped), DROPPED_EVASIVE, None);
    // A compatible (not mapped) address is an ordinary IPv6 source.
    is(xdp(&mut m, &Packet::syn(80).v6().src("::198.18.0.9").build()), PASSED_NO_RULE, None);
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_eight() {
    let mut m = model();
    let chains: [&[(u8, u8)]; 5] = [
        &[(IPV6_HOP_BY_HOP, 0)],
        &[(IPV6_HOP_BY_HOP, 0), (IPV6_ROUTING, 2), (IPV6_DEST_OPTS, 1)],
        &[(IPV6_AUTH, 1), (IPV6_DEST_OPTS, 0)],
        &[(IPV6_DEST_OPTS, 0); 8],
        &[(IPV6_FRAGMENT, 0), (IPV6_DEST_OPTS, 0)],
    ];
    for chain in chains {
        let p = chain.iter().fold(Packet::syn(3306).v6(), |p, (k, x)| p.ext(*k, *x));
        is(xdp(&mut m, &p.build()), DROPPED, Some(1));
    }
    let nine = (0..9).fold(Packet::syn(3306).v6(), |p, _| p.ext(IPV6_DEST_OPTS, 0));
    is(xdp(&mut m, &nine.build()), DROPPED_EVASIVE, None);
    let nine_to_icmp = (0..9).fold(Packet::syn(80).v6().ip_proto(IPPROTO_ICMPV6), |p, _| p.ext(60, 0));
    is(xdp(&mut m, &nine_to_icmp.build()), DROPPED_EVASIVE, None);
    // Every cut inside the chain's headers is malformed.
    let chained = Packet::syn(3306).v6().ext(IPV6_HOP_BY_HOP, 1).ext(IPV6_AUTH, 0).build();
    for end in 54..chained.len() {
        let mut cut = chained[..end].to_vec();
        set16(&mut cut, 18, (end - 54) as u16);
        is(xdp(&mut m, &cut), DROPPED_MALFORMED, None);
    }
    // An extension header whose length runs past the datagram: the
    // transport header check catches it.
    let mut past = Packet::syn(3306).v6().ext(IPV6_DEST_OPTS, 0).build();
    past[54 + 1] = 200;
    is(xdp(&mut m, &past), DROPPED_MALFORMED, None);
}

#[test]
fn a_later_fragment_ends_the_walk_even_at_the_eighth_header() {
    let mut m = model();
    let p = (0..7).fold(Packet::udp(5000).v6(), |p, _| p.ext(IPV6_DEST_OPTS, 0));
    is(xdp(&mut m, &p.clone().fragment(9, true).build()), PASSED_FRAGMENT, None);
    // Eight then a fragment header: the fragment is a 9th header.
    let p = (0..8).fold(Packet::udp(5000).v6(), |p, _| p.ext(IPV6_DEST_OPTS, 0));
    is(xdp(&mut m, &p.fragment(9, true).build()), DROPPED_EVASIVE, None);
}

#[test]
fn fragments_of_a_dropped_datagram_are_dropped_until_the_last() {
    let mut m = model();
    for v6 in [false, true] {
        let base = if v6 { Packet::udp(5000).v6() } else { Packet::udp(5000) };
        let first = base.clone().fragment(0, true).payload(&[0; 64]).build();
        let middle = base.clone().fragment(9, true).build();
        let last = base.clone().fragment(18, false).build();
        is(xdp(&mut m, &middle), PASSED_FRAGMENT, None);
        is(xdp(&mut m, &first), DROPPED, Some(3));
        assert_eq!(m.frag_slots().len(), 1);
        is(xdp(&mut m, &middle), DROPPED, Some(3));
        is(xdp(&mut m, &base.clone().fragment(9, true).frag_id(77).build()), PASSED_FRAGMENT, None);
        is(xdp(&mut m, &last), DROPPED, Some(3));
        assert!(m.frag_slots().is_empty(), "the last fragment forgot the datagram");
        is(xdp(&mut m, &last), PASSED_FRAGMENT, None);
        // The table is shared by both hooks.
        is(xdp(&mut m, &first), DROPPED, Some(3));
        is(tc(&mut m, &middle), DROPPED, Some(3));
        is(tc(&mut m, &last), DROPPED, Some(3));
    }
    assert_eq!(m.tally().rule(3).dropped.packets, 12);
}

#[test]
fn tcp_at_offset_one_and_tiny_first_fragments_are_evasive() {
    let mut m = model();
    for v6 in [false, true] {
        let syn = if v6 { Packet::syn(3306).v6() } else { Packet::syn(3306) };
        is(xdp(&mut m, &syn.clone().fragment(1, true).build()), DROPPED_EVASIVE, None);
        is(xdp(&mut m, &syn.clone().fragment(1, false).build()), DROPPED_EVASIVE, None);
        is(xdp(&mut m, &syn.clone().fragment(2, true).build()), PASSED_FRAGMENT, None);
        let udp = if v6 { Packet::udp(5000).v6() } else { Packet::udp(5000) };
        is(xdp(&mut m, &udp.fragment(1, true).build()), PASSED_FRAGMENT, None);
        // A first fragment cut (with its length field) inside the transport header.
        let full = syn.clone().fragment(0, true).build();
        let l4 = full.len() - 20;
        for keep in 0..20 {
            let mut cut = full[..l4 + keep].to_vec();
            if v6 {
                set16(&mut cut, 18, (l4 + keep - 54) as u16);
            } else {
                set16(&mut cut, 16, (l4 + keep - 14) as u16);
            }
            let j = xdp(&mut m, &cut);
            match keep {
                0..4 => is(j, DROPPED_EVASIVE, None),
                _ => is(j, DROPPED_EVASIVE, Some(1)),
            }
        }
        m.clear_frags();
    }
    // Ports but no flags: to a port without a rule it passes.
    let mut cut = Packet::syn(80).fragment(0, true).build();
    cut.truncate(34 + 4);
    set16(&mut cut, 16, 24);
    is(xdp(&mut m, &cut), PASSED_NO_RULE, None);
}

#[test]
fn a_partial_first_fragment_is_remembered_and_allow_lists_apply() {
    let mut m = model();
    let cut = |p: Packet| {
        let mut f = p.fragment(0, true).build();
        f.truncate(34 + 6);
        set16(&mut f, 16, 26);
        f
    };
    is(xdp(&mut m, &cut(Packet::syn(3306))), DROPPED_EVASIVE, Some(1));
    is(xdp(&mut m, &Packet::syn(3306).fragment(9, false).build()), DROPPED, Some(1));
    is(xdp(&mut m, &cut(Packet::syn(8443).src("203.0.113.5"))), PASSED_ALLOWED, Some(4));
    is(xdp(&mut m, &cut(Packet::syn(9000))), PASSED_DRY_RUN, Some(5));
    // Flags unknown: even an ACK counts as new.
    is(xdp(&mut m, &cut(Packet::tcp(3306, ACK))), DROPPED_EVASIVE, Some(1));
}

#[test]
fn other_protocols_pass_unjudged() {
    let mut m = model();
    is(xdp(&mut m, &Packet::syn(3306).ip_proto(IPPROTO_ICMP).build()), PASSED_OTHER, None);
    is(xdp(&mut m, &Packet::syn(3306).v6().ip_proto(IPPROTO_ICMPV6).build()), PASSED_OTHER, None);
    // A first fragment of another protocol too.
    is(xdp(&mut m, &Packet::syn(3306).ip_proto(50).fragment(0, true).build()), PASSED_OTHER, None);
}

#[test]
fn transport_headers_cut_short_are_malformed() {
    let mut m = model();
    for full in [Packet::syn(3306).build(), Packet::udp(5000).build()] {
        for keep in 34..full.len() {
            let mut cut = full[..keep].to_vec();
            set16(&mut cut, 16, (keep - 14) as u16);
            is(xdp(&mut m, &cut), DROPPED_MALFORMED, None);
        }
    }
}

#[test]
fn tcp_replies_and_udp_replies_to_flows_are_not_new() {
    let mut m = model();
    // TCP: before any rule is looked up, so on no rule.
    for flags in [SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, 0] {
        is(xdp(&mut m, &Packet::tcp(3306, flags).build()), PASSED_NOT_NEW, None);
    }
    is(xdp(&mut m, &Packet::tcp(3306, SYN | FIN).build()), DROPPED, Some(1));
    let reply = Packet::udp(5000).sport(53).build();
    is(xdp(&mut m, &reply), DROPPED, Some(3));
    let remote = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
    m.add_flow(FlowKey { remote, remote_port: 53, local_port: 5000, scope: scope::DIALED });
    is(xdp(&mut m, &reply), PASSED_NOT_NEW, Some(3));
    is(xdp(&mut m, &Packet::udp(5000).sport(54).build()), DROPPED, Some(3));
    is(xdp(&mut m, &Packet::udp(5000).sport(53).src("198.18.0.3").build()), DROPPED, Some(3));
    // Flows are per scope.
    let mut m = model();
    let remote = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
    m.add_flow(FlowKey { remote, remote_port: 40000, local_port: 53, scope: scope::DIALED });
    is(tc(&mut m, &Packet::udp(53).build()), DROPPED, Some(2));
    m.add_flow(FlowKey { remote, remote_port: 40000, local_port: 53, scope: scope::CONTAINER });
    is(tc(&mut m, &Packet::udp(53).build()), PASSED_NOT_NEW, Some(2));
}

#[test]
fn allow_lists_and_dry_run() {
    let mut m = model();
    for (src, want) in [
        ("203.0.113.9", PASSED_ALLOWED),
        ("203.0.114.9", DROPPED),
        ("2001:db8:1:ff::5", PASSED_ALLOWED),
        ("2001:db8:2::5", DROPPED),
    ] {
        is(xdp(&mut m, &Packet::syn(8443).src(src).build()), want, Some(4));
    }
    is(xdp(&mut m, &Packet::syn(9000).build()), PASSED_DRY_RUN, Some(5));
    is(xdp(&mut m, &Packet::udp(9000).build()), PASSED_DRY_RUN, Some(5));
    is(xdp(&mut m, &Packet::tcp(9000, ACK).build()), PASSED_NOT_NEW, None);
    // A dry-run first fragment is not remembered.
    is(xdp(&mut m, &Packet::udp(9000).fragment(0, true).build()), PASSED_DRY_RUN, Some(5));
    is(xdp(&mut m, &Packet::udp(9000).fragment(9, false).build()), PASSED_FRAGMENT, None);
    assert!(m.rule(5).unwrap().options.log);
}

#[test]
fn counters_per_hook_outcome_and_rule() {
    let mut m = model();
    let syn = Packet::syn(3306).payload(&[0; 100]).build();
    for _ in 0..3 {
        xdp(&mut m, &syn);
        xdp(&mut m, &Packet::tcp(3306, ACK).build());
        tc(&mut m, &Packet::syn(22).build());
    }
    let t = m.tally();
    assert_eq!(t.hook(hook::XDP, DROPPED).packets, 3);
    assert_eq!(t.hook(hook::XDP, DROPPED).bytes, 3 * syn.len() as u64);
    assert_eq!(t.hook(hook::XDP, PASSED_NOT_NEW).packets, 3);
    assert_eq!(t.hook(hook::TC, PASSED_NO_RULE).packets, 3);
    // The ACKs pass before the rule is looked up: not on the rule.
    assert_eq!((t.rule(1).dropped.packets, t.rule(1).passed.packets), (3, 0));
    assert_eq!(t.rule(1).dropped.bytes, 3 * syn.len() as u64);
    assert_eq!(t.rule(2), Default::default());
}

#[test]
fn the_narrowest_rule_owns_a_port() {
    let rules = [
        rule(1, Scope::Dialed, "1-65535/tcp", RuleOptions::default()),
        rule(2, Scope::Dialed, "3306/tcp", RuleOptions::new([], true, false)),
    ];
    let mut m = Model::new(&rules, &config());
    is(xdp(&mut m, &Packet::syn(3306).build()), PASSED_DRY_RUN, Some(2));
    is(xdp(&mut m, &Packet::syn(22).build()), DROPPED, Some(1));
    is(xdp(&mut m, &Packet::syn(65535).build()), DROPPED, Some(1));
}

/// Rule 8, veth: a scoped entry decides for packets from its interface
/// (exact port, then every port; rule id 0: no rule), only on a veth whose
/// state has `HAS_SCOPED`, never for the host; the UDP tracker records
/// every flow of such a veth.
#[test]
fn veth_scoped_entries_decide_for_their_interface() {
    use dockblock_agent::model::At;
    use dockblock_common::{
        proto, veth_flag, PortRule, VethRuleKey, VethScopedKey, VethState, VETH_ANY_PORT,
    };
    let (veth, b, other) = (40, 98, 99);
    let mut m = model();
    let state = |flags| VethState { flags, _pad: 0, container: [1; 32] };
    let rule = |id| PortRule { rule_id: id, flags: 0 };
    m.set_veth_rule(VethRuleKey { ifindex: veth, proto: proto::TCP, port: 3306 }, rule(1));
    m.set_veth_scoped_rule(VethScopedKey { ifindex: veth, proto: proto::TCP, port: 3306, from: b }, rule(4));
    m.set_veth_scoped_rule(
        VethScopedKey { ifindex: veth, proto: proto::TCP, port: VETH_ANY_PORT, from: b },
        rule(3),
    );
    m.set_veth_scoped_rule(
        VethScopedKey { ifindex: veth, proto: proto::TCP, port: 22, from: b },
        PortRule::default(),
    );
    let at = |m: &mut Model, port: u16, from: u32| {
        m.judge_at(At::Veth { ifindex: veth, from }, &Packet::syn(port).build())
    };
    m.set_veth(veth, state(veth_flag::REVIEWED | veth_flag::HAS_PORTS));
    is(at(&mut m, 3306, b), DROPPED, Some(1));
    m.set_veth(veth, state(veth_flag::REVIEWED | veth_flag::HAS_PORTS | veth_flag::HAS_SCOPED));
    is(at(&mut m, 3306, b), DROPPED, Some(4));
    is(at(&mut m, 3306, other), DROPPED, Some(1));
    is(at(&mut m, 8080, b), DROPPED, Some(3));
    is(at(&mut m, 8080, other), PASSED_NO_RULE, None);
    is(at(&mut m, 22, b), PASSED_NO_RULE, None);
    is(at(&mut m, 3306, 0), PASSED_HOST, None);
    // Tracking: every UDP flow of a veth with scoped entries (5353 has no
    // rule of its own), so the reply passes the scoped wildcard on B.
    m.set_veth_scoped_rule(
        VethScopedKey { ifindex: veth, proto: proto::UDP, port: VETH_ANY_PORT, from: b },
        rule(3),
    );
    let reply = Packet::udp(5353).sport(53).src("198.18.0.1").dst("198.18.0.2").build();
    is(m.judge_at(At::Veth { ifindex: veth, from: b }, &reply), DROPPED, Some(3));
    m.track_veth(veth, &Packet::udp(53).sport(5353).src("198.18.0.2").dst("198.18.0.1").build());
    is(m.judge_at(At::Veth { ifindex: veth, from: b }, &reply), PASSED_NOT_NEW, Some(3));
}
