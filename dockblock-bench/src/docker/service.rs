//! The daemon as a service (issue 10): with 1,000 dialed-port rules and
//! 100 running containers (each with its own `dockblock.block` label), how
//! long from `run` to the kernel state in force,
//! - on a restart (SIGTERM, then `run` over the same pins), with the gap
//!   between the old daemon's exit and the new one's first sync (the kernel
//!   enforces throughout; only containers started in the gap wait for it);
//! - on a cold start (the pins gone, as after a reboot: the saved rule set
//!   comes back from the state dir before the first sync);
//!
//! and the daemon's memory holding that state.
use super::{kernel::Tables, usage, Plan, LABEL};
use crate::{
    parts::Ctx,
    world::{self, HOST_IF, HOST_IP, NETWORK, PIN_DIR},
};
use anyhow::{bail, Context, Result};
use dockblock_testkit::{cmd, daemon::Daemon, docker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The containers' name prefix.
const NAME: &str = "dockblock-bench-svc-";
/// First dialed port of the rule set.
const FIRST_PORT: u16 = 40000;
/// A state not in force after this is a failure of the sample.
const WITHIN: Duration = Duration::from_secs(120);

pub fn run(ctx: &Ctx, plan: &Plan) -> Result<Value> {
    let (rules, containers) = (plan.service_rules, plan.service_containers);
    let bin = world::agent_bin();
    let start = || Daemon::start_env(&bin, PIN_DIR, &[HOST_IF], &[("RUST_LOG", "info")]);
    let mut daemon = start().context("starting the daemon")?;

    ctx.log(&format!("service: {rules} rules, {containers} containers"));
    let file = std::env::temp_dir().join("dockblock-bench-service.rules.toml");
    let text: String =
        (0..rules).map(|i| format!("[[rule]]\nports = \"{}/tcp\"\n", FIRST_PORT + i as u16)).collect();
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    world::agent_ok_within(Duration::from_secs(300), &["apply", file.to_str().unwrap_or_default()])?;
    for i in 0..containers {
        ctx.check_stop()?;
        let name = format!("{NAME}{i}");
        docker::remove_container(&name);
        cmd::ok(&[
            "docker",
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            NETWORK,
            "-l",
            &format!("{LABEL}=1"),
            "-l",
            "dockblock.block=80/tcp",
            "-p",
            &format!("{HOST_IP}::80/tcp"),
            docker::IMAGE,
            "sleep",
            "3600",
        ])?;
    }
    let tables = Tables::open(PIN_DIR)?;
    let t = Instant::now();
    wait_in_force(&tables, rules, containers)?;
    ctx.log(&format!("service: state in force {:.1} s after the last docker run", t.elapsed().as_secs_f64()));
    let mut out = json!({
        "rules": rules, "containers": containers, "memory_loaded": settled_memory(daemon.pid())?,
    });

    // Restart: the pins stay.
    let t = Instant::now();
    daemon.stop();
    let stopped = t.elapsed();
    let t = Instant::now();
    daemon = start().context("restarting the daemon")?;
    let synced = t.elapsed();
    wait_in_force(&tables, rules, containers)?;
    let in_force = t.elapsed();
    ctx.log(&format!(
        "service: restart: SIGTERM to exit {:.0} ms, run to first sync {:.0} ms, to state in force {:.0} ms",
        ms(stopped),
        ms(synced),
        ms(in_force)
    ));
    out["restart"] = json!({ "stop_ms": ms(stopped), "first_sync_ms": ms(synced),
        "in_force_ms": ms(in_force), "gap_ms": ms(stopped) + ms(synced) });
    out["memory_restarted"] = settled_memory(daemon.pid())?;

    // Cold start: the pins gone (a reboot empties bpffs), the state dir kept.
    daemon.stop();
    drop(tables);
    world::reboot_agent();
    let t = Instant::now();
    daemon = start().context("starting the daemon on no pins")?;
    let synced = t.elapsed();
    let tables = Tables::open(PIN_DIR)?;
    let r = wait_in_force(&tables, rules, containers);
    let in_force = t.elapsed();
    out["cold_start"] = json!({ "first_sync_ms": ms(synced), "in_force_ms": r.is_ok().then(|| ms(in_force)),
        "error": r.as_ref().err().map(|e| format!("{e:#}")) });
    ctx.log(&format!(
        "service: cold start: run to first sync {:.0} ms, to state in force {}",
        ms(synced),
        r.as_ref().map_or_else(|e| format!("never ({e})"), |_| format!("{:.0} ms", ms(in_force)))
    ));
    out["memory_cold"] = settled_memory(daemon.pid())?;
    daemon.stop();
    for i in 0..containers {
        docker::remove_container(&format!("{NAME}{i}"));
    }
    let _ = std::fs::remove_file(&file);
    Ok(out)
}

/// The daemon's memory once it has been idle for `SETTLE` (it returns the
/// heap of a burst of syncs a second after the last).
fn settled_memory(pid: u32) -> Result<Value> {
    std::thread::sleep(SETTLE);
    usage::memory(pid)
}

const SETTLE: Duration = Duration::from_secs(3);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Until `list` has at least `rules` dialed-port rules and `containers`
/// of the service's containers are reviewed with entries in the veth table.
fn wait_in_force(tables: &Tables, rules: usize, containers: usize) -> Result<()> {
    let start = Instant::now();
    let ids: Vec<String> = (0..containers)
        .map(|i| cmd::ok(&["docker", "inspect", "-f", "{{.Id}}", &format!("{NAME}{i}")]))
        .collect::<std::result::Result<Vec<_>, _>>()?
        .into_iter()
        .map(|s| s.trim().to_string())
        .collect();
    let mut have = (0, 0);
    while start.elapsed() < WITHIN {
        let list: Value = serde_json::from_str(&world::agent_ok(&["list", "--json"])?).unwrap_or_default();
        let dialed = list["rules"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["target"]["kind"] == "ports").count());
        let entries = tables.with_entries();
        let reviewed = tables
            .reviewed()
            .into_iter()
            .filter(|v| entries.contains(&v.ifindex) && ids.contains(&v.container))
            .count();
        have = (dialed, reviewed);
        if dialed >= rules && reviewed >= containers {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} of {rules} rules and {} of {containers} containers in force after {WITHIN:?}", have.0, have.1)
}
