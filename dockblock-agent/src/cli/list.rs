use dockblock_agent::{docker::engine, paths::PinDir, require_root, store::RuleStore, translate, Result};

use super::output::{print_json, rule_row, RuleJson, RULE_HEADER};

/// Rules with their counters; with `--json` and an engine that answers,
/// what each rule covers now (host ports, addresses, veths).
pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    super::output::warn_if_interrupted(pins);
    let rules = RuleStore::open_read_only(pins)?.rules_with_stats()?;
    if json {
        // No engine (or one that errs): covers stays null, the rest is shown.
        let view = engine::view_blocking().ok().flatten();
        let rows: Vec<RuleJson> = rules
            .iter()
            .map(|r| RuleJson {
                covers: view.as_ref().map(|(s, veths)| translate::covers(&r.rule, s, veths)),
                ..RuleJson::from(r)
            })
            .collect();
        print_json(&serde_json::json!({ "rules": rows }));
        return Ok(());
    }
    println!("{RULE_HEADER}");
    for rule in &rules {
        println!("{}", rule_row(rule));
    }
    Ok(())
}
