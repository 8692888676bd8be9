//! `cargo xtask bench [FLAGS]`: set up, build the agent and the benchmark
//! (release), then run `dockblock-bench run FLAGS`. The benchmark is its own
//! crate (dockblock-bench), which owns the flags: they pass through as they
//! are (`cargo xtask bench -- --help` shows them). xtask only adds
//! `--skip-setup`, and links nothing of the workspace. `DOCKBLOCK_AGENT_BIN`
//! set: that agent is measured instead of target/release/dockblock-agent.
//! `cargo xtask bench --docker [--quick]` runs the Docker suite (the daemon
//! following the engine) instead of the filter comparison; it starts a
//! daemon that hooks every container veth, so run it under the global
//! Docker lock when others test on the same host.
use crate::{setup, util};
use anyhow::{Context, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// Assume `cargo xtask setup` already ran.
    #[arg(long)]
    pub skip_setup: bool,
    /// Flags for `dockblock-bench run`, e.g. `--quick`, `--only cost,live`,
    /// `--docker`, `--render-only` (see `cargo xtask bench -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    // `--skip-setup` may come after the bench's own flags.
    let skip_setup = opts.skip_setup || opts.args.iter().any(|a| a == "--skip-setup");
    let args: Vec<&String> = opts.args.iter().filter(|a| *a != "--skip-setup").collect();
    let render_only = args.iter().any(|a| *a == "--render-only");
    let help = args.iter().any(|a| *a == "--help" || *a == "-h");
    if !skip_setup && !render_only && !help {
        setup::run(&setup::Options { no_docker: false })?;
    }
    util::run(&mut util::cargo(["build", "--release", "-p", "dockblock-agent", "--bin", "dockblock-agent"]))?;
    util::run(&mut util::cargo(["build", "--release", "-p", "dockblock-bench", "--bin", "dockblock-bench"]))?;
    let target = util::target_dir().join("release");
    let mut cmd = Command::new(target.join("dockblock-bench"));
    cmd.arg("run").args(&args);
    // An agent named in the environment (another build) is benchmarked
    // instead of the one just built.
    if std::env::var_os("DOCKBLOCK_AGENT_BIN").is_none() {
        cmd.env("DOCKBLOCK_AGENT_BIN", target.join("dockblock-agent"));
    }
    println!("+ {}", util::show(&cmd));
    let status = cmd.status().context("could not start dockblock-bench")?;
    if !status.success() {
        anyhow::bail!("dockblock-bench run failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: super::Options,
    }

    #[test]
    fn passes_the_bench_flags_through() {
        let cli = Cli::parse_from(["bench", "--quick", "--only", "cost,live", "--skip-setup", "--verbose"]);
        assert_eq!(cli.bench.args, ["--quick", "--only", "cost,live", "--skip-setup", "--verbose"]);
        let cli = Cli::parse_from(["bench", "--skip-setup", "--quick"]);
        assert!(cli.bench.skip_setup);
        assert_eq!(cli.bench.args, ["--quick"]);
        let cli = Cli::parse_from(["bench", "--docker", "--quick"]);
        assert_eq!(cli.bench.args, ["--docker", "--quick"]);
    }
}
