//! Running commands with errors that name the command, plus a few paths.
use anyhow::{bail, Context, Result};
use std::{
    env,
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The workspace root (xtask lives one level below it), fixed at compile time
/// so xtask works from any current directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).canonicalize().expect("workspace root exists")
}

pub fn home() -> Result<PathBuf> {
    env::var_os("HOME").map(PathBuf::from).context("HOME is not set")
}

/// Where `cargo install` puts binaries: $CARGO_INSTALL_ROOT/bin, else
/// $CARGO_HOME/bin, else ~/.cargo/bin.
pub fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = env::var_os("CARGO_INSTALL_ROOT") {
        dirs.push(PathBuf::from(root).join("bin"));
    }
    match env::var_os("CARGO_HOME") {
        Some(h) => dirs.push(PathBuf::from(h).join("bin")),
        None => dirs.extend(home().ok().map(|h| h.join(".cargo/bin"))),
    }
    dirs
}

/// Prepend the cargo bin dirs that PATH lacks, so this process and every
/// child (aya-build looks bpf-linker up on PATH) find installed tools.
pub fn add_cargo_bins_to_path() {
    let old = env::var_os("PATH").unwrap_or_default();
    let current: Vec<PathBuf> = env::split_paths(&old).collect();
    let mut dirs: Vec<PathBuf> = cargo_bin_dirs().into_iter().filter(|d| !current.contains(d)).collect();
    dirs.extend(current);
    let joined = env::join_paths(dirs).expect("PATH entries have no ':'");
    // Single-threaded at this point, so changing the environment is sound.
    env::set_var("PATH", joined);
}

/// Shell-like rendering of a command for logs and error messages.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Print the command, run it with inherited stdio, and fail unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Run quietly and return stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out =
        cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", show(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", show(cmd)))
}

/// True if the command starts and exits 0 within `timeout`. Output is
/// discarded: this is for "is it there / is it up" probes only.
pub fn probe(cmd: &mut Command, timeout: Duration) -> bool {
    let Ok(mut child) = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            // Hung (e.g. `docker info` against a wedged socket): treat as down.
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `cargo` with the workspace root as working directory.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(args.into_iter().map(Into::into));
    cmd
}

/// The directory cargo builds into: $CARGO_TARGET_DIR or <root>/target.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
