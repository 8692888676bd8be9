//! The parts of `cargo xtask bench` that need aya; xtask itself depends on no
//! workspace crate, so it runs this binary and reads the JSON it prints.
//!
//! - `cost`: per-packet cost of the *attached* dockblock programs (found by
//!   program id, as `dockblock-agent status --json` reports them), measured
//!   with BPF_PROG_TEST_RUN and `repeat`, plus their instruction and JIT
//!   sizes. Rules are whatever the CLI installed: nothing here writes maps.
//! - `flood`: a live-frames traffic generator. Loads `bench_tx` (or
//!   `bench_tx_flows`, random source ports) and runs it with
//!   BPF_PROG_TEST_RUN in live-frames mode; every XDP_TX leaves through
//!   `--ifname`, so run it inside the namespace that owns that interface
//!   (`ip netns exec NS dockblock-bench flood ...`).
//! - `latency`: short HTTP/1.0 requests one after another, timing each.
//!
//! Arguments are `--key value` pairs; output is one JSON object on stdout.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        links::FdLink, loaded_programs, Program, ProgramInfo, TestRun, TestRunAttrs, TestRunOptions, Xdp,
        XdpMode,
    },
    Ebpf, EbpfLoader,
};
use dockblock_tests::packet::{checksum, Packet, ACK, ETH_P_8021Q, ETH_P_ARP, IPPROTO_TCP, IPPROTO_UDP};
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("dockblock-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let verb = args.next().unwrap_or_default();
    let opts = Opts::parse(args)?;
    let out = match verb.as_str() {
        "cost" => cost(&opts)?,
        "flood" => flood(&opts)?,
        "latency" => latency(&opts)?,
        "drop-all" => drop_all(&opts)?,
        _ => bail!("usage: dockblock-bench cost|flood|latency|drop-all --key value ..."),
    };
    println!("{out}");
    Ok(())
}

/// `--key value` pairs.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut map = HashMap::new();
        while let Some(key) = args.next() {
            let key =
                key.strip_prefix("--").ok_or_else(|| anyhow!("expected --key, got {key:?}"))?.to_string();
            let value = args.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
            map.insert(key, value);
        }
        Ok(Self(map))
    }

    fn str(&self, key: &str) -> Result<&str> {
        self.0.get(key).map(String::as_str).ok_or_else(|| anyhow!("--{key} is required"))
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow!("--{key}: bad number {v:?}")),
        }
    }
}

// ---------------------------------------------------------------- cost

/// Port every rule set blocks; the "allowed" packets use `ALLOWED_PORT`.
const BLOCKED_PORT: u16 = 18080;
const ALLOWED_PORT: u16 = 18081;
/// Source inside the allow-list the bench's allow-list rule sets carry
/// (203.0.113.0/24); the builder's default source (198.18.0.2) is outside.
const ALLOWLISTED_SRC: [u8; 4] = [203, 0, 113, 9];

/// Cost of each packet kind on each attached program, median of `--rounds`
/// runs of `--repeat` repetitions.
fn cost(opts: &Opts) -> Result<Value> {
    let repeat: u32 = opts.num("repeat", 1_000_000)?;
    let rounds: usize = opts.num("rounds", 5)?;
    let mut programs = serde_json::Map::new();
    let mut results = Vec::new();
    for hook in ["xdp", "tc"] {
        let id: u32 = opts.num(&format!("{hook}-id"), 0)?;
        if id == 0 {
            continue;
        }
        let info = program_by_id(id)?;
        programs.insert(hook.into(), program_sizes(&info));
        let fd = info.fd().context("program fd")?;
        for (name, frame) in cost_packets() {
            let (retval, ns) = timed_runs(fd.as_fd().as_raw_fd(), &frame, hook, repeat, rounds)
                .with_context(|| format!("test run of {name} on {hook}"))?;
            results.push(json!({
                "hook": hook, "packet": name, "bytes": frame.len(),
                "verdict": verdict_name(hook, retval), "ns": ns,
            }));
        }
    }
    // The floor: programs that return at once, run the same way.
    let mut ebpf = Ebpf::load(dockblock_agent::BENCH_TX_OBJECT).context("load bench_tx")?;
    let mut floor = serde_json::Map::new();
    for (hook, name) in [("xdp", "floor_xdp"), ("tc", "floor_tc")] {
        let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?;
        match prog {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            _ => bail!("{name}: unexpected program type"),
        }
        .with_context(|| format!("load {name}"))?;
        let fd = prog.fd().with_context(|| format!("{name} fd"))?;
        let frame = Packet::syn(BLOCKED_PORT).build();
        let (_, ns) = timed_runs(fd.as_fd().as_raw_fd(), &frame, hook, repeat, rounds)
            .with_context(|| format!("test run of {name}"))?;
        floor.insert(hook.into(), json!({"program": name, "ns": ns}));
    }
    Ok(json!({"repeat": repeat, "programs": programs, "packets": results, "floor": floor}))
}

fn verdict_name(hook: &str, ret: u32) -> String {
    match (hook, ret) {
        ("xdp", 1) => "drop".into(),
        ("xdp", 2) => "pass".into(),
        ("tc", 2) => "drop".into(),
        ("tc", u32::MAX) | ("tc", 0) => "pass".into(),
        (_, other) => format!("ret {other}"),
    }
}

/// The packet kinds the cost table shows, named as in the report.
fn cost_packets() -> Vec<(&'static str, Vec<u8>)> {
    let syn = Packet::syn(BLOCKED_PORT).build();
    vec![
        ("tcp_syn_blocked", syn.clone()),
        ("tcp_syn_allowed", Packet::syn(ALLOWED_PORT).build()),
        ("tcp_syn_blocked_from_allowlisted_src", with_src(&syn, ALLOWLISTED_SRC)),
        ("tcp_ack_blocked_port", Packet::tcp(BLOCKED_PORT, ACK).build()),
        ("udp_blocked", Packet::udp(BLOCKED_PORT).build()),
        ("udp_allowed", Packet::udp(ALLOWED_PORT).build()),
        ("ipv6_tcp_syn_blocked", ipv6(IPPROTO_TCP, BLOCKED_PORT)),
        ("ipv6_udp_blocked", ipv6(IPPROTO_UDP, BLOCKED_PORT)),
        ("vlan_tcp_syn_blocked", vlan(&syn)),
        ("ipv4_first_fragment_blocked", Packet::syn(BLOCKED_PORT).fragment(0, true).build()),
        ("ipv4_later_fragment", Packet::syn(BLOCKED_PORT).fragment(185, false).build()),
        ("truncated_tcp_header", syn[..40].to_vec()),
        ("arp", Packet::syn(1).ether_type(ETH_P_ARP).build()),
    ]
}

/// The same IPv4 frame from another source address (header checksum fixed).
fn with_src(frame: &[u8], src: [u8; 4]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[26..30].copy_from_slice(&src);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// An 802.1Q tag (VLAN 100) inserted after the MAC addresses.
fn vlan(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    out.extend_from_slice(&100u16.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Ethernet + IPv6 (2001:db8::2 -> 2001:db8::1) + a TCP SYN or UDP header.
fn ipv6(proto: u8, dport: u16) -> Vec<u8> {
    let mut l4 = if proto == IPPROTO_TCP {
        let mut h = vec![0u8; 20];
        h[12] = 5 << 4;
        h[13] = dockblock_tests::packet::SYN;
        h
    } else {
        let mut h = vec![0u8; 8];
        h[4..6].copy_from_slice(&8u16.to_be_bytes());
        h
    };
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    let mut dst = src;
    src[15] = 2;
    dst[15] = 1;
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&l4);
    f
}

fn program_by_id(id: u32) -> Result<ProgramInfo> {
    for info in loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if info.id() == id {
            return Ok(info);
        }
    }
    bail!("no loaded BPF program with id {id}")
}

fn program_sizes(info: &ProgramInfo) -> Value {
    let xlated = info.size_translated().unwrap_or(0);
    json!({
        "id": info.id(),
        "name": info.name_as_str(),
        "xlated_bytes": xlated,
        "xlated_insns": xlated / 8,
        "jited_bytes": info.size_jitted(),
        "verified_insns": info.verified_instruction_count(),
    })
}

/// `rounds` test runs of `repeat` repetitions each on a program of `hook`:
/// the last return value and the average ns per repetition of each round.
fn timed_runs(prog_fd: i32, frame: &[u8], hook: &str, repeat: u32, rounds: usize) -> Result<(u32, Vec<u64>)> {
    let mut retval = 0;
    let mut ns = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (r, t) = raw_test_run(prog_fd, frame, ctx_for(hook), repeat)?;
        retval = r;
        ns.push(t);
    }
    Ok((retval, ns))
}

/// The context a run starts from. TC: a `struct __sk_buff` prefix (40
/// bytes, up to `ifindex`) whose `ingress_ifindex` is non-zero, as on a
/// packet forwarded into the bridge; without it the packet looks sent by the
/// host itself, which the TC program passes unjudged by default. XDP: none
/// (the kernel's default context).
fn ctx_for(hook: &str) -> Option<Vec<u8>> {
    (hook == "tc").then(|| {
        let mut ctx = vec![0u8; 40];
        ctx[36..40].copy_from_slice(&1u32.to_ne_bytes()); // ingress_ifindex
        ctx
    })
}

/// `union bpf_attr`, BPF_PROG_TEST_RUN member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// BPF_PROG_TEST_RUN on a program fd: aya 0.14 cannot wrap an XDP program it
/// did not load without aya-obj's attach type, so this is the raw syscall.
/// Returns (return value, average ns per run).
fn raw_test_run(prog_fd: i32, data: &[u8], ctx: Option<Vec<u8>>, repeat: u32) -> Result<(u32, u64)> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    if let Some(ctx) = &ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; data and
    // ctx outlive the call; no output buffers are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok((attr.retval, u64::from(attr.duration)))
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into()?;
    prog.load().with_context(|| format!("load {name}"))?;
    Ok(prog)
}

/// Attaches `drop_all` (native XDP) to `--ifname` through a bpf_link pinned
/// at `--pin`: it stays after this process exits, and removing the pin
/// detaches it.
fn drop_all(opts: &Opts) -> Result<Value> {
    let (ifname, pin) = (opts.str("ifname")?, opts.str("pin")?);
    let mut ebpf = Ebpf::load(dockblock_agent::BENCH_TX_OBJECT).context("load bench_tx")?;
    let prog = xdp(&mut ebpf, "drop_all")?;
    let id = prog.attach(ifname, XdpMode::Driver).with_context(|| format!("attach drop_all to {ifname}"))?;
    let link = FdLink::try_from(prog.take_link(id)?).context("drop_all link is not a bpf_link")?;
    link.pin(pin).with_context(|| format!("pin drop_all link at {pin}"))?;
    Ok(json!({"attached": ifname, "pin": pin}))
}

// ---------------------------------------------------------------- flood

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
fn flood(opts: &Opts) -> Result<Value> {
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
    // dockblock-ebpf/src/bin/bench_tx.rs for why).
    let words: [u32; 15] =
        std::array::from_fn(|i| u32::from_ne_bytes(frame[i * 4..i * 4 + 4].try_into().expect("4 bytes")));
    let span: u32 = opts.num("dport-span", 0)?;
    let mut ebpf = EbpfLoader::new()
        .override_global("FRAME", &words, true)
        .override_global("DPORT_SPAN", &span, true)
        .load(dockblock_agent::BENCH_TX_OBJECT)
        .context("load bench_tx")?;
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
            let mut h = vec![0u8; 20];
            h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = dockblock_tests::packet::SYN;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (IPPROTO_TCP, h)
        }
        "udp" => {
            let mut h = vec![0u8; 18]; // 8-byte header + 10 bytes of payload
            h[4..6].copy_from_slice(&18u16.to_be_bytes());
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

    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src_ip.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = mac(opts.str("dst-mac")?)?.to_vec();
    f.extend_from_slice(&mac(opts.str("src-mac")?)?);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f.resize(60, 0);
    Ok(f)
}

// ---------------------------------------------------------------- latency

/// `--count` HTTP/1.0 GETs to `--addr`, one after another, each bounded by
/// `--timeout-ms`, for at most `--seconds`. A request that fails or times
/// out counts as a failure and is left out of the percentiles.
fn latency(opts: &Opts) -> Result<Value> {
    let addr: SocketAddr = opts.str("addr")?.parse()?;
    let count: usize = opts.num("count", 200)?;
    let timeout = Duration::from_millis(opts.num("timeout-ms", 1000)?);
    let limit = Duration::from_secs_f64(opts.num("seconds", 10.0)?);
    let start = Instant::now();
    let mut samples = Vec::with_capacity(count);
    let mut failures = 0usize;
    for _ in 0..count {
        if start.elapsed() > limit {
            break;
        }
        let t = Instant::now();
        match request(addr, timeout) {
            Ok(()) => samples.push(t.elapsed().as_secs_f64() * 1e6),
            Err(_) => failures += 1,
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Value {
        if samples.is_empty() {
            return Value::Null;
        }
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        json!(samples[i])
    };
    Ok(json!({
        "ok": samples.len(), "failures": failures,
        "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": pct(1.0),
    }))
}

fn request(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.") {
        bail!("not an HTTP response");
    }
    Ok(())
}
