//! The traffic side of the Docker suite, on the bench's usual world
//! (outside namespace, veth uplink, the container's published ports):
//! - allowed throughput: iperf3 from the outside namespace to the published
//!   port, served in the container's network namespace, so it takes the
//!   DNAT path through the bridge and the container's veth;
//! - the container-rule flood: trafgen SYNs (random source ports) at a
//!   fixed rate at the published port of a blocked container port, with the
//!   box's system + softirq CPU (`/proc/stat`) per packet and the conntrack
//!   entries the flood left (`conntrack -C`, ours flushed before each run).
use super::usage;
use crate::{
    peers::{self, Variant},
    traffic::{self, Flood, Generator},
    world::{self, Topology, HOST_IP, IPERF_PORT, NS},
};
use anyhow::{bail, Context, Result};
use dockblock_testkit::cmd::{self, in_ns};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One iperf3 run of `secs` seconds; Gbit/s received.
pub fn throughput(secs: u32) -> Result<f64> {
    let port = IPERF_PORT.to_string();
    let t = secs.to_string();
    let out = cmd::output(
        Duration::from_secs(u64::from(secs) + 15),
        &in_ns(NS, &["iperf3", "-c", HOST_IP, "-p", &port, "-t", &t, "--connect-timeout", "2000", "-J"]),
        None,
    )?;
    if !out.status.success() {
        bail!("iperf3 failed: {}", cmd::describe(&out));
    }
    let j: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no sum_received in iperf3 -J")
}

/// Who blocks the flood (the container port 28080 behind published 18080).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Nothing: the host takes every SYN (the reference).
    Nothing,
    /// The daemon's `block --container NAME 28080/tcp`: the rule derived on
    /// the published port drops in XDP on the uplink.
    DaemonContainerRule,
    /// iptables DOCKER-USER dropping the container port (after DNAT).
    DockerUser,
    /// `attach --bridge` only, `block --container-port 28080/tcp`: TC on
    /// the bridge, no XDP on the uplink.
    BridgeTc,
}

impl Blocker {
    pub fn id(self) -> &'static str {
        match self {
            Blocker::Nothing => "no-filter",
            Blocker::DaemonContainerRule => "dockblock-container-rule",
            Blocker::DockerUser => "iptables-docker-user",
            Blocker::BridgeTc => "dockblock-bridge-tc",
        }
    }

    /// The peer whose counters tell what was dropped.
    fn counted_as(self) -> Variant {
        match self {
            Blocker::Nothing => Variant::V0,
            Blocker::DaemonContainerRule => Variant::DbXdpSkb,
            Blocker::DockerUser => Variant::IptUser,
            Blocker::BridgeTc => Variant::DbTc,
        }
    }
}

fn conntrack_count() -> Result<u64> {
    let out = cmd::ok(&["conntrack", "-C"])?;
    out.trim().parse().with_context(|| format!("conntrack -C printed {out:?}"))
}

/// One paced flood against `b` (already in place).
pub fn flood(topo: &Topology, b: Blocker, rate: f64, secs: f64, round: usize) -> Result<Value> {
    world::clear_conntrack();
    let v = b.counted_as();
    let ct0 = conntrack_count()?;
    // What the box spends without the flood, just before it.
    let idle0 = usage::box_sys_softirq_seconds()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let background = (usage::box_sys_softirq_seconds()? - idle0) / t.elapsed().as_secs_f64();
    let dropped0 = peers::dropped(v)?;
    let reached0 = topo.container_hits()?;
    let cpu0 = usage::box_sys_softirq_seconds()?;
    let t = Instant::now();
    let f = Flood { rate, ..Flood::new(Generator::Trafgen, "tcp", (rate * secs) as u64, secs) };
    let sent = traffic::trafgen(topo, &f)?;
    std::thread::sleep(Duration::from_millis(100));
    let cpu = usage::box_sys_softirq_seconds()? - cpu0;
    let wall = t.elapsed().as_secs_f64();
    let ct1 = conntrack_count()?;
    let dropped = match (dropped0, peers::dropped(v)?) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let reached = topo.container_hits()?.saturating_sub(reached0);
    if sent.frames == 0 {
        bail!("trafgen sent nothing");
    }
    let per = |s: f64| s * 1e9 / sent.frames as f64;
    Ok(json!({
        "blocker": b.id(),
        "round": round,
        "frames": sent.frames,
        "seconds": sent.seconds,
        "offered_mpps": sent.frames as f64 / sent.seconds / 1e6,
        "dropped_by_filter": dropped,
        "reached_container": reached,
        "box_sys_softirq_seconds": cpu,
        "background_sys_softirq_per_second": background,
        "cpu_ns_per_packet": per(cpu),
        "cpu_ns_per_packet_net": per(cpu - background * wall),
        "conntrack_before": ct0,
        "conntrack_after": ct1,
        "conntrack_left": ct1 as i64 - ct0 as i64,
    }))
}
