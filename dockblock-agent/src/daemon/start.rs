//! The kernel state at start: the saved rule set, the config's rule files
//! and the hooks, in the order that never lets a hook run without its rules.

use crate::{
    error::Result,
    loader::{self, AttachRequest, Attached},
    paths::PinDir,
    saved,
};

/// Brings the kernel to the saved state plus the config's rule files and
/// attaches `req`'s hooks; `start` was read (and checked) before anything
/// changed.
/// - New pins (a reboot): maps first, the saved rules in them, then the
///   hooks, so no packet is judged by empty maps. A failure removes what
///   was made: the host is as before, the state file untouched.
/// - Pins there: they are the newest and win; the hooks are attached over
///   them first (the maps checked), then the rule files, and the state file
///   is rewritten if it differs.
pub(super) fn start_state(pins: &PinDir, req: &AttachRequest, start: saved::Start) -> Result<Vec<Attached>> {
    if !start.fresh() {
        let attached = loader::attach(pins, req)?;
        log(saved::start(pins, start)?);
        return Ok(attached);
    }
    let maps_only = AttachRequest { uplinks: vec![], bridges: vec![], ..*req };
    let result = loader::attach(pins, &maps_only).and_then(|_| {
        log(saved::start(pins, start)?);
        loader::attach(pins, req)
    });
    if result.is_err() && pins.is_attached() {
        // Links made here are pinned only in the folder; with it they go.
        let _ = loader::detach(pins, &[]);
        let _ = std::fs::remove_dir_all(pins.root());
    }
    result
}

fn log(notes: Vec<String>) {
    for n in notes {
        tracing::info!("saved state: {n}");
    }
}
