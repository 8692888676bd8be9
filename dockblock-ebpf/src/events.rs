//! Rate-limited drop events for rules with `--log`: at most `log_rate`
//! events per second per CPU; the rest are counted as suppressed.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dockblock_common::Event;

use crate::{
    maps::{EVENTS, LOG_BUDGET},
    parse::Facts,
};

const SECOND_NS: u64 = 1_000_000_000;

/// Where the packet was seen, for the event.
pub struct Seen {
    pub hook: u32,
    pub ifindex: u32,
}

#[inline(always)]
pub fn emit(facts: &Facts, rule_id: u32, dry_run: bool, seen: &Seen, log_rate: u32) {
    let Some(budget) = LOG_BUDGET.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let budget = unsafe { &mut *budget };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(budget.window_start_ns) >= SECOND_NS {
        budget.window_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= log_rate {
        budget.suppressed += 1;
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        budget.suppressed += 1;
        return;
    };
    let (sport, dport) = facts.l4.as_ref().map_or((0, 0), |l4| (l4.sport, l4.dport));
    entry.write(Event {
        timestamp_ns: now,
        rule_id,
        hook: seen.hook,
        ifindex: seen.ifindex,
        dry_run: dry_run as u32,
        family: facts.family,
        proto: facts.ip_proto as u32,
        src: facts.src(),
        dst: facts.dst(),
        sport,
        dport,
        _pad: 0,
    });
    entry.submit(0);
    budget.sent += 1;
}
