//! The maps the programs use. Names, layouts and default sizes come from
//! dockblock-common; the agent pins these maps in the pin folder and may
//! override capacities at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dockblock_common::{
    seen, AllowEntry, AllowKey, Config, Counter, FlowKey, FragSlot, LogBudget, PortRule, RuleDef, RuleStats,
    RuleTarget, ScopeEntry, ScopedKey, VethRuleKey, VethScopedKey, VethState, DEFAULT_EVENTS_BYTES,
    DEFAULT_MAX_ALLOW, DEFAULT_MAX_FLOWS, DEFAULT_MAX_FRAGS, DEFAULT_MAX_RULES, DEFAULT_MAX_RULE_SCOPES,
    DEFAULT_MAX_SCOPED, DEFAULT_MAX_VETHS, DEFAULT_MAX_VETH_RULES, HOOK_STATS_LEN, PORT_RULES_LEN,
};

#[map]
pub static PORT_RULES: Array<PortRule> = Array::with_max_entries(PORT_RULES_LEN, 0);

/// Read only by the agent; declared here so it is created and pinned with
/// the others.
#[map]
pub static RULES: HashMap<u32, RuleDef> = HashMap::with_max_entries(DEFAULT_MAX_RULES, 0);

/// Read only by the agent, like RULES.
#[map]
pub static RULE_ALLOW: HashMap<AllowEntry, u32> = HashMap::with_max_entries(DEFAULT_MAX_ALLOW, 0);

#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_RULES, 0);

#[map]
pub static HOOK_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(HOOK_STATS_LEN, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Both generations' entries live here, so it holds twice `--max-allow`.
#[map]
pub static ALLOW: LpmTrie<AllowKey, u32> = LpmTrie::with_max_entries(2 * DEFAULT_MAX_ALLOW, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
pub static SEEN: Array<u32> = Array::with_max_entries(seen::COUNT, 0);

/// Direct-mapped: a datagram lives in slot `frag_slot(key, config)` (see
/// `crate::frags`). An array read costs a fraction of a hash lookup, and an
/// insert is a plain store: no lock, no LRU list.
#[map]
pub static FRAGS: Array<FragSlot> = Array::with_max_entries(DEFAULT_MAX_FRAGS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map]
pub static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static VETHS: HashMap<u32, VethState> = HashMap::with_max_entries(DEFAULT_MAX_VETHS, 0);

#[map]
pub static VETH_RULES: HashMap<VethRuleKey, PortRule> = HashMap::with_max_entries(DEFAULT_MAX_VETH_RULES, 0);

/// Read only by the agent, like RULES.
#[map]
pub static RULE_TARGETS: HashMap<u32, RuleTarget> = HashMap::with_max_entries(DEFAULT_MAX_RULES, 0);

/// Looked up only for ports whose `PORT_RULES` slot has `rule_flag::SCOPED`.
#[map]
pub static SCOPED_RULES: HashMap<ScopedKey, PortRule> = HashMap::with_max_entries(DEFAULT_MAX_SCOPED, 0);

/// Read only by the agent, like RULES.
#[map]
pub static RULE_SCOPES: HashMap<ScopeEntry, u32> = HashMap::with_max_entries(DEFAULT_MAX_RULE_SCOPES, 0);

/// Looked up only on veths whose `VETHS` state has `veth_flag::HAS_SCOPED`.
#[map]
pub static VETH_SCOPED_RULES: HashMap<VethScopedKey, PortRule> =
    HashMap::with_max_entries(DEFAULT_MAX_VETH_RULES, 0);

/// Whether the table behind `slot` of `SEEN` ever got an entry.
#[inline(always)]
pub fn seen(slot: u32) -> bool {
    SEEN.get(slot).is_some_and(|flag| *flag != 0)
}

/// Records that the table behind `slot` of `SEEN` got an entry.
#[inline(always)]
pub fn mark_seen(slot: u32) {
    if let Some(flag) = SEEN.get_ptr_mut(slot) {
        // SAFETY: a valid map value; a racing writer writes the same 1.
        // Read first, so the shared cache line is written only once.
        unsafe {
            if *flag == 0 {
                *flag = 1;
            }
        }
    }
}
