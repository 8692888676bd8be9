//! `cargo xtask fuzz --frames N [--seed S]`: the differential fuzz of the
//! kernel programs against the reference model (tests/tests/fuzz.rs), long
//! and in release mode. xtask links nothing of the workspace: it runs the
//! fuzz test binary through cargo, passing the run in environment
//! variables. The test prints frames/s, and any mismatch as a hex frame
//! with its rule set; the same seed replays the same run.
use crate::{setup, util};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {
    /// Frames to judge (each runs through both programs and the model).
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) frames: u64,
    /// The run's seed (decimal or 0x hex); default: drawn from the clock
    /// and printed, so a run that finds something can be replayed.
    #[arg(long)]
    pub(crate) seed: Option<String>,
    /// Assume `cargo xtask setup` already ran.
    #[arg(long)]
    pub(crate) skip_setup: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.skip_setup {
        // The fuzz loads programs but starts no container.
        setup::run(&setup::Options { no_docker: true })?;
    }
    let seed = match &opts.seed {
        Some(seed) => seed.clone(),
        None => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            format!("{:#x}", now.as_nanos() as u64)
        }
    };
    println!("fuzz: {} frames, seed {seed}", opts.frames);
    let mut cmd = util::cargo(["test", "--release", "-p", "dockblock-tests", "--test", "fuzz"]);
    cmd.args(["--", "--nocapture", "--exact", "kernel_and_model_agree_on_random_frames"])
        .env("DOCKBLOCK_FUZZ_FRAMES", opts.frames.to_string())
        .env("DOCKBLOCK_FUZZ_SEED", &seed);
    util::run(&mut cmd)
}
