//! Developer tasks for dockblock: `cargo xtask <setup|build|run|test|bench|fuzz|image>`.
//!
//! xtask depends on no other workspace crate on purpose: it must compile on a
//! fresh machine before bpf-linker (needed by dockblock-agent's build.rs) exists.
mod bench;
mod build;
mod fuzz;
mod image;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "dockblock developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install and start whatever is missing (Debian packages, nightly,
    /// rust-src, bpf-linker, bpffs, Docker engine). Safe to re-run.
    Setup(setup::Options),
    /// Set up the toolchain, then build dockblock-agent (and its eBPF object).
    Build(build::Options),
    /// Build, then run dockblock-agent with ARGS, e.g. `cargo xtask run -- attach veth0`.
    Run(run::Options),
    /// What CI runs: setup, fmt, clippy, build, then the tests serially.
    Test(test::Options),
    /// Benchmark dockblock against iptables, nftables and xdp-filter;
    /// results in bench/results/ (`--quick`: a smoke run in < 3 minutes).
    Bench(bench::Options),
    /// Differential fuzz of the kernel programs against the reference
    /// model: `--frames N` (default 10 million) `--seed S`.
    Fuzz(fuzz::Options),
    /// Build the container image `dockblock:latest` (`--tag T`) locally from
    /// the release binary: entrypoint the agent, default command `run`.
    Image(image::Options),
}

fn main() {
    let cli = Cli::parse();
    // Freshly installed tools (cargo install, rustup) land in the cargo bin
    // dir, which a bare CI shell may not have on PATH.
    util::add_cargo_bins_to_path();
    let result = match cli.cmd {
        Cmd::Setup(opts) => setup::run(&opts),
        Cmd::Build(opts) => build::run(&opts).map(drop),
        Cmd::Run(opts) => run::run(opts),
        Cmd::Test(opts) => test::run(&opts),
        Cmd::Bench(opts) => bench::run(&opts),
        Cmd::Fuzz(opts) => fuzz::run(&opts),
        Cmd::Image(opts) => image::run(&opts),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
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
    fn passes_trailing_args_through() {
        let cli = super::Cli::parse_from(["xtask", "run", "--release", "--", "attach", "--x"]);
        let super::Cmd::Run(opts) = cli.cmd else { panic!("not run") };
        assert!(opts.release);
        assert_eq!(opts.args, ["attach", "--x"]);
    }

    #[test]
    fn test_takes_a_filter() {
        let cli = super::Cli::parse_from(["xtask", "test", "--skip-setup", "--", "e2e"]);
        let super::Cmd::Test(opts) = cli.cmd else { panic!("not test") };
        assert!(opts.skip_setup);
        assert_eq!(opts.args, ["e2e"]);
    }
}
