//! The one verdict function every hook shares (XDP, bridge TC, veth), and
//! the counters every path leaves through. Hooks differ only in where they
//! look up the rule for a port ([`Match`]).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use dockblock_common::{
    config_flag, hook_stats_index, net::IPPROTO_TCP, outcome, port_index, proto, rule_flag,
    seen as seen_slot, AllowKey, Counter, FlowKey, FragKey, PortRule, RuleStats, ScopedKey,
    ALLOW_KEY_RULE_BITS,
};

use crate::{
    events::{self, Seen},
    frags,
    maps::{seen, ALLOW, CONFIG, FLOWS, HOOK_STATS, PORT_RULES, RULE_STATS, SCOPED_RULES},
    parse::{Facts, Frag, Reject, L4},
};

pub enum Verdict {
    Pass,
    Drop,
}

/// What a hook's rule lookup found for a packet's port.
pub enum Match {
    /// This rule judges it.
    Rule(PortRule),
    /// No rule can judge it yet (a veth the daemon has not reviewed): a new
    /// connection is dropped as `DROPPED_UNREVIEWED`, the rest passes.
    Unreviewed,
    /// Not judged: passes with this outcome.
    Pass(u32),
}

/// How a hook finds the rule for a packet's port. A trait with an
/// always-inlined method, not a closure: a closure this size was left a
/// BPF subprogram, where the verifier lost the parser's facts (the
/// address family) and refused the address read.
pub trait Lookup {
    fn find(self, config: &LiveConfig, facts: &Facts, l4: &L4) -> Match;
}

/// The rule of `scope` in `PORT_RULES` (XDP and bridge TC). For a slot
/// flagged `SCOPED`, the most specific `SCOPED_RULES` entry that matches
/// the packet first, falling back to the slot's own rule: at XDP
/// (`by_address`) interface and address, then address, then interface; at
/// the bridge the interface only (after DNAT the dialed address is gone,
/// so user space compiles only `--on` keys there). `ingress`: where the
/// interface the packet came in on is read.
pub struct PortTable {
    pub scope: u32,
    pub ingress: Ingress,
    pub by_address: bool,
}

/// Where [`PortTable`] reads the interface a packet came in on.
pub enum Ingress {
    /// XDP: read before the parse.
    Known(u32),
    /// TC: `skb->ingress_ifindex`, read only when a scoped slot asks (a
    /// value carried across the parse made the verifier walk it again).
    Skb(*mut __sk_buff),
}

impl Lookup for PortTable {
    #[inline(always)]
    fn find(self, config: &LiveConfig, facts: &Facts, l4: &L4) -> Match {
        let scope = self.scope;
        let slot = match PORT_RULES.get(port_index(config.generation, scope, l4.proto, l4.dport)) {
            Some(slot) => *slot,
            None => PortRule::default(),
        };
        // Every lookup below ends in one value, so the verifier walks the
        // rest of the judgement once per packet shape, not once per hit.
        let mut rule = slot;
        if slot.flags & rule_flag::SCOPED != 0 {
            let ifindex = match self.ingress {
                Ingress::Known(ifindex) => ifindex,
                // SAFETY: the context's valid __sk_buff.
                Ingress::Skb(skb) => unsafe { (*skb).ingress_ifindex },
            };
            let found = scoped(config.generation, scope, ifindex, self.by_address, facts, l4);
            if found.rule_id != 0 {
                rule = found;
            }
        }
        match rule.rule_id {
            0 => Match::Pass(outcome::PASSED_NO_RULE),
            _ => Match::Rule(rule),
        }
    }
}

/// The most specific `SCOPED_RULES` entry for the packet, or no rule (id 0).
#[inline(always)]
fn scoped(generation: u32, scope: u32, ifindex: u32, by_address: bool, facts: &Facts, l4: &L4) -> PortRule {
    let mut key =
        ScopedKey { generation, scope, proto: l4.proto, port: u32::from(l4.dport), ifindex, addr: [0; 16] };
    let get = |key: &ScopedKey| match unsafe { SCOPED_RULES.get(key) } {
        // SAFETY: the value is copied out at once.
        Some(rule) => *rule,
        None => PortRule::default(),
    };
    let mut found = PortRule::default();
    if by_address {
        key.addr = facts.dst();
        found = get(&key);
        if found.rule_id == 0 {
            key.ifindex = 0;
            found = get(&key);
        }
        key.ifindex = ifindex;
        key.addr = [0; 16];
    }
    if found.rule_id == 0 {
        found = get(&key);
    }
    found
}

/// Judges the packet `parse` reads with the rule `lookup` finds for it,
/// counts it under `seen.hook`, and says what to do with it (fail-closed.md,
/// in its order). `scope` is the scope of the flows whose replies pass;
/// `len` is the packet length in bytes; `from_host` marks packets the host
/// itself sent (TC hooks only). `parse` runs only if the packet is judged
/// at all, `lookup` only for a packet with ports.
#[inline(always)]
pub fn judge(
    scope: u32,
    len: u64,
    seen: &Seen,
    from_host: bool,
    parse: impl FnOnce() -> Result<Facts, Reject>,
    lookup: impl Lookup,
) -> Verdict {
    let hook = seen.hook;
    let config = config();
    if from_host && config.flags & config_flag::JUDGE_HOST_TRAFFIC == 0 {
        return finish(hook, outcome::PASSED_HOST, len);
    }
    let facts = match parse() {
        Ok(facts) => facts,
        Err(reject) => return finish(hook, rejected(reject), len),
    };
    let Some(l4) = &facts.l4 else {
        return judge_later_fragment(&facts, hook, len);
    };
    // A whole TCP header without SYN, or with ACK, cannot open a connection:
    // it passes before any lookup, so established traffic pays the parse
    // and nothing else (the veth's lookups are hash lookups).
    if !l4.is_new {
        return finish(hook, outcome::PASSED_NOT_NEW, len);
    }
    // Unreviewed: judged as a rule with no id, no flags and no counters.
    let rule = match lookup.find(&config, &facts, l4) {
        Match::Rule(rule) => rule,
        Match::Unreviewed => PortRule::default(),
        Match::Pass(outcome) => return finish(hook, outcome, len),
    };
    let stats = if rule.rule_id != 0 { RULE_STATS.get_ptr_mut(rule.rule_id) } else { None };
    let count = |pick: fn(&mut RuleStats) -> &mut Counter| {
        if let Some(stats) = stats {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            add(pick(unsafe { &mut *stats }), len);
        }
    };
    // A first fragment cut short after the ports counts as new: its flags
    // are unknown, and a reply would carry its whole header.
    if l4.complete && l4.proto == proto::UDP && is_reply(&facts, l4.sport, l4.dport, scope, &config) {
        count(|s| &mut s.passed);
        return finish(hook, outcome::PASSED_NOT_NEW, len);
    }
    if rule.flags & rule_flag::ALLOW_LIST != 0 && is_allowed(&facts, &rule, &config) {
        count(|s| &mut s.allowed);
        return finish(hook, outcome::PASSED_ALLOWED, len);
    }
    let dry_run = rule.flags & rule_flag::DRY_RUN != 0;
    if rule.flags & rule_flag::LOG != 0 {
        events::emit(&facts, rule.rule_id, dry_run, seen, config.log_rate);
    }
    if dry_run {
        count(|s| &mut s.dry_run);
        return finish(hook, outcome::PASSED_DRY_RUN, len);
    }
    if rule.rule_id == 0 {
        // Later fragments of it cannot be reassembled without it: nothing to
        // remember.
        let dropped = if l4.complete { outcome::DROPPED_UNREVIEWED } else { outcome::DROPPED_EVASIVE };
        return finish(hook, dropped, len);
    }
    if let Frag::First { id } = facts.frag {
        // Later fragments carry no ports: remember the datagram to drop them.
        frags::remember(&frag_key(&facts, id), rule.rule_id);
    }
    count(|s| &mut s.dropped);
    finish(hook, if l4.complete { outcome::DROPPED } else { outcome::DROPPED_EVASIVE }, len)
}

/// The outcome of a packet the parser could not hand to a rule.
#[inline(always)]
fn rejected(reject: Reject) -> u32 {
    match reject {
        Reject::Other => outcome::PASSED_OTHER,
        Reject::Malformed => outcome::DROPPED_MALFORMED,
        // Short: headers the bridge program could not make linear.
        Reject::Evasive | Reject::Short { .. } => outcome::DROPPED_EVASIVE,
    }
}

/// A later fragment is dropped when its first fragment was, or when it
/// could rewrite the TCP flags of a first fragment judged already.
#[inline(always)]
fn judge_later_fragment(facts: &Facts, hook: u32, len: u64) -> Verdict {
    let Frag::Later { id, offset, last } = facts.frag else {
        return finish(hook, outcome::DROPPED_EVASIVE, len);
    };
    // At 8 bytes it overlaps the flags of a 20-byte header (RFC 1858).
    if facts.key_proto == IPPROTO_TCP && offset == 1 {
        return finish(hook, outcome::DROPPED_EVASIVE, len);
    }
    let Some(rule_id) = frags::dropped_by(&frag_key(facts, id), last) else {
        return finish(hook, outcome::PASSED_FRAGMENT, len);
    };
    if let Some(stats) = RULE_STATS.get_ptr_mut(rule_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        add(unsafe { &mut (*stats).dropped }, len);
    }
    finish(hook, outcome::DROPPED, len)
}

#[inline(always)]
fn frag_key(facts: &Facts, id: u32) -> FragKey {
    FragKey { src: facts.src(), dst: facts.dst(), id, proto: u32::from(facts.key_proto) }
}

/// Whether a UDP datagram answers a flow the host or a container opened
/// from its destination port (recorded by the tracking programs).
#[inline(always)]
fn is_reply(facts: &Facts, sport: u16, dport: u16, scope: u32, config: &LiveConfig) -> bool {
    // Under a flood on a host that never sent UDP from a blocked port, this
    // array read spares every datagram a hash lookup.
    if !seen(seen_slot::FLOWS) {
        return false;
    }
    let key = FlowKey { remote: facts.src(), remote_port: sport, local_port: dport, scope };
    // SAFETY: the value is copied out at once.
    let Some(seen) = (unsafe { FLOWS.get(key) }).copied() else { return false };
    let now = unsafe { bpf_ktime_get_ns() };
    now.saturating_sub(seen) < u64::from(config.flow_timeout_secs) * 1_000_000_000
}

#[inline(always)]
fn is_allowed(facts: &Facts, rule: &PortRule, config: &LiveConfig) -> bool {
    let data = AllowKey {
        generation_be: config.generation.to_be(),
        rule_id_be: rule.rule_id.to_be(),
        addr: facts.src(),
    };
    ALLOW.get(Key::new(ALLOW_KEY_RULE_BITS + 128, data)).is_some()
}

/// The settings a packet is judged under, copied once from `CONFIG` so the
/// packet sees one generation throughout. The fragment hash's mask and seed
/// are left out: `frags` reads them from the map, so only fragments pay for
/// them.
#[derive(Clone, Copy, Default)]
pub struct LiveConfig {
    pub generation: u32,
    pub flags: u32,
    pub log_rate: u32,
    pub flow_timeout_secs: u32,
}

#[inline(always)]
pub fn config() -> LiveConfig {
    match CONFIG.get(0) {
        Some(c) => LiveConfig {
            generation: c.generation,
            flags: c.flags,
            log_rate: c.log_rate,
            flow_timeout_secs: c.flow_timeout_secs,
        },
        None => LiveConfig::default(),
    }
}

#[inline(always)]
fn finish(hook: u32, outcome: u32, len: u64) -> Verdict {
    if let Some(counter) = HOOK_STATS.get_ptr_mut(hook_stats_index(hook, outcome)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        add(unsafe { &mut *counter }, len);
    }
    if outcome::is_drop(outcome) {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn add(counter: &mut Counter, len: u64) {
    counter.packets += 1;
    counter.bytes += len;
}
