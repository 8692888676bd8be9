//! Drives the real `dockblock-agent` binary, one process per command, the way
//! an operator would. Each test gets its own pin folder, so its links and maps
//! are separate from any other dockblock state on the machine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dockblock_testkit::agent as cli;

use crate::describe;

const BPFFS: &str = "/sys/fs/bpf";

pub struct Agent {
    bin: PathBuf,
    pin_dir: String,
}

impl Agent {
    /// Uses pin folder `/sys/fs/bpf/dockblock-test-<tag>` and state dir
    /// `/run/dockblock-tests/dockblock-test-<tag>`; state a crashed earlier
    /// run left there is detached and removed first.
    pub fn new(tag: &str) -> Agent {
        let a = Agent { bin: agent_bin(), pin_dir: format!("{BPFFS}/dockblock-test-{tag}") };
        a.cleanup();
        a
    }

    pub fn pin_dir(&self) -> &str {
        &self.pin_dir
    }

    /// Where this agent saves its rules (`DOCKBLOCK_STATE_DIR` of every
    /// command it runs): `/run/dockblock-tests/<pin folder name>`.
    pub fn state_dir(&self) -> PathBuf {
        cli::state_dir(&self.pin_dir)
    }

    /// The saved rule set's file in [`state_dir`](Self::state_dir).
    pub fn state_file(&self) -> PathBuf {
        let name = Path::new(&self.pin_dir).file_name().expect("a pin folder name");
        self.state_dir().join(format!("{}.rules.toml", name.to_string_lossy()))
    }

    /// Path of the agent binary, e.g. to run it under `setpriv`.
    pub fn bin(&self) -> &str {
        self.bin.to_str().expect("utf-8 path")
    }

    /// An unstarted `dockblock-agent --pin-dir <dir> <args>`, for callers
    /// that need to spawn several at once; nothing bounds its run time.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--pin-dir").arg(&self.pin_dir).args(args);
        cmd.env(cli::STATE_DIR_ENV, self.state_dir());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// `dockblock-agent --pin-dir <dir> <args>`, 30 s limit.
    pub fn run(&self, args: &[&str]) -> Output {
        cli::output(&self.bin, &self.pin_dir, Duration::from_secs(30), args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "dockblock-agent {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts exit code `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "dockblock-agent {args:?} should exit {code}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs with `--json` appended and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} --json: {e}: {out}"))
    }

    /// `dockblock-agent --pin-dir <dir> <args>` with `input` on stdin,
    /// 30 s limit (under `timeout`).
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("30").arg(&self.bin).arg("--pin-dir").arg(&self.pin_dir).args(args);
        cmd.env(cli::STATE_DIR_ENV, self.state_dir());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A command that exits without reading is reported by its status.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        child.wait_with_output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    /// Starts `dockblock-agent events --json <args>` in the background, for
    /// at most `limit` (under `timeout`); its lines arrive as they are printed.
    pub fn events(&self, args: &[&str], limit: Duration) -> Events {
        let mut cmd = Command::new("timeout");
        cmd.arg(limit.as_secs().max(1).to_string()).arg(&self.bin).arg("--pin-dir").arg(&self.pin_dir);
        cmd.env(cli::STATE_DIR_ENV, self.state_dir());
        cmd.args(["events", "--json"]).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Events { child, lines: rx }
    }

    fn cleanup(&self) {
        cli::detach_and_remove(&self.bin, &self.pin_dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A running `dockblock-agent events --json`; stopped on drop.
pub struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Events {
    /// The first event printed from now on for which `want` holds, waiting
    /// at most `within`; every line must be JSON.
    pub fn find(
        &self,
        within: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let line = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
            let event: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("events --json line {line:?}: {e}"));
            if want(&event) {
                return Some(event);
            }
        }
    }

    /// Waits for the process to exit on its own (e.g. after `--count`).
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("wait for events")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SIGTERM reaches the agent through `timeout`; a no-op once reaped.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: the pid is our own child, not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// `$DOCKBLOCK_AGENT_BIN`, else `dockblock-agent` next to the test's `deps/`
/// folder, where `cargo build --workspace` puts it.
fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DOCKBLOCK_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("dockblock-agent"))
        .expect("test exe has no grandparent folder");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p dockblock-agent` first or set DOCKBLOCK_AGENT_BIN",
        bin.display()
    );
    bin
}

/// Points DOCKER_HOST (inherited by the agent) at a missing socket until
/// dropped: the agent then works as without Docker. For tests about the
/// CLI without Docker: with an engine, every changing verb also writes the
/// rules of the host's containers' own `dockblock.*` labels (other tests'
/// containers), and `list` shows what rules cover now.
///
/// The variable is the process's, and tests run in threads: the first
/// guard sets it, the last one dropped puts the old value back (one
/// test's drop must not hand the engine to another that is still running).
pub struct NoEngine(());

/// Live guards, and DOCKER_HOST as it was before the first.
static NO_ENGINE: std::sync::Mutex<(usize, Option<std::ffi::OsString>)> = std::sync::Mutex::new((0, None));

impl NoEngine {
    pub fn set() -> NoEngine {
        let mut live = NO_ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        if live.0 == 0 {
            live.1 = std::env::var_os("DOCKER_HOST");
            std::env::set_var("DOCKER_HOST", "unix:///nonexistent/dockblock-tests-no-engine.sock");
        }
        live.0 += 1;
        NoEngine(())
    }
}

impl Drop for NoEngine {
    fn drop(&mut self) {
        let mut live = NO_ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        live.0 -= 1;
        if live.0 == 0 {
            match live.1.take() {
                Some(v) => std::env::set_var("DOCKER_HOST", v),
                None => std::env::remove_var("DOCKER_HOST"),
            }
        }
    }
}
