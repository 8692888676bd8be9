//! The previous release's agent, for upgrade tests: built once from this
//! repository's own git history (no download), in a cache folder that
//! later runs reuse, under a lock so concurrent tests build it once.
//!
//! `<CACHE>/prev-<hash>/`: `src/` (`git archive` of the commit), `target/`
//! (its own cargo target dir), `build.log` (cargo's output, quoted when the
//! build fails) and `built` (written last: the build is complete).

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// v0.9.0, what landed before issue 10 (a clone may lack tags: the hash).
pub const PREV_RELEASE: &str = "ed23266c613ab210443c2ab7ea5442267ad1a554";
/// Survives test runs and `cargo clean`; never inside a worktree.
const CACHE: &str = "/var/cache/dockblock-tests";
/// A cold build takes ~6 min on 2 busy cores; past this it is hung.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Path of v0.9.0's `dockblock-agent`, built first if the cache lacks it.
/// Panics with the reason (commit missing, build failed: the log's tail).
pub fn agent() -> PathBuf {
    build(PREV_RELEASE).unwrap_or_else(|e| panic!("previous release {PREV_RELEASE}: {e}"))
}

fn build(commit: &str) -> Result<PathBuf, String> {
    let dir = Path::new(CACHE).join(format!("prev-{commit}"));
    let bin = dir.join("target/debug/dockblock-agent");
    let done = dir.join("built");
    if done.is_file() && bin.is_file() {
        return Ok(bin);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    let exists = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("run git: {e}"))?;
    if !exists.success() {
        return Err(format!(
            "commit {commit} is not in {}'s history (a shallow clone? `git fetch --unshallow`)",
            repo.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let _lock = lock(&dir.join("lock"))?;
    // Another test may have built it while this one waited for the lock.
    if done.is_file() && bin.is_file() {
        return Ok(bin);
    }
    let src = dir.join("src");
    let tar = dir.join("src.tar");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    checked(
        Command::new("git").arg("-C").arg(repo).args(["archive", "-o"]).arg(&tar).arg(commit),
        "git archive",
    )?;
    checked(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src), "tar -x")?;
    let _ = std::fs::remove_file(&tar);

    let log_path = dir.join("build.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
    eprintln!("building the previous release {commit} in {} (~6 min, once)", dir.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&src)
        .args(["build", "--locked", "--quiet", "-p", "dockblock-agent"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setpgid only, between fork and exec: a hung build is killed
    // with its rustc children as one group.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        })
    };
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("start cargo: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait for cargo: {e}"))? {
            break Some(status);
        }
        if started.elapsed() > BUILD_LIMIT {
            // SAFETY: the group of our own child, not reaped yet.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.is_some_and(|s| s.success()) || !bin.is_file() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let how = status.map_or(format!("killed after {BUILD_LIMIT:?}"), |s| s.to_string());
        return Err(format!(
            "cargo build in {} failed ({how}); end of {}:\n{}",
            src.display(),
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!("previous release built in {:?}", started.elapsed());
    std::fs::write(&done, commit).map_err(|e| format!("write {}: {e}", done.display()))?;
    Ok(bin)
}

fn checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
}

/// An exclusive `flock` on `path`, held until the file is dropped.
fn lock(path: &Path) -> Result<File, String> {
    let file = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(format!("lock {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_missing_from_the_history_is_a_clear_error() {
        let missing = "00000000000000000000000000000000000000ff";
        let err = build(missing).unwrap_err();
        assert!(err.contains(&format!("commit {missing} is not in")) && err.contains("--unshallow"), "{err}");
        assert!(!Path::new(CACHE).join(format!("prev-{missing}")).exists(), "it left a cache folder");
    }

    /// The real build (minutes when the cache is cold): run with --ignored.
    #[test]
    #[ignore]
    fn the_previous_release_builds_and_runs() {
        let out = Command::new(agent()).arg("--version").output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("dockblock-agent "));
    }
}
