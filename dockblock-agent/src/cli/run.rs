use dockblock_agent::{
    daemon::{self, RunOptions},
    loader::{Capacities, Settings},
    paths::PinDir,
    require_root, Result,
};

use super::{config, RunArgs};

/// The config file's settings, each overridden by its flag when given.
pub fn run(pins: &PinDir, args: RunArgs) -> Result<()> {
    require_root()?;
    let file = config::current();
    let (caps, c) = (args.tuning.capacities(), file.capacities);
    let (set, s) = (args.tuning.settings(), file.settings);
    daemon::run(
        pins,
        RunOptions {
            uplinks: if args.interfaces.is_empty() { file.uplinks.clone() } else { args.interfaces },
            xdp_mode: args.xdp_mode.unwrap_or(file.xdp_mode),
            capacities: Capacities {
                max_rules: caps.max_rules.or(c.max_rules),
                max_allow: caps.max_allow.or(c.max_allow),
                max_flows: caps.max_flows.or(c.max_flows),
                max_frags: caps.max_frags.or(c.max_frags),
                events_bytes: caps.events_bytes.or(c.events_bytes),
                max_veths: caps.max_veths.or(c.max_veths),
                max_veth_rules: caps.max_veth_rules.or(c.max_veth_rules),
            },
            settings: Settings {
                judge_host_traffic: set.judge_host_traffic.or(s.judge_host_traffic),
                log_rate: set.log_rate.or(s.log_rate),
                flow_timeout_secs: set.flow_timeout_secs.or(s.flow_timeout_secs),
            },
            metrics: args.metrics.or(file.metrics),
            config: file.clone(),
            config_path: config::path().map(|p| p.to_path_buf()),
        },
    )
}
