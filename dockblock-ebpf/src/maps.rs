//! The maps the programs use. Names, layouts and sizes come from
//! dockblock-common; the agent pins these maps in the pin folder and may
//! override the rule capacity at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use dockblock_common::{
    Counter, PortRule, RuleDef, RuleStats, DEFAULT_MAX_RULES, HOOK_STATS_LEN, PORT_RULES_LEN,
};

#[map]
pub static PORT_RULES: Array<PortRule> = Array::with_max_entries(PORT_RULES_LEN, 0);

/// Read only by the agent; declared here so it is created and pinned with
/// the others.
#[map]
pub static RULES: HashMap<u32, RuleDef> = HashMap::with_max_entries(DEFAULT_MAX_RULES, 0);

#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_RULES, 0);

#[map]
pub static HOOK_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(HOOK_STATS_LEN, 0);
