//! Differential fuzz: the kernel programs against the reference model
//! (dockblock_agent::model). proptest draws rule sets (scopes, protocols,
//! ports and ranges, allow-lists, dry-run, the judge-host-traffic flag, UDP
//! flows) and a seed; the seed drives a frame generator that builds real
//! frames with every header kind and bends them (truncation at every byte,
//! fragments, VLAN tags 0-3, IPv6 extension chains 0-10, v4-mapped sources,
//! length fields, padding, byte flips, random bytes). Every frame runs
//! through the three loaded judging programs (BPF_PROG_TEST_RUN: XDP,
//! bridge TC, and the veth hook under a drawn veth table: unreviewed or
//! reviewed with exact and wildcard entries naming the case's rules, and
//! scoped (`--on`) entries for packets from one uplink or another
//! container, the frame from the host, another container or one of two
//! uplinks) and the model; the
//! fragment table carries across the frames of a case in both.
//!
//! Checked per frame: the verdict. Per case (1,000 frames): the per-hook
//! outcome counters, the per-rule counters and the fragment table. A case
//! that disagrees is replayed frame by frame to name the first frame whose
//! verdict, outcome or rule counters differ, printed as hex with its rule
//! set. `DOCKBLOCK_FUZZ_FRAMES` (default 100,000) and `DOCKBLOCK_FUZZ_SEED`
//! set the run (`cargo xtask fuzz`).

use std::{cell::RefCell, fmt::Write as _, time::Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use dockblock_agent::{
    loader::Capacities,
    model::{At, Judgement, Model, Verdict as ModelVerdict},
    ports::PortSpec,
    rulefile::parse_net,
    rules::{RuleOptions, RuleSpec, Scope},
    scoping::Scoping,
    store::open_pinned,
};
use dockblock_common::{
    config_flag, hook, hook_stats_index, map_names, outcome, proto, rule_flag, seen, veth_flag, Counter,
    FlowKey, FragSlot, PortRule, RuleStats, VethRuleKey, VethScopedKey, VethState, VETH_ANY_PORT,
};
use dockblock_tests::{
    datapath::{Datapath, TC_NEXT, TC_SHOT, VETH, XDP_DROP, XDP_PASS},
    packet::*,
};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config as RunnerConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};

const FRAMES_PER_CASE: usize = 1000;
/// A small fragment table, so that datagrams share slots and evict.
const FRAG_SLOTS: u32 = 64;

/// Ports rules and frames are drawn from; 257 is what IPv4 NOP options
/// read as when taken for ports.
const PORTS: [u16; 12] = [1, 22, 53, 80, 257, 443, 3306, 5000, 8080, 40000, 65534, 65535];
const V4: [&str; 6] = ["198.18.0.1", "198.18.0.2", "198.19.255.7", "203.0.113.9", "10.1.2.3", "0.0.0.0"];
/// The last two (v4-mapped) only as sources, one IPv6 frame in five.
const V6: [&str; 6] =
    ["2001:db8::1", "2001:db8::2", "2001:db8:1::5", "fd00::9", "::ffff:198.18.0.2", "::ffff:203.0.113.9"];
const EXT: [u8; 5] = [IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AUTH, IPV6_DEST_OPTS];

/// The judging hooks, in the order each frame goes through them.
const HOOKS: [u32; 3] = [hook::XDP, hook::TC, hook::VETH];

/// Ingress ifindexes of the veth hook's frames besides the host (0):
/// another container's veth (a `VETHS` entry when the case says so) and an
/// uplink.
const PEER: u32 = 7;
const OUTSIDE: u32 = 99;
/// A second uplink: the case's scoped entries name it (or `PEER`).
const UPLINK_B: u32 = 98;

/// One proptest case: a rule set, the config flag, the UDP flows, the veth
/// table, and the seed of its frames.
#[derive(Clone, Debug)]
struct Case {
    rules: Vec<RuleSpec>,
    judge_host: bool,
    flows: Vec<FlowKey>,
    veth: VethCase,
    seed: u64,
}

/// The `VETHS`/`VETH_RULES` state of the veth under test ([`VETH`]).
#[derive(Clone, Debug, Default)]
struct VethCase {
    /// `None`: no entry (unreviewed).
    flags: Option<u32>,
    /// Entries: the index of the case's rule they name, protocol, port
    /// ([`VETH_ANY_PORT`] for the wildcard), from-containers.
    entries: Vec<(usize, u32, u32, bool)>,
    /// Whether `PEER` has a `VETHS` entry (is a container).
    peer: bool,
    /// `VETH_SCOPED_RULES` entries: the index of the case's rule they name
    /// (`None`: rule id 0, no rule), protocol, port, ingress ifindex.
    scoped: Vec<(Option<usize>, u32, u32, u32)>,
}

fn veth_case() -> impl Strategy<Value = VethCase> {
    use veth_flag::{HAS_PORTS, HAS_SCOPED, HAS_WILDCARD, REVIEWED};
    let flags = prop::sample::select(vec![
        None,
        None,
        Some(REVIEWED),
        Some(REVIEWED | HAS_PORTS),
        Some(REVIEWED | HAS_WILDCARD),
        Some(REVIEWED | HAS_PORTS | HAS_WILDCARD),
        Some(REVIEWED | HAS_PORTS | HAS_WILDCARD),
        Some(HAS_PORTS | HAS_WILDCARD),
        Some(REVIEWED | HAS_SCOPED),
        Some(REVIEWED | HAS_PORTS | HAS_SCOPED),
        Some(REVIEWED | HAS_PORTS | HAS_WILDCARD | HAS_SCOPED),
        Some(REVIEWED | HAS_PORTS | HAS_WILDCARD | HAS_SCOPED),
        Some(HAS_SCOPED),
    ]);
    let port =
        prop_oneof![3 => prop::sample::select(PORTS.to_vec()).prop_map(u32::from), 1 => Just(VETH_ANY_PORT)];
    let entry = (0usize..8, 0u32..2, port.clone(), prop::bool::weighted(0.3));
    let from = prop::sample::select(vec![UPLINK_B, UPLINK_B, UPLINK_B, PEER, 0]);
    let scoped = (prop::option::weighted(0.85, 0usize..8), 0u32..2, port, from);
    (
        flags,
        prop::collection::vec(entry, 0..6),
        prop::bool::weighted(0.7),
        prop::collection::vec(scoped, 0..5),
    )
        .prop_map(|(flags, entries, peer, scoped)| VethCase { flags, entries, peer, scoped })
}

fn net() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(V4.to_vec()), 0u8..=32).prop_map(|(a, n)| format!("{a}/{n}")),
        (prop::sample::select(V6[..4].to_vec()), 0u8..=128).prop_map(|(a, n)| format!("{a}/{n}")),
    ]
}

fn port_range() -> impl Strategy<Value = (u16, u16)> {
    prop_oneof![
        6 => prop::sample::select(PORTS.to_vec()).prop_map(|p| (p, p)),
        3 => (prop::sample::select(PORTS.to_vec()), 0u16..64).prop_map(|(lo, w)| (lo, lo.saturating_add(w))),
        1 => (1u16..=65535).prop_map(|p| (p, p)),
    ]
}

/// `--on`/`--to` of a rule: test packets come in on `lo` (1), so `lo`
/// matches and a name no interface has never does; `--to` one of the
/// frames' destinations (never 0.0.0.0, which is no host address).
fn scoping() -> impl Strategy<Value = Scoping> {
    let on = prop_oneof![4 => Just(vec![]), 1 => Just(vec!["lo"]), 1 => Just(vec!["dbt-sc-fz0"])];
    let to = prop_oneof![
        4 => Just(vec![]),
        1 => prop::sample::select(V4[..5].to_vec()).prop_map(|a| vec![a]),
        1 => prop::sample::select(V6[..4].to_vec()).prop_map(|a| vec![a]),
    ];
    (on, to).prop_map(|(on, to)| {
        let strings = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        Scoping::parse(&strings(on), &strings(to)).unwrap()
    })
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    let allow = prop_oneof![3 => Just(vec![]), 2 => prop::collection::vec(net(), 1..4)];
    let flags = (prop::bool::weighted(0.2), prop::bool::weighted(0.1));
    (any::<bool>(), port_range(), 1u32..=3, allow, flags, scoping()).prop_map(
        |(container, (lo, hi), protos, allow, (dry_run, log), scoping)| RuleSpec {
            scope: if container { Scope::Container } else { Scope::Dialed },
            ports: PortSpec { lo, hi, protos },
            options: RuleOptions::new(allow.iter().map(|n| parse_net(n).unwrap()), dry_run, log)
                .with_scoping(scoping),
            target: Default::default(),
        },
    )
}

fn flow() -> impl Strategy<Value = FlowKey> {
    let remote = prop_oneof![prop::sample::select(V4.to_vec()), prop::sample::select(V6[..4].to_vec())];
    (remote, prop::sample::select(PORTS.to_vec()), prop::sample::select(PORTS.to_vec()), 0u32..2).prop_map(
        |(remote, remote_port, local_port, scope)| FlowKey {
            remote: dockblock_agent::addr::mapped_addr(remote.parse().unwrap()),
            remote_port,
            local_port,
            scope,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let rules = prop::collection::vec(rule(), 0..8);
    (rules, any::<bool>(), prop::collection::vec(flow(), 0..4), veth_case(), any::<u64>())
        .prop_map(|(rules, judge_host, flows, veth, seed)| Case { rules, judge_host, flows, veth, seed })
}

/// Where frame `index` is judged at `hook`: the veth hook sees a frame the
/// host sends from the host (0), others from the peer or from outside.
fn at(hook: u32, from_host: bool, index: usize) -> At {
    match hook {
        hook::XDP => At::Xdp { ingress: 1 },
        hook::TC => At::Bridge { from_host, ingress: u32::from(!from_host) },
        _ => {
            let from = match (from_host, index % 4) {
                (true, _) => 0,
                (false, 0) => PEER,
                (false, 1) => UPLINK_B,
                _ => OUTSIDE,
            };
            At::Veth { ifindex: VETH, from }
        }
    }
}

/// splitmix64: the frame generator's randomness, from the case's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times in 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A built frame and where its IP header starts.
struct Built {
    frame: Vec<u8>,
    l3: usize,
    v6: bool,
}

/// Frames for one case: real ones from the builder, bent.
struct FrameGen {
    rng: Rng,
    /// Ports of the case's rules, so frames hit them.
    rule_ports: Vec<u16>,
    /// Datagrams sent so far, whose later fragments may follow.
    datagrams: Vec<(Packet, usize, bool)>,
}

impl FrameGen {
    fn new(case: &Case) -> Self {
        let mut rule_ports: Vec<u16> = case.rules.iter().flat_map(|r| [r.ports.lo, r.ports.hi]).collect();
        rule_ports.extend(case.rules.iter().map(|r| r.ports.lo + (r.ports.hi - r.ports.lo) / 2));
        rule_ports.extend(case.flows.iter().map(|f| f.local_port));
        rule_ports.extend(case.veth.entries.iter().filter(|e| e.2 != VETH_ANY_PORT).map(|e| e.2 as u16));
        rule_ports.extend(case.veth.scoped.iter().filter(|e| e.2 != VETH_ANY_PORT).map(|e| e.2 as u16));
        Self { rng: Rng(case.seed), rule_ports, datagrams: Vec::new() }
    }

    fn port(&mut self) -> u16 {
        match self.rng.below(10) {
            0..7 if !self.rule_ports.is_empty() => self.rng.pick(&self.rule_ports.clone()),
            0..9 => self.rng.pick(&PORTS),
            _ => self.rng.next() as u16,
        }
    }

    /// A frame from the builder with random headers.
    fn packet(&mut self) -> (Packet, usize, bool, bool) {
        let r = &mut self.rng;
        let v6 = r.chance(45);
        let dport = self.port();
        let sport = self.port();
        let r = &mut self.rng;
        let flags = match r.below(10) {
            0..4 => SYN,
            4 => SYN | ACK,
            5 | 6 => ACK,
            _ => r.next() as u8,
        };
        let mut p = match r.below(20) {
            0..9 => Packet::tcp(dport, flags),
            9..18 => Packet::udp(dport),
            18 => Packet::tcp(dport, flags).ip_proto(if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP }),
            _ => Packet::tcp(dport, flags).ip_proto(r.next() as u8),
        }
        .sport(sport);
        if v6 {
            let src = if r.chance(20) { r.pick(&V6[4..]) } else { r.pick(&V6[..4]) };
            p = p.v6().src(src).dst(r.pick(&V6[..4]));
            for _ in 0..[0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 7, 8, 9, 10][r.below(14)] {
                p = p.ext(r.pick(&EXT), r.below(3) as u8);
            }
        } else {
            p = p.src(r.pick(&V4)).dst(r.pick(&V4));
            p = match r.below(100) {
                0..85 => p,
                85..97 => p.ihl(6 + r.below(10) as u8),
                _ => p.ihl(r.below(5) as u8),
            };
        }
        let vlans = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3][r.below(13)];
        for _ in 0..vlans {
            p = p.vlan(r.pick(&[ETH_P_8021Q, ETH_P_8021AD]), r.below(4096) as u16);
        }
        p = p.frag_id(r.pick(&[1, 2, 3, 0x1234, 0x5678]));
        let first = r.chance(20);
        p = match r.below(20) {
            _ if first => p.fragment(0, true),
            0..14 => p,
            _ => p.fragment(Self::later_offset(r), r.chance(50)),
        };
        if r.chance(50) {
            let n = 1 + r.below(64);
            p = p.payload(&if r.chance(50) { vec![0; n] } else { r.bytes(n) });
        }
        (p, 14 + 4 * vlans, v6, first)
    }

    fn later_offset(r: &mut Rng) -> u16 {
        match r.below(10) {
            0..3 => 1,
            3..6 => 2 + r.below(20) as u16,
            _ => 1 + r.below(8191) as u16,
        }
    }

    fn built(&mut self) -> Built {
        let (p, l3, v6, first) = self.packet();
        // Later fragments mostly follow first fragments, so that dropped
        // datagrams are remembered and looked up.
        if first || self.rng.chance(10) {
            if self.datagrams.len() == 16 {
                self.datagrams.remove(0);
            }
            self.datagrams.push((p.clone(), l3, v6));
        }
        Built { frame: p.build(), l3, v6 }
    }

    /// A later fragment of a datagram seen before.
    fn continuation(&mut self) -> Built {
        if self.datagrams.is_empty() {
            return self.built();
        }
        let (p, l3, v6) = self.datagrams[self.rng.below(self.datagrams.len())].clone();
        let p = p.fragment(Self::later_offset(&mut self.rng), self.rng.chance(50));
        Built { frame: p.build(), l3, v6 }
    }

    fn set16(frame: &mut [u8], at: usize, value: u16) {
        if at + 2 <= frame.len() {
            frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
    }

    /// Bends a built frame in 0 to 3 ways (none half the time).
    fn mutate(&mut self, mut b: Built) -> Vec<u8> {
        let r = &mut self.rng;
        let len_field = if b.v6 { b.l3 + 4 } else { b.l3 + 2 };
        let header = if b.v6 { 40 } else { 0 };
        for _ in 0..[0, 0, 0, 0, 1, 1, 2, 3][r.below(8)] {
            let f = &mut b.frame;
            match r.below(7) {
                // Cut anywhere.
                0 => f.truncate(14 + r.below(f.len() - 13)),
                // Cut the datagram and say so in its length field: tiny
                // (first) fragments, short headers that add up.
                1 if f.len() > b.l3 + header => {
                    let cut = b.l3 + header + r.below(f.len() - b.l3 - header + 1);
                    f.truncate(cut);
                    Self::set16(f, len_field, (cut - b.l3 - header) as u16);
                }
                // Bend the length field.
                2 => {
                    let value = match r.below(3) {
                        0 => 0,
                        1 => r.next() as u16,
                        _ => f.len().saturating_sub(b.l3 + header) as u16 ^ (1 << r.below(6)),
                    };
                    Self::set16(f, len_field, value);
                }
                // Padding after the datagram.
                3 => {
                    let n = 1 + r.below(40);
                    let pad = if r.chance(50) { vec![0; n] } else { r.bytes(n) };
                    f.extend_from_slice(&pad);
                }
                // Flip a byte, mostly in the headers.
                4 | 5 => {
                    let window = if r.chance(80) { 100 } else { usize::MAX };
                    let at = r.below(f.len().min(window));
                    f[at] ^= 1 + r.below(255) as u8;
                }
                _ => {
                    let any = r.next() as u16;
                    let t = r.pick(&[ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, ETH_P_ARP, any]);
                    Self::set16(f, 12, t);
                }
            }
        }
        b.frame
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let n = 14 + self.rng.below(120);
        let mut f = self.rng.bytes(n);
        match self.rng.below(3) {
            0 => {
                Self::set16(&mut f, 12, ETH_P_IP);
                f[14.min(n - 1)] = 0x45;
            }
            1 => {
                Self::set16(&mut f, 12, ETH_P_IPV6);
                f[14.min(n - 1)] = 0x60;
            }
            _ => {}
        }
        f
    }

    /// One case's frames, with a sweep of every truncation of one frame.
    fn frames(&mut self, n: usize) -> Vec<(Vec<u8>, bool)> {
        let mut frames = Vec::with_capacity(n);
        let sweep = self.built().frame;
        for len in 14..sweep.len() {
            frames.push(sweep[..len].to_vec());
        }
        while frames.len() < n {
            let frame = match self.rng.below(100) {
                0..55 => {
                    let b = self.built();
                    self.mutate(b)
                }
                55..80 => {
                    let b = self.continuation();
                    if self.rng.chance(80) {
                        b.frame
                    } else {
                        self.mutate(b)
                    }
                }
                80..95 => self.built().frame,
                _ => self.random_bytes(),
            };
            frames.push(frame);
        }
        frames.truncate(n);
        frames.into_iter().map(|f| (f, self.rng.chance(20))).collect()
    }
}

/// What the kernel did with one frame at one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Pass,
    Drop,
    Refused,
    Returned(u32),
}

struct Harness {
    dp: Datapath,
    refused: [u64; 3],
    /// Frames per hook and outcome over the run, to show what it covered.
    coverage: [[u64; outcome::COUNT as usize]; 3],
}

/// Counters by rule id and per hook, as the kernel holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    hooks: Vec<Counter>,
    rules: Vec<(u32, RuleStats)>,
}

fn delta(a: Counter, b: Counter) -> Counter {
    Counter { packets: b.packets - a.packets, bytes: b.bytes - a.bytes }
}

fn rule_delta(a: RuleStats, b: RuleStats) -> RuleStats {
    RuleStats {
        dropped: delta(a.dropped, b.dropped),
        passed: delta(a.passed, b.passed),
        allowed: delta(a.allowed, b.allowed),
        dry_run: delta(a.dry_run, b.dry_run),
    }
}

impl Harness {
    /// Loads the programs with pins unique to `tag` (tests in one binary
    /// run at once).
    fn new(tag: &str) -> Self {
        let caps = Capacities {
            max_rules: Some(64),
            max_allow: Some(64),
            max_frags: Some(FRAG_SLOTS),
            ..Default::default()
        };
        Self {
            dp: Datapath::load_with(tag, caps),
            refused: [0; 3],
            coverage: [[0; outcome::COUNT as usize]; 3],
        }
    }

    /// Puts the case's rules, flag and flows in place and empties the
    /// fragment table; returns the model of that state.
    fn prepare(&mut self, case: &Case) -> Model {
        let dp = &mut self.dp;
        dp.store.replace(&case.rules).expect("replace rules");
        dp.set_config(|c| {
            c.flags = if case.judge_host { config_flag::JUDGE_HOST_TRAFFIC } else { 0 };
            c.flow_timeout_secs = 3600;
        });
        let mut frags = dp.frags();
        for i in 0..FRAG_SLOTS {
            frags.set(i, FragSlot::default(), 0).unwrap();
        }
        let mut flows: BpfHashMap<MapData, FlowKey, u64> = open_pinned(&dp.pins, map_names::FLOWS).unwrap();
        let old: Vec<FlowKey> = flows.keys().filter_map(|k| k.ok()).collect();
        for key in old {
            let _ = flows.remove(&key);
        }
        for key in &case.flows {
            flows.insert(key, dockblock_agent::model::monotonic_ns(), 0).unwrap();
        }
        if !case.flows.is_empty() {
            let mut seen_map: Array<MapData, u32> = open_pinned(&dp.pins, map_names::SEEN).unwrap();
            seen_map.set(seen::FLOWS, 1, 0).unwrap();
        }
        let rules = dp.store.rules().unwrap();
        let mut model = Model::new(&rules, &dp.store.config().unwrap());
        for key in &case.flows {
            model.add_flow(*key);
        }
        dp.clear_veths();
        let state = |flags| VethState { flags, _pad: 0, container: [0x5a; 32] };
        if case.veth.peer {
            dp.set_veth(PEER, state(veth_flag::REVIEWED));
            model.set_veth(PEER, state(veth_flag::REVIEWED));
        }
        if let Some(flags) = case.veth.flags {
            dp.set_veth(VETH, state(flags));
            model.set_veth(VETH, state(flags));
        }
        for &(i, proto, port, from_containers) in &case.veth.entries {
            let Some(rule) = (!rules.is_empty()).then(|| &rules[i % rules.len()]) else { break };
            let extra = if from_containers { rule_flag::FROM_CONTAINERS } else { 0 };
            let value = PortRule { rule_id: rule.id, flags: rule.options.flags() | extra };
            let key = VethRuleKey { ifindex: VETH, proto, port };
            dp.set_veth_rule(key, value);
            model.set_veth_rule(key, value);
        }
        for &(i, proto, port, from) in &case.veth.scoped {
            let value = match i {
                Some(i) if !rules.is_empty() => {
                    let rule = &rules[i % rules.len()];
                    PortRule { rule_id: rule.id, flags: rule.options.flags() }
                }
                _ => PortRule::default(),
            };
            let key = VethScopedKey { ifindex: VETH, proto, port, from };
            dp.set_veth_scoped_rule(key, value);
            model.set_veth_scoped_rule(key, value);
        }
        model
    }

    fn snapshot(&self) -> Snapshot {
        let rules = self.dp.rules().into_iter().map(|r| (r.rule.id, r.stats)).collect();
        Snapshot { hooks: self.dp.store.hook_stats().unwrap(), rules }
    }

    fn run(&mut self, at: At, frame: &[u8]) -> Kernel {
        let result = match at {
            At::Xdp { ingress } => self.dp.try_xdp_on(frame, ingress),
            At::Bridge { ingress, .. } => self.dp.try_tc_on(frame, ingress),
            At::Veth { ifindex, from } => self.dp.try_veth(frame, ifindex, from),
        };
        match (at, result) {
            (_, Err(_)) => Kernel::Refused,
            (At::Xdp { .. }, Ok(XDP_PASS)) => Kernel::Pass,
            (At::Xdp { .. }, Ok(XDP_DROP)) => Kernel::Drop,
            (At::Bridge { .. } | At::Veth { .. }, Ok(TC_NEXT)) => Kernel::Pass,
            (At::Bridge { .. } | At::Veth { .. }, Ok(TC_SHOT)) => Kernel::Drop,
            (_, Ok(other)) => Kernel::Returned(other),
        }
    }

    fn kernel_frags(&self) -> Vec<(u32, FragSlot)> {
        let frags = self.dp.frags();
        (0..FRAG_SLOTS).map(|i| (i, frags.get(&i, 0).unwrap())).filter(|(_, s)| s.rule_id != 0).collect()
    }

    /// Runs the case's frames; `Err` describes the first disagreement.
    /// `slow` compares outcomes and rule counters after every frame.
    fn case(&mut self, case: &Case, frames: &[(Vec<u8>, bool)], slow: bool) -> Result<(), String> {
        self.case_with(case, frames, slow, None)
    }

    /// As `case`; with `survey`, every frame is compared (slow) and each
    /// kind of disagreement is tallied there instead of ending the case.
    fn case_with(
        &mut self,
        case: &Case,
        frames: &[(Vec<u8>, bool)],
        slow: bool,
        mut survey: Option<&mut Survey>,
    ) -> Result<(), String> {
        let mut model = self.prepare(case);
        let start = self.snapshot();
        let mut before = start.clone();
        for (index, (frame, from_host)) in frames.iter().enumerate() {
            for hook in HOOKS {
                let at = at(hook, *from_host, index);
                let kernel = self.run(at, frame);
                if kernel == Kernel::Refused {
                    self.refused[hook as usize] += 1;
                    continue;
                }
                let j = model.judge_at(at, frame);
                let want = match j.verdict {
                    ModelVerdict::Pass => Kernel::Pass,
                    ModelVerdict::Drop => Kernel::Drop,
                };
                let mut wrong = (kernel != want).then(|| format!("kernel {kernel:?}"));
                if slow {
                    let after = self.snapshot();
                    let counters = frame_counters_differ(&before, &after, hook, &j, frame.len());
                    wrong = match (wrong, counters) {
                        (Some(v), Some(c)) => Some(format!("{v}, {c}")),
                        (v, c) => v.or(c),
                    };
                    before = after;
                }
                if let (Some(what), Some(survey)) = (&wrong, survey.as_deref_mut()) {
                    let kind = format!("{} model {} / {what}", hook_name(hook), j.outcome_name());
                    let entry = survey.entry(kind).or_insert((0, hex(frame)));
                    entry.0 += 1;
                    continue;
                }
                if let Some(what) = wrong {
                    return Err(report(case, index, at, frame, *from_host, &what, &j));
                }
            }
        }
        let end = self.snapshot();
        let mut problems = String::new();
        let tally = model.tally();
        for h in HOOKS {
            for o in 0..outcome::COUNT {
                self.coverage[h as usize][o as usize] += tally.hook(h, o).packets;
            }
        }
        for h in HOOKS {
            for o in 0..outcome::SLOTS {
                let i = hook_stats_index(h, o) as usize;
                let (k, m) = (delta(start.hooks[i], end.hooks[i]), tally.hook(h, o));
                if k != m {
                    let _ = writeln!(problems, "hook {h} outcome {o}: kernel {k:?}, model {m:?}");
                }
            }
        }
        for ((id, a), (_, b)) in start.rules.iter().zip(&end.rules) {
            let (k, m) = (rule_delta(*a, *b), tally.rule(*id));
            if k != m {
                let _ = writeln!(problems, "rule {id}: kernel {k:?}, model {m:?}");
            }
        }
        let mut model_frags: Vec<(u32, FragSlot)> =
            model.frag_slots().iter().map(|(i, s)| (*i, *s)).collect();
        model_frags.sort_by_key(|(i, _)| *i);
        if self.kernel_frags() != model_frags {
            let _ =
                writeln!(problems, "FRAGS: kernel {:?}\n       model {model_frags:?}", self.kernel_frags());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("case counters differ (seed {:#x}):\n{problems}", case.seed))
        }
    }
}

/// Whether the kernel's counters moved by one frame as the model's
/// judgement says: one packet on the outcome, one on the rule's counter.
fn frame_counters_differ(
    before: &Snapshot,
    after: &Snapshot,
    hook: u32,
    j: &Judgement,
    len: usize,
) -> Option<String> {
    let moved: Vec<u32> = (0..outcome::SLOTS)
        .filter(|o| {
            let i = hook_stats_index(hook, *o) as usize;
            after.hooks[i] != before.hooks[i]
        })
        .collect();
    let names = |os: &[u32]| -> Vec<&str> {
        os.iter().map(|o| outcome::NAMES.get(*o as usize).copied().unwrap_or("?")).collect()
    };
    if moved != [j.outcome] {
        return Some(format!("kernel outcome {:?}", names(&moved)));
    }
    let i = hook_stats_index(hook, j.outcome) as usize;
    if delta(before.hooks[i], after.hooks[i]).bytes != len as u64 {
        return Some("kernel counted other bytes".into());
    }
    let moved_rules: Vec<u32> =
        before.rules.iter().zip(&after.rules).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0).collect();
    let want: Vec<u32> = j.rule_id.into_iter().filter(|id| before.rules.iter().any(|r| r.0 == *id)).collect();
    if moved_rules != want {
        return Some(format!("kernel counted on rules {moved_rules:?}"));
    }
    None
}

/// Disagreements by kind: how many, and the first frame (hex).
type Survey = std::collections::BTreeMap<String, (u64, String)>;

fn hook_name(hook: u32) -> &'static str {
    match hook {
        hook::XDP => "xdp (dialed)",
        hook::TC => "tc (container)",
        _ => "veth (container's own)",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn report(
    case: &Case,
    index: usize,
    at: At,
    frame: &[u8],
    from_host: bool,
    kernel: &str,
    j: &Judgement,
) -> String {
    let mut s = String::new();
    let hook_name = hook_name(at.hook());
    let _ = writeln!(
        s,
        "MISMATCH at frame {index} of case seed {:#x}, hook {hook_name} ({at:?}), from_host {from_host}",
        case.seed
    );
    let _ = writeln!(s, "  frame ({} bytes): {}", frame.len(), hex(frame));
    let _ = writeln!(s, "  {kernel}");
    let _ = writeln!(s, "  model  {:?} {} rule {:?}", j.verdict, j.outcome_name(), j.rule_id);
    let _ = writeln!(s, "  judge_host_traffic {}", case.judge_host);
    for r in &case.rules {
        let o = &r.options;
        let allow: Vec<String> = o.allow_from.iter().map(|n| n.to_string()).collect();
        let _ =
            writeln!(s, "  rule {} {} allow {allow:?} dry_run {} log {}", r.scope, r.ports, o.dry_run, o.log);
    }
    for f in &case.flows {
        let remote = dockblock_agent::addr::addr_from_mapped(f.remote);
        let _ = writeln!(s, "  flow {remote}:{} -> local {} scope {}", f.remote_port, f.local_port, f.scope);
    }
    let _ = writeln!(s, "  veth {VETH}: {:?} (peer {PEER} a container: {})", case.veth.flags, case.veth.peer);
    for (i, proto, port, from) in &case.veth.scoped {
        let _ = writeln!(s, "  veth scoped entry: rule #{i:?} proto {proto} port {port} from {from}");
    }
    for (i, proto, port, fc) in &case.veth.entries {
        let _ = writeln!(s, "  veth entry: rule #{i} proto {proto} port {port} from_containers {fc}");
    }
    s
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn kernel_and_model_agree_on_random_frames() {
    let frames = env_u64("DOCKBLOCK_FUZZ_FRAMES").unwrap_or(100_000) as usize;
    let seed = env_u64("DOCKBLOCK_FUZZ_SEED").unwrap_or(0xd0cb_10c0);
    let cases = frames.div_ceil(FRAMES_PER_CASE) as u32;
    let config =
        RunnerConfig { cases, failure_persistence: None, max_shrink_iters: 0, ..RunnerConfig::default() };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let harness = RefCell::new(Harness::new("fuzz"));
    let done = RefCell::new(0usize);
    let failure = RefCell::new(None);
    let started = Instant::now();
    let result = runner.run(&case(), |case| {
        let frames = FrameGen::new(&case).frames(FRAMES_PER_CASE);
        let mut h = harness.borrow_mut();
        if let Err(fast) = h.case(&case, &frames, false) {
            // Replay frame by frame to name the first frame that differs.
            let slow = h.case(&case, &frames, true).err().unwrap_or_default();
            *failure.borrow_mut() = Some(format!("{slow}\n{fast}"));
            return Err(TestCaseError::fail("kernel and model disagree"));
        }
        *done.borrow_mut() += frames.len();
        Ok(())
    });
    let elapsed = started.elapsed().as_secs_f64();
    let done = *done.borrow();
    let refused = harness.borrow().refused;
    println!(
        "fuzz: seed {seed:#x}: {done} frames ({} test runs) in {elapsed:.1} s, {:.0} frames/s; \
         test runs the kernel refused: xdp {}, tc {}, veth {}",
        3 * done,
        done as f64 / elapsed,
        refused[0],
        refused[1],
        refused[2]
    );
    for h in HOOKS {
        let counts = harness.borrow().coverage[h as usize];
        let shown: Vec<String> =
            counts.iter().zip(outcome::NAMES).map(|(n, name)| format!("{name} {n}")).collect();
        println!("fuzz: {}: {}", hook_name(h), shown.join(", "));
    }
    if result.is_err() {
        let failure = failure.borrow_mut().take();
        panic!("{}", failure.unwrap_or_else(|| format!("{result:?}")));
    }
}

/// Not a check: with `DOCKBLOCK_FUZZ_SURVEY=N`, judges N frames comparing
/// every one and prints each kind of disagreement with its count and a
/// first example, to see at once all the ways kernel and model differ.
#[test]
fn survey_disagreements() {
    let Some(frames) = env_u64("DOCKBLOCK_FUZZ_SURVEY") else { return };
    let seed = env_u64("DOCKBLOCK_FUZZ_SEED").unwrap_or(0xd0cb_10c0);
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig { cases: frames.div_ceil(FRAMES_PER_CASE as u64) as u32, ..RunnerConfig::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed as u8; 32]),
    );
    let mut harness = Harness::new("fuzz-survey");
    let mut survey = Survey::new();
    let strategy = case();
    for _ in 0..frames.div_ceil(FRAMES_PER_CASE as u64) {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let frames = FrameGen::new(&case).frames(FRAMES_PER_CASE);
        if let Err(e) = harness.case_with(&case, &frames, true, Some(&mut survey)) {
            let first = e.lines().take(3).collect::<Vec<_>>().join(" | ");
            survey.entry(format!("case end: {first}")).or_insert((0, String::new())).0 += 1;
        }
    }
    for (kind, (count, example)) in &survey {
        println!("{count:>8}  {kind}\n          {example}");
    }
}

/// Frames the fuzz found the kernel and the model disagreeing on before
/// the fail-closed datapath landed (all settled by it), kept as fixed cases
/// under one rule set (every port, both scopes): the outcome each must get
/// (the spec's, by hand) at both hooks, from the kernel and the model.
const REGRESSIONS: [(&str, &str, u32); 9] = [
    (
        "a third VLAN tag",
        "020000000001020000000002810000ca81000d0b88a801fd08004a00003c0002200f40067a820a010203c613ff07010101010101\
         01010101010101010101010101010103010300000000000000005002faf000000000",
        outcome::DROPPED_EVASIVE,
    ),
    (
        "IPv6 payload length 26, 20 bytes there",
        "02000000000102000000000286dd60000000001a0640fd00000000000000000000000000000920010db800000000000000000000\
         0001fffffffe00000000000000005010faf000000000",
        outcome::DROPPED_MALFORMED,
    ),
    (
        "IPv4 later TCP fragment (offset 4805), 36-byte header",
        "020000000001020000000002080049000038000132c5400669dac61200020a010203010101010101010101010101010101015b4b\
         000100000000000000005002faf000000000",
        outcome::PASSED_FRAGMENT,
    ),
    (
        "IPv4 first fragment with 5 bytes of TCP (ports, no flags)",
        "020000000001020000000002080045000019000220004006947ec6120002000000009c40010100",
        outcome::DROPPED_EVASIVE,
    ),
    ("a QinQ tag cut short", "02000000000102000000000288a8", outcome::PASSED_OTHER),
    (
        "IPv6 from a v4-mapped source, payload length beyond the packet: lengths are checked first",
        "02000000000102000000000286dd60000000003b064000000000000000000000ffffcb00710920010db800000000000000000000\
         00011f2f4fa000000000000000005002faf000000000675ac58fa5937027bb3cd2c8e30b43c4f1e00223f44349",
        outcome::DROPPED_MALFORMED,
    ),
    (
        "IPv4 UDP fragment at offset 1 (only TCP there is evasive)",
        "02000000000102000000000288a8071808004500001c5678200140113e4400000000c61200020aff003500080000",
        outcome::PASSED_FRAGMENT,
    ),
    (
        "IPv6 two first-fragment headers, then 19 of 20 TCP bytes",
        "02000000000102000000000286dd6000000000232c4020010db800000000000000000000000120010db800000000000000000000\
         00022c000001000000010600000100000001ffff001600000000000000005002faf0000000",
        outcome::DROPPED_EVASIVE,
    ),
    (
        "IPv6 first-fragment header then an atomic one, then 19 of 20 TCP bytes: the last read decides",
        "02000000000102000000000286dd6000000000232c4020010db800000000000000000000000120010db800000000000000000000\
         00022c000001000000010600000000000001ffff001600000000000000005002faf0000000",
        outcome::DROPPED_MALFORMED,
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn regressions_agree_with_the_spec() {
    let mut h = Harness::new("fuzz-regress");
    let every = |scope| RuleSpec::plain(scope, PortSpec::parse("1-65535").unwrap());
    // The veth reviewed, every port of it closed by the container rule: the
    // same outcomes as the bridge.
    let veth = VethCase {
        flags: Some(veth_flag::REVIEWED | veth_flag::HAS_WILDCARD),
        entries: vec![(1, proto::TCP, VETH_ANY_PORT, false), (1, proto::UDP, VETH_ANY_PORT, false)],
        peer: false,
        scoped: vec![],
    };
    let case = Case {
        rules: vec![every(Scope::Dialed), every(Scope::Container)],
        judge_host: false,
        flows: vec![],
        veth,
        seed: 0,
    };
    let mut model = h.prepare(&case);
    let mut failures = Vec::new();
    for (what, frame, want) in REGRESSIONS {
        let frame = unhex(frame);
        for hook in HOOKS {
            let before = h.snapshot();
            let at = at(hook, false, 1);
            let kernel = h.run(at, &frame);
            if kernel == Kernel::Refused {
                continue;
            }
            let j = model.judge_at(at, &frame);
            let counters = frame_counters_differ(&before, &h.snapshot(), hook, &j, frame.len());
            if j.outcome != want || counters.is_some() {
                failures.push(format!(
                    "{what} at {}: want {}, model {}, kernel {kernel:?} {}",
                    hook_name(hook),
                    outcome::NAMES[want as usize],
                    j.outcome_name(),
                    counters.unwrap_or_default()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `Model::from_store` reads the state the programs left: the rules, the
/// flows and the remembered fragments, so it judges the next frames as the
/// model that watched every frame does.
#[test]
fn the_model_read_from_the_pinned_maps_is_the_live_state() {
    let mut h = Harness::new("fuzz-store");
    let case = Case {
        rules: (0..6).map(rule_of).collect(),
        judge_host: true,
        flows: vec![FlowKey {
            remote: dockblock_agent::addr::mapped_addr("198.18.0.2".parse().unwrap()),
            remote_port: 53,
            local_port: 5000,
            scope: dockblock_common::scope::DIALED,
        }],
        veth: VethCase {
            flags: Some(
                veth_flag::REVIEWED | veth_flag::HAS_PORTS | veth_flag::HAS_WILDCARD | veth_flag::HAS_SCOPED,
            ),
            entries: vec![
                (3, proto::UDP, 53, false),
                (4, proto::TCP, 80, true),
                (0, proto::TCP, VETH_ANY_PORT, false),
            ],
            peer: true,
            scoped: vec![(Some(2), proto::TCP, 80, UPLINK_B), (None, proto::UDP, 53, UPLINK_B)],
        },
        seed: 7,
    };
    let mut watched = h.prepare(&case);
    let frames = FrameGen::new(&case).frames(FRAMES_PER_CASE);
    for (index, (frame, from_host)) in frames.iter().enumerate() {
        for hook in HOOKS {
            let at = at(hook, *from_host, index);
            if h.run(at, frame) != Kernel::Refused {
                watched.judge_at(at, frame);
            }
        }
    }
    let mut read = Model::from_store(&h.dp.store, &h.dp.pins).unwrap();
    assert!(!watched.frag_slots().is_empty(), "the frames left datagrams remembered");
    assert_eq!(read.frag_slots(), watched.frag_slots());
    assert_eq!(read.rules(), watched.rules());
    assert_eq!(read.veths(), watched.veths(), "the veth table");
    assert_eq!(read.veth_scoped(), watched.veth_scoped(), "the veth's scoped entries");
    let reply = Packet::udp(5000).sport(53).build();
    let frames = frames.iter().map(|(f, h)| (f.as_slice(), *h)).chain([(&reply[..], false)]);
    for (index, (frame, from_host)) in frames.enumerate() {
        for hook in HOOKS {
            let at = at(hook, from_host, index);
            assert_eq!(read.judge_at(at, frame), watched.judge_at(at, frame), "{at:?} {}", hex(frame));
        }
    }
}

/// A fixed rule set for the test above: both scopes, a range, an
/// allow-list, a dry run, UDP on the flow's port.
fn rule_of(i: usize) -> RuleSpec {
    let (scope, ports, allow, dry_run) = [
        (Scope::Dialed, "3306/tcp", "", false),
        (Scope::Dialed, "5000/udp", "", false),
        (Scope::Dialed, "8080-8090", "203.0.113.0/24", false),
        (Scope::Container, "53", "", false),
        (Scope::Container, "80/tcp", "2001:db8:1::/48", false),
        (Scope::Dialed, "22", "", true),
    ][i];
    let allow = (!allow.is_empty()).then(|| parse_net(allow).unwrap());
    RuleSpec {
        scope,
        ports: PortSpec::parse(ports).unwrap(),
        options: RuleOptions::new(allow, dry_run, false),
        target: Default::default(),
    }
}
