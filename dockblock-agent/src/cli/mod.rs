//! The command line: clap definitions here, one file per verb. Every verb
//! validates its arguments, then calls the library.

mod attach;
mod block;
mod detach;
mod list;
mod output;
mod stats;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dockblock_agent::{
    loader::XdpModeChoice,
    paths::{PinDir, DEFAULT_PIN_DIR, PIN_DIR_ENV},
    rules::Verb,
    Result,
};

/// Block ports on Docker hosts in the kernel (XDP on the uplink, TC on the
/// Docker bridge), without iptables. Rules live in pinned BPF maps and stay
/// enforced after this command exits.
#[derive(Debug, Parser)]
#[command(name = "dockblock-agent", version)]
pub struct Cli {
    /// Folder in bpffs that holds dockblock's pinned maps and links.
    #[arg(long, global = true, env = PIN_DIR_ENV, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the programs: XDP on each uplink, TC egress on the Docker bridge(s).
    Attach(AttachArgs),
    /// Drop new inbound connections to PORTS (Docker syntax: 80/tcp, 53/udp,
    /// 30000-30010/tcp, 8080 for both).
    Block(PortArgs),
    /// Open PORTS again (trims or splits the rules that cover them).
    Unblock(PortArgs),
    /// Rules, one a line, with drop counters.
    List(JsonArg),
    /// Packets and bytes dropped and passed, per hook and per rule.
    Stats(JsonArg),
    /// What is attached where, program ids, rule table fill, pin folder.
    Status(JsonArg),
    /// Detach from INTERFACES, or from everything (removing rules and pins)
    /// when none is named.
    Detach { interfaces: Vec<String> },
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// Uplink interface(s) where clients' packets arrive (XDP).
    interfaces: Vec<String>,
    /// Docker bridge for container-port rules (TC); repeat for br-* networks.
    #[arg(
        long = "bridge",
        value_name = "NAME",
        default_value = "docker0",
        conflicts_with = "no_bridge"
    )]
    bridges: Vec<String>,
    /// Attach no bridge program (container-port rules then do nothing).
    #[arg(long)]
    no_bridge: bool,
    /// XDP mode on the uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    xdp_mode: XdpModeChoice,
    /// Rule capacity, fixed when the maps are first created.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_rules: Option<u32>,
}

#[derive(Debug, Args)]
struct PortArgs {
    /// Port specs: 3306/tcp, 53/udp, 30000-30010/tcp, 8080 (tcp and udp).
    #[arg(required = true, value_name = "PORTS")]
    ports: Vec<String>,
    /// Match the container port after DNAT, at the Docker bridge, instead of
    /// the port clients dial on this host.
    #[arg(long)]
    container_port: bool,
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print JSON (a stable shape, see README) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    let pins = PinDir::new(cli.pin_dir);
    match cli.command {
        Command::Attach(args) => attach::run(&pins, args),
        Command::Block(args) => block::run(&pins, args, Verb::Block),
        Command::Unblock(args) => block::run(&pins, args, Verb::Unblock),
        Command::List(args) => list::run(&pins, args.json),
        Command::Stats(args) => stats::run(&pins, args.json),
        Command::Status(args) => status::run(&pins, args.json),
        Command::Detach { interfaces } => detach::run(&pins, &interfaces),
    }
}
