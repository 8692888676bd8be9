//! `dockblock-bench cost`: BPF_PROG_TEST_RUN timings of the attached
//! judging programs and of the floor programs.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{loaded_programs, Program, ProgramInfo},
    Ebpf,
};
use dockblock_common::net::{ETH_P_8021Q, ETH_P_ARP, TCP_ACK};
use dockblock_packet::Packet;
use serde_json::{json, Value};

use super::{Opts, BENCH_OBJECT};
use crate::world::{ALLOWED_PORT, BLOCKED_PORT};

/// Source inside the allow-list the bench's allow-list rule sets carry
/// (203.0.113.0/24, see parts/cost.rs); the builder's default source
/// (198.18.0.2) is outside.
const ALLOWLISTED_SRC: &str = "203.0.113.9";

use dockblock_common::retval::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS};

/// Cost of each packet kind on each attached program, median of `--rounds`
/// runs of `--repeat` repetitions.
pub fn run(opts: &Opts) -> Result<Value> {
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
    let mut ebpf = Ebpf::load(BENCH_OBJECT).context("load the bench object")?;
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
        ("xdp", XDP_DROP) => "drop".into(),
        ("xdp", XDP_PASS) => "pass".into(),
        ("tc", TC_ACT_SHOT) => "drop".into(),
        ("tc", TC_ACT_UNSPEC | TC_ACT_OK) => "pass".into(),
        (_, other) => format!("ret {other}"),
    }
}

/// The packet kinds the cost table shows, named as in the report.
fn cost_packets() -> Vec<(&'static str, Vec<u8>)> {
    let syn = Packet::syn(BLOCKED_PORT);
    vec![
        ("tcp_syn_blocked", syn.build()),
        ("tcp_syn_allowed", Packet::syn(ALLOWED_PORT).build()),
        ("tcp_syn_blocked_from_allowlisted_src", syn.clone().src(ALLOWLISTED_SRC).build()),
        ("tcp_ack_blocked_port", Packet::tcp(BLOCKED_PORT, TCP_ACK).build()),
        ("udp_blocked", Packet::udp(BLOCKED_PORT).build()),
        ("udp_allowed", Packet::udp(ALLOWED_PORT).build()),
        ("ipv6_tcp_syn_blocked", syn.clone().v6().build()),
        ("ipv6_udp_blocked", Packet::udp(BLOCKED_PORT).v6().build()),
        ("vlan_tcp_syn_blocked", syn.clone().vlan(ETH_P_8021Q, 100).build()),
        ("ipv4_first_fragment_blocked", syn.clone().fragment(0, true).build()),
        ("ipv4_later_fragment", syn.clone().fragment(185, false).build()),
        ("truncated_tcp_header", syn.build()[..40].to_vec()),
        ("arp", Packet::syn(1).ether_type(ETH_P_ARP).build()),
    ]
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
