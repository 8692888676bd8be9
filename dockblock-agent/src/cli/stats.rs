use std::{collections::BTreeMap, time::Duration};

use dockblock_agent::{
    paths::PinDir,
    require_root,
    stats::{self, Reading, HOOKS},
    store::RuleStore,
    Result,
};
use dockblock_common::outcome;
use serde_json::{json, Map, Value};

use super::output::{print_json, rule_row, CounterJson, RuleJson, RULE_HEADER};

pub fn run(pins: &PinDir, json: bool, watch: bool, count: Option<u64>) -> Result<()> {
    require_root()?;
    super::output::warn_if_interrupted(pins);
    let store = RuleStore::open_read_only(pins)?;
    let mut last = stats::read(&store)?;
    if !watch {
        print(&last, None, json);
        return Ok(());
    }
    for _ in 0..count.unwrap_or(u64::MAX) {
        std::thread::sleep(Duration::from_secs(1));
        let now = stats::read(&store)?;
        print(&now, Some(&last), json);
        last = now;
    }
    Ok(())
}

/// Prints `now`; with `before`, adds per-second rates (one JSON object per
/// line in JSON mode, so `--watch --json` is a stream).
fn print(now: &Reading, before: Option<&Reading>, json: bool) {
    let secs = before.map(|b| now.at.duration_since(b.at).as_secs_f64().max(1e-3));
    let rate = |n: u64, b: u64| secs.map(|s| (n.saturating_sub(b)) as f64 / s);
    if json {
        let hooks: Map<String, Value> = HOOKS
            .iter()
            .map(|(h, name)| {
                let outcomes: Map<String, Value> = outcome::NAMES
                    .iter()
                    .enumerate()
                    .map(|(o, oname)| {
                        let c = now.hook(*h, o as u32);
                        let mut v = serde_json::to_value(CounterJson::from(c)).expect("plain");
                        if let Some(b) = before {
                            v["packets_per_sec"] = json!(rate(c.packets, b.hook(*h, o as u32).packets));
                        }
                        (oname.to_string(), v)
                    })
                    .collect();
                (name.to_string(), Value::from(outcomes))
            })
            .collect();
        let rules: Vec<RuleJson> = now.rules.iter().map(RuleJson::from).collect();
        let value = json!({ "hooks": hooks, "rules": rules, "events_suppressed": now.suppressed });
        if before.is_some() {
            println!("{value}");
        } else {
            print_json(&value);
        }
        return;
    }
    println!("{:<5} {:<21} {:>14} {:>16} {:>12}", "HOOK", "OUTCOME", "PACKETS", "BYTES", "PKTS/S");
    for (h, hook_name) in HOOKS {
        for (o, name) in outcome::NAMES.iter().enumerate() {
            let c = now.hook(h, o as u32);
            let r = before
                .and_then(|b| rate(c.packets, b.hook(h, o as u32).packets))
                .map_or(String::new(), |r| format!("{r:.0}"));
            println!("{hook_name:<5} {name:<21} {:>14} {:>16} {r:>12}", c.packets, c.bytes);
        }
    }
    println!("events suppressed by the rate limit: {}", now.suppressed);
    println!();
    println!("{RULE_HEADER}  DROPS/S");
    let previous: BTreeMap<u32, u64> = before
        .map(|b| b.rules.iter().map(|r| (r.rule.id, r.stats.dropped.packets)).collect())
        .unwrap_or_default();
    for r in &now.rules {
        let drops = previous
            .get(&r.rule.id)
            .and_then(|p| rate(r.stats.dropped.packets, *p))
            .map_or(String::new(), |d| format!("  {d:.0}"));
        println!("{}{drops}", rule_row(r));
    }
}
