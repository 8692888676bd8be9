//! The kernel state at start: the saved rule set, the config's rule files
//! and the hooks, in the order that never lets a hook run without its rules.

use std::collections::BTreeSet;

use crate::{
    error::Result,
    loader::{self, AttachRequest, Attached, DockerHooks},
    paths::PinDir,
    saved,
};

/// Brings the kernel to the saved state plus the config's rule files and
/// attaches `req`'s hooks; `start` was read (and checked) before anything
/// changed. Returns the loaded object too: the veth and bridge programs
/// are attached from it, the verifier runs once per start.
/// - New pins (a reboot): maps first (no program loaded yet: the verifier
///   runs once, in the attach), the saved rules in them, then the hooks, so
///   no packet is judged by empty maps. A failure removes what was made:
///   the host is as before, the state file untouched.
/// - Pins there: they are the newest and win; the hooks are attached over
///   them first (the maps checked), then the rule files, and the state file
///   is rewritten if it differs.
pub(super) fn start_state(
    pins: &PinDir,
    req: &AttachRequest,
    start: saved::Start,
) -> Result<(Vec<Attached>, DockerHooks)> {
    let hooks = |(attached, ebpf)| DockerHooks::from_object(pins, ebpf).map(|h| (attached, h));
    if !start.fresh() {
        let attached = loader::attach_keep(pins, req).and_then(hooks)?;
        log(saved::start(pins, start)?);
        return Ok(attached);
    }
    let result = loader::create_maps(pins, &req.capacities).and_then(|()| {
        log(saved::start(pins, start)?);
        loader::attach_keep(pins, req).and_then(hooks)
    });
    if result.is_err() && pins.is_attached() {
        // Links made here are pinned only in the folder; with it they go.
        let _ = loader::detach(pins, &[]);
        let _ = std::fs::remove_dir_all(pins.root());
    }
    result
}

/// The Docker bridges saved by the last daemon (see
/// [`PinDir::bridges_file`]); none when there is no file. A cache: a line
/// that is no interface name is skipped with a warning.
pub(super) fn known_bridges(pins: &PinDir) -> BTreeSet<String> {
    let Some(path) = pins.bridges_file() else { return BTreeSet::new() };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
        Err(e) => {
            tracing::warn!("cannot read {} ({e}): bridges are known from the first sync", path.display());
            return BTreeSet::new();
        }
    };
    let mut known = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            tracing::warn!("{}:{}: not an interface name, skipped", path.display(), n + 1);
        } else {
            known.insert(name.to_string());
        }
    }
    known
}

/// Saves the Docker bridges of a sync for the next start.
pub(super) fn save_bridges(pins: &PinDir, bridges: &BTreeSet<String>) {
    let Some(path) = pins.bridges_file() else { return };
    let text: String = bridges.iter().map(|b| format!("{b}\n")).collect();
    if let Err(e) = crate::private_file::write(&path, text.as_bytes(), "write the known Docker bridges") {
        tracing::warn!(
            "{e}: after a reboot, veths on bridges named by their network wait for the first sync"
        );
    }
}

fn log(notes: Vec<String>) {
    for n in notes {
        tracing::info!("saved state: {n}");
    }
}
