//! `cargo xtask build`: toolchain setup, then build the agent. The eBPF object
//! is built by dockblock-agent's build.rs (aya-build + nightly + bpf-linker),
//! so building the agent is enough.
use crate::{setup, util};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Returns the path of the built dockblock-agent binary.
pub fn run(opts: &Options) -> Result<PathBuf> {
    // Docker is only needed to run the tests, not to build.
    setup::run(&setup::Options { no_docker: true })?;
    let mut cmd = util::cargo(["build", "--package", "dockblock-agent"]);
    if opts.release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if opts.release { "release" } else { "debug" };
    Ok(util::target_dir().join(profile).join("dockblock-agent"))
}
