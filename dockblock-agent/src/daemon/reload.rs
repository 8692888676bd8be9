//! SIGHUP: the config file read again. A bad file (or a bad rule file it
//! names) is one error line (`FILE:LINE: why`) and nothing changes; a good
//! one is reconciled: uplinks attached and detached, the rule files added
//! (as at start), the failsafe ports and the policy given to the next sync
//! (a full one, so derived rules and veth plans follow).

use std::{path::PathBuf, sync::Arc};

use super::{lock, Daemon};
use crate::{
    config::{self, Config},
    loader::{self, AttachRequest, XdpModeChoice},
    saved,
};

/// What the daemon follows from the config, as it was last read.
#[derive(Clone, Debug)]
pub(super) struct Desired {
    pub config_path: Option<PathBuf>,
    pub uplinks: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub config: Config,
    /// Set by start and each reload; the next sync applies it once (so a
    /// `policy` verb afterwards is not undone by the daemon).
    pub policy_pending: bool,
}

impl Daemon {
    /// The failsafe ports, and the config's policy when not applied yet.
    pub(super) fn take_config(&self) -> (Vec<crate::ports::PortSpec>, Option<config::PublishedPolicy>) {
        let mut d = lock(&self.desired);
        let policy = if std::mem::take(&mut d.policy_pending) { d.config.policy } else { None };
        (d.config.failsafe.clone(), policy)
    }

    /// A sync failed: its policy goes with the next one.
    pub(super) fn policy_again(&self, policy: Option<config::PublishedPolicy>) {
        if policy.is_some() {
            lock(&self.desired).policy_pending = true;
        }
    }
}

/// Re-reads the file; `Err` is the line logged (nothing changed).
pub(super) async fn reload(daemon: &Arc<Daemon>) {
    let (path, old) = {
        let d = lock(&daemon.desired);
        (d.config_path.clone(), d.clone())
    };
    let Some(path) = path else {
        tracing::warn!(
            "SIGHUP: no config file (none named and {} does not exist): nothing to reload",
            config::DEFAULT_CONFIG
        );
        return;
    };
    let (new, files) = match tokio::task::spawn_blocking({
        let path = path.clone();
        move || config::load(&path).and_then(|c| Ok((saved::read_rule_files(&c.rule_files)?, c)))
    })
    .await
    .expect("config load panicked")
    {
        Ok((files, c)) => (c, files),
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "SIGHUP: config refused, nothing changed: {e}");
            return;
        }
    };
    let added: Vec<String> = new.uplinks.iter().filter(|u| !old.uplinks.contains(u)).cloned().collect();
    let removed: Vec<String> = old.uplinks.iter().filter(|u| !new.uplinks.contains(u)).cloned().collect();
    let pins = daemon.pins.clone();
    let req = AttachRequest {
        uplinks: added.clone(),
        bridges: Vec::new(),
        xdp_mode: new.xdp_mode,
        capacities: Default::default(),
        settings: Default::default(),
    };
    let removed_c = removed.clone();
    let done = tokio::task::spawn_blocking(move || -> crate::Result<()> {
        if !req.uplinks.is_empty() {
            for a in loader::attach(&pins, &req)? {
                tracing::info!(interface = %a.interface, kind = a.kind.label(), replaced = a.replaced, "hook attached");
            }
        }
        if !removed_c.is_empty() {
            for l in loader::detach(&pins, &removed_c)? {
                tracing::info!(interface = %l.interface, kind = l.kind.label(), "hook detached");
            }
        }
        Ok(())
    })
    .await
    .expect("attach panicked");
    if let Err(e) = &done {
        // The file is good but an uplink cannot be hooked (gone, not
        // Ethernet): the old uplinks stay, the rest applies.
        tracing::error!(config = %path.display(), error = %e, "SIGHUP: uplinks not changed: {e}");
    }
    let pins = daemon.pins.clone();
    match tokio::task::spawn_blocking(move || saved::apply_rule_files(&pins, &files))
        .await
        .expect("rule files panicked")
    {
        Ok((applied, notes)) => {
            for n in notes {
                tracing::warn!("SIGHUP: {n}");
            }
            if !applied.catalog.is_empty() {
                tracing::info!(
                    added = applied.catalog.added,
                    changed = applied.catalog.changed,
                    "SIGHUP: rule files applied"
                );
            }
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "SIGHUP: rule files not applied: {e}")
        }
    }
    {
        let mut d = lock(&daemon.desired);
        if done.is_ok() {
            d.uplinks = new.uplinks.clone();
        }
        d.xdp_mode = new.xdp_mode;
        d.policy_pending = new.policy.is_some();
        d.config = new;
    }
    tracing::info!(
        config = %path.display(),
        uplinks_added = ?added,
        uplinks_removed = ?removed,
        "SIGHUP: config reloaded"
    );
    super::notify::status("enforcing; config reloaded");
    daemon.mark_dirty(true);
}
