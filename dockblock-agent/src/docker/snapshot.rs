//! What dockblock needs to know of the engine, as plain data: filled by
//! `engine` from the API (bollard), read by `translate` (pure) and by
//! `ports`. Tests build snapshots by hand.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

/// Compose's labels on the containers it creates.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// dockblock's own labels: a rule that travels with its container.
pub const BLOCK_LABEL: &str = "dockblock.block";
pub const ALLOW_FROM_LABEL: &str = "dockblock.allow-from";
pub const FROM_CONTAINERS_LABEL: &str = "dockblock.from-containers";

/// The engine's state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Every container, running or not (a created container's labels and
    /// port bindings are known before it runs).
    pub containers: Vec<Container>,
    pub networks: Vec<Network>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The full id, 64 hex digits.
    pub id: String,
    /// The name, without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// The container's init process on the host (0 when not running): its
    /// network namespace is `/proc/<pid>/ns/net`.
    pub pid: u32,
    pub ports: Vec<PortBinding>,
    pub networks: Vec<Endpoint>,
}

impl Container {
    pub fn compose_project(&self) -> Option<&str> {
        self.labels.get(COMPOSE_PROJECT_LABEL).map(String::as_str)
    }

    pub fn compose_service(&self) -> Option<&str> {
        self.labels.get(COMPOSE_SERVICE_LABEL).map(String::as_str)
    }
}

/// One published port: `host_ip:host_port -> container_port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortBinding {
    /// `None` for 0.0.0.0 (or no address given); `::` (every IPv6
    /// address, Docker lists it beside 0.0.0.0 when the host has IPv6) is
    /// `Some`. Rules ignore it: a host port closes on every address.
    pub host_ip: Option<IpAddr>,
    /// 0 while Docker has not chosen it yet (`-p 80`, `-P` before start).
    pub host_port: u16,
    pub container_port: u16,
    /// One of `dockblock_common::proto`.
    pub proto: u32,
}

/// A container's attachment to one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The network's name (`bridge` for docker0).
    pub network: String,
    pub network_id: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// `bridge`, `host`, `null`, `overlay`, ...
    pub driver: String,
    /// The host bridge interface of a bridge network: `docker0`, `br-<12
    /// hex digits of the id>`, or the `com.docker.network.bridge.name`
    /// option. `None` for other drivers.
    pub bridge: Option<String>,
}

/// A container's host-side veth, found through the container's network
/// namespace (its `eth*` interfaces' peer ifindexes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VethOwner {
    pub ifindex: u32,
    pub ifname: String,
    /// The container id.
    pub container: String,
    /// The bridge it is enslaved to (`docker0`, `br-...`), when known.
    pub bridge: Option<String>,
}
