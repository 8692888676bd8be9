//! `dockblock-bench`: dockblock against iptables, nftables and xdp-filter.
//! `cargo xtask bench [FLAGS]` builds it and runs `dockblock-bench run
//! [FLAGS]`. The other verbs are the probes the run starts as subprocesses
//! of this same binary (see probe/).
//!
//! Layers, each using only those below it: world.rs (namespaces, bridge,
//! container, the agent's paths) -> peers.rs (the filters compared) and
//! traffic.rs (the floods) -> parts/ (what a run measures) -> report.rs ->
//! run.rs. probe/ is the aya side, run in its own processes.
mod docker;
mod parts;
mod peers;
mod probe;
mod report;
mod run;
mod traffic;
mod world;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dockblock-bench", about = "dockblock against iptables, nftables and xdp-filter")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole benchmark; results in bench/results/.
    Run(run::Options),
    /// A probe (cost, flood, latency, drop-all) with `--key value` pairs;
    /// prints one JSON object. Started by `run`.
    #[command(external_subcommand)]
    Probe(Vec<String>),
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::Run(opts) => run::run(&opts),
        Cmd::Probe(argv) => match argv.split_first() {
            Some((verb, args)) => probe::main(verb, args),
            None => Err(anyhow::anyhow!("no probe given")),
        },
    };
    if let Err(e) = result {
        eprintln!("dockblock-bench: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn probes_pass_their_pairs_through() {
        let cli = super::Cli::parse_from(["dockblock-bench", "flood", "--ifname", "dbbo0"]);
        let super::Cmd::Probe(argv) = cli.cmd else { panic!("not a probe") };
        assert_eq!(argv, ["flood", "--ifname", "dbbo0"]);
    }

    #[test]
    fn run_takes_the_xtask_flags() {
        let cli = super::Cli::parse_from(["dockblock-bench", "run", "--quick", "--only", "cost,apply"]);
        let super::Cmd::Run(opts) = cli.cmd else { panic!("not run") };
        assert!(opts.quick);
        assert_eq!(opts.only, [super::run::Part::Cost, super::run::Part::Apply]);
    }
}
