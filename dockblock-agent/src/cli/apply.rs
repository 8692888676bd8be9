use std::io::Read;

use dockblock_agent::{
    lock::PinLock, paths::PinDir, require_root, rulefile, store::RuleStore, Error, Result,
};

/// Reads and checks the whole file before touching anything; then swaps the
/// rule set in one generation switch.
pub fn run(pins: &PinDir, file: &str) -> Result<()> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| Error::io("read", "standard input", e))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| Error::io("read", file, e))?
    };
    let name = if file == "-" { "<stdin>" } else { file };
    let specs = rulefile::parse(name, &text)?;
    require_root()?;
    let mut store = RuleStore::open(pins)?;
    let _lock = PinLock::acquire(pins.root())?;
    let done = store.replace(&specs)?;
    println!(
        "applied {name}: {} rules ({} added, {} removed, {} unchanged)",
        specs.len(),
        done.added,
        done.removed,
        done.kept
    );
    Ok(())
}
