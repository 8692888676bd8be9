use dockblock_agent::{paths::PinDir, require_root, teardown, Result};

/// Finishes what a killed command left half-done, fixes pin owners and
/// modes, and rebuilds the port tables from the catalog through the
/// generation switch. Every changing command does the first part itself.
pub fn run(pins: &PinDir) -> Result<()> {
    require_root()?;
    for line in teardown::repair(pins)? {
        println!("{line}");
    }
    Ok(())
}
