//! `cargo xtask bench`: dockblock against iptables, nftables and xdp-filter
//! on one topology (see topology.rs), with the same traffic, variants
//! interleaved round by round. Results go to bench/results/: results.md,
//! results.json and PNG plots (plot.py, matplotlib).
//!
//! Parts, in order: program cost (BPF_PROG_TEST_RUN), live-frames floods,
//! trafgen floods, legitimate traffic under attack, rule scaling and
//! control-plane install times. A part that fails is recorded as failed and
//! the next one runs; Ctrl-C stops after the current step and cleans up.
mod cmd;
mod flood;
mod legit;
mod program_cost;
mod report;
mod scaling;
mod swap;
mod topology;
mod variants;

use crate::{setup, util};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Cost,
    Live,
    Trafgen,
    Legit,
    Scaling,
    Swap,
}

#[derive(clap::Args)]
pub struct Options {
    /// Smoke run in under 3 minutes: 2 rounds, short floods, fewer points,
    /// no rule-scaling part.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of interleaved variants (default 5; 2 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Run only these parts (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Only these variants in the flood parts (comma-separated ids as in the
    /// report, e.g. v0,dockblock-xdp-native).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Assume `cargo xtask setup` already ran.
    #[arg(long)]
    pub skip_setup: bool,
    /// Results folder (default: bench/results in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Echo every command the bench runs.
    #[arg(long)]
    pub verbose: bool,
    /// Measure nothing: rewrite results.md and the plots from the
    /// results.json already in the results folder.
    #[arg(long)]
    pub render_only: bool,
}

/// Set by SIGINT/SIGTERM; checked between steps.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub struct Ctx {
    pub quick: bool,
    /// Variant ids to run (empty: all).
    pub variants: Vec<String>,
    pub rounds: usize,
    start: Instant,
}

impl Ctx {
    pub fn check_stop(&self) -> Result<()> {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    pub fn wants(&self, v: variants::Variant) -> bool {
        self.variants.is_empty() || self.variants.iter().any(|id| id == v.id())
    }

    pub fn log(&self, msg: &str) {
        println!("bench [{:>4.0}s]: {msg}", self.start.elapsed().as_secs_f64());
    }
}

pub fn agent_bin() -> PathBuf {
    util::target_dir().join("release/dockblock-agent")
}

pub fn bench_bin() -> PathBuf {
    util::target_dir().join("release/dockblock-bench")
}

pub fn run(opts: &Options) -> Result<()> {
    let out_dir = opts.out.clone().unwrap_or_else(|| util::workspace_root().join("bench/results"));
    if opts.render_only {
        let path = out_dir.join("results.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let results: Value = serde_json::from_str(&text).context("parsing results.json")?;
        let quick = results["environment"]["quick"].as_bool().unwrap_or(false);
        return report::write(&out_dir, &results, quick);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, XDP, iptables)");
    }
    cmd::set_verbose(opts.verbose);
    if !opts.skip_setup {
        setup::run(&setup::Options { no_docker: false })?;
    }
    util::run(&mut util::cargo(["build", "--release", "-p", "dockblock-agent", "--bin", "dockblock-agent"]))?;
    util::run(&mut util::cargo(["build", "--release", "-p", "dockblock-tests", "--bin", "dockblock-bench"]))?;

    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let ctx = Ctx {
        quick: opts.quick,
        variants: opts.variants.clone(),
        rounds: opts.rounds.unwrap_or(if opts.quick { 2 } else { 5 }),
        start: Instant::now(),
    };
    let want = |p: Part| opts.only.is_empty() || opts.only.contains(&p);
    let out_dir = opts.out.clone().unwrap_or_else(|| util::workspace_root().join("bench/results"));

    ctx.log("removing leftovers of earlier runs");
    topology::cleanup_leftovers();
    let docker_user_before = variants::docker_user_snapshot();
    let mut results = json!({
        "environment": environment(&ctx),
        "variants": variants::FLOOD.iter().map(|v| json!({"id": v.id(), "what": v.describe()})).collect::<Vec<_>>(),
        "parts": {},
    });

    let mut record = |name: &str, r: Result<Value>| match r {
        Ok(v) => results["parts"][name] = v,
        Err(e) => {
            eprintln!("bench: part {name} failed: {e:#}");
            results["parts"][name] = json!({"error": format!("{e:#}")});
        }
    };

    if want(Part::Cost) {
        ctx.log("program cost (BPF_PROG_TEST_RUN)");
        record("cost", program_cost::run(&ctx));
    }
    let flood_parts = [Part::Live, Part::Trafgen, Part::Legit, Part::Scaling, Part::Swap];
    if flood_parts.iter().any(|p| want(*p)) && ctx.check_stop().is_ok() {
        ctx.log("topology: outside namespace, veth uplink, Docker network, container");
        match topology::Topology::up() {
            Err(e) => record("topology", Err(e)),
            Ok(topo) => {
                let mut samples = Vec::new();
                if want(Part::Live) || want(Part::Trafgen) {
                    let r = floods(&ctx, &topo, want(Part::Live), want(Part::Trafgen), &mut samples);
                    record("floods", r.map(|()| json!({"samples": samples.clone()})));
                }
                if want(Part::Legit) && ctx.check_stop().is_ok() {
                    ctx.log("legitimate traffic under attack");
                    record("legit", legit::run(&ctx, &topo, &samples));
                }
                if want(Part::Scaling) && !ctx.quick && ctx.check_stop().is_ok() {
                    ctx.log("rule scaling and control plane");
                    record("scaling", scaling::run(&ctx, &topo));
                }
                if want(Part::Swap) && ctx.check_stop().is_ok() {
                    ctx.log("rule-set swaps under flood");
                    record("swap", swap::run(&ctx, &topo));
                }
                drop(topo);
            }
        }
    }
    topology::cleanup_leftovers();
    let docker_user_after = variants::docker_user_snapshot();
    results["environment"]["docker_user_intact"] = json!(docker_user_before == docker_user_after);
    results["environment"]["seconds"] = json!(ctx.start.elapsed().as_secs_f64());
    results["environment"]["loadavg_at_end"] =
        json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string());
    if docker_user_before != docker_user_after {
        eprintln!(
            "bench: WARNING: DOCKER-USER differs from before the run:\nbefore:\n{docker_user_before}\nafter:\n{docker_user_after}"
        );
    }
    report::write(&out_dir, &results, opts.quick)?;
    ctx.log(&format!("results in {}", out_dir.display()));
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted; partial results written");
    }
    Ok(())
}

/// Frames per second of the paced flood that measures CPU per packet.
pub const PACED_RATE: f64 = 200_000.0;

/// The flood comparison: every round runs every variant once, in the same
/// order, with every flood it takes.
fn floods(
    ctx: &Ctx,
    topo: &topology::Topology,
    live: bool,
    trafgen: bool,
    samples: &mut Vec<Value>,
) -> Result<()> {
    use flood::{Flood, Generator};
    let (lf_frames, lf_secs, tg_frames, tg_secs) =
        if ctx.quick { (2_000_000, 0.6, 600_000, 0.6) } else { (4_000_000, 1.0, 1_500_000, 1.0) };
    let mut plan: Vec<Flood> = Vec::new();
    let flows: &[bool] = if ctx.quick { &[true] } else { &[true, false] };
    if live {
        for &many in flows {
            for proto in ["tcp", "udp"] {
                plan.push(Flood {
                    many_flows: many,
                    ..Flood::new(Generator::Live, proto, lf_frames, lf_secs)
                });
            }
        }
    }
    if live {
        // CPU per packet at a rate every filter keeps up with (V0 does not:
        // without a filter each SYN reaches the container).
        let secs = if ctx.quick { 1.0 } else { 3.0 };
        let frames = (PACED_RATE * secs) as u64;
        plan.push(Flood { rate: PACED_RATE, ..Flood::new(Generator::Live, "tcp", frames, secs + 2.0) });
    }
    if trafgen {
        let protos: &[&'static str] = if ctx.quick { &["tcp"] } else { &["tcp", "udp"] };
        for &proto in protos {
            plan.push(Flood::new(Generator::Trafgen, proto, tg_frames, tg_secs));
        }
    }
    let target = variants::Blocked::target();
    for round in 1..=ctx.rounds {
        for v in variants::FLOOD.into_iter().filter(|v| ctx.wants(*v)) {
            ctx.check_stop()?;
            let floods: Vec<&Flood> = plan.iter().filter(|f| v.takes(f)).collect();
            if floods.is_empty() {
                continue;
            }
            let applied = variants::Applied::new(v, &target, &topo.container_ip)?;
            for f in floods {
                ctx.check_stop()?;
                let s = flood::measure(topo, v, f, round)
                    .with_context(|| format!("{} flood on {}", f.generator.id(), v.id()))?;
                let cpu = s["cpu_ns_per_packet"]
                    .as_f64()
                    .map_or(String::new(), |x| format!(", CPU {x:.0} ns/packet"));
                ctx.log(&format!(
                    "round {round}/{} {:<24} {:<11} {} {:<4} offered {:>6.3} received {:>6.3} filter-dropped {} Mpps{cpu}",
                    ctx.rounds,
                    v.id(),
                    f.generator.id(),
                    f.proto,
                    if f.many_flows { "many" } else { "one" },
                    s["offered_mpps"].as_f64().unwrap_or(0.0),
                    s["received_mpps"].as_f64().unwrap_or(0.0),
                    s["filter_dropped_mpps"]
                        .as_f64()
                        .map_or("-".to_string(), |x| format!("{x:.3}")),
                ));
                samples.push(s);
            }
            drop(applied);
            if let Some(left) = variants::leftovers() {
                bail!("{} left behind: {left}; stopping, later numbers would be wrong", v.id());
            }
        }
    }
    Ok(())
}

/// Kernel, CPU, iptables backend, JIT, and whether others share the box.
fn environment(ctx: &Ctx) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let out = |args: &[&str]| cmd::ok(args).unwrap_or_default().trim().to_string();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({
        "kernel": out(&["uname", "-r"]),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "iptables": out(&["iptables", "-V"]),
        "nft": out(&["nft", "--version"]),
        "xdp_filter": out(&["dpkg-query", "-W", "-f=${Version}", "xdp-tools"]),
        "netsniff_ng": out(&["dpkg-query", "-W", "-f=${Version}", "netsniff-ng"]),
        "bpf_jit_enable": read("/proc/sys/net/core/bpf_jit_enable"),
        "loadavg_at_start": read("/proc/loadavg"),
        "git_commit": out(&["git", "-C", util::workspace_root().to_str().unwrap_or("."), "rev-parse", "--short", "HEAD"]),
        "git_dirty": !out(&["git", "-C", util::workspace_root().to_str().unwrap_or("."), "status", "--porcelain"]).is_empty(),
        "quick": ctx.quick,
        "rounds": ctx.rounds,
        "date": out(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}
