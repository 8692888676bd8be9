//! The fragment table: datagrams whose first fragment was dropped, so that
//! their later fragments, which carry no ports, are dropped too.
//!
//! `FRAGS` is a direct-mapped array of `FragSlot`s: a datagram's slot is its
//! key hashed with the per-install seed and masked to the array size (both
//! read from `CONFIG` here, so only fragments pay for them). Remembering a
//! datagram overwrites its slot; a later fragment reads the slot and
//! compares the whole key; the last fragment (MF=0) empties the slot
//! (`rule_id = 0`). A newer datagram whose key lands
//! on an occupied slot evicts the older one, whose later fragments then pass
//! (unreassemblable without their first fragment), as they would after an
//! LRU eviction under pressure.
//!
//! Concurrency: no locks. Two CPUs may write one slot at once, or one may
//! read it while another writes it. A torn slot then mixes two keys (and
//! rule ids): such a mix in practice matches neither datagram, so their
//! later fragments pass (a missed match, as after an eviction); when it
//! equals one of them, its later fragments are dropped, perhaps counted on
//! the other datagram's rule. A last fragment may also empty a slot another
//! CPU just filled, again a missed match. Wrongly dropping a fragment would
//! take a mix that is exactly a third in-flight datagram's key and slot.

use dockblock_common::{frag_slot, seen as seen_slot, FragKey, FragSlot};

use crate::maps::{mark_seen, seen, CONFIG, FRAGS};

/// Remembers that `key`'s first fragment was dropped by `rule_id`.
#[inline(always)]
pub fn remember(key: &FragKey, rule_id: u32) {
    let Some(config) = CONFIG.get(0) else { return };
    if let Some(slot) = FRAGS.get_ptr_mut(frag_slot(key, config)) {
        // SAFETY: a valid map value; racing writers are covered above.
        unsafe { slot.write(FragSlot { key: *key, rule_id }) };
        mark_seen(seen_slot::FRAGS);
    }
}

/// The rule that dropped the first fragment of `key`'s datagram, if it is
/// remembered. `last` (no more fragments follow) empties the slot.
#[inline(always)]
pub fn dropped_by(key: &FragKey, last: bool) -> Option<u32> {
    // No first fragment dropped yet: spare every fragment the read.
    if !seen(seen_slot::FRAGS) {
        return None;
    }
    let config = CONFIG.get(0)?;
    let slot = FRAGS.get_ptr_mut(frag_slot(key, config))?;
    // SAFETY: a valid map value. Other CPUs may write it meanwhile (see
    // above); the rule id is read once, so the value checked is the value
    // used.
    let rule_id = unsafe { core::ptr::read_volatile(&(*slot).rule_id) };
    if rule_id == 0 || !unsafe { &(*slot).key }.same(key) {
        return None;
    }
    if last {
        // SAFETY: as above.
        unsafe { (*slot).rule_id = 0 };
    }
    Some(rule_id)
}
