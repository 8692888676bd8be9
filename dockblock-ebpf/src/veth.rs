//! The per-container rules, judged at the egress of the container's
//! host-side veth (`VETHS`, `VETH_RULES`).
//!
//! Origin of a packet, from `skb->ingress_ifindex`: 0 is the host itself, a
//! veth with a `VETHS` entry is another container, anything else is outside
//! the host.
//!
//! `--on` is judged here by that ingress interface: a veth whose state has
//! `HAS_SCOPED` looks up `VETH_SCOPED_RULES` {veth, protocol, port, ingress}
//! (the exact port, then every port) before `VETH_RULES`; the agent writes
//! there, per interface, the verdict that differs from `VETH_RULES`.

use dockblock_common::{
    outcome, proto, rule_flag, veth_flag, PortRule, VethRuleKey, VethScopedKey, VETH_ANY_PORT,
};

use aya_ebpf::bindings::__sk_buff;

use crate::{
    maps::{VETHS, VETH_RULES, VETH_SCOPED_RULES},
    parse::{Facts, L4},
    verdict::{LiveConfig, Lookup, Match},
};

/// Flags of the veth's `VETHS` entry, if it was reviewed. An entry without
/// `REVIEWED` is taken as unreviewed (closed).
#[inline(always)]
fn reviewed(ifindex: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    let flags = unsafe { VETHS.get(ifindex) }?.flags;
    (flags & veth_flag::REVIEWED != 0).then_some(flags)
}

/// The rule of veth `ifindex` for `proto`/`port`: the exact port first (if
/// the veth has any), then the protocol's wildcard (if it has one).
#[inline(always)]
fn rule(ifindex: u32, flags: u32, proto: u32, port: u16) -> Option<PortRule> {
    let get = |port: u32| {
        // SAFETY: the value is copied out at once.
        unsafe { VETH_RULES.get(VethRuleKey { ifindex, proto, port }) }.copied().filter(|r| r.rule_id != 0)
    };
    let exact = if flags & veth_flag::HAS_PORTS != 0 { get(u32::from(port)) } else { None };
    match exact {
        Some(rule) => Some(rule),
        None if flags & veth_flag::HAS_WILDCARD != 0 => get(VETH_ANY_PORT),
        None => None,
    }
}

/// The `VETH_SCOPED_RULES` entry of veth `ifindex` for packets to
/// `proto`/`port` that came in on `from`: the exact port, then every port.
/// Found with rule id 0: decided, no rule.
#[inline(always)]
fn scoped(ifindex: u32, from: u32, proto: u32, port: u16) -> Option<PortRule> {
    let get = |port: u32| {
        // SAFETY: the value is copied out at once.
        unsafe { VETH_SCOPED_RULES.get(VethScopedKey { ifindex, proto, port, from }) }.copied()
    };
    match get(u32::from(port)) {
        Some(rule) => Some(rule),
        None => get(VETH_ANY_PORT),
    }
}

/// The verdict's lookup for a packet entering the container behind veth
/// `ifindex` that came in on `from` (its `ingress_ifindex`).
#[inline(always)]
fn lookup(ifindex: u32, from: u32, l4: &L4) -> Match {
    let Some(flags) = reviewed(ifindex) else { return Match::Unreviewed };
    // The host (0) is no `--on` interface: no scoped entry names it.
    let found = match flags & veth_flag::HAS_SCOPED != 0 && from != 0 {
        true => scoped(ifindex, from, l4.proto, l4.dport),
        false => None,
    };
    let rule = match found {
        Some(rule) => rule,
        None => rule(ifindex, flags, l4.proto, l4.dport).unwrap_or_default(),
    };
    if rule.rule_id == 0 {
        return Match::Pass(outcome::PASSED_NO_RULE);
    }
    // Read only when it decides: a rule matched that leaves containers'
    // traffic alone, and the packet was not sent by the host.
    // SAFETY: only the presence is read.
    if rule.flags & rule_flag::FROM_CONTAINERS == 0 && from != 0 && unsafe { VETHS.get(from) }.is_some() {
        return Match::Pass(outcome::PASSED_FROM_CONTAINER);
    }
    Match::Rule(rule)
}

/// The verdict's lookup at the veth hook of `ifindex`.
pub struct VethTable {
    pub ifindex: u32,
    pub skb: *mut __sk_buff,
}

impl Lookup for VethTable {
    #[inline(always)]
    fn find(self, _: &LiveConfig, _: &Facts, l4: &L4) -> Match {
        // SAFETY: the context's valid __sk_buff.
        lookup(self.ifindex, unsafe { (*self.skb).ingress_ifindex }, l4)
    }
}

/// Whether replies to UDP source `port` of the container behind `ifindex`
/// would be judged there, so the flow must be recorded (on a veth with
/// scoped entries, always: a reply may come in on a scoped interface).
#[inline(always)]
pub fn blocks(ifindex: u32) -> impl FnOnce(u16) -> bool {
    move |port| match reviewed(ifindex) {
        None => true,
        Some(flags) => flags & veth_flag::HAS_SCOPED != 0 || rule(ifindex, flags, proto::UDP, port).is_some(),
    }
}
