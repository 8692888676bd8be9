//! The engine's events that can change what dockblock must close: a
//! container's life (create, start, die, destroy, rename) and its network
//! attachments. Events can repeat (Docker 20.10 sends `disconnect` twice):
//! consumers react level-triggered, by re-reading the state.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use bollard::{
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::EventsOptions,
};

/// The container actions asked for (the engine filters them).
pub const CONTAINER_ACTIONS: &[&str] =
    &["create", "start", "restart", "die", "stop", "destroy", "rename", "update"];
/// The network actions asked for.
pub const NETWORK_ACTIONS: &[&str] = &["create", "destroy", "remove", "connect", "disconnect"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// `id`: the container's full id.
    Container { id: String, action: String },
    /// `id`: the network's id; `container`: the container connected or
    /// disconnected.
    Network { id: String, action: String, container: Option<String> },
}

impl EngineEvent {
    /// The container the event is about, if any.
    pub fn container(&self) -> Option<&str> {
        match self {
            EngineEvent::Container { id, .. } => Some(id),
            EngineEvent::Network { container, .. } => container.as_deref(),
        }
    }

    pub fn action(&self) -> &str {
        match self {
            EngineEvent::Container { action, .. } | EngineEvent::Network { action, .. } => action,
        }
    }
}

/// The `/events` query: container and network events of [`CONTAINER_ACTIONS`]
/// and [`NETWORK_ACTIONS`] (filters of different keys are ANDed by the
/// engine), from `since` on: the engine replays what it recorded since then
/// from its buffer (the last 256 events), so a subscription that reaches it
/// late misses nothing.
pub(crate) fn options(since: SystemTime) -> EventsOptions {
    let mut actions: Vec<String> =
        CONTAINER_ACTIONS.iter().chain(NETWORK_ACTIONS).map(|a| a.to_string()).collect();
    actions.sort();
    actions.dedup();
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string(), "network".to_string()]),
        ("event".to_string(), actions),
    ]);
    let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Docker's `seconds.nanoseconds` timestamp form.
    let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
    EventsOptions { filters: Some(filters), since: Some(since), ..Default::default() }
}

/// `None` for events of other types or actions (a container `update` of a
/// network action name, for instance).
pub(crate) fn from_message(m: EventMessage) -> Option<EngineEvent> {
    let actor = m.actor.unwrap_or_default();
    let id = actor.id.unwrap_or_default();
    let action = m.action.unwrap_or_default();
    match m.typ? {
        EventMessageTypeEnum::CONTAINER if CONTAINER_ACTIONS.contains(&action.as_str()) => {
            Some(EngineEvent::Container { id, action })
        }
        EventMessageTypeEnum::NETWORK if NETWORK_ACTIONS.contains(&action.as_str()) => {
            let container = actor.attributes.and_then(|mut a| a.remove("container"));
            Some(EngineEvent::Network { id, action, container })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::EventActor;

    use super::*;

    fn msg(typ: EventMessageTypeEnum, action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some("abc".to_string()),
                attributes: Some(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_map_to_containers_and_networks() {
        let e = from_message(msg(EventMessageTypeEnum::CONTAINER, "start", &[("name", "db")])).unwrap();
        assert_eq!(e, EngineEvent::Container { id: "abc".into(), action: "start".into() });
        assert_eq!(e.container(), Some("abc"));
        let e = from_message(msg(
            EventMessageTypeEnum::NETWORK,
            "connect",
            &[("container", "c1"), ("name", "n")],
        ))
        .unwrap();
        assert_eq!(
            e,
            EngineEvent::Network { id: "abc".into(), action: "connect".into(), container: Some("c1".into()) }
        );
        assert_eq!(e.container(), Some("c1"));
        // Exec and health events change nothing dockblock closes.
        assert_eq!(from_message(msg(EventMessageTypeEnum::CONTAINER, "exec_start: sh", &[])), None);
        assert_eq!(from_message(msg(EventMessageTypeEnum::IMAGE, "create", &[])), None);
    }
}
