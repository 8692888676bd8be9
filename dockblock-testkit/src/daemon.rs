//! The daemon, `dockblock-agent run`, as a subprocess with its own pin
//! folder: started, ready once `status --json` shows it running with a
//! first sync, stopped with SIGTERM on drop (SIGKILL if it lingers), also
//! after a panic. Its stderr (the tracing log) goes to a file the test can
//! read and that a failure message can quote.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::agent;
use crate::cmd::{self, Error};

/// How long a start (attach, programs through the verifier, first sync) may take.
pub const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long SIGTERM is given before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(15);

pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    pin_dir: String,
    log: PathBuf,
}

impl Daemon {
    /// `bin --pin-dir <pin_dir> run <args...>` (args: uplinks and `run`'s
    /// options), ready within [`READY_WITHIN`]. The log level is
    /// `RUST_LOG` when set, else info with the daemon's debug lines.
    pub fn start(bin: &Path, pin_dir: &str, args: &[&str]) -> Result<Daemon, Error> {
        Daemon::start_env(bin, pin_dir, args, &[])
    }

    /// `start` with extra environment variables (`DOCKER_HOST`, `RUST_LOG`).
    pub fn start_env(
        bin: &Path,
        pin_dir: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, Error> {
        let mut d = Daemon::spawn_env(bin, pin_dir, args, env)?;
        d.wait_until(READY_WITHIN, "running with a first sync", |s| {
            s["running"] == true && s["last_sync"].is_string()
        })?;
        Ok(d)
    }

    /// The process started, not waited for (a start without an engine, or
    /// one that must fail); stopped on drop as the others.
    pub fn spawn_env(
        bin: &Path,
        pin_dir: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, Error> {
        let log = std::env::temp_dir().join(format!(
            "dockblock-daemon-{}-{}.log",
            pin_dir.trim_matches('/').replace('/', "_"),
            std::process::id()
        ));
        let file =
            File::create(&log).map_err(|e| Error::Unexpected(format!("create {}: {e}", log.display())))?;
        let mut command = Command::new(bin);
        command.arg("--pin-dir").arg(pin_dir).arg("run").args(args);
        command.env(agent::STATE_DIR_ENV, agent::state_dir(pin_dir));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,dockblock_agent=debug");
        }
        command.envs(env.iter().copied());
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child =
            command.spawn().map_err(|e| Error::Start { cmd: format!("{} run", bin.display()), source: e })?;
        Ok(Daemon { child: Some(child), bin: bin.to_path_buf(), pin_dir: pin_dir.to_string(), log })
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// `start` that panics, for tests.
    pub fn started(bin: &Path, pin_dir: &str, args: &[&str]) -> Daemon {
        Daemon::start(bin, pin_dir, args).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The tracing log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The `daemon` object of `status --json`.
    pub fn status(&self) -> Result<serde_json::Value, Error> {
        let out = agent::output(&self.bin, &self.pin_dir, cmd::LIMIT, &["status", "--json"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Unexpected(format!("status --json: {e}: {text} {}", cmd::describe(&out))))?;
        Ok(v["daemon"].clone())
    }

    /// The `last_sync` the daemon reports now (None before the first).
    pub fn last_sync(&self) -> Option<String> {
        self.status().ok()?["last_sync"].as_str().map(str::to_string)
    }

    /// Waits until a sync that finished after `previous` (a `last_sync`
    /// value), i.e. one that saw what the caller changed before the call.
    /// Syncs are marked by events; call it after the change.
    pub fn wait_sync_after(&mut self, previous: Option<&str>, within: Duration) -> Result<(), Error> {
        let previous = previous.map(str::to_string);
        self.wait_until(within, "a newer sync", |s| {
            s["last_sync"].as_str().is_some_and(|t| Some(t) != previous.as_deref())
        })
    }

    /// Polls the `daemon` status every 100 ms until `ok` holds; fails if the
    /// process exits or `within` passes, quoting the end of its log.
    pub fn wait_until(
        &mut self,
        within: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Unexpected(format!(
                        "daemon exited ({status}) before {what}; log: {}",
                        self.log_tail()
                    )));
                }
            }
            let last = self.status();
            if last.as_ref().is_ok_and(&ok) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unexpected(format!(
                    "daemon not {what} within {within:?} (status: {last:?}); log: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and its exit status (SIGKILL after 15 s: then None).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL, as a crash would end it.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: the pid is our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        cmd::wait_limit(&mut child, STOP_WITHIN)
    }

    /// The last 40 lines of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
