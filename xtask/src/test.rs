//! `cargo xtask test`: what CI runs. Steps go cheapest first and stop at the
//! first failure.
use crate::{setup, util};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {
    /// Assume `cargo xtask setup` already ran (saves the checks).
    #[arg(long)]
    pub(crate) skip_setup: bool,
    /// Extra arguments for the test binaries, e.g. a name filter:
    /// `cargo xtask test -- e2e`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.skip_setup {
        // The integration tests start containers, so Docker is needed here.
        setup::run(&setup::Options { no_docker: false })?;
    }

    // dockblock-ebpf only builds for bpfel-unknown-none with nightly, so the
    // host-side --workspace steps leave it out and it gets its own clippy run.
    const HOST: [&str; 4] = [
        "--workspace",
        "--exclude",
        "dockblock-ebpf",
        "--all-targets",
    ];

    util::run(&mut util::cargo(["fmt", "--all", "--check"]))?;
    util::run(
        util::cargo(["clippy"])
            .args(HOST)
            .args(["--", "-D", "warnings"]),
    )?;
    util::run(&mut util::cargo([
        "+nightly",
        "clippy",
        "--package",
        "dockblock-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests exec target/debug/dockblock-agent, so build every
    // target before running any test.
    util::run(util::cargo(["build"]).args(HOST))?;
    // One Docker engine and one bpffs are shared by all tests: run serially.
    util::run(
        util::cargo(["test", "--workspace", "--exclude", "dockblock-ebpf"])
            .args(["--", "--test-threads=1"])
            .args(&opts.args),
    )?;
    println!("test: all steps passed");
    Ok(())
}
