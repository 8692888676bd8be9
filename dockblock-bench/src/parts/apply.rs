//! `apply` of a 65,535-rule file at once, timed. The agent is attached with
//! `--max-rules 65535` to the idle veth pair (XDP skb on the "uplink" end,
//! TC on the "bridge" end; nothing is sent through it), and the file has one
//! rule per port, `1/tcp` .. `65535/tcp`, so the rule table is full to its
//! last slot. Each round times, as an operator's `dockblock-agent` calls
//! (process start and map opening included):
//! - the first `apply` of the file into empty tables;
//! - `apply` of the same file again (every rule kept with its id and
//!   counters: the plan finds nothing to change);
//! - `export` of the 65,535 rules;
//! - `apply` of an empty file (every rule removed).
//!
//! A file that replaced all 65,535 rules by 65,535 others in one switch
//! would need room for both sets in the catalog (new rules are written
//! before the switch, old ones removed after), so it is refused as a full
//! table; that case is not timed.
use super::{
    cost::{IdlePair, IDLE_BRIDGE, IDLE_UPLINK},
    Ctx,
};
use crate::world::agent_ok_within;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Rules in the file: one per port, the largest `--max-rules` allows.
pub const RULES: u32 = 65_535;

/// Steps of a round, as named in results.json and the report.
pub const STEPS: [(&str, &str); 4] = [
    ("first_apply", "`apply` of 65,535 rules into empty tables"),
    ("same_apply", "`apply` of the same file again (nothing changes)"),
    ("export", "`export` of the 65,535 rules"),
    ("empty_apply", "`apply` of an empty file (all 65,535 removed)"),
];

fn rule_file() -> String {
    let mut f = String::with_capacity(RULES as usize * 32);
    for port in 1..=RULES {
        f.push_str(&format!("[[rule]]\nports = \"{port}/tcp\"\n"));
    }
    f
}

pub fn run(ctx: &Ctx) -> Result<Value> {
    let rounds = if ctx.quick { 1 } else { 3 };
    let dir = std::env::temp_dir();
    let full = dir.join(format!("dockblock-bench-apply-{}.toml", std::process::id()));
    let empty = dir.join(format!("dockblock-bench-apply-empty-{}.toml", std::process::id()));
    std::fs::write(&full, rule_file()).with_context(|| format!("writing {}", full.display()))?;
    std::fs::write(&empty, "").with_context(|| format!("writing {}", empty.display()))?;
    let r = rounds_of(ctx, rounds, full.to_str().context("temp path")?, empty.to_str().context("temp path")?);
    let _ = std::fs::remove_file(&full);
    let _ = std::fs::remove_file(&empty);
    let samples = r?;
    Ok(json!({"rules": RULES, "file_bytes": rule_file().len(), "samples": samples}))
}

fn rounds_of(ctx: &Ctx, rounds: usize, full: &str, empty: &str) -> Result<Vec<Value>> {
    let a = |args: &[&str]| agent_ok_within(Duration::from_secs(600), args);
    let mut samples = Vec::new();
    for round in 1..=rounds {
        ctx.check_stop()?;
        let _pair = IdlePair::new()?;
        let max_rules = RULES.to_string();
        let attach =
            ["attach", IDLE_UPLINK, "--bridge", IDLE_BRIDGE, "--xdp-mode", "skb", "--max-rules", &max_rules];
        a(&attach)?;
        let timed = |args: &[&str]| -> Result<(f64, String)> {
            let t = Instant::now();
            let out = a(args)?;
            Ok((t.elapsed().as_secs_f64(), out))
        };
        let (first, _) = timed(&["apply", full])?;
        let status: Value = serde_json::from_str(&a(&["status", "--json"])?).context("status --json")?;
        let installed = status["rules"]["rules"].as_u64().unwrap_or(0);
        if installed != u64::from(RULES) {
            bail!("after apply, status reports {installed} rules, not {RULES}");
        }
        let (same, _) = timed(&["apply", full])?;
        let (export, text) = timed(&["export"])?;
        let exported = text.matches("[[rule]]").count();
        if exported != RULES as usize {
            bail!("export printed {exported} rules, not {RULES}");
        }
        let (cleared, _) = timed(&["apply", empty])?;
        ctx.log(&format!(
            "apply round {round}/{rounds}: {RULES} rules in {first:.2} s, again {same:.2} s, \
             export {export:.2} s, emptied {cleared:.2} s"
        ));
        samples.push(json!({
            "round": round, "first_apply": first, "same_apply": same,
            "export": export, "empty_apply": cleared,
        }));
        // _pair drops here: the agent detaches, the pair goes.
    }
    Ok(samples)
}
