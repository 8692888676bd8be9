//! The end-to-end rigs: an outside namespace on a veth uplink, a published
//! busybox web container behind docker0, and an agent with its own pin
//! folder (`Rig`); the probes the tests dial with; small readers of the
//! CLI's JSON. The Docker-aware topology of issue 9 is in [`topology`].

pub mod topology;

use std::process::Command;

use serde_json::Value;

use crate::agent::Agent;
use crate::docker::{Container, MARKER};
use crate::is_root;
use crate::netns::{Background, Outside};

/// Fails loudly rather than passing when the machine cannot run these tests.
pub fn require_env() {
    assert!(is_root(), "e2e tests need root (netns, veth, BPF)");
    assert!(
        crate::docker::docker_available(),
        "e2e tests need a running Docker daemon (`cargo xtask setup` starts one)"
    );
    crate::docker::ensure_image();
}

/// One published web container, the outside namespace and an agent with its
/// own pin folder. Fields drop in declaration order: the agent detaches
/// while the uplink still exists.
pub struct Rig {
    pub agent: Agent,
    pub web: Container,
    pub out: Outside,
    /// `http://<uplink host ip>:<published port>/`.
    pub url: String,
}

impl Rig {
    /// The web container serves on container port 80, published as `host_port`.
    pub fn new(tag: &str, subnet: u8, host_port: u16) -> Rig {
        Rig::with_container_port(tag, subnet, host_port, 80)
    }

    /// The web container serves on `container_port`, published as `host_port`.
    pub fn with_container_port(tag: &str, subnet: u8, host_port: u16, container_port: u16) -> Rig {
        require_env();
        let out = Outside::new(tag, subnet);
        let web = Container::web_on(tag, host_port, container_port);
        let agent = Agent::new(tag);
        let url = format!("http://{}:{host_port}/", out.host_ip());
        assert!(out.curl_ok(&url, MARKER), "rig broken: outside cannot reach {url}");
        Rig { agent, web, out, url }
    }

    /// `attach <uplink> --bridge docker0`.
    pub fn attach(&self) {
        self.agent.ok(&["attach", self.out.host_if(), "--bridge", "docker0"]);
    }

    /// Whether the outside namespace gets the page through the published port.
    pub fn reachable(&self) -> bool {
        self.out.curl_ok(&self.url, MARKER)
    }
}

/// The plain port rule with this scope and spec from `list --json` (not a
/// rule of a container's own labels or one derived from another).
pub fn rule(agent: &Agent, scope: &str, spec: &str) -> Option<Value> {
    let list = agent.json(&["list"]);
    let rules = list["rules"].as_array().unwrap_or_else(|| panic!("list --json: {list}"));
    rules.iter().find(|r| r["scope"] == scope && r["spec"] == spec && r["target"]["kind"] == "ports").cloned()
}

pub fn dropped_packets(rule: &Value) -> u64 {
    rule["dropped"]["packets"].as_u64().unwrap_or_else(|| panic!("no dropped.packets: {rule}"))
}

/// Drops of `rule` plus those of the rules derived from it: with an engine,
/// a container-port rule also gets rules on the published host ports that
/// lead to its port, and XDP drops there first.
pub fn dropped_with_derived(agent: &Agent, rule: &Value) -> u64 {
    let list = agent.json(&["list"]);
    let derived: u64 = list["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json: {list}"))
        .iter()
        .filter(|d| d["derived_from"] == rule["id"])
        .map(dropped_packets)
        .sum();
    dropped_packets(rule) + derived
}

/// Links from `status --json` on `iface` with `hook` (any hook if None).
pub fn links(agent: &Agent, iface: &str, hook: Option<&str>) -> Vec<Value> {
    let status = agent.json(&["status"]);
    let links = status["links"].as_array().unwrap_or_else(|| panic!("status --json: {status}"));
    links.iter().filter(|l| l["interface"] == iface && hook.is_none_or(|h| l["hook"] == h)).cloned().collect()
}

/// A TCP service on the host bound to `addr` (IPv4 or IPv6), answering
/// `hello`, for at most `secs`.
pub fn host_service(addr: &str, port: u16, secs: u32) -> Background {
    let listen = if addr.contains(':') {
        format!("TCP6-LISTEN:{port},bind=[{addr}],reuseaddr,fork")
    } else {
        format!("TCP-LISTEN:{port},bind={addr},reuseaddr,fork")
    };
    let secs = secs.to_string();
    Background::spawn(
        Command::new("timeout").args([secs.as_str(), "socat", &listen, "SYSTEM:echo hello"]),
        port,
        None,
    )
}

/// Whether the outside namespace gets `hello` (a [`host_service`]) from TCP
/// `addr:port` (IPv4 or IPv6) within a 2 s connect timeout.
pub fn connects(out: &Outside, addr: &str, port: u16) -> bool {
    let target = if addr.contains(':') {
        format!("TCP6:[{addr}]:{port},connect-timeout=2")
    } else {
        format!("TCP:{addr}:{port},connect-timeout=2")
    };
    let o = out.exec("timeout", &["5", "socat", "-", &target]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello")
}
