use dockblock_agent::{
    loader::{self, AttachRequest, Capacities, Settings},
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
        capacities: Capacities {
            max_rules: args.max_rules,
            max_allow: args.max_allow,
            max_flows: args.max_flows,
            max_frags: args.max_frags,
            events_bytes: args.events_bytes,
        },
        settings: Settings {
            judge_host_traffic: args.judge_host_traffic,
            log_rate: args.log_rate,
            flow_timeout_secs: args.flow_timeout,
        },
    };
    for done in loader::attach(pins, &req)? {
        let how = if done.replaced { "program replaced in the existing link" } else { "new link" };
        println!("attached {} to {}: {how}", done.kind.label(), done.interface);
    }
    println!("pinned under {}", pins.root().display());
    Ok(())
}
