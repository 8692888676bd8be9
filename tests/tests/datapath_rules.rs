//! Datapath tests for the rule model: allow-lists, dry-run, logging, UDP
//! replies, host traffic, the atomic generation switch, apply.

use dockblock_agent::{
    addr::addr_from_mapped,
    loader::Capacities,
    ports::PortSpec,
    rulefile,
    rules::{
        RuleOptions, RuleSpec,
        Scope::{Container, Dialed},
    },
};
use dockblock_common::{config_flag, hook, outcome, port_index, program_names, proto, scope, PortRule};
use dockblock_tests::{
    datapath::{Datapath, From, Verdict::*},
    packet::*,
};

#[test]
fn allow_listed_sources_pass_others_are_dropped() {
    let mut dp = Datapath::load("allow");
    dp.block_with(Dialed, "3306/tcp", Datapath::allow(&["203.0.113.0/24", "2001:db8:1::/48", "198.18.0.7"]));
    for (src, want) in [
        ("203.0.113.9", Pass),
        ("203.0.114.9", Drop),
        ("198.18.0.7", Pass),
        ("198.18.0.8", Drop),
        ("2001:db8:1:ff::5", Pass),
        ("2001:db8:2::5", Drop),
    ] {
        assert_eq!(dp.xdp(&Packet::syn(3306).src(src).build()), want, "{src}");
    }
    let stats = dp.rules()[0].stats;
    assert_eq!((stats.allowed.packets, stats.dropped.packets), (3, 3));
    assert_eq!(dp.xdp_counter(outcome::PASSED_ALLOWED).packets, 3);
    // The allow-list is per rule: another rule on another port has none.
    dp.block(Dialed, "3307/tcp");
    assert_eq!(dp.xdp(&Packet::syn(3307).src("203.0.113.9").build()), Drop);
    // Changing the allow-list is one atomic switch too.
    dp.block_with(Dialed, "3306/tcp", Datapath::allow(&["198.18.0.8"]));
    assert_eq!(dp.xdp(&Packet::syn(3306).src("198.18.0.8").build()), Pass);
    assert_eq!(dp.xdp(&Packet::syn(3306).src("203.0.113.9").build()), Drop);
}

#[test]
fn dry_run_counts_and_logs_but_drops_nothing() {
    let mut dp = Datapath::load("dry");
    dp.block_with(Dialed, "8443/tcp", RuleOptions::new([], true, true));
    assert_eq!(dp.xdp(&Packet::syn(8443).build()), Pass);
    assert_eq!(dp.xdp(&Packet::tcp(8443, ACK).build()), Pass);
    let stats = dp.rules()[0].stats;
    // The ACK passes before any rule is looked up: on no rule.
    assert_eq!((stats.dry_run.packets, stats.dropped.packets, stats.passed.packets), (1, 0, 0));
    assert_eq!(dp.xdp_counter(outcome::PASSED_NOT_NEW).packets, 1);
    assert_eq!(dp.xdp_counter(outcome::PASSED_DRY_RUN).packets, 1);
    let events = dp.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].dry_run, 1);
}

#[test]
fn log_rules_emit_rate_limited_events() {
    let mut dp = Datapath::load("log");
    dp.block_with(Dialed, "22/tcp", RuleOptions::new([], false, true));
    dp.block(Dialed, "23/tcp");
    dp.set_config(|c| c.log_rate = 3);
    for sport in 0..10 {
        dp.xdp(&Packet::syn(22).sport(40000 + sport).build());
    }
    dp.xdp(&Packet::syn(23).build());
    let events = dp.events();
    assert_eq!(events.len(), 3, "3 per second per CPU; rule 2 does not log");
    let e = events[0];
    assert_eq!((e.rule_id, e.hook, e.dry_run, e.family, e.proto), (1, hook::XDP, 0, 4, 6));
    assert_eq!((e.sport, e.dport), (40000, 22));
    assert_eq!(addr_from_mapped(e.src).to_string(), "198.18.0.2");
    assert_eq!(addr_from_mapped(e.dst).to_string(), "198.18.0.1");
    assert_eq!(dp.store.suppressed_events().unwrap(), 7);
    assert_eq!(dp.rules()[0].stats.dropped.packets, 10, "the limit is on events, not drops");
}

#[test]
fn udp_replies_to_flows_from_a_blocked_port_pass() {
    let mut dp = Datapath::load("udpreply");
    dp.block(Dialed, "5353/udp");
    dp.block(Container, "5353/udp");
    // The host (uplink egress) and a container (bridge ingress) send queries
    // from port 5353 to 198.18.0.2:53.
    let query = Packet::udp(53).sport(5353).src("198.18.0.1").dst("198.18.0.2").build();
    let reply = Packet::udp(5353).sport(53).src("198.18.0.2").dst("198.18.0.1").build();
    let stranger = Packet::udp(5353).sport(53).src("198.18.0.3").dst("198.18.0.1").build();
    let other_port = Packet::udp(5353).sport(54).src("198.18.0.2").dst("198.18.0.1").build();
    assert_eq!(dp.xdp(&reply), Drop, "no query yet");
    dp.track(program_names::UPLINK_TRACK, &query);
    assert_eq!(dp.xdp(&reply), Pass, "reply to the host's query");
    assert_eq!(dp.xdp(&stranger), Drop, "another remote");
    assert_eq!(dp.xdp(&other_port), Drop, "another remote port");
    assert_eq!(dp.tc(&reply), Drop, "the container sent nothing");
    dp.track(program_names::BRIDGE_TRACK, &query);
    assert_eq!(dp.tc(&reply), Pass, "reply to the container's query");
    assert_eq!(dp.rules()[0].stats.passed.packets, 1);
    // New programs (an upgrade) keep the flows and the flag that makes the
    // datapath look them up.
    dp.reload();
    assert_eq!(dp.xdp(&reply), Pass, "reply after the programs were replaced");
    // Flows expire.
    dp.set_config(|c| c.flow_timeout_secs = 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(dp.xdp(&reply), Drop, "the flow timed out");
    // Only flows from blocked ports are tracked.
    dp.track(
        program_names::UPLINK_TRACK,
        &Packet::udp(53).sport(6000).src("198.18.0.1").dst("198.18.0.2").build(),
    );
    dp.block(Dialed, "6000/udp");
    let late = Packet::udp(6000).sport(53).src("198.18.0.2").dst("198.18.0.1").build();
    assert_eq!(dp.xdp(&late), Drop, "the query left before the rule existed");
}

#[test]
fn host_traffic_into_the_bridge_follows_the_setting() {
    let mut dp = Datapath::load("host");
    dp.block(Container, "80/tcp");
    let syn = Packet::syn(80).build();
    assert_eq!(dp.tc_from(&syn, From::Host), Pass, "default: the host's own traffic passes");
    assert_eq!(dp.tc_counter(outcome::PASSED_HOST).packets, 1);
    assert_eq!(dp.tc_from(&syn, From::Outside), Drop);
    dp.set_config(|c| c.flags |= config_flag::JUDGE_HOST_TRAFFIC);
    assert_eq!(dp.tc_from(&syn, From::Host), Drop, "judged when asked");
}

#[test]
fn the_datapath_reads_only_the_live_generation_and_commits_keep_both_equal() {
    let mut dp = Datapath::load("gen");
    dp.block(Dialed, "3306/tcp");
    let live = dp.store.config().unwrap().generation;
    let mut ports = dp.port_rules();
    for generation in [0, 1] {
        let slot = ports.get(&port_index(generation, scope::DIALED, proto::TCP, 3306), 0).unwrap();
        assert_eq!(slot.rule_id, 1, "generation {generation} holds the rule after the commit");
    }
    // Stage a rule for 4000 in the idle generation only, as a commit does
    // before its switch: packets do not see it until CONFIG flips.
    ports
        .set(port_index(live ^ 1, scope::DIALED, proto::TCP, 4000), PortRule { rule_id: 1, flags: 0 }, 0)
        .unwrap();
    assert_eq!(dp.xdp(&Packet::syn(4000).build()), Pass, "staged, not live");
    let mut config = dp.config_map();
    let mut c = config.get(&0, 0).unwrap();
    c.generation = live ^ 1;
    config.set(0, c, 0).unwrap();
    assert_eq!(dp.xdp(&Packet::syn(4000).build()), Drop, "one CONFIG write made it live");
    assert_eq!(dp.xdp(&Packet::syn(3306).build()), Drop);
}

#[test]
fn apply_replaces_the_set_and_keeps_identical_rules() {
    let mut dp = Datapath::load("apply");
    dp.block(Dialed, "22/tcp");
    dp.block(Dialed, "80/tcp");
    dp.xdp(&Packet::syn(80).build());
    let file = "[[rule]]\nports = \"80/tcp\"\n[[rule]]\nports = \"443/tcp\"\nscope = \"container\"\n";
    let summary = dp.store.replace(&rulefile::parse("t.toml", file).unwrap()).unwrap();
    assert_eq!((summary.added, summary.removed, summary.kept), (1, 1, 1));
    assert_eq!(dp.xdp(&Packet::syn(22).build()), Pass, "removed");
    assert_eq!(dp.xdp(&Packet::syn(80).build()), Drop, "kept");
    assert_eq!(dp.tc(&Packet::syn(443).build()), Drop, "added");
    let rules = dp.rules();
    let kept = rules.iter().find(|r| r.rule.ports.lo == 80).unwrap();
    assert_eq!((kept.rule.id, kept.stats.dropped.packets), (2, 2), "80/tcp kept its id and counters");
    assert_eq!(
        rules.iter().find(|r| r.rule.ports.lo == 443).unwrap().rule.id,
        1,
        "new rule took the free id"
    );
    let exported = rulefile::format(&dp.store.rules().unwrap());
    let again = dp.store.replace(&rulefile::parse("e.toml", &exported).unwrap()).unwrap();
    assert_eq!((again.added, again.removed), (0, 0), "export | apply is a no-op");
}

#[test]
fn a_full_allow_table_is_refused_before_any_write() {
    let mut dp = Datapath::load_with("allowfull", Capacities { max_allow: Some(2), ..Default::default() });
    dp.block_with(Dialed, "22/tcp", Datapath::allow(&["10.0.0.0/8", "192.0.2.0/24"]));
    let spec = RuleSpec {
        scope: Dialed,
        ports: PortSpec::parse("23/tcp").unwrap(),
        options: Datapath::allow(&["198.51.100.0/24"]),
        target: Default::default(),
    };
    let err = dp.store.block(&[spec]).unwrap_err();
    assert!(err.to_string().contains("allow-list table full (2 entries"), "{err}");
    assert_eq!(dp.rules().len(), 1);
    assert_eq!(dp.xdp(&Packet::syn(23).build()), Pass, "nothing of the refused rule is live");
}

#[test]
fn a_rule_replaced_in_one_command_starts_from_zero() {
    let mut dp = Datapath::load("fresh");
    dp.block(Dialed, "18190/tcp");
    dp.xdp(&Packet::syn(18190).build());
    // Other options on the same ports: the old rule goes, a new one comes,
    // on the id just freed.
    dp.block_with(Dialed, "18190/tcp", RuleOptions::new([], false, true));
    let rules = dp.rules();
    assert_eq!((rules[0].rule.id, rules[0].stats.dropped.packets), (1, 0));
    dp.xdp(&Packet::syn(18190).build());
    let replaced = rulefile::parse("r.toml", "[[rule]]\nports = \"18191/tcp\"\n").unwrap();
    dp.store.replace(&replaced).unwrap();
    let rules = dp.rules();
    assert_eq!((rules[0].rule.id, rules[0].stats.dropped.packets), (1, 0), "apply: new rule, zero counters");
}
