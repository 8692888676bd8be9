use dockblock_agent::{paths::PinDir, require_root, store::RuleStore, Result};

use super::output::{print_json, rule_row, RuleJson, RULE_HEADER};

pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    super::output::warn_if_interrupted(pins);
    let rules = RuleStore::open_read_only(pins)?.rules_with_stats()?;
    if json {
        let rows: Vec<RuleJson> = rules.iter().map(RuleJson::from).collect();
        print_json(&serde_json::json!({ "rules": rows }));
        return Ok(());
    }
    println!("{RULE_HEADER}");
    for rule in &rules {
        println!("{}", rule_row(rule));
    }
    Ok(())
}
