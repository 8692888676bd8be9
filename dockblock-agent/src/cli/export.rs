use dockblock_agent::{paths::PinDir, require_root, rulefile, store::RuleStore, Result};

pub fn run(pins: &PinDir) -> Result<()> {
    require_root()?;
    print!("{}", rulefile::format(&RuleStore::open(pins)?.rules()?));
    Ok(())
}
