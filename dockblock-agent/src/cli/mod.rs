//! The command line: clap definitions here, one file per verb. Every verb
//! validates its arguments, then calls the library.

mod allow;
mod apply;
mod attach;
mod block;
mod completions;
mod config;
mod confirm;
mod detach;
mod events;
mod explain;
mod export;
mod list;
mod output;
mod policy;
mod ports;
mod repair;
mod run;
mod stats;
mod status;
mod targeted;
mod unblock;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dockblock_agent::{
    config::{LogFormat, CONFIG_ENV},
    exit_code::ExitCode,
    loader::{Capacities, Settings, XdpModeChoice},
    paths::{PinDir, DEFAULT_PIN_DIR, PIN_DIR_ENV},
    saved, Result,
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

    /// Config file (TOML); default /etc/dockblock/dockblock.toml when it
    /// exists. `run` takes its settings from it (flags override), every
    /// verb its `state_dir` and `failsafe`.
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log lines as text or JSON (one object a line); default: the
    /// config's `log_format`, else text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    /// Folder for the saved rule set (`<pin folder name>.rules.toml`, restored
    /// by `run` after a reboot); default: the config's `state_dir`, else
    /// /var/lib/dockblock.
    #[arg(long, global = true, env = saved::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the programs: XDP on each uplink, TC egress on the Docker bridge(s).
    Attach(AttachArgs),
    /// Drop new inbound connections to PORTS (Docker syntax: 80/tcp, 53/udp,
    /// 30000-30010/tcp, 8080 for both).
    Block(BlockArgs),
    /// Open PORTS again (trims or splits the rules that cover them).
    Unblock(PortArgs),
    /// Open published ports that `policy published deny` closes (for
    /// everyone, or only --from CIDR); explicit block rules still win.
    Allow(AllowArgs),
    /// `policy published deny|allow`: close every port Docker publishes
    /// unless an `allow` rule opens it (deny), or leave them open (allow,
    /// Docker's behaviour, the default). Without a setting: print it.
    Policy(PolicyArgs),
    /// Replace the whole rule set with the rules in FILE (TOML), atomically.
    Apply(ApplyArgs),
    /// Keep what `apply --confirm` made live (cancels the revert).
    Confirm,
    /// The detached reverter `apply --confirm` starts.
    #[command(hide = true)]
    RevertPending { token: String },
    /// Print the rule set in the format `apply` reads.
    Export,
    /// Rules, one a line, with drop counters.
    List(JsonArg),
    /// Packets and bytes dropped and passed, per hook and per rule.
    Stats(StatsArgs),
    /// Stream the drop events of rules with --log.
    Events(EventsArgs),
    /// What is attached where, program ids, rule table fill, pin folder.
    Status(JsonArg),
    /// Detach from INTERFACES, or from everything (removing rules and pins)
    /// when none is named.
    Detach { interfaces: Vec<String> },
    /// Finish what a killed command left half-done and rebuild the port
    /// tables from the catalog (changing commands do the first part too).
    Repair,
    /// Show what the loaded programs do with one packet (run on a private
    /// copy of their counters: nothing moves), and the reference model's verdict.
    Explain(ExplainArgs),
    /// The daemon, in the foreground: attach (XDP on UPLINKS, TC on every
    /// Docker bridge, a hook on every container veth), then follow the
    /// engine and the links. Stopping it leaves everything enforced.
    Run(RunArgs),
    /// Every port Docker publishes on this host (container, host address and
    /// port, container port, networks), its verdict from outside and the
    /// rules that decide it.
    Ports(JsonArg),
    /// Print a shell completion script (bash, zsh or fish).
    ///
    /// `dockblock-agent completions bash > /etc/bash_completion.d/dockblock-agent`;
    /// zsh: a `_dockblock-agent` file in $fpath; fish:
    /// ~/.config/fish/completions/dockblock-agent.fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `dockblock-agent man > dockblock-agent.1`.
    #[command(hide = true)]
    Man,
    /// The config file: `config check FILE`.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check FILE (exit 0 and print the settings `run` would start with;
    /// exit 2 with FILE:LINE: why). Changes nothing.
    Check { file: PathBuf },
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Rules file, as `export` writes it; `-` for standard input.
    file: String,
    /// Live at once, but the rule set from before comes back after DURATION
    /// (60s, 2m, 1h30m) unless `dockblock-agent confirm` runs first.
    #[arg(long, value_name = "DURATION")]
    confirm: Option<String>,
    /// Exit 3 when the rule set changed, 0 when it did not.
    #[arg(long)]
    detailed_exitcode: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Uplink interface(s) where clients' packets arrive (XDP); default
    /// the config's `uplinks`.
    interfaces: Vec<String>,
    /// XDP mode on the uplinks (default the config's `xdp_mode`, else auto).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeChoice>,
    #[command(flatten)]
    tuning: TuningArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides the
    /// config's `metrics`), e.g. 127.0.0.1:9469.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// tcp or udp.
    proto: String,
    /// Source address, with a port or not (203.0.113.7:40000, [2001:db8::7]:5000);
    /// without one, an ephemeral port is used.
    src: String,
    /// Destination address and port (198.51.100.1:3306, [2001:db8::1]:443):
    /// the dialed port for xdp, the container port for tc and veth.
    dst: String,
    /// TCP flags, comma-separated (default syn): ack, syn,ack, fin, rst, psh, urg.
    #[arg(long)]
    flags: Option<String>,
    /// Only this hook (default xdp and tc, and veth with --veth).
    #[arg(long, value_enum)]
    hook: Option<HookChoice>,
    /// For veth: the container's host-side veth the packet leaves through,
    /// by interface index (`ip -o link`).
    #[arg(long, value_name = "IFINDEX")]
    veth: Option<u32>,
    /// For veth: the interface the packet came in on (0: the host sent it;
    /// another container's veth; default the --on interface, else an
    /// outside one).
    #[arg(long, value_name = "N", requires = "veth")]
    from_ifindex: Option<u32>,
    /// VLAN id of an 802.1Q tag; twice for QinQ (outer first).
    #[arg(long, value_name = "ID")]
    vlan: Vec<u16>,
    /// For tc and veth: the host itself sent the packet.
    #[arg(long)]
    from_host: bool,
    /// The interface the packet came in on (for rules with --on; default an
    /// outside one, index 1).
    #[arg(long, value_name = "IFACE")]
    on: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum HookChoice {
    Xdp,
    Tc,
    Veth,
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// Uplink interface(s) where clients' packets arrive (XDP).
    interfaces: Vec<String>,
    /// Docker bridge for container-port rules (TC); repeat for br-* networks.
    #[arg(long = "bridge", value_name = "NAME", default_value = "docker0", conflicts_with = "no_bridge")]
    bridges: Vec<String>,
    /// Attach no bridge program (container-port rules then do nothing).
    #[arg(long)]
    no_bridge: bool,
    /// XDP mode on the uplinks.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    xdp_mode: XdpModeChoice,
    #[command(flatten)]
    tuning: TuningArgs,
}

/// Capacities and settings, as `attach` and `run` take them.
#[derive(Debug, Args)]
struct TuningArgs {
    /// Rule capacity (default 4095), fixed when the maps are first created.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_rules: Option<u32>,
    /// Allow-list entries over all rules (default 8192), fixed at creation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_allow: Option<u32>,
    /// UDP flows remembered for replies (default 65536, LRU), fixed at creation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=16_000_000))]
    max_flows: Option<u32>,
    /// Fragmented datagrams remembered as dropped (default 8192; rounded up to
    /// a power of two; a newer datagram may evict an older one), fixed at creation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    max_frags: Option<u32>,
    /// Container veths the daemon can review (default 4096), fixed at creation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_veths: Option<u32>,
    /// Container ports judged at the veths, over all veths (default 65536;
    /// as many again for --on entries), fixed at creation.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_veth_rules: Option<u32>,
    /// Events ring buffer bytes (default 1 MiB; a power of two), fixed at creation.
    #[arg(long, value_parser = parse_ring_size)]
    events_bytes: Option<u32>,
    /// Judge traffic the host itself sends into the bridge (docker-proxy,
    /// curl to a container IP) with container-port rules: yes or no
    /// (default no, as with DOCKER-USER).
    #[arg(long, value_name = "yes|no", value_parser = parse_yes_no)]
    judge_host_traffic: Option<bool>,
    /// Events per second per CPU for --log rules (default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    log_rate: Option<u32>,
    /// Seconds a UDP flow opened by the host or a container lets replies in (default 30).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    flow_timeout: Option<u32>,
}

impl TuningArgs {
    fn capacities(&self) -> Capacities {
        Capacities {
            max_rules: self.max_rules,
            max_allow: self.max_allow,
            max_flows: self.max_flows,
            max_frags: self.max_frags,
            events_bytes: self.events_bytes,
            max_veths: self.max_veths,
            max_veth_rules: self.max_veth_rules,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            judge_host_traffic: self.judge_host_traffic,
            log_rate: self.log_rate,
            flow_timeout_secs: self.flow_timeout,
        }
    }
}

fn parse_yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err("expected yes or no".into()),
    }
}

fn parse_ring_size(value: &str) -> Result<u32, String> {
    let n: u32 = value.parse().map_err(|_| "expected a number of bytes".to_string())?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two, at least 4096".into());
    }
    Ok(n)
}

#[derive(Debug, Args)]
struct BlockArgs {
    #[command(flatten)]
    ports: PortArgs,
    /// Keep the ports open to this source (address or CIDR, IPv4 or IPv6);
    /// repeat for more.
    #[arg(long, value_name = "CIDR")]
    allow_from: Vec<String>,
    /// Count and log what the rule would drop, but drop nothing.
    #[arg(long)]
    dry_run: bool,
    /// Emit a rate-limited event per dropped packet (see `events`).
    #[arg(long)]
    log: bool,
    /// Also drop new connections from other containers (judged on the
    /// container's veth); only with --container, --label or --compose-project.
    #[arg(long)]
    from_containers: bool,
    /// Block a failsafe port (config `failsafe`, default 22/tcp) anyway.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct AllowArgs {
    #[command(flatten)]
    ports: PortArgs,
    /// Open only to this source (address or CIDR); repeat for more. Without
    /// it the ports are open to everyone.
    #[arg(long, value_name = "CIDR")]
    from: Vec<String>,
    /// Remove the allow rule (with these ports and selector) instead.
    #[arg(long)]
    remove: bool,
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// What the policy is about: `published` (ports Docker publishes).
    #[arg(value_parser = ["published"])]
    what: Option<String>,
    /// deny or allow.
    #[arg(value_parser = ["deny", "allow"], requires = "what")]
    setting: Option<String>,
}

/// Which containers a rule is about; none: a plain port rule.
#[derive(Debug, Args)]
struct SelectorArgs {
    /// A container, by name (follows it across re-creation with that name).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["label", "compose_project"])]
    container: Option<String>,
    /// Every container with this label: K=V, or K for any value.
    #[arg(long, value_name = "K[=V]", conflicts_with = "compose_project")]
    label: Option<String>,
    /// Every container of this compose project.
    #[arg(long, value_name = "P")]
    compose_project: Option<String>,
    /// With --compose-project: only this service.
    #[arg(long, value_name = "S", requires = "compose_project")]
    compose_service: Option<String>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    #[command(flatten)]
    json: JsonArg,
    /// Refresh every second, with rates.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

#[derive(Debug, Args)]
struct EventsArgs {
    #[command(flatten)]
    json: JsonArg,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Debug, Args)]
struct PortArgs {
    /// Port specs: 3306/tcp, 53/udp, 30000-30010/tcp, 8080 (tcp and udp).
    /// With a selector they are container ports, and none means every port.
    #[arg(value_name = "PORTS")]
    ports: Vec<String>,
    /// Match the container port after DNAT, at the Docker bridge, instead of
    /// the port clients dial on this host.
    #[arg(long)]
    container_port: bool,
    #[command(flatten)]
    selector: SelectorArgs,
    /// Only packets that came in on this interface (as iptables -i); repeat
    /// for more. The interface must exist.
    #[arg(long, value_name = "IFACE")]
    on: Vec<String>,
    /// Only packets addressed to this host address (as iptables -d), IPv4 or
    /// IPv6; repeat for more. Judged where the dialed address is seen (the
    /// uplink); elsewhere the rule applies to every address.
    #[arg(long, value_name = "ADDR")]
    to: Vec<String>,
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print JSON (a stable shape, see README) instead of a table.
    #[arg(long)]
    json: bool,
}

impl Cli {
    /// The log level when `RUST_LOG` says none: the daemon tells what it
    /// changes, one-shot commands only warn.
    pub fn default_log_level(&self) -> &'static str {
        if matches!(self.command, Command::Run(_)) {
            "info"
        } else {
            "warn"
        }
    }
}

impl Cli {
    /// Reads the config file (`--config`, `$DOCKBLOCK_CONFIG`, the default
    /// one) for the verbs; `config check` reads only its FILE.
    pub fn load_config(&self) -> Result<()> {
        if !matches!(self.command, Command::Config(_)) {
            config::load(self.config.as_deref())?;
        }
        Ok(())
    }

    /// `--log-format`, else the config's.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(config::current().log_format)
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let state_dir = cli.state_dir.unwrap_or_else(|| config::current().state_dir.clone());
    let pins = PinDir::new(cli.pin_dir).with_state_dir(state_dir);
    let done = match cli.command {
        Command::Attach(args) => attach::run(&pins, args),
        Command::Block(args) => block::run(&pins, args),
        Command::Unblock(args) => unblock::run(&pins, args),
        Command::Allow(args) => allow::run(&pins, args),
        Command::Policy(args) => policy::run(&pins, args),
        Command::Apply(args) => return apply::run(&pins, args),
        Command::Confirm => return confirm::run(&pins),
        Command::RevertPending { token } => return confirm::revert(&pins, &token),
        Command::Export => export::run(&pins),
        Command::List(args) => list::run(&pins, args.json),
        Command::Stats(args) => stats::run(&pins, args.json.json, args.watch, args.count),
        Command::Events(args) => events::run(&pins, args.json.json, args.count),
        Command::Status(args) => status::run(&pins, args.json),
        Command::Detach { interfaces } => detach::run(&pins, &interfaces),
        Command::Repair => repair::run(&pins),
        Command::Explain(args) => explain::run(&pins, args),
        Command::Run(args) => run::run(&pins, args),
        Command::Ports(args) => ports::run(&pins, args.json),
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
        Command::Config(ConfigCommand::Check { file }) => config::check(&file),
    };
    done.map(|()| ExitCode::Ok)
}
