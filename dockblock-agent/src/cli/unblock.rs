use dockblock_agent::{lock::PinLock, paths::PinDir, require_root, store::RuleStore, Result};

use super::PortArgs;

pub fn run(pins: &PinDir, args: PortArgs) -> Result<()> {
    let (scope, ports) = args.parse()?;
    require_root()?;
    let mut store = RuleStore::open(pins)?;
    let _lock = PinLock::acquire(pins.root())?;
    store.unblock(scope, &ports)?;
    for spec in ports {
        println!("unblocked {scope} {spec}");
    }
    Ok(())
}
