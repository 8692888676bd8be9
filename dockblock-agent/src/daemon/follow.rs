//! The engine connection: connect, subscribe to events, mark what they
//! touch for the next sync; on a stream error or end the engine is "down":
//! rules stay as they are, and we reconnect with a backoff (100 ms doubling
//! to 5 s), then sync everything (level-triggered: containers gone while we
//! were away lose their entries then).

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;

use super::{lock, Daemon};
use crate::docker::{engine::Engine, events::EngineEvent};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) async fn follow(daemon: Arc<Daemon>) {
    let mut backoff = BACKOFF_FIRST;
    let mut said_down = false;
    loop {
        match Engine::connect().await {
            Ok(engine) => {
                // From now on (the engine replays events since this call),
                // so nothing falls between it and the snapshot below.
                let mut events = engine.events().await;
                tracing::info!(host = engine.host(), "engine connected: full sync");
                super::notify::status("enforcing; engine connected");
                *lock(&daemon.engine) = Some(engine);
                daemon.metrics.set_engine_connected(true);
                daemon.update_state(|s| {
                    s.engine = "connected".into();
                });
                daemon.mark_dirty(true);
                backoff = BACKOFF_FIRST;
                said_down = false;
                let why = loop {
                    match events.next().await {
                        Some(Ok(ev)) => daemon.on_engine_event(ev),
                        Some(Err(e)) => break e.to_string(),
                        None => break "event stream ended".to_string(),
                    }
                };
                *lock(&daemon.engine) = None;
                daemon.metrics.set_engine_connected(false);
                tracing::warn!("engine down ({why}): rules stay enforced; reconnecting");
                super::notify::status("enforcing; engine down, reconnecting");
                daemon.update_state(|s| s.engine = "down".into());
            }
            Err(e) => {
                if !said_down {
                    tracing::warn!("engine unreachable: {e}; retrying (rules stay enforced)");
                    daemon.update_state(|s| s.engine = "down".into());
                    said_down = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl Daemon {
    fn on_engine_event(&self, ev: EngineEvent) {
        tracing::debug!(?ev, "engine event");
        self.metrics.event_received();
        match &ev {
            EngineEvent::Network { action, container: None, .. } => {
                // create/destroy: the bridges to hook change.
                tracing::debug!(action, "network event");
                self.mark_dirty(true);
            }
            _ => match ev.container() {
                Some(id) => self.mark_container(id),
                None => self.mark_dirty(true),
            },
        }
    }
}
