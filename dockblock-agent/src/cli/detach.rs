use dockblock_agent::{loader, paths::PinDir, require_root, Result};

pub fn run(pins: &PinDir, interfaces: &[String]) -> Result<()> {
    require_root()?;
    for link in loader::detach(pins, interfaces)? {
        println!("detached {} from {}", link.kind.label(), link.interface);
    }
    if interfaces.is_empty() {
        println!("removed {} (rules and counters are gone)", pins.root().display());
    }
    Ok(())
}
