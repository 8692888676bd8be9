use dockblock_agent::{paths::PinDir, require_root, teardown, Result};

use super::PortArgs;

pub fn run(pins: &PinDir, args: PortArgs) -> Result<()> {
    let (scope, ports) = args.parse()?;
    require_root()?;
    let (_lock, mut store) = teardown::begin_change(pins)?;
    store.unblock(scope, &ports)?;
    for spec in ports {
        println!("unblocked {scope} {spec}");
    }
    Ok(())
}
