//! One sync at a time: refresh the snapshot (a full one after a connect, a
//! network change or the audit; otherwise an inspect of each container an
//! event named), hook what the snapshot shows to be Docker's, find the
//! containers' veths, reconcile, unpin links of interfaces gone, write the
//! state file. Marks made while it runs coalesce into one more sync.

use std::{
    collections::BTreeSet,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{kernel, lock, state, Daemon};
use crate::{
    docker::{engine::Engine, netns, snapshot::Snapshot},
    error::{Error, Result},
};

/// How long no sync must be asked for before the heap is trimmed.
const TRIM_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Ends only when the pin folder is gone (a full `detach`): there is
/// nothing left to keep in sync.
pub(super) async fn sync_loop(daemon: Arc<Daemon>) -> Error {
    let mut snapshot: Option<Snapshot> = None;
    loop {
        // Loading the object at start and a burst of syncs (100 containers
        // started) grow the heap well past what the daemon holds; once
        // idle, it goes back (glibc keeps freed pages unless asked).
        if tokio::time::timeout(TRIM_WHEN_IDLE_FOR, daemon.dirty.notified()).await.is_err() {
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
            daemon.dirty.notified().await;
        }
        daemon.syncing.store(true, Ordering::Release);
        let events_since = daemon.metrics.sync_starts();
        let result = daemon.sync_once(&mut snapshot).await;
        let outcome = match &result {
            Ok(Some(_)) => Some(true),
            Ok(None) => None,
            Err(_) => Some(false),
        };
        daemon.metrics.sync_done(outcome, events_since);
        daemon.syncing.store(false, Ordering::Release);
        let hook_problems: Vec<String> = lock(&daemon.hook_problems).values().cloned().collect();
        match result {
            Ok(Some(mut problems)) => {
                problems.extend(hook_problems);
                daemon.update_state(|s| {
                    s.last_sync = Some(state::now_rfc3339());
                    s.problems = problems;
                });
            }
            // Engine down: nothing to compare with; the kernel keeps what it has.
            Ok(None) => daemon.update_state(|s| {
                s.problems = hook_problems;
                s.problems.push("engine down: following nothing until it is back".into());
            }),
            Err(e @ Error::NotAttached { .. }) => return e,
            Err(e) => {
                tracing::warn!("sync failed: {e}");
                lock(&daemon.pending).full = true;
                daemon.update_state(|s| {
                    s.problems = hook_problems;
                    s.problems.push(format!("last sync failed: {e}"));
                });
            }
        }
    }
}

/// The bridge interfaces of the snapshot's bridge networks.
fn bridge_names(s: &Snapshot) -> BTreeSet<String> {
    s.networks.iter().filter_map(|n| n.bridge.clone()).collect()
}

/// Brings `snap` up to date: all of it, or the containers in `ids`.
async fn refresh(
    engine: &Engine,
    snap: &mut Option<Snapshot>,
    full: bool,
    ids: &BTreeSet<String>,
) -> Result<()> {
    let current = match snap {
        Some(s) if !full => s,
        _ => {
            *snap = Some(engine.snapshot().await?);
            return Ok(());
        }
    };
    for id in ids {
        let fresh = engine.container(id).await?;
        current.containers.retain(|c| &c.id != id);
        current.containers.extend(fresh);
    }
    current.containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

impl Daemon {
    /// `Ok(None)` when the engine is down (nothing done); otherwise the
    /// problems this sync found (bad labels, ...).
    async fn sync_once(&self, snap: &mut Option<Snapshot>) -> Result<Option<Vec<String>>> {
        let Some(engine) = self.engine() else { return Ok(None) };
        let (full, ids) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.full) || snap.is_none(), std::mem::take(&mut p.containers))
        };
        let start = Instant::now();
        refresh(&engine, snap, full, &ids).await?;
        let snapshot = snap.as_ref().expect("refreshed");
        let refreshed = start.elapsed();
        let bridges = bridge_names(snapshot);
        if std::mem::replace(&mut *lock(&self.bridges), bridges.clone()) != bridges {
            super::start::save_bridges(&self.pins, &bridges);
        }
        self.hook_docker_veths();
        let live = lock(&self.hooks).live();
        let veths = netns::veth_owners(snapshot, &live).await;
        let owned = start.elapsed();
        let present: Vec<String> =
            bridges.iter().filter(|b| live.iter().any(|l| &l.name == *b)).cloned().collect();
        let pins = self.pins.clone();
        let snapshot = snapshot.clone();
        let (failsafe, policy) = self.take_config();
        let hooks = self.kernel_hooks.clone();
        let problems = tokio::task::spawn_blocking(move || {
            kernel::sync(&pins, &hooks, &present, snapshot, veths, failsafe, policy)
        })
        .await
        .expect("sync panicked")
        .inspect_err(|_| self.policy_again(policy))?;
        // A bad label is told once, not at every sync.
        let known = lock(&self.state).problems.clone();
        for p in problems.iter().filter(|p| !known.contains(p)) {
            tracing::warn!("{p}");
        }
        let pins = self.pins.clone();
        tokio::task::spawn_blocking(move || kernel::gc(&pins)).await.expect("gc panicked")?;
        tracing::debug!(
            full,
            inspected = ids.len(),
            snapshot_ms = refreshed.as_secs_f64() * 1e3,
            netns_ms = (owned - refreshed).as_secs_f64() * 1e3,
            total_ms = start.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        Ok(Some(problems))
    }
}
