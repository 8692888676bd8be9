use dockblock_agent::{paths::PinDir, require_root, store::RuleStore, Result};
use dockblock_common::{hook, hook_stats_index, outcome};

use super::output::{print_json, CounterJson, RuleJson};

const HOOKS: [(u32, &str); 2] = [(hook::XDP, "xdp"), (hook::TC, "tc")];

pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    let store = RuleStore::open(pins)?;
    let counters = store.hook_stats()?;
    let rules: Vec<RuleJson> = store
        .rules_with_stats()?
        .iter()
        .map(RuleJson::from)
        .collect();
    let per_hook = |h: u32| -> serde_json::Map<String, serde_json::Value> {
        outcome::NAMES
            .iter()
            .enumerate()
            .map(|(o, name)| {
                let c = CounterJson::from(counters[hook_stats_index(h, o as u32) as usize]);
                (
                    name.to_string(),
                    serde_json::to_value(c).expect("plain struct"),
                )
            })
            .collect()
    };
    if json {
        let hooks: serde_json::Map<_, _> = HOOKS
            .iter()
            .map(|(h, name)| (name.to_string(), per_hook(*h).into()))
            .collect();
        print_json(&serde_json::json!({ "hooks": hooks, "rules": rules }));
        return Ok(());
    }
    println!(
        "{:<5} {:<17} {:>14} {:>16}",
        "HOOK", "OUTCOME", "PACKETS", "BYTES"
    );
    for (h, hook_name) in HOOKS {
        for (o, name) in outcome::NAMES.iter().enumerate() {
            let c = counters[hook_stats_index(h, o as u32) as usize];
            println!(
                "{hook_name:<5} {name:<17} {:>14} {:>16}",
                c.packets, c.bytes
            );
        }
    }
    println!();
    println!(
        "{:>4}  {:<9}  {:<16} {:>12} {:>14} {:>12} {:>14}",
        "RULE", "SCOPE", "PORTS", "DROPPED", "DROPPED_BYTES", "PASSED", "PASSED_BYTES"
    );
    for r in rules {
        println!(
            "{:>4}  {:<9}  {:<16} {:>12} {:>14} {:>12} {:>14}",
            r.id,
            r.scope,
            r.spec,
            r.dropped.packets,
            r.dropped.bytes,
            r.passed.packets,
            r.passed.bytes
        );
    }
    Ok(())
}
