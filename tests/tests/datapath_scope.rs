//! Datapath tests for scoped rules (`--on IFACE`, `--to ADDR`): the real
//! programs run with BPF_PROG_TEST_RUN on packets that come in on a chosen
//! interface (XDP's `xdp_md.ingress_ifindex`, the bridge's
//! `skb->ingress_ifindex`), each verdict also held against the reference
//! model.

use dockblock_agent::{
    error::Error,
    loader::{self, Capacities},
    model::{At, Model, Verdict as ModelVerdict},
    ports::PortSpec,
    rules::{
        RuleOptions, RuleSpec, Scope,
        Scope::{Container, Dialed},
    },
    scoping::{self, Scoping},
    store::RuleStore,
};
use dockblock_common::{map_names, outcome, port_index, proto, rule_flag, scope, PortRule};
use dockblock_tests::netns::VethPair;
use dockblock_tests::{
    datapath::{Datapath, Verdict, Verdict::*},
    packet::*,
};

/// An idle interface to be the "uplink" packets come in on; `lo` (1) is
/// the other one.
const UPLINK: &str = "dbt-sc0a";
const LO: u32 = 1;
const HOST_A: &str = "198.18.160.1";
const HOST_B: &str = "198.18.160.2";

fn scoped(on: &[&str], to: &[&str]) -> RuleOptions {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    RuleOptions::default().with_scoping(Scoping::parse(&strings(on), &strings(to)).unwrap())
}

fn block(dp: &mut Datapath, scope: Scope, spec: &str, options: RuleOptions) {
    dp.block_with(scope, spec, options);
}

/// Runs `frame` at XDP (`at_bridge` false) or the bridge, coming in on
/// `ingress`, and checks the model agrees.
fn run(dp: &mut Datapath, at_bridge: bool, frame: &[u8], ingress: u32) -> Verdict {
    let kernel = match at_bridge {
        false => dp.xdp_on(frame, ingress),
        true => dp.tc_on(frame, ingress),
    };
    let rules: Vec<_> = dp.rules().into_iter().map(|r| r.rule).collect();
    let mut model = Model::new(&rules, &dp.store.config().unwrap());
    let at = match at_bridge {
        false => At::Xdp { ingress },
        true => At::Bridge { from_host: ingress == 0, ingress },
    };
    let want = match model.judge_at(at, frame).verdict {
        ModelVerdict::Pass => Pass,
        ModelVerdict::Drop => Drop,
    };
    assert_eq!(kernel, want, "kernel and model disagree (bridge {at_bridge}, ingress {ingress})");
    kernel
}

fn syn_to(port: u16, dst: &str) -> Vec<u8> {
    Packet::syn(port).src("203.0.113.50").dst(dst).build()
}

fn slot(dp: &Datapath, scope: u32, port: u16) -> PortRule {
    let generation = dp.store.config().unwrap().generation;
    dp.port_rules().get(&port_index(generation, scope, proto::TCP, port), 0).unwrap()
}

#[test]
fn on_judges_only_packets_that_came_in_on_the_interface() {
    let link = VethPair::create(UPLINK, "dbt-sc0b").expect("veth pair");
    let up = scoping::ifindex(link.a()).unwrap();
    let mut dp = Datapath::load("scope-on");

    block(&mut dp, Dialed, "21000/tcp", scoped(&[UPLINK], &[]));
    assert_eq!(run(&mut dp, false, &syn_to(21000, HOST_A), up), Drop, "in on the uplink");
    assert_eq!(run(&mut dp, false, &syn_to(21000, HOST_A), LO), Pass, "in on another interface");
    assert_eq!(dp.rules()[0].stats.dropped.packets, 1);
    assert_eq!(dp.xdp_counter(outcome::PASSED_NO_RULE).packets, 1, "unmatched scope: as if no rule");
    // Only a port with scoped rules pays for the lookup: its slot says so.
    assert_eq!(slot(&dp, scope::DIALED, 21000), PortRule { rule_id: 0, flags: rule_flag::SCOPED });
    assert_eq!(slot(&dp, scope::DIALED, 21001), PortRule::default());

    // The bridge judges `--on` by skb->ingress_ifindex: a container-port
    // rule on the uplink closes the container port to what came in there,
    // not to another interface nor to the host itself.
    block(&mut dp, Container, "21001/tcp", scoped(&[UPLINK], &[]));
    assert_eq!(run(&mut dp, true, &syn_to(21001, "172.30.160.2"), up), Drop, "bridge, in on the uplink");
    assert_eq!(run(&mut dp, true, &syn_to(21001, "172.30.160.2"), LO), Pass, "bridge, another interface");
    assert_eq!(slot(&dp, scope::CONTAINER, 21001), PortRule { rule_id: 0, flags: rule_flag::SCOPED });
    // Beside an unscoped rule on the port, traffic from elsewhere meets it.
    block(&mut dp, Container, "21001/tcp", RuleOptions::default());
    assert_eq!(run(&mut dp, true, &syn_to(21001, "172.30.160.2"), LO), Drop, "the unscoped rule");
    assert_eq!(run(&mut dp, true, &syn_to(21001, "172.30.160.2"), up), Drop);

    // Replies still pass a scoped rule (it blocks new connections only).
    let ack = Packet::tcp(21000, ACK).dst(HOST_A).build();
    assert_eq!(run(&mut dp, false, &ack, up), Pass);

    // An unscoped unblock leaves the scoped rule; the scoped one opens it.
    let spec = PortSpec::parse("21000/tcp").unwrap();
    let err = dp.store.unblock(Dialed, &[spec]).unwrap_err();
    assert!(matches!(err, Error::NotBlocked { .. }), "{err}");
    let on = scoped(&[UPLINK], &[]).scoping;
    dp.store.unblock_scoped(Dialed, &on, &[spec]).unwrap();
    assert_eq!(run(&mut dp, false, &syn_to(21000, HOST_A), up), Pass);
    assert_eq!(slot(&dp, scope::DIALED, 21000), PortRule::default(), "flag gone with the last scoped rule");
    drop(dp);
    drop(link);
}

#[test]
fn to_judges_the_dialed_address_at_xdp_and_the_bridge_fails_closed() {
    let mut dp = Datapath::load("scope-to");
    block(&mut dp, Dialed, "21002/tcp", scoped(&[], &[HOST_A, "2001:db8:160::1"]));
    assert_eq!(run(&mut dp, false, &syn_to(21002, HOST_A), LO), Drop);
    assert_eq!(run(&mut dp, false, &syn_to(21002, HOST_B), LO), Pass, "another host address");
    let v6 = |dst: &str| Packet::syn(21002).src("2001:db8:9::5").dst(dst).build();
    assert_eq!(run(&mut dp, false, &v6("2001:db8:160::1"), LO), Drop);
    assert_eq!(run(&mut dp, false, &v6("2001:db8:160::2"), LO), Pass);
    // UDP is another protocol: not covered.
    let udp = Packet::udp(21002).dst(HOST_A).build();
    assert_eq!(run(&mut dp, false, &udp, LO), Pass);

    // After DNAT the dialed address is gone: a container-port rule with
    // `--to` is judged as unscoped there (closed for every address).
    block(&mut dp, Container, "21003/tcp", scoped(&[], &[HOST_A]));
    assert_eq!(run(&mut dp, true, &syn_to(21003, "172.30.160.2"), LO), Drop);
    assert_eq!(slot(&dp, scope::CONTAINER, 21003).flags & rule_flag::SCOPED, 0, "an unscoped slot there");
}

#[test]
fn the_most_specific_matching_rule_decides() {
    let link = VethPair::create(UPLINK, "dbt-sc0b").expect("veth pair");
    let up = scoping::ifindex(link.a()).unwrap();
    let mut dp = Datapath::load("scope-rank");
    let office = "203.0.113.50";

    // Unscoped block; on the uplink the office may connect (as iptables'
    // `-A INPUT -i up -s office -j ACCEPT` before the general DROP).
    block(&mut dp, Dialed, "21004/tcp", RuleOptions::default());
    let mut on_up = scoped(&[UPLINK], &[]);
    on_up.allow_from = vec![format!("{office}/32").parse().unwrap()];
    on_up = RuleOptions::new(on_up.allow_from.clone(), false, false).with_scoping(on_up.scoping);
    block(&mut dp, Dialed, "21004/tcp", on_up.clone());
    assert_eq!(dp.rules().len(), 2, "a scoped rule is a rule of its own, beside the unscoped one");
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_A), up), Pass, "allowed on the uplink");
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_A), LO), Drop, "the unscoped rule elsewhere");
    let other = Packet::syn(21004).src("203.0.113.51").dst(HOST_A).build();
    assert_eq!(run(&mut dp, false, &other, up), Drop, "not allow-listed");

    // `--to` is more specific than `--on`; both together more than either.
    block(&mut dp, Dialed, "21004/tcp", scoped(&[], &[HOST_A]));
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_A), up), Drop, "the --to rule decides");
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_B), up), Pass, "the --on rule decides");
    let mut both = on_up.clone();
    both.scoping = scoped(&[UPLINK], &[HOST_A]).scoping;
    block(&mut dp, Dialed, "21004/tcp", both);
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_A), up), Pass, "the --on --to rule decides");
    assert_eq!(run(&mut dp, false, &syn_to(21004, HOST_A), LO), Drop, "the --to rule decides");

    // A dry-run scoped rule never opens what an unscoped block closes.
    block(&mut dp, Dialed, "21005/tcp", RuleOptions::default());
    let dry = RuleOptions::new([], true, false).with_scoping(scoped(&[UPLINK], &[]).scoping);
    block(&mut dp, Dialed, "21005/tcp", dry);
    assert_eq!(run(&mut dp, false, &syn_to(21005, HOST_A), up), Drop);
    // Over an open port it counts what it would drop.
    block(&mut dp, Dialed, "21006/tcp", RuleOptions::new([], true, false).with_scoping(on_up.scoping));
    assert_eq!(run(&mut dp, false, &syn_to(21006, HOST_A), up), Pass);
    assert_eq!(dp.xdp_counter(outcome::PASSED_DRY_RUN).packets, 1);

    // The catalog keeps the scoping: a new process reads the same rules.
    let again = RuleStore::open(&dp.pins).unwrap().rules().unwrap();
    let rules: Vec<_> = dp.rules().into_iter().map(|r| r.rule).collect();
    assert_eq!(again, rules);
    assert!(again.iter().any(|r| r.options.scoping.on == [UPLINK] && r.options.scoping.to.is_empty()));
    drop(dp);
    drop(link);
}

#[test]
fn pins_of_a_release_before_scoping_get_the_new_maps_at_the_next_load() {
    let mut dp = Datapath::load_with("scope-old", Capacities::default());
    dp.block(Dialed, "21007/tcp");
    for name in [map_names::SCOPED_RULES, map_names::RULE_SCOPES] {
        std::fs::remove_file(dp.pins.map(name)).unwrap();
    }
    // The old pin folder still works for unscoped rules; scoped ones are
    // refused with the fix, nothing changed.
    let mut store = RuleStore::open(&dp.pins).unwrap();
    let spec = RuleSpec {
        options: scoped(&[], &[HOST_A]),
        ..RuleSpec::plain(Dialed, PortSpec::parse("21008/tcp").unwrap())
    };
    let err = store.block(std::slice::from_ref(&spec)).unwrap_err();
    assert!(err.to_string().contains("attach"), "{err}");
    assert_eq!(store.rules().unwrap().len(), 1);
    // A load (what attach does) creates and pins them; the rule survives.
    loader::load(&dp.pins, &Capacities::default()).unwrap();
    assert!(dp.pins.map(map_names::SCOPED_RULES).exists());
    let mut store = RuleStore::open(&dp.pins).unwrap();
    store.block(&[spec]).unwrap();
    assert_eq!(store.rules().unwrap().len(), 2);
    dp.reload();
    assert_eq!(dp.xdp(&syn_to(21008, HOST_A)), Drop);
    assert_eq!(dp.xdp(&syn_to(21008, HOST_B)), Pass);
    assert_eq!(dp.xdp(&syn_to(21007, HOST_B)), Drop);
}
