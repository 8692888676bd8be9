//! `dockblock-bench run` (what `cargo xtask bench` runs): dockblock against
//! iptables, nftables and xdp-filter on one topology (world.rs), with the
//! same traffic, variants interleaved round by round. Results go to
//! bench/results/: results.md, results.json and PNG plots (plot.py,
//! matplotlib).
//!
//! Parts, in order: program cost (BPF_PROG_TEST_RUN), a 65,535-rule
//! `apply`, live-frames floods, trafgen floods, legitimate traffic under
//! attack, rule scaling and control-plane install times, rule-set swaps. A
//! part that fails is recorded as failed and the next one runs; Ctrl-C stops
//! after the current step and cleans up.
use crate::{
    docker,
    parts::{self, Ctx, STOP},
    peers, report, world,
};
use anyhow::{bail, Context, Result};
use dockblock_testkit::cmd;
use serde_json::{json, Value};
use std::{path::PathBuf, sync::atomic::Ordering, time::Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Cost,
    Apply,
    Live,
    Trafgen,
    Legit,
    Scaling,
    Swap,
    /// The Docker suite (the daemon following the engine), alone: same as
    /// `--docker`.
    Docker,
}

#[derive(clap::Args)]
pub struct Options {
    /// Smoke run in under 4 minutes: 2 rounds, short floods, fewer points,
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
    /// Results folder (default: bench/results in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The Docker suite instead of the filter comparison: the daemon
    /// following the engine (`docker run` to rule in force, event-to-kernel
    /// latency under churn, throughput through its hooks, the
    /// container-rule flood, its CPU and memory); results in
    /// bench/results/docker.md and docker.json. Takes `--quick`.
    #[arg(long)]
    pub docker: bool,
    /// Echo every command the bench runs.
    #[arg(long)]
    pub verbose: bool,
    /// Measure nothing: rewrite results.md and the plots from the
    /// results.json already in the results folder.
    #[arg(long)]
    pub render_only: bool,
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The workspace root (this crate lives one level below it), fixed at
/// compile time like xtask's.
fn workspace_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}

/// Everything any run creates, removed whether or not it exists: peers'
/// rules and programs, parts' leftovers, then the world.
fn cleanup_all() {
    parts::remove_all();
    world::remove_leftovers();
}

pub fn run(opts: &Options) -> Result<()> {
    let out_dir = opts.out.clone().unwrap_or_else(|| workspace_root().join("bench/results"));
    let docker_suite = opts.docker || opts.only.contains(&Part::Docker);
    if docker_suite && opts.only.iter().any(|p| *p != Part::Docker) {
        bail!("the Docker suite (--docker, --only docker) runs alone: leave the other parts out");
    }
    if opts.render_only && docker_suite {
        let path = out_dir.join("docker.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let results: Value = serde_json::from_str(&text).context("parsing docker.json")?;
        return docker::report::write(&out_dir, &results);
    }
    if opts.render_only {
        let path = out_dir.join("results.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let results: Value = serde_json::from_str(&text).context("parsing results.json")?;
        let quick = results["environment"]["quick"].as_bool().unwrap_or(false);
        return report::write(&out_dir, &results, quick);
    }
    if !cmd::is_root() {
        bail!("the benchmark needs root (network namespaces, XDP, iptables)");
    }
    cmd::set_verbose(opts.verbose);
    world::use_bench_config()?;
    let agent = world::agent_bin();
    if !agent.is_file() {
        bail!("no agent at {}: build it (`cargo build --release -p dockblock-agent`) or set DOCKBLOCK_AGENT_BIN", agent.display());
    }

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

    ctx.log("removing leftovers of earlier runs");
    cleanup_all();
    if docker_suite {
        return run_docker(&ctx, &out_dir);
    }
    let docker_user_before = peers::docker_user_snapshot();
    let mut results = json!({
        "environment": environment(&ctx),
        "variants": peers::FLOOD.iter().map(|v| json!({"id": v.id(), "what": v.describe()})).collect::<Vec<_>>(),
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
        record("cost", parts::cost::run(&ctx));
    }
    if want(Part::Apply) && ctx.check_stop().is_ok() {
        ctx.log(&format!("apply of {} rules at once", parts::apply::RULES));
        record("apply", parts::apply::run(&ctx));
    }
    let flood_parts = [Part::Live, Part::Trafgen, Part::Legit, Part::Scaling, Part::Swap];
    if flood_parts.iter().any(|p| want(*p)) && ctx.check_stop().is_ok() {
        ctx.log("topology: outside namespace, veth uplink, Docker network, container");
        match world::Topology::up() {
            Err(e) => record("topology", Err(e)),
            Ok(topo) => {
                let mut samples = Vec::new();
                if want(Part::Live) || want(Part::Trafgen) {
                    let r =
                        parts::floods::run(&ctx, &topo, want(Part::Live), want(Part::Trafgen), &mut samples);
                    record("floods", r.map(|()| json!({"samples": samples.clone()})));
                }
                if want(Part::Legit) && ctx.check_stop().is_ok() {
                    ctx.log("legitimate traffic under attack");
                    record("legit", parts::legit::run(&ctx, &topo, &samples));
                }
                if want(Part::Scaling) && !ctx.quick && ctx.check_stop().is_ok() {
                    ctx.log("rule scaling and control plane");
                    record("scaling", parts::scaling::run(&ctx, &topo));
                }
                if want(Part::Swap) && ctx.check_stop().is_ok() {
                    ctx.log("rule-set swaps under flood");
                    record("swap", parts::swap::run(&ctx, &topo));
                }
                // Peers first: xdp-filter unloads from the uplink while it exists.
                parts::remove_all();
                drop(topo);
            }
        }
    }
    cleanup_all();
    let docker_user_after = peers::docker_user_snapshot();
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

/// The Docker suite alone (docker/): its own results files.
fn run_docker(ctx: &Ctx, out_dir: &std::path::Path) -> Result<()> {
    let docker_user_before = peers::docker_user_snapshot();
    let mut results = json!({ "environment": environment(ctx), "parts": {} });
    results["environment"]["docker"] =
        json!(cmd::ok(&["docker", "version", "-f", "{{.Server.Version}}"]).unwrap_or_default().trim());
    let mut part = json!({});
    let r = docker::run(ctx, &mut part);
    cleanup_all();
    if let Err(e) = r {
        eprintln!("bench: the Docker suite failed: {e:#}");
        part["error"] = json!(format!("{e:#}"));
    }
    results["parts"]["docker"] = part;
    let docker_user_after = peers::docker_user_snapshot();
    results["environment"]["docker_user_intact"] = json!(docker_user_before == docker_user_after);
    results["environment"]["seconds"] = json!(ctx.start.elapsed().as_secs_f64());
    results["environment"]["loadavg_at_end"] =
        json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string());
    docker::report::write(out_dir, &results)?;
    ctx.log(&format!("results in {}", out_dir.join("docker.md").display()));
    if results["parts"]["docker"]["error"].is_string() {
        bail!("the Docker suite failed; what it measured is in docker.json");
    }
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted; partial results written");
    }
    Ok(())
}

/// Kernel, CPU, iptables backend, JIT, and whether others share the box.
fn environment(ctx: &Ctx) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let out = |args: &[&str]| cmd::ok(args).unwrap_or_default().trim().to_string();
    let root = workspace_root().to_string_lossy().into_owned();
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
        "git_commit": out(&["git", "-C", &root, "rev-parse", "--short", "HEAD"]),
        "git_dirty": !out(&["git", "-C", &root, "status", "--porcelain"]).is_empty(),
        "quick": ctx.quick,
        "rounds": ctx.rounds,
        "date": out(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}
