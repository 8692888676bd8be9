//! From `docker run -d` to the rule in force: a container whose rule exists
//! before it starts (its own `dockblock.block` label, or a `block
//! --container NAME` made before), started again and again. Timed from the
//! moment the bench starts `docker run` to the first poll (every ~1 ms)
//! that finds the container's veth hook pinned (closed: new connections
//! dropped), and to the first that finds the veth reviewed in `VETHS` with
//! its `VETH_RULES` entries. `docker run` itself returns after the engine
//! started the container; its time is kept beside them.
use super::{kernel, Kind, Run};
use crate::parts::Ctx;
use anyhow::{bail, Context, Result};
use dockblock_testkit::docker;
use serde_json::{json, Value};
use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Host port the started containers publish (to their port 80); the
/// second kind's is the next one (both run at once between samples).
const HOST_PORT: u16 = 18090;

fn host_port(kind: Kind) -> u16 {
    if kind == Kind::Named {
        HOST_PORT + 1
    } else {
        HOST_PORT
    }
}
/// A sample that has not seen the rule after this is a failure.
const WITHIN: Duration = Duration::from_secs(20);

pub fn run(ctx: &Ctx, r: &Run, per_kind: usize) -> Result<Value> {
    // A `--container` rule needs a container of that name the engine
    // knows: create one, name it in the rule, remove it; the rule follows
    // the name to every container created under it later.
    let first = super::container_args(Kind::Named, host_port(Kind::Named), &["sleep", "3600"]);
    let mut create = vec!["docker", "create"];
    create.extend(first.iter().map(String::as_str));
    dockblock_testkit::cmd::ok(&create)?;
    super::agent_ok(&["block", "--container", Kind::Named.name(), "80/tcp"])?;
    docker::remove_container(Kind::Named.name());

    let mut samples = Vec::new();
    for i in 0..per_kind {
        for kind in [Kind::Labelled, Kind::Named] {
            ctx.check_stop()?;
            let s = sample(r, kind).with_context(|| format!("start {} of {}", i + 1, kind.id()))?;
            ctx.log(&format!(
                "start {}/{per_kind} {:<9}: hook {:>6.1} ms, rule in force {:>6.1} ms, docker run returned {:>6.1} ms",
                i + 1,
                kind.id(),
                s["hook_ms"].as_f64().unwrap_or(f64::NAN),
                s["ruled_ms"].as_f64().unwrap_or(f64::NAN),
                s["docker_run_ms"].as_f64().unwrap_or(f64::NAN),
            ));
            samples.push(s);
        }
    }
    for kind in [Kind::Labelled, Kind::Named] {
        docker::remove_container(kind.name());
    }
    super::agent_ok(&["unblock", "--container", Kind::Named.name(), "80/tcp"]).ok();
    Ok(json!({ "host_port": HOST_PORT, "samples": samples }))
}

fn sample(r: &Run, kind: Kind) -> Result<Value> {
    docker::remove_container(kind.name());
    let mut tl = kernel::Timeline::default();
    tl.poll(&r.tables);
    let args = super::container_args(kind, host_port(kind), &["sleep", "3600"]);
    let t0 = kernel::now_ns();
    let started = Instant::now();
    let mut child = Command::new("docker")
        .args(["run", "-d"])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start docker run")?;
    let mut id: Option<String> = None;
    let mut run_ns = None;
    loop {
        tl.poll(&r.tables);
        if id.is_none() {
            if let Some(status) = child.try_wait()? {
                run_ns = Some(kernel::now_ns());
                let mut out = String::new();
                let mut err = String::new();
                child.stdout.take().map(|mut s| s.read_to_string(&mut out));
                child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                if !status.success() {
                    bail!("docker run failed ({status}): {}", err.trim());
                }
                id = Some(out.trim().to_string());
            }
        }
        if let Some(id) = &id {
            let seen = tl.containers.get(id);
            if seen.is_some_and(|s| s.ruled_ns.is_some()) && tl.hook_ns(id).is_some() {
                break;
            }
        }
        if started.elapsed() > WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no rule in force within {WITHIN:?} (container {id:?})");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let id = id.unwrap_or_default();
    let ms = |t: Option<u64>| t.map(|t| (t as f64 - t0 as f64) / 1e6);
    let seen = tl.containers.get(&id).cloned().unwrap_or_default();
    Ok(json!({
        "kind": kind.id(),
        "hook_ms": ms(tl.hook_ns(&id)),
        "ruled_ms": ms(seen.ruled_ns),
        "docker_run_ms": ms(run_ns),
        "max_poll_gap_ms": tl.max_gap_ns as f64 / 1e6,
        "polls": tl.polls,
    }))
}
