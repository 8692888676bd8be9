//! Floods from the outside namespace at the uplink, and what the host made
//! of them (the traffic layer, beside the peers, on top of the world). Two
//! generators:
//! - live frames: `dockblock-bench flood`, an XDP_TX program run with
//!   BPF_PROG_TEST_RUN in live-frames mode, whose frames arrive at the
//!   uplink as XDP frames (5-11 Mpps here);
//! - trafgen (netsniff-ng, AF_PACKET), random source ports, about 1 Mpps.
//!
//! Both are bounded in frames and in seconds. Rates come from counters read
//! before and after: the uplink's rx_packets (taken in by the host) and
//! rx_dropped (lost at the veth ring before anything looked at them), the
//! bridge's tx_packets (forwarded to the container), an nft counter in the
//! container's namespace (flood packets that reached it) and the filter's
//! own drop counter.
use crate::{
    peers::{self, Variant},
    world::{self, Topology, BRIDGE, HOST_IF, HOST_IP, NS, NS_IF, NS_IP},
};
use anyhow::{bail, Context, Result};
use dockblock_testkit::cmd;
use serde_json::{json, Value};
use std::{
    fs,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    Live,
    Trafgen,
}

impl Generator {
    pub fn id(self) -> &'static str {
        match self {
            Generator::Live => "live-frames",
            Generator::Trafgen => "trafgen",
        }
    }
}

/// One flood: generator, protocol, whether source ports vary, and bounds.
#[derive(Clone, Debug)]
pub struct Flood {
    pub generator: Generator,
    pub proto: &'static str,
    /// Random source port per frame (many conntrack flows) or one flow.
    pub many_flows: bool,
    pub frames: u64,
    pub seconds: f64,
    /// Frames per second; 0 = as fast as it goes.
    pub rate: f64,
    pub dport: u16,
    /// Live frames only: spread destination ports over dport..dport+span.
    pub dport_span: u32,
    /// Live frames only: address the container itself (routed through the
    /// host, the FORWARD path without DNAT) instead of the host's
    /// published port.
    pub to_container: bool,
}

impl Flood {
    /// `frames` at most, for `seconds` at most, as fast as it goes, random
    /// source ports, at the blocked published port: the bench's usual
    /// flood, which callers vary with struct update syntax.
    pub fn new(generator: Generator, proto: &'static str, frames: u64, seconds: f64) -> Self {
        Flood {
            generator,
            proto,
            many_flows: true,
            frames,
            seconds,
            rate: 0.0,
            dport: world::BLOCKED_PORT,
            dport_span: 0,
            to_container: false,
        }
    }
}

/// What one generator run reported. Live frames also report the CPU time
/// the flood took (the generator with the receive path it set off, and the
/// ksoftirqd threads).
pub struct Sent {
    pub frames: u64,
    pub seconds: f64,
    pub cpu_ns: Option<f64>,
}

fn live_args(t: &Topology, f: &Flood) -> Vec<String> {
    let bench = world::bench_bin();
    let mut v: Vec<String> = ["ip", "netns", "exec", NS].iter().map(|s| s.to_string()).collect();
    v.push(bench.to_string_lossy().into_owned());
    v.push("flood".into());
    let kv = [
        ("ifname", NS_IF.to_string()),
        ("proto", f.proto.to_string()),
        ("flows", if f.many_flows { "many" } else { "one" }.to_string()),
        ("frames", f.frames.to_string()),
        ("seconds", f.seconds.to_string()),
        ("rate", f.rate.to_string()),
        ("src-mac", t.ns_mac.clone()),
        ("dst-mac", t.host_mac.clone()),
        ("src-ip", NS_IP.to_string()),
        ("dst-ip", if f.to_container { t.container_ip.clone() } else { HOST_IP.to_string() }),
        ("dport", f.dport.to_string()),
        ("dport-span", f.dport_span.to_string()),
    ];
    for (k, val) in kv {
        v.push(format!("--{k}"));
        v.push(val);
    }
    v
}

/// Runs the live-frames generator to its end.
pub fn live(t: &Topology, f: &Flood) -> Result<Sent> {
    let args = live_args(t, f);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let limit = Duration::from_secs_f64(f.seconds + 20.0);
    let out = cmd::ok_within(limit, &args)?;
    let j: Value = serde_json::from_str(out.trim()).context("dockblock-bench flood output")?;
    Ok(Sent {
        frames: j["frames"].as_u64().unwrap_or(0),
        seconds: j["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_ns: j["cpu_ns"].as_f64(),
    })
}

/// Starts the live-frames generator in the background; it stops by itself
/// at its bounds.
pub fn live_background(t: &Topology, f: &Flood) -> Result<Child> {
    let args = live_args(t, f);
    Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start dockblock-bench flood")
}

/// Packets the uplink took in so far.
pub fn received() -> u64 {
    stat(HOST_IF, "rx_packets")
}

/// trafgen's config and command line for `f`: one process in the
/// namespace, `frames` packets (at `rate` per second when set), stopped with
/// SIGINT after `seconds` at the latest. The caller removes the config.
fn trafgen_cmd(t: &Topology, f: &Flood) -> Result<(String, Vec<String>)> {
    let sport = if f.many_flows { "drnd()" } else { "40000" };
    let l4 = match f.proto {
        "tcp" => format!("tcp(sp={sport}, dp={}, syn, seq=0x12345678, win=64240)", f.dport),
        _ => format!("udp(sp={sport}, dp={}), fill(0x00, 10)", f.dport),
    };
    let cfg = format!(
        "{{ eth(da={}, sa={}), ipv4(saddr={NS_IP}, daddr={HOST_IP}, ttl=64, df), {l4} }}\n",
        t.host_mac, t.ns_mac
    );
    let path = format!("/tmp/dockblock-bench-trafgen-{}-{}.cfg", f.proto, std::process::id());
    fs::write(&path, cfg).with_context(|| format!("writing {path}"))?;
    let mut args: Vec<String> = ["ip", "netns", "exec", NS, "timeout", "-s", "INT", "-k", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(f.seconds.to_string());
    for a in ["trafgen", "-o", NS_IF, "-i", &path, "-P", "1", "-n"] {
        args.push(a.to_string());
    }
    args.push(f.frames.to_string());
    if f.rate > 0.0 {
        args.push("-b".into());
        args.push(format!("{}pps", f.rate.round() as u64));
    }
    Ok((path, args))
}

/// Runs trafgen to its end (see `trafgen_cmd`).
pub fn trafgen(t: &Topology, f: &Flood) -> Result<Sent> {
    let (path, args) = trafgen_cmd(t, f)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = cmd::output(Duration::from_secs_f64(f.seconds + 20.0), &args, None);
    let wall = start.elapsed().as_secs_f64();
    let _ = fs::remove_file(&path);
    let out = out?;
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    parse_trafgen(&text, wall)
}

/// Starts trafgen in the background (attack traffic while other probes
/// run); it stops by itself at its bounds. The config file is removed once
/// trafgen has read it.
pub fn trafgen_background(t: &Topology, f: &Flood) -> Result<Child> {
    let (path, args) = trafgen_cmd(t, f)?;
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start trafgen");
    std::thread::sleep(Duration::from_millis(200));
    let _ = fs::remove_file(&path);
    child
}

/// trafgen prints its totals also when stopped by SIGINT:
/// "1000000 packets outgoing" and "8 sec, 905280 usec on CPU0 (...)".
pub fn parse_trafgen(text: &str, wall: f64) -> Result<Sent> {
    let frames = text
        .lines()
        .find_map(|l| l.trim().strip_suffix("packets outgoing")?.trim().parse().ok())
        .with_context(|| format!("no 'packets outgoing' in trafgen output: {text}"))?;
    let seconds = text
        .lines()
        .find_map(|l| {
            let (s, rest) = l.trim().split_once(" sec, ")?;
            let us = rest.split_whitespace().next()?;
            Some(s.trim().parse::<f64>().ok()? + us.parse::<f64>().ok()? / 1e6)
        })
        .filter(|s| *s > 0.0)
        .unwrap_or(wall);
    Ok(Sent { frames, seconds, cpu_ns: None })
}

fn stat(dev: &str, name: &str) -> u64 {
    fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

struct Counters {
    rx: u64,
    rx_dropped: u64,
    forwarded: u64,
    reached: u64,
    filter: Option<u64>,
}

fn counters(t: &Topology, v: Variant) -> Result<Counters> {
    Ok(Counters {
        rx: stat(HOST_IF, "rx_packets"),
        rx_dropped: stat(HOST_IF, "rx_dropped"),
        forwarded: stat(BRIDGE, "tx_packets"),
        reached: t.container_hits()?,
        filter: peers::dropped(v)?,
    })
}

/// Runs `f` against variant `v` (already set up) and returns one sample.
pub fn measure(t: &Topology, v: Variant, f: &Flood, round: usize) -> Result<Value> {
    world::clear_conntrack();
    let before = counters(t, v)?;
    let sent = match f.generator {
        Generator::Live => live(t, f)?,
        Generator::Trafgen => trafgen(t, f)?,
    };
    // Let the veth ring drain before reading.
    std::thread::sleep(Duration::from_millis(100));
    let after = counters(t, v)?;
    // Filters that drop after conntrack confirmed the flow (TC on the
    // bridge egress) leave an entry per flood flow; the others none.
    let conntrack_entries = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if sent.seconds.is_nan() || sent.seconds <= 0.0 {
        bail!("generator reported no duration");
    }
    let mpps = |n: u64| n as f64 / sent.seconds / 1e6;
    let filter = match (before.filter, after.filter) {
        (Some(b), Some(a)) => Some(mpps(a.saturating_sub(b))),
        _ => None,
    };
    // Paced floods: CPU time per frame sent.
    let cpu_ns_per_packet = match (f.rate > 0.0, sent.cpu_ns) {
        (true, Some(ns)) if sent.frames > 0 => Some(ns / sent.frames as f64),
        _ => None,
    };
    Ok(json!({
        "variant": v.id(),
        "generator": f.generator.id(),
        "proto": f.proto,
        "flows": if f.many_flows { "many" } else { "one" },
        "round": round,
        "frames": sent.frames,
        "seconds": sent.seconds,
        "offered_mpps": mpps(sent.frames),
        "received_mpps": mpps(after.rx.saturating_sub(before.rx)),
        "ring_dropped_mpps": mpps(after.rx_dropped.saturating_sub(before.rx_dropped)),
        "forwarded_mpps": mpps(after.forwarded.saturating_sub(before.forwarded)),
        // Flood packets that got past the filter to the container.
        "reached_container": after.reached.saturating_sub(before.reached),
        "filter_dropped_mpps": filter,
        // 0: as fast as the generator goes (saturation).
        "rate_mpps": f.rate / 1e6,
        "cpu_ns": sent.cpu_ns,
        "conntrack_entries_after": conntrack_entries,
        "cpu_ns_per_packet": cpu_ns_per_packet,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_trafgen_totals() {
        let out = "     1000000 packets outgoing\n    54000000 bytes outgoing\n           8 sec, 905280 usec on CPU0 (1000000 packets)\n";
        let sent = super::parse_trafgen(out, 99.0).unwrap();
        assert_eq!(sent.frames, 1_000_000);
        assert!((sent.seconds - 8.90528).abs() < 1e-9);
        assert!(super::parse_trafgen("nothing", 1.0).is_err());
    }
}
