//! The Docker engine through its API (bollard, unix socket only: no TLS
//! stack). `DOCKER_HOST` is respected; the API version is negotiated (Docker
//! 20.10 speaks 1.41, bollard 1.53). Everything dockblock reads of the engine
//! is turned into a [`Snapshot`] here, in one place.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use bollard::{
    errors::Error as BollardError,
    models::{ContainerInspectResponse, Network as ApiNetwork, PortMap},
    query_parameters::{ListContainersOptions, ListNetworksOptions},
    Docker,
};
use dockblock_common::proto;
use futures_util::{Stream, StreamExt};

use super::{
    events::{self, EngineEvent},
    links, netns,
    snapshot::{Container, Endpoint, Network, PortBinding, Snapshot, VethOwner},
};
use crate::error::{Error, Result};

/// Docker's socket when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// An engine that accepts the connection but does not answer `/version`
/// within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per request (until the response headers; the event stream is not cut).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Inspects in flight at once during a snapshot.
const PARALLEL: usize = 8;
/// The option that names a bridge network's host interface.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// A connected engine (cheap to clone: one shared HTTP client).
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    host: String,
}

fn engine_error(what: impl Into<String>, why: impl std::fmt::Display) -> Error {
    Error::Engine { what: what.into(), why: why.to_string() }
}

/// The engine's address, as `DOCKER_HOST` gives it.
pub fn host() -> String {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// True when the error says nothing listens at the socket (missing file,
/// connection refused): the engine is down, as opposed to misbehaving.
fn is_absent(e: &BollardError) -> bool {
    if matches!(e, BollardError::SocketNotFoundError(_)) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused);
        }
        source = s.source();
    }
    false
}

impl Engine {
    /// Connects to the engine at [`host()`] and negotiates the API version.
    /// Fails within [`CONNECT_TIMEOUT`] with `Error::Engine` when no engine
    /// answers.
    pub async fn connect() -> Result<Engine> {
        let host = host();
        match Self::try_connect().await? {
            Some(e) => Ok(e),
            None => Err(engine_error(
                format!("no engine at {host}"),
                "nothing listens at the socket (is dockerd running? is DOCKER_HOST right?)",
            )),
        }
    }

    /// Like [`Engine::connect`], but `Ok(None)` when nothing listens at the
    /// socket (no file, connection refused): "no engine" is an answer.
    pub async fn try_connect() -> Result<Option<Engine>> {
        let host = host();
        let what = || format!("connect to {host}");
        if !host.starts_with("unix://") {
            return Err(engine_error(what(), "only unix:// sockets are supported (DOCKER_HOST)"));
        }
        let docker =
            match Docker::connect_with_unix(&host, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION) {
                Ok(d) => d,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(engine_error(what(), e)),
            };
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) if is_absent(&e) => return Ok(None),
            Ok(Err(e)) => return Err(engine_error(what(), e)),
            Err(_) => return Err(engine_error(what(), format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        Ok(Some(Engine { docker, host }))
    }

    /// Where it is connected (`unix:///var/run/docker.sock`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Every container (created and stopped ones too: their labels and
    /// explicit bindings are known before they run) and every network. A
    /// container removed between the list and its inspect is left out.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let opts = ListContainersOptions { all: true, ..Default::default() };
        let list =
            self.docker.list_containers(Some(opts)).await.map_err(|e| engine_error("list containers", e))?;
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        let inspected: Vec<Result<Option<Container>>> = futures_util::stream::iter(ids.iter())
            .map(|id| self.container(id))
            .buffered(PARALLEL)
            .collect()
            .await;
        let mut containers = Vec::with_capacity(inspected.len());
        for c in inspected {
            containers.extend(c?);
        }
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| engine_error("list networks", e))?
            .iter()
            .map(network)
            .collect();
        Ok(Snapshot { containers, networks })
    }

    /// One container by id or name; `Ok(None)` when the engine knows none.
    pub async fn container(&self, id_or_name: &str) -> Result<Option<Container>> {
        match self.docker.inspect_container(id_or_name, None).await {
            Ok(c) => Ok(Some(container(c))),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(engine_error(format!("inspect container {id_or_name}"), e)),
        }
    }

    /// The engine's container and network events from the moment of this
    /// call on, even if the request reaches the engine later (it is sent
    /// when the stream is first polled; the engine replays what it recorded
    /// since the call). So: call this, then take the snapshot, and nothing
    /// falls between the two. The stream ends (or yields an error) when the
    /// engine goes away.
    pub async fn events(&self) -> impl Stream<Item = Result<EngineEvent>> + Send + Unpin + 'static {
        self.docker
            .events(Some(events::options(SystemTime::now())))
            .filter_map(|m| {
                std::future::ready(match m {
                    Ok(m) => events::from_message(m).map(Ok),
                    Err(e) => Some(Err(engine_error("event stream", e))),
                })
            })
            .boxed()
    }
}

/// For the CLI: connect, snapshot and the containers' host veths, on a
/// runtime of its own (do not call it from inside a runtime). `Ok(None)`
/// when no engine answers at the socket.
pub fn view_blocking() -> Result<Option<(Snapshot, Vec<VethOwner>)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| engine_error("start a runtime", e))?;
    rt.block_on(async {
        let Some(engine) = Engine::try_connect().await? else {
            return Ok(None);
        };
        let snapshot = engine.snapshot().await?;
        let links = links::dump().await?;
        let veths = netns::veth_owners(&snapshot, &links).await;
        Ok(Some((snapshot, veths)))
    })
}

fn container(c: ContainerInspectResponse) -> Container {
    let state = c.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let settings = c.network_settings.unwrap_or_default();
    // Running: the ports Docker actually bound (chosen ones included);
    // otherwise the ones asked for (host port 0 where Docker will choose).
    let ports = if running { settings.ports } else { c.host_config.and_then(|h| h.port_bindings) };
    let mut networks: Vec<Endpoint> = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, e)| Endpoint {
            network: name,
            network_id: e.network_id.unwrap_or_default(),
            ipv4: e.ip_address.and_then(|a| a.parse().ok()),
            ipv6: e.global_ipv6_address.and_then(|a| a.parse().ok()),
        })
        .collect();
    networks.sort_by(|a, b| a.network.cmp(&b.network));
    Container {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
        labels: c.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        running,
        pid: if running { state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0) } else { 0 },
        ports: bindings(ports.unwrap_or_default()),
        networks,
    }
}

/// `{"80/tcp": [{HostIp, HostPort}]}` -> bindings; sctp and unparsable keys
/// are left out. 0.0.0.0 (or no address) is `None`; `::`, listed beside it
/// when the host has IPv6, stays a binding of its own (`ports` shows the
/// IPv6 row): whether ip6tables DNATs it or docker-proxy carries it is the
/// engine's setting, not in the port map.
fn bindings(map: PortMap) -> Vec<PortBinding> {
    let mut out: Vec<PortBinding> = Vec::new();
    for (key, list) in map {
        let Some((port, proto)) = key.split_once('/') else { continue };
        let proto = match proto {
            "tcp" => proto::TCP,
            "udp" => proto::UDP,
            _ => continue,
        };
        let Ok(container_port) = port.parse::<u16>() else { continue };
        for b in list.unwrap_or_default() {
            let host_ip = b
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .filter(|ip| *ip != IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            // Empty (chosen at start) or a range Docker picks from: not known yet.
            let host_port = b.host_port.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0);
            let binding = PortBinding { host_ip, host_port, container_port, proto };
            if !out.contains(&binding) {
                out.push(binding);
            }
        }
    }
    out.sort_by_key(|b| (b.container_port, b.proto, b.host_port, b.host_ip));
    out
}

fn network(n: &ApiNetwork) -> Network {
    let id = n.id.clone().unwrap_or_default();
    let name = n.name.clone().unwrap_or_default();
    let driver = n.driver.clone().unwrap_or_default();
    let option = n.options.as_ref().and_then(|o| o.get(BRIDGE_NAME_OPTION)).filter(|b| !b.is_empty());
    let bridge = (driver == "bridge").then(|| match option {
        Some(b) => b.clone(),
        None if name == "bridge" => "docker0".to_string(),
        None => format!("br-{}", id.get(..12).unwrap_or(&id)),
    });
    Network { id, name, driver, bridge }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::PortBinding as ApiBinding;

    use super::*;

    fn api(ip: &str, port: &str) -> ApiBinding {
        ApiBinding { host_ip: Some(ip.into()), host_port: Some(port.into()) }
    }

    #[test]
    fn bindings_from_the_port_map() {
        let map: PortMap = HashMap::from([
            ("80/tcp".to_string(), Some(vec![api("0.0.0.0", "18080"), api("::", "18080")])),
            ("53/udp".to_string(), Some(vec![api("127.0.0.1", "")])),
            ("9/sctp".to_string(), Some(vec![api("", "9")])),
            ("443/tcp".to_string(), None),
        ]);
        let b = bindings(map);
        assert_eq!(
            b,
            vec![
                PortBinding {
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 0,
                    container_port: 53,
                    proto: proto::UDP
                },
                PortBinding { host_ip: None, host_port: 18080, container_port: 80, proto: proto::TCP },
                PortBinding {
                    host_ip: Some("::".parse().unwrap()),
                    host_port: 18080,
                    container_port: 80,
                    proto: proto::TCP
                },
            ]
        );
    }

    #[test]
    fn bridge_names() {
        let net = |name: &str, id: &str, driver: &str, opt: Option<&str>| ApiNetwork {
            name: Some(name.into()),
            id: Some(id.into()),
            driver: Some(driver.into()),
            options: opt.map(|o| HashMap::from([(BRIDGE_NAME_OPTION.to_string(), o.to_string())])),
            ..Default::default()
        };
        let id = "6e074d4ecfe1aaaabbbbccccdddd";
        assert_eq!(network(&net("bridge", id, "bridge", Some("docker0"))).bridge.as_deref(), Some("docker0"));
        assert_eq!(network(&net("bridge", id, "bridge", None)).bridge.as_deref(), Some("docker0"));
        assert_eq!(network(&net("app", id, "bridge", None)).bridge.as_deref(), Some("br-6e074d4ecfe1"));
        assert_eq!(network(&net("app", id, "bridge", Some("dbt0"))).bridge.as_deref(), Some("dbt0"));
        assert_eq!(network(&net("host", id, "host", None)).bridge, None);
    }
}
