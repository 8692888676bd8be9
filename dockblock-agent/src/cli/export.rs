use dockblock_agent::{paths::PinDir, require_root, rulefile, store::RuleStore, Result};

pub fn run(pins: &PinDir) -> Result<()> {
    require_root()?;
    super::output::warn_if_interrupted(pins);
    print!("{}", rulefile::format(&RuleStore::open_read_only(pins)?.rules()?));
    Ok(())
}
