//! The one verdict function both hooks share, and the counters every path
//! leaves through.

use dockblock_common::{hook_stats_index, outcome, port_index, Counter};

use crate::{
    maps::{HOOK_STATS, PORT_RULES, RULE_STATS},
    parse::{parse, Cursor, Reject},
};

pub enum Verdict {
    Pass,
    Drop,
}

/// Judges the packet in `cur` against the rules of `scope`, counts it under
/// `hook`, and says what to do with it. `len` is the packet length in bytes.
#[inline(always)]
pub fn judge(cur: &Cursor, hook: u32, scope: u32, len: u64) -> Verdict {
    let l4 = match parse(cur) {
        Ok(l4) => l4,
        Err(Reject::Unparsed) => return finish(hook, outcome::PASSED_UNPARSED, len),
        Err(Reject::Malformed) => return finish(hook, outcome::PASSED_MALFORMED, len),
    };
    let rule_id = match PORT_RULES.get(port_index(scope, l4.proto, l4.dport)) {
        Some(rule) if rule.rule_id != 0 => rule.rule_id,
        _ => return finish(hook, outcome::PASSED_NO_RULE, len),
    };
    let stats = RULE_STATS.get_ptr_mut(rule_id);
    if l4.is_new {
        if let Some(stats) = stats {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            add(unsafe { &mut (*stats).dropped }, len);
        }
        finish(hook, outcome::DROPPED, len)
    } else {
        if let Some(stats) = stats {
            // SAFETY: as above.
            add(unsafe { &mut (*stats).passed }, len);
        }
        finish(hook, outcome::PASSED_NOT_NEW, len)
    }
}

#[inline(always)]
fn finish(hook: u32, outcome: u32, len: u64) -> Verdict {
    if let Some(counter) = HOOK_STATS.get_ptr_mut(hook_stats_index(hook, outcome)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        add(unsafe { &mut *counter }, len);
    }
    if outcome == outcome::DROPPED {
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
