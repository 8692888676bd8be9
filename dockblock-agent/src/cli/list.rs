use dockblock_agent::{paths::PinDir, require_root, store::RuleStore, Result};

use super::output::{print_json, RuleJson};

pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    let rules = RuleStore::open(pins)?.rules_with_stats()?;
    let rows: Vec<RuleJson> = rules.iter().map(RuleJson::from).collect();
    if json {
        print_json(&serde_json::json!({ "rules": rows }));
        return Ok(());
    }
    println!(
        "{:>4}  {:<9}  {:<16} {:>12} {:>14} {:>12}",
        "ID", "SCOPE", "PORTS", "DROPPED", "DROPPED_BYTES", "PASSED"
    );
    for r in rows {
        println!(
            "{:>4}  {:<9}  {:<16} {:>12} {:>14} {:>12}",
            r.id, r.scope, r.spec, r.dropped.packets, r.dropped.bytes, r.passed.packets
        );
    }
    Ok(())
}
