//! Types, map names and index math shared by the kernel programs
//! (`dockblock-ebpf`) and the user side (`dockblock-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding-free layouts, so the
//! bytes the agent writes into a map are exactly the bytes the program reads.
//! Flags are `u32`, not `bool`: a `bool` would leave implicit padding that the
//! kernel copies as garbage. The `user` feature adds `aya::Pod` impls.
#![no_std]

use core::mem::size_of;

/// Names of the BPF maps, as the kernel object declares them and as they are
/// pinned in the pin folder. The agent's tests check that the object declares
/// every one of them.
pub mod map_names {
    /// `ARRAY` of [`crate::PortRule`], indexed by [`crate::port_index`].
    pub const PORT_RULES: &str = "PORT_RULES";
    /// `HASH` rule id -> [`crate::RuleDef`]: the rule catalog the CLI reads.
    /// The datapath never looks at it; it lives in a map so that the rules
    /// survive every process and are shared by the CLI and the daemon.
    pub const RULES: &str = "RULES";
    /// `PERCPU_ARRAY` rule id -> [`crate::RuleStats`].
    pub const RULE_STATS: &str = "RULE_STATS";
    /// `PERCPU_ARRAY` [`crate::hook_stats_index`] -> [`crate::Counter`].
    pub const HOOK_STATS: &str = "HOOK_STATS";

    /// Every map the agent pins, in a fixed order.
    pub const ALL: [&str; 4] = [PORT_RULES, RULES, RULE_STATS, HOOK_STATS];
}

/// Names of the programs in the kernel object.
pub mod program_names {
    /// XDP program for the host uplink(s): judges the port a client dials.
    pub const UPLINK_XDP: &str = "dockblock_xdp";
    /// TC (TCX egress) program for Docker bridges: judges the container port.
    pub const BRIDGE_TC: &str = "dockblock_tc";
}

/// Where a port rule is judged.
pub mod scope {
    /// The port a client dials on this host, before DNAT (XDP on the uplink).
    pub const DIALED: u32 = 0;
    /// The container port after DNAT (TC egress on the Docker bridge).
    pub const CONTAINER: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Transport protocols, as indexes (not IANA numbers) so they fit one bit.
pub mod proto {
    pub const TCP: u32 = 0;
    pub const UDP: u32 = 1;
    pub const COUNT: u32 = 2;
    /// Bit for `proto` in [`crate::RuleDef::protos`].
    pub const fn bit(proto: u32) -> u32 {
        1 << proto
    }
}

/// Number of entries of `PORT_RULES`: one per (scope, protocol, port).
pub const PORT_RULES_LEN: u32 = scope::COUNT * proto::COUNT * 65536;

/// Index into `PORT_RULES`. One array lookup per packet, whatever the number
/// of blocked ports.
#[inline(always)]
pub const fn port_index(scope: u32, proto: u32, port: u16) -> u32 {
    (scope << 17) | (proto << 16) | port as u32
}

/// The value of a `PORT_RULES` slot. `rule_id == 0` means "no rule".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub rule_id: u32,
    /// Reserved for per-rule datapath flags; always 0 today.
    pub flags: u32,
}

/// A rule as the user wrote it, stored in the `RULES` catalog.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleDef {
    /// One of [`scope`].
    pub scope: u32,
    /// Bitmask of [`proto::bit`].
    pub protos: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    /// Reserved for rule flags; always 0 today.
    pub flags: u32,
}

/// Packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-rule counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// New connections the rule dropped.
    pub dropped: Counter,
    /// Packets on the rule's ports that passed because they did not open a
    /// new connection (TCP replies and established traffic).
    pub passed: Counter,
}

/// The hook a program runs at.
pub mod hook {
    pub const XDP: u32 = 0;
    pub const TC: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// What a program did with a packet, for the per-hook counters.
pub mod outcome {
    /// Dropped by a rule.
    pub const DROPPED: u32 = 0;
    /// TCP or UDP on IPv4, no rule for its port.
    pub const PASSED_NO_RULE: u32 = 1;
    /// A rule matched its port, but it did not open a new connection.
    pub const PASSED_NOT_NEW: u32 = 2;
    /// Not something the program judges: non-IPv4, not TCP/UDP, a non-first
    /// IPv4 fragment.
    pub const PASSED_UNPARSED: u32 = 3;
    /// Claims to be IPv4/TCP/UDP but is truncated or has a bad header length.
    pub const PASSED_MALFORMED: u32 = 4;
    pub const COUNT: u32 = 5;
    /// Names for display, indexed by outcome.
    pub const NAMES: [&str; COUNT as usize] = [
        "dropped",
        "passed_no_rule",
        "passed_not_new",
        "passed_unparsed",
        "passed_malformed",
    ];
}

/// Number of entries of `HOOK_STATS`.
pub const HOOK_STATS_LEN: u32 = hook::COUNT * outcome::COUNT;

/// Index into `HOOK_STATS`.
#[inline(always)]
pub const fn hook_stats_index(hook: u32, outcome: u32) -> u32 {
    hook * outcome::COUNT + outcome
}

/// Default capacity of the rule catalog (`RULES`, `RULE_STATS`). A port range
/// is one rule, so this bounds distinct rules, not ports. Rule id 0 is
/// reserved for "no rule", so ids run from 1 to `DEFAULT_MAX_RULES - 1`.
pub const DEFAULT_MAX_RULES: u32 = 4096;

// The layouts are part of the kernel/user contract: no implicit padding.
const _: () = assert!(size_of::<PortRule>() == 8);
const _: () = assert!(size_of::<RuleDef>() == 16);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<RuleStats>() == 32);
const _: () = assert!(port_index(scope::CONTAINER, proto::UDP, 65535) == PORT_RULES_LEN - 1);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are repr(C), made only of integers, with no padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::RuleDef {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::RuleStats {}
}
