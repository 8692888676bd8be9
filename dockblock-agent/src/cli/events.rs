//! `events`: streams the drop events of `--log` rules from the pinned ring
//! buffer until Ctrl-C (or `--count`). One reader at a time: events go to
//! whichever `events` process reads them first.

use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use dockblock_agent::{
    addr::addr_from_mapped, link_info, paths::PinDir, require_root, store::open_pinned, Error, Result,
};
use dockblock_common::{hook, map_names, Event};
use serde_json::json;
use tokio::io::unix::AsyncFd;

pub fn run(pins: &PinDir, json: bool, count: Option<u64>) -> Result<()> {
    require_root()?;
    let ring: RingBuf<MapData> = open_pinned(pins, map_names::EVENTS)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start runtime", "tokio", e))?;
    runtime.block_on(stream(ring, json, count.unwrap_or(u64::MAX)))
}

async fn stream(ring: RingBuf<MapData>, json: bool, limit: u64) -> Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::io("poll", "EVENTS", e.into()))?;
    let clock = Clock::new();
    let mut seen = 0;
    while seen < limit {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("poll", "EVENTS", e))?;
                let ring = guard.get_inner_mut();
                while seen < limit {
                    let Some(item) = ring.next() else { break };
                    if item.len() >= size_of::<Event>() {
                        // SAFETY: the kernel wrote an Event; read_unaligned copes with the ring's alignment.
                        let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        print(&event, &clock, json);
                        seen += 1;
                    }
                }
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

fn print(e: &Event, clock: &Clock, json: bool) {
    let proto = match e.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    };
    let hook_name = if e.hook == hook::XDP { "xdp" } else { "tc" };
    let iface = link_info::ifname(e.ifindex).unwrap_or_else(|| e.ifindex.to_string());
    let action = if e.dry_run != 0 { "would_drop" } else { "drop" };
    let (src, dst) = (addr_from_mapped(e.src), addr_from_mapped(e.dst));
    let time = clock.unix_secs(e.timestamp_ns);
    if json {
        let line = json!({
            "time": time, "rule_id": e.rule_id, "hook": hook_name, "interface": iface, "action": action,
            "protocol": proto, "src": src.to_string(), "sport": e.sport, "dst": dst.to_string(), "dport": e.dport,
        });
        println!("{line}");
    } else {
        println!(
            "{time:.6} rule {} {hook_name} {iface} {action} {proto} {src} port {} -> {dst} port {}",
            e.rule_id, e.sport, e.dport
        );
    }
}

/// Turns the kernel's monotonic timestamps into Unix time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn new() -> Self {
        let mut mono = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
        let mono_ns = mono.tv_sec as i128 * 1_000_000_000 + mono.tv_nsec as i128;
        let wall_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        Self { offset_ns: wall_ns - mono_ns }
    }

    fn unix_secs(&self, mono_ns: u64) -> f64 {
        (self.offset_ns + mono_ns as i128) as f64 / 1e9
    }
}
