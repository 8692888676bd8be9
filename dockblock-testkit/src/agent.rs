//! The agent CLI as a subprocess, the way an operator runs it, always with
//! an explicit pin folder (never the default /sys/fs/bpf/dockblock), so its
//! links and maps are apart from any other dockblock state on the machine,
//! and a state dir of its own (never /var/lib/dockblock): `run` loads the
//! saved rules when the pins are new, so a run must not find an earlier
//! run's. The tests' `Agent` guard and the benchmark both run it through here.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::cmd::{self, Error};

/// The agent's state dir variable (`--state-dir`); an environment
/// variable, so binaries of releases that lack it ignore it.
pub const STATE_DIR_ENV: &str = "DOCKBLOCK_STATE_DIR";

/// The state dir of the agent of `pin_dir`:
/// `/run/dockblock-tests/<pin folder name>`, removed with the pins.
pub fn state_dir(pin_dir: &str) -> PathBuf {
    let name = Path::new(pin_dir).file_name().map_or_else(|| pin_dir.into(), |n| n.to_owned());
    Path::new("/run/dockblock-tests").join(name)
}

/// `bin --pin-dir <pin_dir> args...` within `limit`, with the state dir of
/// `pin_dir`; the exit status is the caller's to judge.
pub fn output(bin: &Path, pin_dir: &str, limit: Duration, args: &[&str]) -> Result<Output, Error> {
    let bin = bin.to_string_lossy();
    let mut full = vec![bin.as_ref(), "--pin-dir", pin_dir];
    full.extend_from_slice(args);
    cmd::output_env(limit, &full, None, &[(STATE_DIR_ENV, &state_dir(pin_dir))])
}

/// Detaches whatever the agent has under `pin_dir` and removes the folder
/// and its state dir, best effort: state a crashed run left behind goes too.
pub fn detach_and_remove(bin: &Path, pin_dir: &str) {
    detach_keep_state(bin, pin_dir);
    let _ = std::fs::remove_dir_all(state_dir(pin_dir));
}

/// What a reboot leaves: every link, map and pin gone, the saved rule set
/// (the state folder) kept.
pub fn detach_keep_state(bin: &Path, pin_dir: &str) {
    if Path::new(pin_dir).exists() {
        let _ = output(bin, pin_dir, Duration::from_secs(30), &["detach"]);
        // Unpinning drops the last reference to any link detach left behind.
        let _ = std::fs::remove_dir_all(pin_dir);
    }
}

/// An agent binary and its pin folder, for callers that handle errors
/// (the benchmark). Not a guard: call `detach_and_remove` when done.
#[derive(Clone, Debug)]
pub struct Cli {
    bin: PathBuf,
    pin_dir: String,
}

impl Cli {
    pub fn new(bin: impl Into<PathBuf>, pin_dir: impl Into<String>) -> Cli {
        Cli { bin: bin.into(), pin_dir: pin_dir.into() }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn pin_dir(&self) -> &str {
        &self.pin_dir
    }

    /// Runs `args` within `limit`; fails unless it exits 0. Returns stdout.
    pub fn ok_within(&self, limit: Duration, args: &[&str]) -> Result<String, Error> {
        let out = output(&self.bin, &self.pin_dir, limit, args)?;
        if !out.status.success() {
            let stderr = cmd::shortened(String::from_utf8_lossy(&out.stderr).trim());
            let cmd = format!("dockblock-agent --pin-dir {} {}", self.pin_dir, args.join(" "));
            return Err(Error::Failed { cmd, status: out.status, stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ok_within` the default limit.
    pub fn ok(&self, args: &[&str]) -> Result<String, Error> {
        self.ok_within(cmd::LIMIT, args)
    }

    pub fn detach_and_remove(&self) {
        detach_and_remove(&self.bin, &self.pin_dir);
    }

    pub fn detach_keep_state(&self) {
        detach_keep_state(&self.bin, &self.pin_dir);
    }
}
