//! Per-packet cost of dockblock's two judging programs with
//! BPF_PROG_TEST_RUN.
//!
//! The agent CLI attaches the programs to an idle veth pair (XDP in skb mode
//! on one end as the uplink, TCX egress on the other as the bridge; nothing
//! is sent through it; this kernel has no dummy driver) and installs each
//! rule set; `dockblock-bench cost` then finds the attached judging programs
//! by id and runs every packet kind `repeat` times, `rounds` times. So the
//! programs and maps measured are exactly what `attach` + `block`/`apply`
//! produce. The time each `block`/`apply` call took is the control-plane
//! figure for dockblock.
use super::Ctx;
use crate::world::{self, agent_ok_within, detach_agent, BLOCKED_PORT};
use anyhow::{bail, Context, Result};
use dockblock_testkit::{
    cmd::ok,
    netns::{self, VethPair},
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The idle veth pair (this kernel has no dummy driver): the "uplink" end
/// and the "bridge" end.
pub const IDLE_UPLINK: &str = "dbbc0";
pub const IDLE_BRIDGE: &str = "dbbc1";
/// Allow-list rule sets let this prefix in (dockblock-bench sends its
/// "allow-listed source" packet from 203.0.113.9).
const ALLOWLISTED: &str = "203.0.113.0/24";

enum Rules {
    /// `block` these specs in both scopes.
    Ports(Vec<String>),
    /// `apply` a file: BLOCKED_PORT (tcp+udp) in both scopes, each rule
    /// with this many allow-list prefixes.
    Allow(u32),
}

struct Set {
    label: String,
    blocked_ports: u32,
    rules: Rules,
}

/// Every set blocks BLOCKED_PORT (tcp and udp) in both scopes and leaves
/// BLOCKED_PORT + 1 open, except the full range.
fn rule_sets(quick: bool) -> Vec<Set> {
    let spread = |n: u16| -> Vec<String> {
        let mut v = vec![BLOCKED_PORT.to_string()];
        v.extend((0..n - 1).map(|i| (20000 + i).to_string()));
        v
    };
    let ports = |n: u16| Set {
        label: format!("{n} port{}", if n == 1 { "" } else { "s" }),
        blocked_ports: u32::from(n),
        rules: Rules::Ports(spread(n)),
    };
    let allow = |n: u32| Set {
        label: format!("1 port, {n} allow prefix{}", if n == 1 { "" } else { "es" }),
        blocked_ports: 1,
        rules: Rules::Allow(n),
    };
    let mut sets = vec![ports(1), ports(100)];
    if !quick {
        sets.push(ports(10_000));
    }
    sets.push(Set {
        label: "65535 ports (1-65535)".into(),
        blocked_ports: 65_535,
        rules: Rules::Ports(vec!["1-65535".into()]),
    });
    sets.push(allow(1));
    sets.push(allow(100));
    if !quick {
        sets.push(allow(10_000));
    }
    sets
}

/// A rules file for `apply`: BLOCKED_PORT in `scope`, allowing
/// ALLOWLISTED plus n - 1 other /24s.
fn allow_file(n: u32, scope: &str) -> String {
    let mut prefixes = vec![format!("\"{ALLOWLISTED}\"")];
    prefixes.extend((0..n.saturating_sub(1)).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)));
    format!(
        "[[rule]]\nports = \"{BLOCKED_PORT}\"\nscope = \"{scope}\"\nallow_from = [{}]\n",
        prefixes.join(", ")
    )
}

/// The idle pair, with the agent detached from it before it goes.
pub struct IdlePair {
    // Dropped after `drop` below has detached the agent from it.
    _pair: VethPair,
}

impl IdlePair {
    pub fn new() -> Result<IdlePair> {
        Ok(IdlePair { _pair: VethPair::create(IDLE_UPLINK, IDLE_BRIDGE)? })
    }
}

impl Drop for IdlePair {
    fn drop(&mut self) {
        detach_agent();
    }
}

/// Removes a pair a killed run left.
pub fn remove_pair() {
    netns::remove_link(IDLE_UPLINK);
}

/// Program id of the judging program on `hook` ("xdp" or "tc") in
/// `status --json`.
fn judge_id(status: &Value, hook: &str) -> Result<u64> {
    status["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["hook"] == hook)
        // Agents with tracking programs label roles; older ones have one
        // program per hook.
        .find(|l| l.get("role").is_none_or(|r| r == "judge"))
        .and_then(|l| l["program_id"].as_u64())
        .with_context(|| format!("no judging {hook} program in `status --json`: {status}"))
}

pub fn run(ctx: &Ctx) -> Result<Value> {
    let bench = world::bench_bin();
    let bench = bench.to_str().context("bench path")?;
    let (repeat, rounds) = if ctx.quick { (1_000_000, 3) } else { (2_000_000, 5) };
    let _pair = IdlePair::new()?;
    let a = |args: &[&str]| agent_ok_within(Duration::from_secs(600), args);
    let mut sets = Vec::new();
    for set in rule_sets(ctx.quick) {
        // Each scope gets its own attach: the rule model's planning time
        // grows with the square of the rule count, and the XDP program's
        // cost does not depend on container rules (nor TC's on dialed ones).
        let mut merged: Option<Value> = None;
        let mut install = serde_json::Map::new();
        for (hook, scope) in [("xdp", "dialed"), ("tc", "container")] {
            ctx.check_stop()?;
            let (n_rules, max_allow) = match &set.rules {
                Rules::Ports(specs) => (specs.len(), 8192),
                Rules::Allow(n) => (1, (*n as usize + 16).max(8192)),
            };
            a(&[
                "attach",
                IDLE_UPLINK,
                "--bridge",
                IDLE_BRIDGE,
                "--xdp-mode",
                "skb",
                "--max-rules",
                &(n_rules + 16).max(4095).to_string(),
                "--max-allow",
                &max_allow.to_string(),
            ])?;
            let t = Instant::now();
            match &set.rules {
                Rules::Ports(specs) => {
                    let mut args = vec!["block"];
                    if scope == "container" {
                        args.push("--container-port");
                    }
                    args.extend(specs.iter().map(String::as_str));
                    a(&args)?;
                }
                Rules::Allow(n) => {
                    let path = format!("/tmp/dockblock-bench-allow-{}.toml", std::process::id());
                    std::fs::write(&path, allow_file(*n, scope))
                        .with_context(|| format!("writing {path}"))?;
                    let r = a(&["apply", &path]);
                    let _ = std::fs::remove_file(&path);
                    r?;
                }
            }
            install.insert(scope.into(), json!(t.elapsed().as_secs_f64()));
            let status: Value = serde_json::from_str(&a(&["status", "--json"])?)?;
            let out = ok(&[
                bench,
                "cost",
                &format!("--{hook}-id"),
                &judge_id(&status, hook)?.to_string(),
                "--repeat",
                &repeat.to_string(),
                "--rounds",
                &rounds.to_string(),
            ])?;
            let cost: Value = serde_json::from_str(&out).context("dockblock-bench cost output")?;
            if cost["packets"].as_array().is_none_or(|p| p.is_empty()) {
                bail!("dockblock-bench cost measured nothing: {out}");
            }
            a(&["detach"])?;
            merged = Some(match merged.take() {
                None => cost,
                Some(mut m) => {
                    let more = cost["packets"].as_array().cloned().unwrap_or_default();
                    m["packets"].as_array_mut().expect("checked above").extend(more);
                    m["programs"][hook] = cost["programs"][hook].clone();
                    m
                }
            });
            if let Rules::Ports(specs) = &set.rules {
                install.insert("rules".into(), json!(specs.len()));
            }
        }
        let mut cost = merged.expect("two scopes measured");
        let n_rules = match &set.rules {
            Rules::Ports(specs) => specs.len(),
            Rules::Allow(_) => 1,
        };
        install.insert(
            "how".into(),
            json!(if matches!(set.rules, Rules::Allow(_)) { "apply" } else { "block" }),
        );
        cost["label"] = json!(set.label);
        cost["blocked_ports"] = json!(set.blocked_ports);
        cost["rules_per_scope"] = json!(n_rules);
        cost["install"] = Value::Object(install);
        ctx.log(&format!("cost measured with {} ({n_rules} rules per scope)", set.label));
        sets.push(cost);
    }
    Ok(json!({"repeat": repeat, "rounds": rounds, "sets": sets}))
}
