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
    /// `HASH` [`crate::AllowEntry`] -> u32: the allow-lists as the user gave
    /// them, the catalog `ALLOW` is compiled from. The datapath never reads it.
    pub const RULE_ALLOW: &str = "RULE_ALLOW";
    /// `ARRAY` of one [`crate::Config`]: the active generation and flags.
    pub const CONFIG: &str = "CONFIG";
    /// `LPM_TRIE` [`crate::AllowKey`] -> u32: per-rule source allow-lists.
    pub const ALLOW: &str = "ALLOW";
    /// `LRU_HASH` [`crate::FlowKey`] -> last-seen ns: UDP flows the host or a
    /// container opened from a blocked port, so their replies pass.
    pub const FLOWS: &str = "FLOWS";
    /// `ARRAY` of u32 flags indexed by [`crate::seen`], each set to 1 the
    /// first time its table gets an entry: until then the datapath skips
    /// that table's lookup (a flood pays one array read instead of a hash
    /// lookup). Pinned, so a program replaced in place keeps them.
    pub const SEEN: &str = "SEEN";
    /// `ARRAY` of [`crate::FragSlot`], a direct-mapped table indexed by
    /// [`crate::frag_slot`]: IPv4/IPv6 datagrams whose first fragment was
    /// dropped, so their later fragments are dropped too. Its size is a
    /// power of two (`--max-frags` rounded up); a newer datagram whose key
    /// lands on an occupied slot evicts the older one, whose later
    /// fragments then pass (as LRU eviction would under pressure).
    pub const FRAGS: &str = "FRAGS";
    /// `RINGBUF` of [`crate::Event`]: drops of rules with `--log`.
    pub const EVENTS: &str = "EVENTS";
    /// `PERCPU_ARRAY` of one [`crate::LogBudget`]: the events rate limit.
    pub const LOG_BUDGET: &str = "LOG_BUDGET";
    /// `HASH` host-side veth ifindex -> [`crate::VethState`]: the container
    /// veths the daemon has reviewed. A veth with a hook but no entry is
    /// unreviewed: new connections into it are dropped.
    pub const VETHS: &str = "VETHS";
    /// `HASH` [`crate::VethRuleKey`] -> [`crate::PortRule`]: per-container
    /// rules, judged at the egress of the container's host-side veth.
    pub const VETH_RULES: &str = "VETH_RULES";
    /// `HASH` rule id -> [`crate::RuleTarget`]: what a rule names besides
    /// ports (a container, a label, a compose service, the published-ports
    /// policy) or the rule it was derived from. Plain port rules have no
    /// entry. Read only by the agent, like `RULES`.
    pub const RULE_TARGETS: &str = "RULE_TARGETS";
    /// `HASH` [`crate::ScopedKey`] -> [`crate::PortRule`]: rules scoped with
    /// `--on`/`--to`, looked up only for a port whose `PORT_RULES` slot has
    /// [`crate::rule_flag::SCOPED`]. A map of its own (not a wider
    /// `PORT_RULES` value), so the pinned maps of earlier releases keep their
    /// layouts; created when an old pin folder lacks it.
    pub const SCOPED_RULES: &str = "SCOPED_RULES";
    /// `HASH` [`crate::ScopeEntry`] -> u32: the `--on`/`--to` values of each
    /// rule as the user gave them (interface names, addresses), the catalog
    /// `SCOPED_RULES` is compiled from. Read only by the agent.
    pub const RULE_SCOPES: &str = "RULE_SCOPES";
    /// `HASH` [`crate::VethScopedKey`] -> [`crate::PortRule`]: what the veth
    /// hook decides for packets that came in on one interface (`--on`),
    /// where that differs from `VETH_RULES`; looked up only on veths whose
    /// `VETHS` state has [`crate::veth_flag::HAS_SCOPED`]. A map of its own,
    /// so the pinned maps of earlier releases keep their layouts; created
    /// when an old pin folder lacks it.
    pub const VETH_SCOPED_RULES: &str = "VETH_SCOPED_RULES";

    /// Every map the agent pins, in a fixed order.
    pub const ALL: [&str; 18] = [
        PORT_RULES,
        RULES,
        RULE_ALLOW,
        RULE_STATS,
        HOOK_STATS,
        CONFIG,
        ALLOW,
        FLOWS,
        SEEN,
        FRAGS,
        EVENTS,
        LOG_BUDGET,
        VETHS,
        VETH_RULES,
        RULE_TARGETS,
        SCOPED_RULES,
        RULE_SCOPES,
        VETH_SCOPED_RULES,
    ];
}

/// Names of the programs in the kernel object.
pub mod program_names {
    /// XDP program for the host uplink(s): judges the port a client dials.
    pub const UPLINK_XDP: &str = "dockblock_xdp";
    /// TC (TCX egress) program for Docker bridges: judges the container port.
    pub const BRIDGE_TC: &str = "dockblock_tc";
    /// TC (TCX egress) on uplinks: records UDP flows the host opens from a
    /// blocked dialed port.
    pub const UPLINK_TRACK: &str = "dockblock_track_up";
    /// TC (TCX ingress) on bridges: records UDP flows containers open from a
    /// blocked container port.
    pub const BRIDGE_TRACK: &str = "dockblock_track_br";
    /// TC (TCX egress) on a container's host-side veth: every packet entering
    /// the container, whatever its path; judges `VETH_RULES`.
    pub const VETH_TC: &str = "dockblock_veth";
    /// TC (TCX ingress) on a container's host-side veth: records UDP flows
    /// the container opens from a port a veth rule blocks (or while the veth
    /// is unreviewed), so their replies pass.
    pub const VETH_TRACK: &str = "dockblock_track_veth";
}

/// Slots of the `SEEN` map.
pub mod seen {
    /// Set once a tracking program recorded a UDP flow (`FLOWS`).
    pub const FLOWS: u32 = 0;
    /// Set once a dropped first fragment was remembered (`FRAGS`).
    pub const FRAGS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Protocol numbers both sides parse or build frames with.
pub mod net {
    pub const ETH_HLEN: usize = 14;
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const ETH_P_8021Q: u16 = 0x8100;
    /// 802.1ad (QinQ) service tag.
    pub const ETH_P_8021AD: u16 = 0x88a8;
    pub const VLAN_TAG_LEN: usize = 4;
    /// VLAN tags the parser walks; a frame with more is dropped (evasive).
    pub const VLAN_TAGS_MAX: usize = 2;

    pub const IPV4_HLEN: usize = 20;
    pub const IPV6_HLEN: usize = 40;
    /// IPv4 `frag_off` field: "more fragments" flag and offset bits.
    pub const IP_MF: u16 = 0x2000;
    pub const IP_OFFSET_MASK: u16 = 0x1fff;

    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// IPv6 extension headers the parser walks.
    pub const IPV6_HOP_BY_HOP: u8 = 0;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const IPV6_AUTH: u8 = 51;
    pub const IPV6_DEST_OPTS: u8 = 60;
    /// Extension headers walked; a packet with more is dropped (evasive).
    pub const IPV6_EXT_MAX: usize = 8;

    pub const TCP_HLEN: usize = 20;
    pub const UDP_HLEN: usize = 8;
    /// TCP flag bits (byte 13 of the header).
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_PSH: u8 = 0x08;
    pub const TCP_ACK: u8 = 0x10;
    pub const TCP_URG: u8 = 0x20;
}

/// Program return values as BPF_PROG_TEST_RUN reports them (uapi bpf.h,
/// pkt_cls.h), for the user side that runs the programs on test packets.
pub mod retval {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;
    /// TC_ACT_UNSPEC (-1, TCX_NEXT: on to the next program, then the stack).
    pub const TC_ACT_UNSPEC: u32 = u32::MAX;
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

/// The rule set exists twice, as generation 0 and 1. The datapath reads the
/// generation named in `CONFIG`; a change is written to the other one and
/// made live by flipping `CONFIG`, so a packet sees the old set or the new
/// one, never a mix.
pub const GENERATIONS: u32 = 2;

/// Number of entries of `PORT_RULES`: one per (generation, scope, protocol,
/// port).
pub const PORT_RULES_LEN: u32 = GENERATIONS * scope::COUNT * proto::COUNT * 65536;

/// Index into `PORT_RULES`. One array lookup per packet, whatever the number
/// of blocked ports.
#[inline(always)]
pub const fn port_index(generation: u32, scope: u32, proto: u32, port: u16) -> u32 {
    ((generation & 1) << 18) | (scope << 17) | (proto << 16) | port as u32
}

/// Flags of a rule, in [`PortRule::flags`] and [`RuleDef::flags`].
pub mod rule_flag {
    /// Count and log what the rule would drop; drop nothing.
    pub const DRY_RUN: u32 = 1;
    /// Emit a rate-limited event per dropped packet.
    pub const LOG: u32 = 2;
    /// Sources in `ALLOW` for this rule pass.
    pub const ALLOW_LIST: u32 = 4;
    /// Veth rules only: also judge connections from other containers
    /// (without it they pass, and only traffic from outside the host is
    /// judged).
    pub const FROM_CONTAINERS: u32 = 8;
    pub const ALL: u32 = DRY_RUN | LOG | ALLOW_LIST | FROM_CONTAINERS;
    /// `PORT_RULES` slots only, never a rule's own flag (so not in `ALL`):
    /// `SCOPED_RULES` has entries for this port, look them up before the
    /// slot's own (unscoped) rule. A port without scoped rules pays this one
    /// bit test.
    pub const SCOPED: u32 = 16;
}

/// Key of `SCOPED_RULES`: one (ingress interface, destination address)
/// pair of a scoped rule on one port. `ifindex` 0 means any interface, an
/// all-zero `addr` any address; a rule scoped on both has one key per pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    /// The generation, as in `PORT_RULES` (0 or 1).
    pub generation: u32,
    /// One of [`scope`].
    pub scope: u32,
    /// One of [`proto`].
    pub proto: u32,
    pub port: u32,
    /// The interface the packet came in on (XDP: its ingress interface;
    /// bridge TC: `skb->ingress_ifindex`), 0 for any.
    pub ifindex: u32,
    /// The destination address (IPv4 mapped into IPv6), zero for any. Only
    /// hooks that see the dialed address (XDP) get entries with one.
    pub addr: [u8; 16],
}

/// What a [`ScopeEntry`] holds.
pub mod scope_kind {
    /// `--on IFACE`: `value` is the interface name, NUL-padded.
    pub const ON: u32 = 1;
    /// `--to ADDR`: `value` is the address, IPv4 mapped into IPv6.
    pub const TO: u32 = 2;
}

/// Key of `RULE_SCOPES`: one `--on` or `--to` value of one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeEntry {
    pub rule_id: u32,
    /// One of [`scope_kind`].
    pub kind: u32,
    pub value: [u8; 16],
}

/// Interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const IFNAME_MAX: usize = 15;

/// Default capacity of `SCOPED_RULES` (both generations together).
pub const DEFAULT_MAX_SCOPED: u32 = 65536;
/// Default capacity of `RULE_SCOPES`.
pub const DEFAULT_MAX_RULE_SCOPES: u32 = 8192;

/// The value of a `PORT_RULES` slot. `rule_id == 0` means "no rule".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub rule_id: u32,
    /// [`rule_flag`] bits, copied from the rule so the datapath needs one
    /// lookup.
    pub flags: u32,
}

/// Global settings, one entry in `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The live generation of `PORT_RULES` and `ALLOW` (0 or 1).
    pub generation: u32,
    /// [`config_flag`] bits.
    pub flags: u32,
    /// Events per second per CPU before `--log` events are suppressed.
    pub log_rate: u32,
    /// How long a UDP flow the host or a container opened lets replies in.
    pub flow_timeout_secs: u32,
    /// `FRAGS` max_entries - 1 (the map holds a power of two): masks
    /// [`frag_hash`] into a slot index. Set by the loader from the pinned
    /// map, so it always matches it.
    pub frag_mask: u32,
    /// Random per-install key of [`frag_hash`], drawn when the maps are
    /// created, so which datagrams share a `FRAGS` slot cannot be worked out
    /// in advance.
    pub frag_seed: [u32; FRAG_KEY_WORDS],
}

pub mod config_flag {
    /// Judge packets the host itself sends into the bridge (docker-proxy,
    /// `curl <container-ip>`) with container-port rules. Off: they pass, as
    /// they do with DOCKER-USER.
    pub const JUDGE_HOST_TRAFFIC: u32 = 1;
}

/// Data of an `ALLOW` key (an LPM trie; each side wraps it in its library's
/// `Key { prefix_len, data }`). It holds the generation and rule id
/// (big-endian, so they form a 64-bit prefix every entry matches in full)
/// then the source address, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), so
/// one trie serves both families. `prefix_len` counts the bits that must
/// match: 64 + the address prefix (96 + n for IPv4 /n).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKey {
    pub generation_be: u32,
    pub rule_id_be: u32,
    pub addr: [u8; 16],
}

/// Key of `RULE_ALLOW`: one allowed source network of one rule, the
/// address IPv4-mapped and `prefix_len` counted on the 128-bit form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    pub rule_id: u32,
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// Bits of [`AllowKey`]'s data before the address.
pub const ALLOW_KEY_RULE_BITS: u32 = 64;

/// Key of `FLOWS`: a UDP flow seen leaving from `local_port`, as the reply
/// will look: from `remote`/`remote_port`, to `local_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    /// One of [`scope`].
    pub scope: u32,
}

/// One fragmented datagram: what a `FRAGS` slot remembers and compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// IP protocol number.
    pub proto: u32,
}

/// Size of a [`FragKey`] in u32 words.
pub const FRAG_KEY_WORDS: usize = 10;

impl FragKey {
    /// The key as u32 words (native byte order), the unit [`frag_hash`]
    /// mixes and [`FragKey::same`] compares.
    #[inline(always)]
    pub fn words(&self) -> &[u32; FRAG_KEY_WORDS] {
        // SAFETY: FragKey is repr(C), made only of integers, 40 bytes with
        // no padding and 4-byte aligned (asserted below), so every byte
        // pattern is a valid [u32; 10] and the alignment holds.
        unsafe { &*(self as *const Self).cast::<[u32; FRAG_KEY_WORDS]>() }
    }

    /// Whether both keys are equal, word by word with no branch and no
    /// `memcmp` (which the eBPF target lacks).
    #[inline(always)]
    pub fn same(&self, other: &FragKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut diff = 0;
        let mut i = 0;
        while i < FRAG_KEY_WORDS {
            diff |= a[i] ^ b[i];
            i += 1;
        }
        diff == 0
    }
}

/// A slot of `FRAGS`: the datagram it remembers and the rule that dropped
/// its first fragment. `rule_id == 0` means empty (rule ids start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragSlot {
    pub key: FragKey,
    pub rule_id: u32,
}

/// Hash of a [`FragKey`] under the per-install `seed` ([`Config::frag_seed`]).
///
/// NH (the UMAC hash) over the ten words: the sum of `(w[2i] + s[2i]) *
/// (w[2i+1] + s[2i+1])` for i in 0..5, the additions in 33 bits (no carry
/// is lost, and no zero-extension is needed in eBPF), the products and
/// their sum mod 2^64. For two distinct keys, the chance over a random seed
/// that the sums are equal is at most 2^-32, so which keys collide depends
/// on the seed and cannot be worked out without it (a xor-multiply mix
/// seeded only at the start has seed-independent collisions: a difference
/// in the top bit passes a multiplication unchanged and the next word
/// cancels it).
///
/// The sum's low bits depend only on the low bits of the words (and
/// sequential ids would step through it by a fixed amount), so it is
/// finished before masking: folding the high half into the low one makes
/// every bit reach the low 32, then a multiplication by an odd constant
/// (Fibonacci hashing), keeping bits 32 and up, spreads them into the bits
/// the slot mask keeps. Six multiplications, no loop once unrolled.
#[inline(always)]
pub const fn frag_hash(key: &[u32; FRAG_KEY_WORDS], seed: &[u32; FRAG_KEY_WORDS]) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < FRAG_KEY_WORDS {
        let a = key[i] as u64 + seed[i] as u64;
        let b = key[i + 1] as u64 + seed[i + 1] as u64;
        sum = sum.wrapping_add(a.wrapping_mul(b));
        i += 2;
    }
    let folded = sum ^ (sum >> 32);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// The `FRAGS` slot of `key` under `config` (its seed and mask).
#[inline(always)]
pub fn frag_slot(key: &FragKey, config: &Config) -> u32 {
    frag_hash(key.words(), &config.frag_seed) & config.frag_mask
}

/// [`Config::frag_mask`] for a `FRAGS` map of `max_entries` slots: the
/// largest power of two not above it, minus one, so every index is in
/// bounds even if the map were not a power of two.
pub const fn frag_mask(max_entries: u32) -> u32 {
    if max_entries == 0 {
        0
    } else {
        (1u32 << (31 - max_entries.leading_zeros())) - 1
    }
}

/// A dropped (or, in dry-run, would-be-dropped) packet of a `--log` rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns.
    pub timestamp_ns: u64,
    pub rule_id: u32,
    /// One of [`hook`].
    pub hook: u32,
    pub ifindex: u32,
    /// 1 when the rule is in dry-run and the packet passed.
    pub dry_run: u32,
    /// 4 or 6.
    pub family: u32,
    /// IP protocol number.
    pub proto: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

/// Per-CPU state of the events rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBudget {
    /// Start of the current one-second window, ns.
    pub window_start_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    pub _pad: u32,
    /// Events not sent because of the rate limit, in total.
    pub suppressed: u64,
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
    /// New connections the rule dropped (and later fragments of them).
    pub dropped: Counter,
    /// UDP datagrams on the rule's ports that passed as replies to a flow
    /// the host or a container opened. (TCP segments that are not new pass
    /// before any rule is looked up, counted per hook only.)
    pub passed: Counter,
    /// New connections that passed because their source is allow-listed.
    pub allowed: Counter,
    /// New connections a dry-run rule would have dropped.
    pub dry_run: Counter,
}

/// The hook a program runs at.
pub mod hook {
    pub const XDP: u32 = 0;
    pub const TC: u32 = 1;
    /// TCX egress of a container's host-side veth.
    pub const VETH: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// What a program did with a packet, for the per-hook counters.
///
/// The fail-closed rule: a packet the kernel could still turn into a new
/// connection to a blocked port is judged, or dropped as `DROPPED_EVASIVE`
/// when it cannot be judged. What passes unjudged passes because it cannot
/// reach a blocked port (`PASSED_OTHER`, `PASSED_FRAGMENT`). Packets whose
/// header lengths do not add up, which the kernel would discard itself, are
/// dropped as `DROPPED_MALFORMED`.
pub mod outcome {
    /// Dropped by a rule (a new connection, or a later fragment of a
    /// datagram whose first fragment a rule dropped).
    pub const DROPPED: u32 = 0;
    /// TCP or UDP, no rule for its port.
    pub const PASSED_NO_RULE: u32 = 1;
    /// A rule matched its port, but it did not open a new connection.
    pub const PASSED_NOT_NEW: u32 = 2;
    /// Cannot reach a port rule: not IP (ARP, ...), or IP but neither TCP
    /// nor UDP (ICMP, ESP, ...).
    pub const PASSED_OTHER: u32 = 3;
    /// A later fragment (no transport header) of a datagram whose first
    /// fragment was not dropped: it only completes what that first
    /// fragment, judged already, started.
    pub const PASSED_FRAGMENT: u32 = 4;
    /// A rule matched, but the source is on its allow-list.
    pub const PASSED_ALLOWED: u32 = 5;
    /// A dry-run rule would have dropped it.
    pub const PASSED_DRY_RUN: u32 = 6;
    /// Not judged: sent by the host itself into the bridge.
    pub const PASSED_HOST: u32 = 7;
    /// Could not be judged and could reach a blocked port: a first fragment
    /// too short for the transport header, a TCP fragment at offset 1
    /// (RFC 1858), more IPv6 extension headers or VLAN tags than the
    /// parser walks, an IPv6 packet from a v4-mapped source, headers the
    /// bridge program could not pull into linear memory.
    pub const DROPPED_EVASIVE: u32 = 8;
    /// Claims to be IPv4/IPv6 but its header lengths do not add up (version,
    /// IPv4 header length, total or payload length beyond the packet, an
    /// extension or transport header cut short): the kernel would discard
    /// it too.
    pub const DROPPED_MALFORMED: u32 = 9;
    /// Veth hook: a new connection into a container the daemon has not
    /// reviewed yet (its veth has no `VETHS` entry): closed, not open.
    pub const DROPPED_UNREVIEWED: u32 = 10;
    /// Veth hook: a rule matched, but the packet came from another container
    /// and the rule does not judge container-to-container traffic.
    pub const PASSED_FROM_CONTAINER: u32 = 11;
    /// Outcomes in use.
    pub const COUNT: u32 = 12;
    /// Slots per hook in `HOOK_STATS`: room for outcomes a later release
    /// adds without changing the pinned map's size.
    pub const SLOTS: u32 = 16;
    /// Names for display, indexed by outcome.
    pub const NAMES: [&str; COUNT as usize] = [
        "dropped",
        "passed_no_rule",
        "passed_not_new",
        "passed_other",
        "passed_fragment",
        "passed_allowed",
        "passed_dry_run",
        "passed_host",
        "dropped_evasive",
        "dropped_malformed",
        "dropped_unreviewed",
        "passed_from_container",
    ];

    /// Whether the packet was dropped.
    pub const fn is_drop(outcome: u32) -> bool {
        matches!(outcome, DROPPED | DROPPED_EVASIVE | DROPPED_MALFORMED | DROPPED_UNREVIEWED)
    }
}

/// Number of entries of `HOOK_STATS`.
pub const HOOK_STATS_LEN: u32 = hook::COUNT * outcome::SLOTS;

/// Index into `HOOK_STATS`.
#[inline(always)]
pub const fn hook_stats_index(hook: u32, outcome: u32) -> u32 {
    hook * outcome::SLOTS + outcome
}

/// The value of a `VETHS` entry: a container's host-side veth, reviewed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethState {
    /// [`veth_flag`] bits.
    pub flags: u32,
    pub _pad: u32,
    /// The container's id (the 64 hex digits, as 32 bytes), so that any
    /// process can tell which container a veth leads to.
    pub container: [u8; 32],
}

pub mod veth_flag {
    /// The daemon has reviewed the veth: its rules are in `VETH_RULES`.
    pub const REVIEWED: u32 = 1;
    /// Some `VETH_RULES` entry names a single port of this veth.
    pub const HAS_PORTS: u32 = 2;
    /// A `VETH_RULES` entry with port [`crate::VETH_ANY_PORT`] exists.
    pub const HAS_WILDCARD: u32 = 4;
    /// `VETH_SCOPED_RULES` has entries for this veth: look them up (by the
    /// packet's ingress interface) before `VETH_RULES`. A veth without
    /// them pays this one bit test.
    pub const HAS_SCOPED: u32 = 8;
}

/// Key of `VETH_RULES`: a container port behind one host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VethRuleKey {
    /// The host-side veth (the packet's `skb->ifindex` at its egress).
    pub ifindex: u32,
    /// One of [`proto`].
    pub proto: u32,
    /// The container port, or [`VETH_ANY_PORT`] for every port.
    pub port: u32,
}

/// `VethRuleKey::port` of an entry that covers every port of its protocol.
pub const VETH_ANY_PORT: u32 = 0;

/// Key of `VETH_SCOPED_RULES`: a container port behind one host-side veth,
/// for packets that came in on one interface. The value decides such a
/// packet (a `rule_id` of 0: no rule, it passes); the exact port is looked
/// up first, then [`VETH_ANY_PORT`], then `VETH_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VethScopedKey {
    /// The host-side veth (the packet's `skb->ifindex` at its egress).
    pub ifindex: u32,
    /// One of [`proto`].
    pub proto: u32,
    /// The container port, or [`VETH_ANY_PORT`] for every port.
    pub port: u32,
    /// The interface the packet came in on (`skb->ingress_ifindex`); never
    /// 0 (the host itself is no `--on` interface).
    pub from: u32,
}

/// Bytes of [`RuleTarget::text`].
pub const RULE_TARGET_TEXT: usize = 240;

/// The value of a `RULE_TARGETS` entry. `text` holds `len` bytes of UTF-8:
/// the container name, `key=value` (or `key`) of a label, `project` or
/// `project/service` of a compose selector, the container id of
/// `OWN_LABELS`; empty for the others.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleTarget {
    /// One of [`target_kind`].
    pub kind: u32,
    /// One of [`target_action`].
    pub action: u32,
    /// `DERIVED`: the id of the rule this one was derived from.
    pub parent: u32,
    pub len: u32,
    pub text: [u8; RULE_TARGET_TEXT],
}

impl Default for RuleTarget {
    fn default() -> Self {
        Self { kind: 0, action: 0, parent: 0, len: 0, text: [0; RULE_TARGET_TEXT] }
    }
}

pub mod target_kind {
    /// A container, by name.
    pub const CONTAINER: u32 = 1;
    /// Every container with a label (`key=value`, or just `key`).
    pub const LABEL: u32 = 2;
    /// A compose project, or one service of it.
    pub const COMPOSE: u32 = 3;
    /// What a container's own `dockblock.*` labels ask for (made and removed
    /// by the daemon, never by a CLI verb).
    pub const OWN_LABELS: u32 = 4;
    /// `policy published deny`: every port Docker publishes.
    pub const PUBLISHED_POLICY: u32 = 5;
    /// A dialed-port entry the daemon derived from rule `parent` (a host
    /// port that leads to a container the parent covers).
    pub const DERIVED: u32 = 6;
}

pub mod target_action {
    pub const BLOCK: u32 = 0;
    /// Opens what the published-ports policy would close.
    pub const ALLOW: u32 = 1;
}

/// Default capacities (all can be set at attach).
pub const DEFAULT_MAX_ALLOW: u32 = 8192;
pub const DEFAULT_MAX_FLOWS: u32 = 65536;
/// A power of two, as `FRAGS` sizes always are.
pub const DEFAULT_MAX_FRAGS: u32 = 8192;
pub const DEFAULT_EVENTS_BYTES: u32 = 1 << 20;
pub const DEFAULT_LOG_RATE: u32 = 100;
pub const DEFAULT_FLOW_TIMEOUT_SECS: u32 = 30;

/// Default capacity of the rule catalog (`RULES`, `RULE_STATS`). A port range
/// is one rule, so this bounds distinct rules, not ports. Rule id 0 is
/// reserved for "no rule", so ids run from 1 to `DEFAULT_MAX_RULES - 1`.
pub const DEFAULT_MAX_RULES: u32 = 4096;

/// Default capacity of `VETHS` (container veths, one per container and network).
pub const DEFAULT_MAX_VETHS: u32 = 4096;
/// Default capacity of `VETH_RULES` (container ports judged, over all veths);
/// `VETH_SCOPED_RULES` has the same capacity (`--max-veth-rules` sets both).
pub const DEFAULT_MAX_VETH_RULES: u32 = 65536;

// The layouts are part of the kernel/user contract: no implicit padding.
const _: () = assert!(size_of::<PortRule>() == 8);
const _: () = assert!(size_of::<RuleDef>() == 16);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<RuleStats>() == 64);
const _: () = assert!(size_of::<Config>() == 60);
const _: () = assert!(size_of::<AllowKey>() == 24);
const _: () = assert!(size_of::<AllowEntry>() == 24);
const _: () = assert!(size_of::<FlowKey>() == 24);
const _: () = assert!(size_of::<FragKey>() == 4 * FRAG_KEY_WORDS);
const _: () = assert!(core::mem::align_of::<FragKey>() == 4);
const _: () = assert!(size_of::<FragSlot>() == 44);
const _: () = assert!(size_of::<Event>() == 72);
const _: () = assert!(size_of::<LogBudget>() == 24);
const _: () = assert!(size_of::<VethState>() == 40);
const _: () = assert!(size_of::<VethRuleKey>() == 12);
const _: () = assert!(size_of::<VethScopedKey>() == 16);
const _: () = assert!(size_of::<RuleTarget>() == 16 + RULE_TARGET_TEXT);
const _: () = assert!(size_of::<ScopedKey>() == 36);
const _: () = assert!(size_of::<ScopeEntry>() == 24);
const _: () = assert!(port_index(1, scope::CONTAINER, proto::UDP, 65535) == PORT_RULES_LEN - 1);
const _: () = assert!(DEFAULT_MAX_FRAGS.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integers, with no padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for super::PortRule {}
    unsafe impl aya::Pod for super::RuleDef {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::RuleStats {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AllowKey {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragSlot {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::LogBudget {}
    unsafe impl aya::Pod for super::VethState {}
    unsafe impl aya::Pod for super::VethRuleKey {}
    unsafe impl aya::Pod for super::VethScopedKey {}
    unsafe impl aya::Pod for super::RuleTarget {}
    unsafe impl aya::Pod for super::ScopedKey {}
    unsafe impl aya::Pod for super::ScopeEntry {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// A fixed stream of seeds (splitmix64), so the tests are repeatable.
    fn seeds(n: usize) -> Vec<[u32; FRAG_KEY_WORDS]> {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u32
        };
        (0..n).map(|_| core::array::from_fn(|_| next())).collect()
    }

    fn v4(last: u8, id: u32) -> FragKey {
        let mut src = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, last];
        let dst = src;
        src[15] = last.wrapping_add(1);
        FragKey { src, dst, id, proto: 17 }
    }

    fn config(seed: [u32; FRAG_KEY_WORDS], mask: u32) -> Config {
        Config { frag_seed: seed, frag_mask: mask, ..Config::default() }
    }

    /// Pearson's chi-square of `counts` against an even spread.
    fn chi_square(counts: &[u32], total: usize) -> f64 {
        let expected = total as f64 / counts.len() as f64;
        counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum()
    }

    #[test]
    fn frag_mask_is_the_largest_power_of_two_that_fits_minus_one() {
        assert_eq!(frag_mask(DEFAULT_MAX_FRAGS), DEFAULT_MAX_FRAGS - 1);
        assert_eq!(frag_mask(16), 15);
        assert_eq!(frag_mask(100), 63);
        assert_eq!(frag_mask(1), 0);
        assert_eq!(frag_mask(0), 0);
        assert_eq!(frag_mask(1 << 31), (1 << 31) - 1);
        assert_eq!(frag_mask(u32::MAX), (1 << 31) - 1);
    }

    #[test]
    fn same_compares_every_word() {
        let key = v4(2, 7);
        assert!(key.same(&key.clone()));
        for word in 0..FRAG_KEY_WORDS {
            for bit in [0, 31] {
                let mut other = key;
                // SAFETY: FragKey is 10 plain u32 words (see `words`).
                unsafe { (*(&mut other as *mut FragKey).cast::<[u32; FRAG_KEY_WORDS]>())[word] ^= 1 << bit };
                assert!(!key.same(&other), "word {word} bit {bit}");
            }
        }
    }

    #[test]
    fn frag_hash_is_deterministic_and_depends_on_the_seed() {
        let s = seeds(2);
        let key = v4(2, 0x1234);
        assert_eq!(frag_hash(key.words(), &s[0]), frag_hash(key.words(), &s[0]));
        // Under another seed the slots of a set of keys are reshuffled.
        let mask = 8191;
        let moved = (0..1000u32)
            .filter(|&id| {
                let key = v4(2, id);
                frag_slot(&key, &config(s[0], mask)) != frag_slot(&key, &config(s[1], mask))
            })
            .count();
        assert!(moved > 990, "{moved} of 1000 keys changed slot with the seed");
    }

    #[test]
    fn sequential_ids_of_one_sender_spread_evenly() {
        // What one busy sender produces: the same addresses, ids counting up.
        let mask = DEFAULT_MAX_FRAGS - 1;
        for seed in seeds(8) {
            let mut counts = vec![0u32; DEFAULT_MAX_FRAGS as usize];
            let total = 65536;
            for id in 0..total as u32 {
                counts[frag_slot(&v4(2, id), &config(seed, mask)) as usize] += 1;
            }
            // 8 keys per slot on average; chi-square has mean 8191 and
            // standard deviation 128 for an even random spread.
            let chi = chi_square(&counts, total);
            assert!(chi < 8191.0 + 6.0 * 128.0, "chi-square {chi}");
            assert!(counts.iter().all(|&c| c < 32), "max {}", counts.iter().max().unwrap());
        }
    }

    #[test]
    fn keys_differing_in_one_word_or_byte_spread_evenly() {
        // Many senders (last address byte), IPv6 addresses differing only in
        // a high byte, and protocols: every part of the key counts.
        let mask = 255;
        for seed in seeds(4) {
            let cfg = config(seed, mask);
            let mut by_sender = vec![0u32; 256];
            let mut by_high_byte = vec![0u32; 256];
            let mut by_proto = vec![0u32; 256];
            for i in 0..4096u32 {
                by_sender[frag_slot(&v4(i as u8, i >> 8), &cfg) as usize] += 1;
                let mut key = FragKey { id: 5, proto: 17, ..FragKey::default() };
                key.src[0] = i as u8;
                key.dst[1] = (i >> 8) as u8;
                by_high_byte[frag_slot(&key, &cfg) as usize] += 1;
                let key = FragKey { proto: i, ..v4(2, 9) };
                by_proto[frag_slot(&key, &cfg) as usize] += 1;
            }
            // 255 degrees of freedom: mean 255, standard deviation 22.6.
            for (what, counts) in [("sender", by_sender), ("high byte", by_high_byte), ("proto", by_proto)] {
                let chi = chi_square(&counts, 4096);
                assert!(chi < 255.0 + 6.0 * 22.6, "{what}: chi-square {chi}");
            }
        }
    }

    #[test]
    fn the_slot_stays_within_the_mask() {
        let seed = seeds(1)[0];
        for mask in [0, 15, 1023, (1 << 20) - 1] {
            for id in 0..1000 {
                assert!(frag_slot(&v4(3, id), &config(seed, mask)) <= mask);
            }
        }
    }
}
