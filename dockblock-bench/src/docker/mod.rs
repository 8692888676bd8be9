//! The Docker suite (`dockblock-bench run --docker`, `cargo xtask bench
//! --docker`): the daemon, `dockblock-agent run`, following a real engine,
//! on the bench's world (world.rs) plus containers of its own. Results go
//! to bench/results/docker.json and docker.md, apart from the filter
//! comparison's results.md.
//!
//! In one run, in this order:
//! 1. no daemon: allowed throughput into the container (iperf3), and the
//!    container-rule flood against no filter, DOCKER-USER and dockblock's
//!    bridge TC alone (datapath.rs);
//! 2. the daemon started (`run dbbu0`, release build unless
//!    `DOCKBLOCK_AGENT_BIN` names another): its idle CPU and memory
//!    (usage.rs), then `block --container` on the world's container and the
//!    same throughput and flood through its hooks and derived XDP rule;
//!    then `docker run` to the rule in force (start.rs) and the churn
//!    (churn.rs), the daemon's CPU and memory measured over it;
//! 3. the bridge and veth hooks against none, in interleaved pairs
//!    ([`hooks_against_none`]); the daemon as a service (service.rs);
//! 4. the daemon stopped and detached, the no-daemon throughput again (so
//!    the comparison brackets the daemon's).
//!
//! Everything it makes is named `dockblock-bench-*` and labelled
//! [`LABEL`]; it is removed at the start and the end of a run, also after
//! a failure or Ctrl-C (guards), and a daemon a killed run left behind
//! (only one running on the bench's own pin folder) is stopped at the start.
pub mod churn;
pub mod datapath;
pub mod kernel;
pub mod report;
pub mod service;
pub mod start;
pub mod usage;

use crate::{
    parts::Ctx,
    peers::{self, Variant},
    world::{self, Topology, CONTAINER, HOST_IF, HOST_IP, NETWORK, PIN_DIR},
};
use anyhow::{bail, Context, Result};
use datapath::Blocker;
use dockblock_testkit::{cmd, daemon::Daemon, docker};
use serde_json::{json, Value};
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

/// Label on every container the suite makes, for its cleanup.
pub const LABEL: &str = "dockblock-bench.docker";
/// Label of the churn's containers (what `docker events` follows).
pub const CHURN_LABEL: &str = "dockblock-bench.churn";
/// Where the daemon and the CLI write their saved rule set during the run
/// (not the machine's /var/lib/dockblock).
const STATE_DIR: &str = "/run/dockblock-bench-state";

/// How long and how much of everything.
pub struct Plan {
    pub throughput_runs: usize,
    pub throughput_secs: u32,
    /// Interleaved hooks-against-none pairs: the hooks cost less than the
    /// runs' spread, so the median of many pairs.
    pub ab_pairs: usize,
    /// Runs with the hooks and the kernel's run-time count on, after the
    /// pairs (the count costs the programs two clock reads a run, so the
    /// pairs' hooks run without it).
    pub stats_runs: usize,
    pub flood_rounds: usize,
    pub flood_rate: f64,
    pub flood_secs: f64,
    pub idle_secs: u64,
    pub starts_per_kind: usize,
    pub churn_containers: usize,
    pub churn_limit: Duration,
    pub service_rules: usize,
    pub service_containers: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                throughput_runs: 2,
                throughput_secs: 2,
                ab_pairs: 2,
                stats_runs: 1,
                flood_rounds: 1,
                flood_rate: 200_000.0,
                flood_secs: 2.0,
                idle_secs: 10,
                starts_per_kind: 5,
                churn_containers: 20,
                churn_limit: Duration::from_secs(60),
                service_rules: 100,
                service_containers: 10,
            }
        } else {
            Plan {
                throughput_runs: 5,
                throughput_secs: 3,
                ab_pairs: 15,
                stats_runs: 5,
                flood_rounds: 3,
                flood_rate: 200_000.0,
                flood_secs: 4.0,
                idle_secs: 30,
                starts_per_kind: 20,
                churn_containers: 200,
                churn_limit: Duration::from_secs(420),
                service_rules: 1000,
                service_containers: 100,
            }
        }
    }
}

/// The containers the suite starts: a kind of rule made before the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The container's own `dockblock.block=80/tcp` label.
    Labelled,
    /// `block --container dockblock-bench-named 80/tcp`, made before.
    Named,
    /// The churn's containers (labelled like `Labelled`).
    Churn,
}

impl Kind {
    pub fn id(self) -> &'static str {
        match self {
            Kind::Labelled => "label",
            Kind::Named => "container",
            Kind::Churn => "churn",
        }
    }

    /// Its container's name (the churn's: a prefix).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Labelled => "dockblock-bench-labelled",
            Kind::Named => "dockblock-bench-named",
            Kind::Churn => "dockblock-bench-churn-",
        }
    }
}

/// `docker run`/`create` arguments (after `-d`) of a started container:
/// on the bench's network, publishing `host_port` on the uplink's address
/// to its port 80.
pub fn container_args(kind: Kind, host_port: u16, command: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--name".into(), kind.name().into(), "--network".into(), NETWORK.into()];
    a.extend(["-l".into(), format!("{LABEL}=1")]);
    if kind == Kind::Labelled {
        a.extend(["-l".into(), "dockblock.block=80/tcp".into()]);
    }
    a.extend(["-p".into(), format!("{HOST_IP}:{host_port}:80/tcp")]);
    a.push(docker::IMAGE.into());
    a.extend(command.iter().map(|s| s.to_string()));
    a
}

/// A churn container: labelled `dockblock.block=80/tcp`, publishing port
/// 80 on a host port the engine picks.
pub fn churn_args(name: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["--name".into(), name.into(), "--network".into(), NETWORK.into()];
    for l in [format!("{LABEL}=1"), format!("{CHURN_LABEL}=1"), "dockblock.block=80/tcp".into()] {
        a.extend(["-l".into(), l]);
    }
    a.extend(["-p".into(), format!("{HOST_IP}::80/tcp")]);
    a.extend([docker::IMAGE.into(), "sleep".into(), "3600".into()]);
    a
}

pub fn agent_ok(args: &[&str]) -> Result<String> {
    world::agent_ok(args)
}

/// What the measurements need while the daemon runs.
pub struct Run {
    pub tables: kernel::Tables,
    pub daemon_pid: u32,
}

/// Removes what any run of the suite left: its containers, a daemon of
/// the bench's pin folder, the agent's pins, the state folder. (The world
/// and the peers clean up through run.rs's `cleanup_all`.)
pub fn remove_leftovers() {
    let filter = format!("label={LABEL}");
    if let Ok(ids) = cmd::ok(&["docker", "ps", "-aq", "--filter", &filter]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["docker", "rm", "-f"];
            args.extend(ids);
            cmd::ignore(&args);
        }
    }
    for pid in bench_daemons() {
        // SAFETY: plain kill(2) of a pid that runs our agent on our pin folder.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    world::detach_agent();
    let _ = fs::remove_dir_all(STATE_DIR);
}

/// Command lines of every process, by pid.
fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into())
                .collect();
            Some((pid, args))
        })
        .collect()
}

fn is_daemon(args: &[String]) -> bool {
    args.first().is_some_and(|a| a.ends_with("dockblock-agent")) && args.iter().any(|a| a == "run")
}

/// Daemons running on the bench's pin folder (a killed run's).
fn bench_daemons() -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, a)| is_daemon(a) && a.windows(2).any(|w| w[0] == "--pin-dir" && w[1] == PIN_DIR))
        .map(|(pid, _)| pid)
        .collect()
}

/// Other dockblock daemons on the host: each hooks every container veth
/// too, so they would be measured with ours.
fn other_daemons() -> Vec<String> {
    processes()
        .into_iter()
        .filter(|(_, a)| is_daemon(a))
        .map(|(pid, a)| format!("{pid}: {}", a.join(" ")))
        .collect()
}

/// Removes the suite's leftovers when dropped (also on an error or a panic).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_leftovers();
    }
}

/// The whole suite, into `out` (also what was measured before a failure).
pub fn run(ctx: &Ctx, out: &mut Value) -> Result<()> {
    let (mut tput, mut floods) = (Vec::new(), Vec::new());
    let r = measure(ctx, out, &mut tput, &mut floods);
    out["throughput"] = json!(tput);
    out["floods"] = json!(floods);
    r
}

fn measure(ctx: &Ctx, out: &mut Value, tput: &mut Vec<Value>, floods: &mut Vec<Value>) -> Result<()> {
    let plan = Plan::new(ctx.quick);
    remove_leftovers();
    let _cleanup = Cleanup;
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    // Inherited by the daemon and every CLI call (single-threaded here).
    std::env::set_var("DOCKBLOCK_STATE_DIR", STATE_DIR);
    let others = other_daemons();
    if !others.is_empty() {
        ctx.log(&format!("WARNING: other dockblock daemons run and hook every veth too: {others:?}"));
    }
    *out = json!({ "other_daemons": others, "agent": world::agent_bin().display().to_string(), "plan": {
        "throughput_runs": plan.throughput_runs, "throughput_secs": plan.throughput_secs,
        "ab_pairs": plan.ab_pairs, "stats_runs": plan.stats_runs,
        "flood_rounds": plan.flood_rounds, "flood_rate_pps": plan.flood_rate, "flood_secs": plan.flood_secs,
        "idle_secs": plan.idle_secs, "starts_per_kind": plan.starts_per_kind,
        "churn_containers": plan.churn_containers, "churn_limit_secs": plan.churn_limit.as_secs(),
    }});

    ctx.log("docker: topology (outside namespace, uplink, network, container with iperf3)");
    let topo = Topology::up()?;

    ctx.log("docker: no daemon: throughput and floods");
    throughput_runs(ctx, &plan, "none", "before", tput)?;
    for round in 1..=plan.flood_rounds {
        for b in [Blocker::Nothing, Blocker::DockerUser, Blocker::BridgeTc] {
            ctx.check_stop()?;
            let applied = match b {
                Blocker::DockerUser => {
                    Some(peers::Applied::new(Variant::IptUser, &target(), &topo.container_ip)?)
                }
                Blocker::BridgeTc => Some(peers::Applied::new(Variant::DbTc, &target(), &topo.container_ip)?),
                _ => None,
            };
            let s = datapath::flood(&topo, b, plan.flood_rate, plan.flood_secs, round)?;
            log_flood(ctx, &s);
            floods.push(s);
            drop(applied);
            if let Some(left) = crate::parts::leftovers() {
                bail!("{} left behind: {left}", b.id());
            }
        }
    }

    ctx.log(&format!("docker: daemon start ({} {HOST_IF})", world::agent_bin().display()));
    let t = Instant::now();
    let bin = world::agent_bin();
    let mut daemon = Daemon::start_env(&bin, PIN_DIR, &[HOST_IF], &[("RUST_LOG", "info")])
        .context("starting the daemon")?;
    let ready_secs = t.elapsed().as_secs_f64();
    let r = Run { tables: kernel::Tables::open(PIN_DIR)?, daemon_pid: daemon.pid() };
    let result = (|| -> Result<()> {
        ctx.log(&format!("docker: daemon ready in {ready_secs:.1} s; idle {} s", plan.idle_secs));
        // Settle: the first syncs and the veth hooks of running containers.
        std::thread::sleep(Duration::from_secs(2));
        let idle = usage::ProcessWindow::start(r.daemon_pid)?;
        sleep_checked(ctx, Duration::from_secs(plan.idle_secs))?;
        let idle = idle.finish()?;
        ctx.log(&format!(
            "docker: idle daemon {:.3}% of a core, VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            idle["cpu_pct_of_one_core"].as_f64().unwrap_or(f64::NAN),
            idle["vm_rss_mib"].as_f64().unwrap_or(f64::NAN),
            idle["vm_hwm_mib"].as_f64().unwrap_or(f64::NAN),
        ));
        out["daemon"] = json!({ "ready_secs": ready_secs, "idle": idle });

        let port = format!("{}/tcp", world::BLOCKED_CPORT);
        agent_ok(&["block", "--container", CONTAINER, &port])?;
        wait_web_ruled(&r)?;
        throughput_runs(ctx, &plan, "daemon", "during", tput)?;
        for round in 1..=plan.flood_rounds {
            ctx.check_stop()?;
            let s = datapath::flood(
                &topo,
                Blocker::DaemonContainerRule,
                plan.flood_rate,
                plan.flood_secs,
                round,
            )?;
            log_flood(ctx, &s);
            floods.push(s);
        }
        agent_ok(&["unblock", "--container", CONTAINER, &port])?;

        ctx.log("docker: docker run -> rule in force");
        out["start"] = start::run(ctx, &r, plan.starts_per_kind)?;
        ctx.log(&format!("docker: churn of {} containers", plan.churn_containers));
        out["churn"] = churn::run(ctx, &r, plan.churn_containers, plan.churn_limit)?;
        out["daemon"]["end"] = usage::memory(r.daemon_pid)?;
        Ok(())
    })();
    let log_tail = daemon.log_tail();
    let status = daemon.stop();
    drop(r);
    world::detach_agent();
    out["daemon"]["exit"] = json!(status.map(|s| s.to_string()));
    if let Err(e) = result {
        return Err(e.context(format!("daemon log:\n{log_tail}")));
    }

    ctx.log("docker: the bridge and veth hooks against none, interleaved");
    let r = hooks_against_none(ctx, &plan, tput);
    world::detach_agent();
    r?;

    ctx.log("docker: the daemon as a service (restart, cold start)");
    let r = service::run(ctx, &plan);
    world::detach_agent();
    out["service"] = r?;

    ctx.log("docker: daemon stopped and detached: throughput again");
    throughput_runs(ctx, &plan, "none", "after", tput)?;
    drop(topo);
    Ok(())
}

fn target() -> peers::Blocked {
    peers::Blocked { protos: vec!["tcp"], ..peers::Blocked::target() }
}

fn sleep_checked(ctx: &Ctx, d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        ctx.check_stop()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn throughput_runs(ctx: &Ctx, plan: &Plan, hooks: &str, phase: &str, out: &mut Vec<Value>) -> Result<()> {
    for i in 1..=plan.throughput_runs {
        ctx.check_stop()?;
        world::clear_conntrack();
        let g = datapath::throughput(plan.throughput_secs)?;
        ctx.log(&format!("throughput {hooks:<6} ({phase}) {i}/{}: {g:.2} Gbit/s", plan.throughput_runs));
        out.push(json!({ "hooks": hooks, "phase": phase, "run": i, "gbps": g }));
    }
    Ok(())
}

/// Allowed throughput with the daemon's bridge and veth hooks against none,
/// in interleaved pairs (V N, N V, V N, ...): the machine drifts between
/// distant phases by more than the hooks cost. No uplink: XDP on a veth
/// uplink makes the veth pair give up GRO/TSO batching (a cost of the test
/// uplink, not of a NIC's driver). The daemon hooks the container's veth
/// with a rule on another of its ports, and stops (SIGTERM: hooks and rule
/// stay in the kernel); "none" is the same with every link pin removed (no
/// program attached anywhere), and the next start hooks it all again.
///
/// The kernel's run-time count is on in the "none" runs (where it costs
/// nothing, and 0 runs shows no program was attached) and off in the
/// hooks' runs, as in production; `stats_runs` more runs with the hooks
/// and the count on follow, for the hooks' own CPU.
fn hooks_against_none(ctx: &Ctx, plan: &Plan, out: &mut Vec<Value>) -> Result<()> {
    let mut hooked = false;
    for k in 0..2 * plan.ab_pairs {
        ctx.check_stop()?;
        let want = matches!(k % 4, 0 | 3);
        set_hooked(&mut hooked, want)?;
        let stats = if want { None } else { Some(usage::BpfStats::enable()?) };
        let run = measured_run(plan)?;
        drop(stats);
        let hooks = if want { "ab-hooks" } else { "ab-none" };
        log_run(ctx, hooks, &format!("pair {}", k / 2 + 1), &run);
        out.push(run.json(plan, json!({ "hooks": hooks, "phase": "interleaved", "pair": k / 2 + 1 })));
    }
    set_hooked(&mut hooked, true)?;
    let _stats = usage::BpfStats::enable()?;
    for i in 1..=plan.stats_runs {
        ctx.check_stop()?;
        let run = measured_run(plan)?;
        log_run(ctx, "ab-hooks-stats", &format!("{i}/{}", plan.stats_runs), &run);
        out.push(run.json(plan, json!({ "hooks": "ab-hooks-stats", "phase": "stats", "run": i })));
    }
    Ok(())
}

/// Brings the hooks in (the daemon started, the rule made, stopped) or out
/// (every link pin removed), if `hooked` is not `want` already.
fn set_hooked(hooked: &mut bool, want: bool) -> Result<()> {
    if want && !*hooked {
        let port = format!("{}/tcp", world::BLOCKED_CPORT);
        let mut daemon = Daemon::start_env(&world::agent_bin(), PIN_DIR, &[], &[("RUST_LOG", "info")])
            .context("starting the daemon with no uplink")?;
        let r = Run { tables: kernel::Tables::open(PIN_DIR)?, daemon_pid: daemon.pid() };
        let ruled = agent_ok(&["block", "--container", CONTAINER, &port]).and_then(|_| wait_web_ruled(&r));
        daemon.stop();
        ruled?;
        if r.tables.hooked().is_empty() {
            bail!("no veth hook pinned after the daemon's start");
        }
    } else if !want && *hooked {
        let links = Path::new(PIN_DIR).join("links");
        for e in fs::read_dir(&links).with_context(|| format!("read {}", links.display()))? {
            let path = e?.path();
            fs::remove_file(&path).with_context(|| format!("unpin {}", path.display()))?;
        }
    }
    *hooked = want;
    Ok(())
}

/// One iperf3 run and what dockblock's programs ran meanwhile (0 with the
/// kernel's count off).
struct MeasuredRun {
    gbps: f64,
    prog_ns: u64,
    prog_runs: u64,
}

impl MeasuredRun {
    /// `which` (the run's labels) with the run's numbers.
    fn json(&self, plan: &Plan, mut which: Value) -> Value {
        which["gbps"] = json!(self.gbps);
        which["secs"] = json!(plan.throughput_secs);
        which["prog_ns"] = json!(self.prog_ns);
        which["prog_runs"] = json!(self.prog_runs);
        which
    }
}

fn measured_run(plan: &Plan) -> Result<MeasuredRun> {
    world::clear_conntrack();
    let (ns0, runs0) = usage::dockblock_prog_runtime()?;
    let gbps = datapath::throughput(plan.throughput_secs)?;
    let (ns1, runs1) = usage::dockblock_prog_runtime()?;
    Ok(MeasuredRun { gbps, prog_ns: ns1.saturating_sub(ns0), prog_runs: runs1.saturating_sub(runs0) })
}

fn log_run(ctx: &Ctx, hooks: &str, which: &str, run: &MeasuredRun) {
    ctx.log(&format!(
        "throughput {hooks:<14} {which}: {:.2} Gbit/s; programs ran {} times, {:.1} ms",
        run.gbps,
        run.prog_runs,
        run.prog_ns as f64 / 1e6
    ));
}

fn log_flood(ctx: &Ctx, s: &Value) {
    ctx.log(&format!(
        "flood {:<26} round {}: {:.3} Mpps offered, {} dropped by it, {} reached the container, \
         {:.0} ns/packet ({:.0} net), conntrack +{}",
        s["blocker"].as_str().unwrap_or("?"),
        s["round"],
        s["offered_mpps"].as_f64().unwrap_or(f64::NAN),
        s["dropped_by_filter"],
        s["reached_container"],
        s["cpu_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
        s["cpu_ns_per_packet_net"].as_f64().unwrap_or(f64::NAN),
        s["conntrack_left"],
    ));
}

/// Waits until the world's container is reviewed with entries (the rule
/// just made is in its veth's table).
fn wait_web_ruled(r: &Run) -> Result<()> {
    let id = cmd::ok(&["docker", "inspect", "-f", "{{.Id}}", CONTAINER])?.trim().to_string();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let entries = r.tables.with_entries();
        if r.tables.reviewed().iter().any(|v| v.container == id && entries.contains(&v.ifindex)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{CONTAINER} not reviewed with entries 20 s after block --container")
}
