//! The reference model of the verdict: what dockblock does with a frame, in
//! plain Rust. It is the specification (`spec/fail-closed.md`) in code,
//! written from the rules below and not from the kernel programs, so that
//! the differential fuzz (`tests/tests/fuzz.rs`) can hold the two against
//! each other, and `explain` can say what would happen to a frame.
//!
//! A frame is judged at one hook ([`At`]): XDP on the uplink judges the
//! port a client dials (scope `dialed`), TC on a Docker bridge judges the
//! container port (scope `container`), TC at the egress of a container's
//! host-side veth judges that container's own rules (`VETH_RULES`). The
//! first rule that applies wins:
//!
//! 1. TC and veth only: a packet the host itself sent (veth: ingress
//!    ifindex 0) passes (`passed_host`) unless `judge_host_traffic` is set.
//! 2. Ethernet: shorter than 14 bytes, or neither IPv4 nor IPv6 after up to
//!    two VLAN tags (802.1Q, 802.1ad), passes (`passed_other`); so does a
//!    tag cut short by the frame end. A third tag is dropped
//!    (`dropped_evasive`).
//! 3. IPv4: under 20 bytes, version not 4, header length under 20, total
//!    length below the header or beyond the packet: dropped
//!    (`dropped_malformed`). A total length of 0 means "to the end of the
//!    packet". Nothing after the total length (Ethernet padding) is read.
//! 4. IPv6: under 40 bytes, version not 6, payload length beyond the packet:
//!    dropped (`dropped_malformed`); payload length 0 means "to the end". A
//!    v4-mapped source (`::ffff:0:0/96`) is dropped (`dropped_evasive`).
//!    Up to 8 extension headers (hop-by-hop, routing, fragment, AH,
//!    destination options) are walked; one cut short is malformed, a 9th is
//!    evasive. A later fragment ends the walk.
//! 5. A later fragment (offset > 0) carries no ports: TCP at offset 1 (it
//!    could rewrite the flags, RFC 1858) is dropped (`dropped_evasive`); one
//!    of a datagram whose first fragment a rule dropped is dropped
//!    (`dropped`, on that rule), the last one forgetting the datagram;
//!    others pass (`passed_fragment`).
//! 6. Neither TCP nor UDP: passes (`passed_other`).
//! 7. A transport header cut short is malformed; a first fragment without
//!    the ports is evasive; a first fragment with the ports but not the
//!    whole header is judged as a new connection, and dropped as evasive.
//! 8. A TCP segment with its whole header that is not a SYN without ACK
//!    cannot open a connection: it passes (`passed_not_new`) before any
//!    rule is looked up, on every port, counted on no rule.
//! 9. No rule for the destination port in the hook's scope: passes
//!    (`passed_no_rule`). Veth: for a packet that came in on an interface
//!    (ingress ifindex not 0) at a veth whose state has `HAS_SCOPED`, the
//!    `VETH_SCOPED_RULES` entry {veth, protocol, port, ingress}, else
//!    {veth, protocol, any port, ingress}, decides if present (rule id 0:
//!    no rule); else the rule is `VETH_RULES` {veth, protocol,
//!    port} if the veth's state has `HAS_PORTS`, else (or if absent)
//!    {veth, protocol, any port} if it has `HAS_WILDCARD`. A veth with no
//!    `VETHS` entry (or one without `REVIEWED`) is unreviewed: it is judged
//!    as if a rule with no id and no options matched, whose drops are
//!    `dropped_unreviewed` and which remembers no fragment. A veth rule
//!    matched by a packet from another container (an ingress ifindex with
//!    a `VETHS` entry) passes (`passed_from_container`, on no rule) unless
//!    the rule has `from_containers`. A UDP reply to a flow the host or a
//!    container opened from that port (veth: scope container) passes
//!    (`passed_not_new`, counted on the rule as `passed`).
//! 10. A source on the rule's allow-list passes (`passed_allowed`); a
//!     dry-run rule lets it pass (`passed_dry_run`); otherwise it is dropped
//!     (`dropped`), and a dropped first fragment is remembered so the rest
//!     of its datagram is dropped too.
//!
//! Every packet is counted once per hook and outcome (packets and bytes),
//! and on its rule when one decided it. `Verdict::Drop` iff
//! `outcome::is_drop`.
//!
//! State: the rules (compiled to one owner per scope, protocol and port,
//! as `rules::port_owners` decides), the veth table (`VETHS`,
//! `VETH_RULES`, as written), the config flags, the live UDP flows and the
//! fragment table (direct-mapped slots under the install's seed and mask,
//! as the kernel's `FRAGS`).
//!
//! Flow tracking at a veth's ingress ([`Model::track_veth`]): a UDP packet
//! the container sends (whole, or a first fragment with its ports) is
//! recorded as a container-scope flow when the veth is unreviewed, has
//! scoped entries (`HAS_SCOPED`), or has a rule on its source port (exact
//! or wildcard, as above).

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use dockblock_common::{
    config_flag, frag_slot, hook, map_names,
    net::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN,
        IPV6_AUTH, IPV6_DEST_OPTS, IPV6_EXT_MAX, IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOP_BY_HOP, IPV6_ROUTING,
        IP_MF, IP_OFFSET_MASK, TCP_ACK, TCP_HLEN, TCP_SYN, UDP_HLEN, VLAN_TAGS_MAX, VLAN_TAG_LEN,
    },
    outcome, port_index, proto, rule_flag, scope, seen, veth_flag, Config, Counter, FlowKey, FragKey,
    FragSlot, PortRule, RuleStats, VethRuleKey, VethScopedKey, VethState, VETH_ANY_PORT,
};

use crate::{
    addr,
    error::{Error, Result},
    paths::PinDir,
    rules::{self, Rule, Scope},
    store::{self, RuleStore},
};

/// Where a frame is judged, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// XDP on an uplink (scope dialed); `ingress`: the uplink's ifindex.
    Xdp { ingress: u32 },
    /// TC egress of a Docker bridge (scope container); `from_host`: the
    /// host itself sent it; `ingress`: the interface it came in on.
    Bridge { from_host: bool, ingress: u32 },
    /// TC egress of the host-side veth `ifindex`; `from` is the packet's
    /// ingress ifindex (0: the host).
    Veth { ifindex: u32, from: u32 },
}

impl At {
    /// The hook whose counters count it.
    pub fn hook(self) -> u32 {
        match self {
            At::Xdp { .. } => hook::XDP,
            At::Bridge { .. } => hook::TC,
            At::Veth { .. } => hook::VETH,
        }
    }

    fn sent_by_host(self) -> bool {
        match self {
            At::Xdp { .. } => false,
            At::Bridge { from_host, .. } => from_host,
            At::Veth { from, .. } => from == 0,
        }
    }
}

/// What the hook does with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The verdict, why (one of `dockblock_common::outcome`), and the rule that
/// decided it, if one did (the rule whose counters count it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub outcome: u32,
    pub rule_id: Option<u32>,
}

impl Judgement {
    /// The outcome's display name (`dropped`, `passed_no_rule`, ...).
    pub fn outcome_name(&self) -> &'static str {
        outcome::NAMES.get(self.outcome as usize).copied().unwrap_or("unknown")
    }
}

/// The counters the programs keep: per hook and outcome (`HOOK_STATS`), and
/// per rule (`RULE_STATS`), summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `hooks[hook][outcome]`.
    pub hooks: [[Counter; outcome::SLOTS as usize]; hook::COUNT as usize],
    pub rules: BTreeMap<u32, RuleStats>,
}

impl Tally {
    pub fn hook(&self, hook: u32, outcome: u32) -> Counter {
        self.hooks[hook as usize][outcome as usize]
    }

    pub fn rule(&self, id: u32) -> RuleStats {
        self.rules.get(&id).copied().unwrap_or_default()
    }
}

/// A UDP flow as `FLOWS` keys it (FlowKey has no `Hash`).
type FlowId = ([u8; 16], u16, u16, u32);

fn flow_id(key: &FlowKey) -> FlowId {
    (key.remote, key.remote_port, key.local_port, key.scope)
}

/// The datapath state one frame is judged against, and the counters.
#[derive(Clone, Debug)]
pub struct Model {
    /// `PORT_RULES` of the live generation, indexed by `port_index(0, ..)`.
    ports: Vec<PortRule>,
    /// Allow-lists by rule id, as (v4-mapped address, prefix length).
    allow: HashMap<u32, Vec<([u8; 16], u32)>>,
    rules: Vec<Rule>,
    /// The interfaces `--on` names, resolved when the model was made.
    ifindexes: HashMap<String, u32>,
    veth: VethTable,
    config: Config,
    flows: HashSet<FlowId>,
    /// Occupied `FRAGS` slots by index (an empty slot is absent).
    frags: HashMap<u32, FragSlot>,
    tally: Tally,
}

impl Model {
    /// The model of `rules` under `config` (flags, fragment seed and mask),
    /// with no flows, an empty fragment table and zero counters.
    pub fn new(rules: &[Rule], config: &Config) -> Self {
        let mut ports = vec![PortRule::default(); 1 << 18];
        for s in Scope::ALL {
            for p in [proto::TCP, proto::UDP] {
                for (port, owner) in rules::port_owners(rules, s, p).into_iter().enumerate() {
                    if let Some(rule) = owner {
                        let slot = PortRule { rule_id: rule.id, flags: rule.options.flags() };
                        ports[port_index(0, s.raw(), p, port as u16) as usize] = slot;
                    }
                }
            }
        }
        let allow = rules
            .iter()
            .map(|r| (r.id, r.options.allow_from.iter().map(addr::to_mapped).collect()))
            .collect();
        let ifindexes = rules
            .iter()
            .flat_map(|r| r.options.scoping.on.iter())
            .filter_map(|n| Some((n.clone(), crate::scoping::ifindex(n)?)))
            .collect();
        Self {
            ports,
            allow,
            rules: rules.to_vec(),
            ifindexes,
            veth: VethTable::default(),
            config: *config,
            flows: HashSet::new(),
            frags: HashMap::new(),
            tally: Tally::default(),
        }
    }

    /// The datapath state as the pinned maps hold it now: the rules (from
    /// the catalog, which both generations equal outside a commit), the
    /// veth table, the config, the flows younger than the flow timeout and
    /// the occupied fragment slots. Counters start at zero.
    pub fn from_store(store: &RuleStore, pins: &PinDir) -> Result<Self> {
        let config = store.config()?;
        let mut model = Self::new(&store.rules()?, &config);
        let veths: BpfHashMap<MapData, u32, VethState> = store::open_pinned(pins, map_names::VETHS)?;
        for entry in veths.iter() {
            let (ifindex, state) = entry.map_err(|e| Error::bpf("read VETHS", e))?;
            model.set_veth(ifindex, state);
        }
        let veth_rules: BpfHashMap<MapData, VethRuleKey, PortRule> =
            store::open_pinned(pins, map_names::VETH_RULES)?;
        for entry in veth_rules.iter() {
            let (key, rule) = entry.map_err(|e| Error::bpf("read VETH_RULES", e))?;
            model.set_veth_rule(key, rule);
        }
        // Absent in a pin folder of an earlier release until `attach`.
        if pins.map(map_names::VETH_SCOPED_RULES).exists() {
            let scoped: BpfHashMap<MapData, VethScopedKey, PortRule> =
                store::open_pinned(pins, map_names::VETH_SCOPED_RULES)?;
            for entry in scoped.iter() {
                let (key, rule) = entry.map_err(|e| Error::bpf("read VETH_SCOPED_RULES", e))?;
                model.set_veth_scoped_rule(key, rule);
            }
        }
        let seen_map: Array<MapData, u32> = store::open_pinned(pins, map_names::SEEN)?;
        let is_seen = |slot| seen_map.get(&slot, 0).map(|f| f != 0).unwrap_or(false);
        if is_seen(seen::FLOWS) {
            let flows: BpfHashMap<MapData, FlowKey, u64> = store::open_pinned(pins, map_names::FLOWS)?;
            let now = monotonic_ns();
            let timeout = u64::from(config.flow_timeout_secs) * 1_000_000_000;
            for entry in flows.iter() {
                let (key, last_seen) = entry.map_err(|e| Error::bpf("read FLOWS", e))?;
                if now.saturating_sub(last_seen) < timeout {
                    model.add_flow(key);
                }
            }
        }
        if is_seen(seen::FRAGS) {
            let frags: Array<MapData, FragSlot> = store::open_pinned(pins, map_names::FRAGS)?;
            for index in 0..=config.frag_mask.min(frags.len().saturating_sub(1)) {
                let slot = frags.get(&index, 0).map_err(|e| Error::bpf("read FRAGS", e))?;
                if slot.rule_id != 0 {
                    model.frags.insert(index, slot);
                }
            }
        }
        Ok(model)
    }

    /// A UDP flow the host (scope dialed) or a container (scope container)
    /// opened: replies matching `key` are not new.
    pub fn add_flow(&mut self, key: FlowKey) {
        self.flows.insert(flow_id(&key));
    }

    /// The `VETHS` entry of veth `ifindex`.
    pub fn set_veth(&mut self, ifindex: u32, state: VethState) {
        self.veth.states.insert(ifindex, state);
    }

    /// A `VETH_RULES` entry.
    pub fn set_veth_rule(&mut self, key: VethRuleKey, rule: PortRule) {
        self.veth.rules.insert(key, rule);
    }

    /// A `VETH_SCOPED_RULES` entry.
    pub fn set_veth_scoped_rule(&mut self, key: VethScopedKey, rule: PortRule) {
        self.veth.scoped.insert(key, rule);
    }

    /// `VETH_SCOPED_RULES`, as written.
    pub fn veth_scoped(&self) -> &HashMap<VethScopedKey, PortRule> {
        &self.veth.scoped
    }

    /// The veth table, as `VETHS` and `VETH_RULES` hold it.
    pub fn veths(&self) -> (&HashMap<u32, VethState>, &HashMap<VethRuleKey, PortRule>) {
        (&self.veth.states, &self.veth.rules)
    }

    /// Records the flow a container sends `frame` on, at the ingress of
    /// its host-side veth `ifindex`, if its replies would be judged there.
    pub fn track_veth(&mut self, ifindex: u32, frame: &[u8]) {
        let Ok(ip) = parse(frame) else { return };
        let Ok(t) = transport(&ip, frame) else { return };
        if t.proto != proto::UDP {
            return;
        }
        let judged = match self.veth.reviewed(ifindex) {
            None => true,
            Some(flags) => {
                flags & veth_flag::HAS_SCOPED != 0
                    || self.veth.rule(ifindex, flags, t.proto, t.sport).is_some()
            }
        };
        if judged {
            self.flows.insert((ip.dst, t.dport, t.sport, scope::CONTAINER));
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule with id `id` (its options say whether it logs).
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The counters so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The occupied fragment slots, by index.
    pub fn frag_slots(&self) -> &HashMap<u32, FragSlot> {
        &self.frags
    }

    /// Forgets every remembered datagram.
    pub fn clear_frags(&mut self) {
        self.frags.clear();
    }

    /// Judges `frame` at `hook` (`hook::XDP`: scope dialed; `hook::TC`: scope
    /// container, `from_host` when the host sent it), counts it, and updates
    /// the fragment table as the programs do. The veth hook needs
    /// [`Model::judge_at`].
    pub fn judge(&mut self, hook: u32, frame: &[u8], from_host: bool) -> Judgement {
        // What the test harness runs them on: `lo` (1), or the host (0).
        let at = match hook == hook::TC {
            true => At::Bridge { from_host, ingress: u32::from(!from_host) },
            false => At::Xdp { ingress: 1 },
        };
        self.judge_at(at, frame)
    }

    /// Judges `frame` at `at`, counts it, and updates the fragment table
    /// as the programs do.
    pub fn judge_at(&mut self, at: At, frame: &[u8]) -> Judgement {
        let hook = at.hook();
        let (outcome, rule_id) = self.decide(at, frame);
        let len = frame.len() as u64;
        add(&mut self.tally.hooks[hook as usize][outcome as usize], len);
        if let Some(id) = rule_id {
            let stats = self.tally.rules.entry(id).or_default();
            let counter = match outcome {
                outcome::PASSED_NOT_NEW => &mut stats.passed,
                outcome::PASSED_ALLOWED => &mut stats.allowed,
                outcome::PASSED_DRY_RUN => &mut stats.dry_run,
                _ => &mut stats.dropped,
            };
            add(counter, len);
        }
        let verdict = if outcome::is_drop(outcome) { Verdict::Drop } else { Verdict::Pass };
        Judgement { verdict, outcome, rule_id }
    }

    fn decide(&mut self, at: At, frame: &[u8]) -> (u32, Option<u32>) {
        if at.sent_by_host() && self.config.flags & config_flag::JUDGE_HOST_TRAFFIC == 0 {
            return (outcome::PASSED_HOST, None);
        }
        let ip = match parse(frame) {
            Ok(ip) => ip,
            Err(outcome) => return (outcome, None),
        };
        let key = FragKey { src: ip.src, dst: ip.dst, id: ip.frag_id, proto: u32::from(ip.key_proto) };
        if let Frag::Later { offset, last } = ip.frag {
            if ip.key_proto == IPPROTO_TCP && offset == 1 {
                return (outcome::DROPPED_EVASIVE, None);
            }
            let index = frag_slot(&key, &self.config);
            return match self.frags.get(&index) {
                Some(slot) if slot.key == key => {
                    let id = slot.rule_id;
                    if last {
                        self.frags.remove(&index);
                    }
                    (outcome::DROPPED, Some(id))
                }
                _ => (outcome::PASSED_FRAGMENT, None),
            };
        }
        let t = match transport(&ip, frame) {
            Ok(t) => t,
            Err(outcome) => return (outcome, None),
        };
        let (l4, sport, dport, partial) = (t.proto, t.sport, t.dport, t.partial);
        if l4 == proto::TCP && !partial && !(t.flags & TCP_SYN != 0 && t.flags & TCP_ACK == 0) {
            return (outcome::PASSED_NOT_NEW, None);
        }
        let scope = if matches!(at, At::Xdp { .. }) { scope::DIALED } else { scope::CONTAINER };
        let rule = match at {
            At::Veth { ifindex, from } => match self.veth.reviewed(ifindex) {
                None => PortRule::default(),
                Some(flags) => match self.veth.decider(ifindex, from, flags, l4, dport) {
                    None => return (outcome::PASSED_NO_RULE, None),
                    Some(rule)
                        if rule.flags & rule_flag::FROM_CONTAINERS == 0 && self.veth.is_container(from) =>
                    {
                        return (outcome::PASSED_FROM_CONTAINER, None);
                    }
                    Some(rule) => rule,
                },
            },
            At::Xdp { ingress } | At::Bridge { ingress, .. } => {
                match self.scoped_rule(at, ingress, &ip.dst, l4, dport) {
                    Some(rule) => rule,
                    None => match self.ports[port_index(0, scope, l4, dport) as usize] {
                        PortRule { rule_id: 0, .. } => return (outcome::PASSED_NO_RULE, None),
                        rule => rule,
                    },
                }
            }
        };
        // Unreviewed: no rule id, nothing counted on a rule.
        let id = (rule.rule_id != 0).then_some(rule.rule_id);
        // Partial first fragments have unknown flags and skip the reply check.
        let is_reply = l4 == proto::UDP && !partial && self.flows.contains(&(ip.src, sport, dport, scope));
        if is_reply {
            return (outcome::PASSED_NOT_NEW, id);
        }
        if rule.flags & rule_flag::ALLOW_LIST != 0 && self.is_allowed(rule.rule_id, &ip.src) {
            return (outcome::PASSED_ALLOWED, id);
        }
        if rule.flags & rule_flag::DRY_RUN != 0 {
            return (outcome::PASSED_DRY_RUN, id);
        }
        let Some(rule_id) = id else {
            return (if partial { outcome::DROPPED_EVASIVE } else { outcome::DROPPED_UNREVIEWED }, None);
        };
        if ip.frag == Frag::First {
            self.frags.insert(frag_slot(&key, &self.config), FragSlot { key, rule_id });
        }
        (if partial { outcome::DROPPED_EVASIVE } else { outcome::DROPPED }, id)
    }

    /// Rule 9a, scoped rules, judged at XDP (`--on`, `--to`) and at the
    /// bridge (rules with `--on` and no `--to`; a rule with `--to` is an
    /// unscoped one there): among the rules scoped at the hook, the most
    /// specific that matches the packet, by kind: on the ingress interface
    /// and to the destination, then only to the destination, then only on
    /// the interface; within a kind, ranked as unscoped rules are
    /// (`rules::rank`). A dry-run scoped rule does not decide where an
    /// unscoped rule that is not dry-run covers the port (it never opens
    /// what that closes). `None`: the port's unscoped rule decides.
    fn scoped_rule(&self, at: At, ingress: u32, dst: &[u8; 16], proto: u32, port: u16) -> Option<PortRule> {
        let scope = match at {
            At::Xdp { .. } => Scope::Dialed,
            At::Bridge { .. } => Scope::Container,
            At::Veth { .. } => return None,
        };
        let unscoped = self.ports[port_index(0, scope.raw(), proto, port) as usize];
        let closes = unscoped.rule_id != 0 && unscoped.flags & rule_flag::DRY_RUN == 0;
        let on_matches =
            |r: &Rule| r.options.scoping.on.iter().any(|n| self.ifindexes.get(n) == Some(&ingress));
        let to_matches = |r: &Rule| r.options.scoping.to.iter().any(|a| addr::mapped_addr(*a) == *dst);
        let kinds: [&dyn Fn(&Rule) -> bool; 3] = [
            &|r| on_matches(r) && to_matches(r),
            &|r| r.options.scoping.on.is_empty() && to_matches(r),
            &|r| r.options.scoping.to.is_empty() && on_matches(r),
        ];
        for matches in kinds {
            let owner = self
                .rules
                .iter()
                .filter(|r| {
                    rules::in_port_table(r) && r.scope == scope && r.ports.protos & proto::bit(proto) != 0
                })
                .filter(|r| r.options.scoping.is_scoped_at(scope) && r.ports.lo <= port && port <= r.ports.hi)
                .filter(|r| matches(r))
                .max_by_key(|r| rules::rank(r));
            let Some(owner) = owner else { continue };
            if owner.options.dry_run && closes {
                continue;
            }
            return Some(PortRule { rule_id: owner.id, flags: owner.options.flags() });
        }
        None
    }

    fn is_allowed(&self, rule_id: u32, src: &[u8; 16]) -> bool {
        let nets = self.allow.get(&rule_id).map_or(&[][..], |n| &n[..]);
        nets.iter().any(|(net, len)| prefix_matches(net, *len, src))
    }
}

/// The veth table as the veth hook reads it (`VETHS`, `VETH_RULES`,
/// `VETH_SCOPED_RULES`): the model's, and the veth table's write-order
/// test judges every moment of a sync with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VethTable {
    pub states: HashMap<u32, VethState>,
    pub rules: HashMap<VethRuleKey, PortRule>,
    pub scoped: HashMap<VethScopedKey, PortRule>,
}

impl VethTable {
    /// The flags of veth `ifindex`'s `VETHS` entry, if it was reviewed.
    pub fn reviewed(&self, ifindex: u32) -> Option<u32> {
        let flags = self.states.get(&ifindex)?.flags;
        (flags & veth_flag::REVIEWED != 0).then_some(flags)
    }

    /// Whether `ifindex` is the host-side veth of a container (reviewed or
    /// not, it has a `VETHS` entry).
    fn is_container(&self, ifindex: u32) -> bool {
        ifindex != 0 && self.states.contains_key(&ifindex)
    }

    /// The rule of veth `ifindex` for `proto`/`port` (see rule 9).
    fn rule(&self, ifindex: u32, flags: u32, proto: u32, port: u16) -> Option<PortRule> {
        let get = |port: u32| {
            let key = VethRuleKey { ifindex, proto, port };
            self.rules.get(&key).copied().filter(|r| r.rule_id != 0)
        };
        let exact = (flags & veth_flag::HAS_PORTS != 0).then(|| get(u32::from(port))).flatten();
        exact.or_else(|| (flags & veth_flag::HAS_WILDCARD != 0).then(|| get(VETH_ANY_PORT)).flatten())
    }

    /// What decides at veth `ifindex` (reviewed, with `flags`) for a packet
    /// from `from` (see rule 9): its scoped entry, else its `VETH_RULES`
    /// rule; `None`: no rule.
    pub fn decider(&self, ifindex: u32, from: u32, flags: u32, proto: u32, port: u16) -> Option<PortRule> {
        if flags & veth_flag::HAS_SCOPED != 0 && from != 0 {
            let get = |port: u32| self.scoped.get(&VethScopedKey { ifindex, proto, port, from }).copied();
            if let Some(rule) = get(u32::from(port)).or_else(|| get(VETH_ANY_PORT)) {
                return (rule.rule_id != 0).then_some(rule);
            }
        }
        self.rule(ifindex, flags, proto, port)
    }
}

/// Whether the first `len` bits of `a` and `b` agree.
fn prefix_matches(a: &[u8; 16], len: u32, b: &[u8; 16]) -> bool {
    let (a, b) = (u128::from_be_bytes(*a), u128::from_be_bytes(*b));
    len == 0 || (a ^ b) >> (128 - len.min(128)) == 0
}

fn add(counter: &mut Counter, len: u64) {
    counter.packets += 1;
    counter.bytes += len;
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` that stamps `FLOWS`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    Whole,
    First,
    Later { offset: u16, last: bool },
}

impl Frag {
    fn new(offset: u16, more: bool) -> Self {
        match (offset, more) {
            (0, false) => Frag::Whole,
            (0, true) => Frag::First,
            _ => Frag::Later { offset, last: !more },
        }
    }
}

/// What the transport header tells the verdict.
struct Transport {
    /// One of `proto`.
    proto: u32,
    sport: u16,
    dport: u16,
    /// TCP flags (0 when `partial` or UDP).
    flags: u8,
    /// A first fragment with the ports but not the whole header.
    partial: bool,
}

/// The transport header of a datagram that has one (rules 6 and 7); `Err`
/// is the outcome of one that cannot be judged.
fn transport(ip: &Ip, frame: &[u8]) -> std::result::Result<Transport, u32> {
    if let Frag::Later { .. } = ip.frag {
        return Err(outcome::PASSED_FRAGMENT);
    }
    let (proto, header) = match ip.l4_proto {
        IPPROTO_TCP => (proto::TCP, TCP_HLEN),
        IPPROTO_UDP => (proto::UDP, UDP_HLEN),
        _ => return Err(outcome::PASSED_OTHER),
    };
    let available = ip.end.saturating_sub(ip.l4);
    if available < header && ip.frag != Frag::First {
        return Err(outcome::DROPPED_MALFORMED);
    }
    if available < 4 {
        return Err(outcome::DROPPED_EVASIVE);
    }
    let t = &frame[ip.l4..ip.end];
    let partial = available < header;
    let flags = if proto == proto::TCP && !partial { t[13] } else { 0 };
    Ok(Transport { proto, sport: be16(t, 0), dport: be16(t, 2), flags, partial })
}

/// What the IP layer tells the verdict.
struct Ip {
    /// Addresses, IPv4 mapped into IPv6.
    src: [u8; 16],
    dst: [u8; 16],
    /// Where the IP datagram ends; nothing at or after it is read.
    end: usize,
    /// Offset and protocol of the transport header.
    l4: usize,
    l4_proto: u8,
    frag: Frag,
    frag_id: u32,
    /// The fragment key's protocol: IPv4's, or the fragment header's next.
    key_proto: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses Ethernet, VLAN tags and IP; `Err` is the outcome of a frame the
/// parse alone decides.
fn parse(f: &[u8]) -> std::result::Result<Ip, u32> {
    if f.len() < ETH_HLEN {
        return Err(outcome::PASSED_OTHER);
    }
    let is_tag = |t: u16| t == ETH_P_8021Q || t == ETH_P_8021AD;
    let (mut ether_type, mut l3) = (be16(f, 12), ETH_HLEN);
    for _ in 0..VLAN_TAGS_MAX {
        if !is_tag(ether_type) {
            break;
        }
        if l3 + VLAN_TAG_LEN > f.len() {
            return Err(outcome::PASSED_OTHER);
        }
        ether_type = be16(f, l3 + 2);
        l3 += VLAN_TAG_LEN;
    }
    match ether_type {
        t if is_tag(t) => Err(outcome::DROPPED_EVASIVE),
        ETH_P_IP => ipv4(f, l3),
        ETH_P_IPV6 => ipv6(f, l3),
        _ => Err(outcome::PASSED_OTHER),
    }
}

/// The end of an IP datagram whose header starts at `l3` and whose length
/// field says `claimed` bytes from `l3` (`None`: the field is 0, "to the
/// end of the packet").
fn ip_end(f: &[u8], l3: usize, claimed: Option<usize>) -> std::result::Result<usize, u32> {
    match claimed {
        None => Ok(f.len()),
        Some(n) if l3 + n <= f.len() => Ok(l3 + n),
        Some(_) => Err(outcome::DROPPED_MALFORMED),
    }
}

fn ipv4(f: &[u8], l3: usize) -> std::result::Result<Ip, u32> {
    const MALFORMED: u32 = outcome::DROPPED_MALFORMED;
    if f.len() - l3 < IPV4_HLEN {
        return Err(MALFORMED);
    }
    let h = &f[l3..];
    let header = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header < IPV4_HLEN {
        return Err(MALFORMED);
    }
    let total = usize::from(be16(h, 2));
    if total != 0 && total < header {
        return Err(MALFORMED);
    }
    let end = ip_end(f, l3, (total != 0).then_some(total))?;
    if l3 + header > end {
        return Err(MALFORMED);
    }
    let frag = be16(h, 6);
    let mapped = |a: &[u8]| addr::mapped_addr(std::net::IpAddr::from([a[0], a[1], a[2], a[3]]));
    Ok(Ip {
        src: mapped(&h[12..16]),
        dst: mapped(&h[16..20]),
        end,
        l4: l3 + header,
        l4_proto: h[9],
        frag: Frag::new(frag & IP_OFFSET_MASK, frag & IP_MF != 0),
        frag_id: u32::from(be16(h, 4)),
        key_proto: h[9],
    })
}

fn ipv6(f: &[u8], l3: usize) -> std::result::Result<Ip, u32> {
    const MALFORMED: u32 = outcome::DROPPED_MALFORMED;
    if f.len() - l3 < IPV6_HLEN || f[l3] >> 4 != 6 {
        return Err(MALFORMED);
    }
    let payload = usize::from(be16(f, l3 + 4));
    let end = ip_end(f, l3, (payload != 0).then_some(IPV6_HLEN + payload))?;
    let src: [u8; 16] = f[l3 + 8..l3 + 24].try_into().expect("16 bytes");
    let dst: [u8; 16] = f[l3 + 24..l3 + 40].try_into().expect("16 bytes");
    if src[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return Err(outcome::DROPPED_EVASIVE);
    }
    let mut ip = Ip {
        src,
        dst,
        end,
        l4: l3 + IPV6_HLEN,
        l4_proto: f[l3 + 6],
        frag: Frag::Whole,
        frag_id: 0,
        key_proto: 0,
    };
    // The `n` bytes of the header at the cursor, if they lie before `end`.
    let read = |at: usize, n: usize| if at + n <= end { Ok(&f[at..at + n]) } else { Err(MALFORMED) };
    let is_ext = |next: u8| {
        matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS)
    };
    for _ in 0..IPV6_EXT_MAX {
        let len = match ip.l4_proto {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let h = read(ip.l4, 2)?;
                ip.l4_proto = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            IPV6_AUTH => {
                let h = read(ip.l4, 2)?;
                ip.l4_proto = h[0];
                (usize::from(h[1]) + 2) * 4
            }
            IPV6_FRAGMENT => {
                let h = read(ip.l4, 8)?;
                let field = be16(h, 2);
                ip.l4_proto = h[0];
                ip.key_proto = h[0];
                ip.frag = Frag::new(field >> 3, field & 1 != 0);
                ip.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                8
            }
            _ => break,
        };
        ip.l4 += len;
        if let Frag::Later { .. } = ip.frag {
            return Ok(ip);
        }
    }
    if is_ext(ip.l4_proto) {
        return Err(outcome::DROPPED_EVASIVE);
    }
    Ok(ip)
}
