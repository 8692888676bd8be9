use dockblock_agent::{
    daemon::{self, RunOptions},
    paths::PinDir,
    require_root, Result,
};

use super::RunArgs;

pub fn run(pins: &PinDir, args: RunArgs) -> Result<()> {
    require_root()?;
    daemon::run(
        pins,
        RunOptions {
            uplinks: args.interfaces,
            xdp_mode: args.xdp_mode,
            capacities: args.tuning.capacities(),
            settings: args.tuning.settings(),
        },
    )
}
