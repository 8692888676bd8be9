//! The Docker layer: the engine's state (`snapshot`), read through its API
//! (`engine`, bollard), its events (`events`), container veths found through
//! their network namespaces (`netns`) and link events from netlink (`links`).

pub mod engine;
pub mod events;
pub mod links;
pub mod netns;
pub mod snapshot;
