//! A container's host-side veths, found through its network namespace.
//! Docker names host veths at random (`vethd846a2f`), so the only sure
//! mapping is the peer link: inside the container's netns, `eth0`'s
//! `IFLA_LINK` is the ifindex of its peer in the host (spec/docker-aware.md
//! section 3). sysfs cannot tell (it follows the mount namespace), netlink
//! can: a socket opened after `setns()` belongs to the new netns.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    time::Instant,
};

use futures_util::StreamExt;

use super::{
    links::{self, LinkInfo},
    snapshot::{Snapshot, VethOwner},
};
use crate::error::{Error, Result};

/// Containers looked into at once by [`veth_owners`] (a thread each).
const PARALLEL: usize = 8;

fn netlink(what: String, why: impl std::fmt::Display) -> Error {
    Error::Netlink { what, why: why.to_string() }
}

/// The host ifindexes of the peers of every veth in the network namespace
/// of process `pid`. Empty when `pid` shares our namespace (`--network
/// host`): its veths would be the host's own.
pub fn host_peers(pid: u32) -> Result<Vec<u32>> {
    let path = format!("/proc/{pid}/ns/net");
    let what = || format!("read the links of {path}");
    let ns = File::open(&path).map_err(|e| netlink(what(), e))?;
    let theirs = ns.metadata().map_err(|e| netlink(what(), e))?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net").map_err(|e| netlink(what(), e))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(Vec::new());
    }
    // A thread of its own: setns() changes the calling thread only, and
    // this one never goes back; it ends with the answer. Never a thread of
    // a runtime, which would go on serving tasks in the container's netns.
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || peers_inside(&ns))
        .map_err(|e| netlink(what(), e))?
        .join()
        .map_err(|_| netlink(what(), "the netns thread panicked"))?
        .map_err(|e| netlink(what(), e))
}

/// Runs on a thread that belongs to nothing else.
fn peers_inside(ns: &File) -> Result<Vec<u32>, String> {
    // SAFETY: `ns` is an open nsfs file; setns affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let msgs = rt.block_on(links::messages()).map_err(|e| e.to_string())?;
    Ok(msgs
        .iter()
        .filter(|m| links::info(m).kind.as_deref() == Some("veth"))
        .filter_map(links::peer)
        .collect())
}

/// The host veths of every running container of `snapshot` that has a
/// network of its own, named and with their bridge from `links` (a dump of
/// the host's links). A container whose netns cannot be read is left out
/// with a warning: its veths stay unreviewed, i.e. closed. A peer missing
/// from `links` (created after the dump) is left out too, until the next
/// dump.
pub async fn veth_owners(snapshot: &Snapshot, links: &[LinkInfo]) -> Vec<VethOwner> {
    let by_index: HashMap<u32, &LinkInfo> = links.iter().map(|l| (l.ifindex, l)).collect();
    // No endpoint: `--network container:X`, X's netns and veths (X owns
    // them); `--network host` has an endpoint and is told by host_peers.
    let running = snapshot.containers.iter().filter(|c| c.running && c.pid != 0 && !c.networks.is_empty());
    let peers: Vec<_> = futures_util::stream::iter(running)
        .map(|c| {
            let pid = c.pid;
            async move {
                let start = Instant::now();
                let r = tokio::task::spawn_blocking(move || host_peers(pid)).await;
                tracing::debug!(container = %c.name, pid, elapsed_us = start.elapsed().as_micros() as u64, "netns read");
                (c, r.unwrap_or_else(|e| Err(netlink(format!("read the netns of pid {pid}"), e))))
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut owners = Vec::new();
    for (c, r) in peers {
        let peers = match r {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(container = %c.name, "veths unknown, left unreviewed: {e}");
                continue;
            }
        };
        for ifindex in peers {
            let Some(link) = by_index.get(&ifindex).filter(|l| l.kind.as_deref() == Some("veth")) else {
                tracing::warn!(container = %c.name, ifindex, "peer veth not in the link dump (yet): left unreviewed");
                continue;
            };
            owners.push(VethOwner {
                ifindex,
                ifname: link.name.clone(),
                container: c.id.clone(),
                bridge: link.master.and_then(|m| by_index.get(&m)).map(|b| b.name.clone()),
            });
        }
    }
    owners
}
