//! `dockblock-bench flood` (the live-frames generator) and
//! `dockblock-bench drop-all` (the reference receiver).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{links::FdLink, TestRun, TestRunAttrs, TestRunOptions, XdpMode},
    Ebpf, EbpfLoader,
};
use dockblock_common::net::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_HLEN, TCP_SYN, UDP_HLEN};
use dockblock_packet::checksum;
use serde_json::{json, Value};

use super::{xdp, Opts, BENCH_OBJECT};
use crate::world::BLOCKED_PORT;

/// Attaches `drop_all` (native XDP) to `--ifname` through a bpf_link pinned
/// at `--pin`: it stays after this process exits, and removing the pin
/// detaches it.
pub fn drop_all(opts: &Opts) -> Result<Value> {
    let (ifname, pin) = (opts.str("ifname")?, opts.str("pin")?);
    let mut ebpf = Ebpf::load(BENCH_OBJECT).context("load the bench object")?;
    let prog = xdp(&mut ebpf, "drop_all")?;
    let id = prog.attach(ifname, XdpMode::Driver).with_context(|| format!("attach drop_all to {ifname}"))?;
    let link = FdLink::try_from(prog.take_link(id)?).context("drop_all link is not a bpf_link")?;
    link.pin(pin).with_context(|| format!("pin drop_all link at {pin}"))?;
    Ok(json!({"attached": ifname, "pin": pin}))
}

/// Sends `--frames` 60-byte frames (at most `--seconds`), as fast as
/// possible or at `--rate` frames per second, out of `--ifname`. With
/// `--flows many` each frame gets a random source port, and with
/// `--dport-span N` a random destination port in [dport, dport + N).
///
/// Reports the CPU time the flood took (`cpu_ns`): this process's own, which
/// includes the receive path the frames set off (NAPI runs in the softirq
/// at the end of each batch, in this task's context), plus what the
/// ksoftirqd threads ran meanwhile (softirq work deferred to them). Other
/// tasks' CPU time is not counted, so background load does not blur it.
pub fn flood(opts: &Opts) -> Result<Value> {
    let ifname = opts.str("ifname")?;
    let ifindex = ifindex(ifname)?;
    let frame = flood_frame(opts)?;
    let frames: u64 = opts.num("frames", 1_000_000)?;
    let limit = Duration::from_secs_f64(opts.num("seconds", 5.0)?);
    let rate: f64 = opts.num("rate", 0.0)?;
    let batch: u32 = opts.num("batch", 64)?;
    let program = match opts.str("flows").unwrap_or("many") {
        "one" => "bench_tx",
        "many" => "bench_tx_flows",
        other => bail!("--flows one|many, not {other}"),
    };
    // bench_tx writes FRAME over every page before sending it (see
    // dockblock-bench-ebpf/src/main.rs for why).
    let words: [u32; 15] =
        std::array::from_fn(|i| u32::from_ne_bytes(frame[i * 4..i * 4 + 4].try_into().expect("4 bytes")));
    let span: u32 = opts.num("dport-span", 0)?;
    let mut ebpf = EbpfLoader::new()
        .override_global("FRAME", &words, true)
        .override_global("DPORT_SPAN", &span, true)
        .load(BENCH_OBJECT)
        .context("load the bench object")?;
    let prog = xdp(&mut ebpf, program)?;

    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. Frames go out of ingress_ifindex.
    let ctx: Vec<u8> =
        [0, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
    // Each call sets up and tears down a page pool, which takes about 25 ms
    // here (mostly waiting, not CPU), so calls are coarse.
    // Paced: 100 ms worth per call, sent as a burst, then a sleep (the
    // receiver runs in the same softirq right after each batch of 64, so a
    // burst is not lost at the ring). Unpaced: calls of about 50 ms (the
    // time bound is checked between calls; when the receiving side is slow
    // the generator is slowed with it).
    let mut chunk: u64 = if rate > 0.0 { ((rate / 10.0) as u64).clamp(64, 1 << 20) } else { 1 << 14 };
    let cpu = FloodCpu::start()?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut calls = 0u64;
    while sent < frames && start.elapsed() < limit {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let n = chunk.min(frames - sent) as u32;
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN (live frames)")?;
        if rate <= 0.0 {
            let per_frame = t.elapsed().as_secs_f64() / f64::from(n.max(1));
            chunk = ((0.05 / per_frame.max(1e-9)) as u64).clamp(1024, 1 << 20);
        }
        sent += u64::from(n);
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_ns = cpu.ns()?;
    Ok(json!({
        "program": program, "frames": sent, "seconds": secs, "calls": calls,
        "mpps": sent as f64 / secs / 1e6, "frame_bytes": frame.len(),
        "cpu_ns": cpu_ns,
    }))
}

/// CPU time of this process plus the ksoftirqd threads since `start`,
/// exact to the nanosecond (the scheduler's runtime, not tick samples).
struct FloodCpu {
    ksoftirqd: Vec<u32>,
    at: u64,
}

impl FloodCpu {
    fn start() -> Result<Self> {
        let mut ksoftirqd = Vec::new();
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else { continue };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("ksoftirqd/") {
                ksoftirqd.push(pid);
            }
        }
        let mut cpu = FloodCpu { ksoftirqd, at: 0 };
        cpu.at = cpu.total()?;
        Ok(cpu)
    }

    fn ns(&self) -> Result<u64> {
        Ok(self.total()?.saturating_sub(self.at))
    }

    fn total(&self) -> Result<u64> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec to write to.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
            return Err(std::io::Error::last_os_error()).context("clock_gettime");
        }
        let mut ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        for pid in &self.ksoftirqd {
            // First field: time on the CPU in ns (/proc/PID/schedstat).
            let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
            ns += text.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        }
        Ok(ns)
    }
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name} in this network namespace");
    }
    Ok(idx)
}

fn mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    parts.try_into().map_err(|_| anyhow!("bad MAC {s:?}: 6 bytes expected"))
}

/// A 60-byte Ethernet frame (64 on the wire with the FCS): IPv4 and a TCP SYN
/// or a UDP datagram, with valid IP and L4 checksums, so conntrack and NAT
/// treat it as a real connection attempt.
fn flood_frame(opts: &Opts) -> Result<Vec<u8>> {
    let src_ip: std::net::Ipv4Addr = opts.str("src-ip")?.parse()?;
    let dst_ip: std::net::Ipv4Addr = opts.str("dst-ip")?.parse()?;
    let sport: u16 = opts.num("sport", 40000)?;
    let dport: u16 = opts.num("dport", BLOCKED_PORT)?;
    let (proto, mut l4) = match opts.str("proto")? {
        "tcp" => {
            let mut h = vec![0u8; TCP_HLEN];
            h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            h[12] = ((TCP_HLEN / 4) as u8) << 4;
            h[13] = TCP_SYN;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (IPPROTO_TCP, h)
        }
        "udp" => {
            let len = UDP_HLEN + 10; // 10 bytes of payload
            let mut h = vec![0u8; len];
            h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            (IPPROTO_UDP, h)
        }
        other => bail!("--proto tcp|udp, not {other}"),
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src_ip.octets());
    pseudo.extend_from_slice(&dst_ip.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let csum = checksum(&pseudo);
    let at = if proto == IPPROTO_TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());

    let mut ip = vec![0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IPV4_HLEN + l4.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src_ip.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = mac(opts.str("dst-mac")?)?.to_vec();
    f.extend_from_slice(&mac(opts.str("src-mac")?)?);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f.resize(60, 0);
    Ok(f)
}
