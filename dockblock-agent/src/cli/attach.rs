use dockblock_agent::{
    loader::{self, AttachRequest},
    paths::PinDir,
    require_root, Result,
};

use super::AttachArgs;

pub fn run(pins: &PinDir, args: AttachArgs) -> Result<()> {
    require_root()?;
    let bridges = if args.no_bridge { vec![] } else { args.bridges };
    let req = AttachRequest {
        uplinks: args.interfaces,
        bridges,
        xdp_mode: args.xdp_mode,
        capacities: args.tuning.capacities(),
        settings: args.tuning.settings(),
    };
    for done in loader::attach(pins, &req)? {
        let how = if done.replaced { "program replaced in the existing link" } else { "new link" };
        println!("attached {} to {}: {how}", done.kind.label(), done.interface);
    }
    println!("pinned under {}", pins.root().display());
    Ok(())
}
