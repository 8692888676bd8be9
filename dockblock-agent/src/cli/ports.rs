use dockblock_agent::{
    daemon::state::DaemonStatus,
    docker::engine,
    error::Error,
    paths::PinDir,
    published::{self, PublishedPort},
    require_root,
    store::RuleStore,
    Result,
};

use super::output::print_json;

/// Without an engine there is nothing published to tell about: exit 1.
pub fn run(pins: &PinDir, json: bool) -> Result<()> {
    require_root()?;
    let Some((snapshot, _)) = engine::view_blocking()? else {
        return Err(Error::Engine {
            what: format!("no engine at {}", engine::host()),
            why: "cannot list published ports (is dockerd running? is DOCKER_HOST right?)".into(),
        });
    };
    // Not attached: no rule judges anything, every port is open.
    let rules = if pins.is_attached() { RuleStore::open_read_only(pins)?.rules()? } else { vec![] };
    let ports: Vec<PublishedPort> = published::published(&rules, &snapshot);
    let daemon = DaemonStatus::read(pins)?.0.running;
    if json {
        print_json(&serde_json::json!({ "daemon_running": daemon, "ports": ports }));
        return Ok(());
    }
    print!("{}", published::table(&ports));
    if !daemon {
        println!(
            "note: no daemon runs: verdicts follow the rules and the engine's state now; the kernel matches them \
             only for what a CLI command or the daemon last synced (containers started since have no veth hooks \
             until `dockblock-agent run` reviews them)"
        );
    }
    Ok(())
}
