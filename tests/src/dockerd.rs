//! The one dockerd of the machine, stopped and started by tests that need
//! it gone (a dockerd restart, a simulated reboot). Every guard makes sure
//! dockerd runs again when it drops, with /etc/docker/daemon.json as it
//! was, also when the test fails. Only under the shared tests lock.

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::rig::topology::eventually;
use crate::{quiet, run, run_ok};

pub struct Dockerd {
    had_config: Option<String>,
    /// Live-restore as the running dockerd had it: SIGHUP with the key
    /// gone from daemon.json keeps the value it has, so the drop sets it
    /// back explicitly.
    had_live_restore: Option<String>,
}

const DOCKERD_CONFIG: &str = "/etc/docker/daemon.json";
const DOCKERD_LOG: &str = "/var/log/dockblock-dockerd.log";

impl Dockerd {
    /// Only the guard: dockerd runs again at the end.
    pub fn guard() -> Dockerd {
        Dockerd {
            had_config: std::fs::read_to_string(DOCKERD_CONFIG).ok(),
            had_live_restore: Dockerd::live_restore_now(),
        }
    }

    fn live_restore_now() -> Option<String> {
        let o = run("docker", &["info", "-f", "{{.LiveRestoreEnabled}}"]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Turns live-restore on (containers keep running while dockerd is
    /// down) for the guard's lifetime, through daemon.json (its other
    /// settings, such as setup's IPv6 ones, kept) and SIGHUP.
    pub fn live_restore() -> Dockerd {
        Dockerd::with_live_restore(true)
    }

    /// Live-restore `on` or off (off: containers stop with dockerd, as at
    /// a shutdown), whatever the running dockerd had, for the guard's
    /// lifetime.
    pub fn with_live_restore(on: bool) -> Dockerd {
        let g = Dockerd::guard();
        let config: Value = match &g.had_config {
            Some(text) => serde_json::from_str(text).unwrap_or_else(|e| panic!("{DOCKERD_CONFIG}: {e}")),
            None => serde_json::json!({}),
        };
        assert!(Dockerd::set_live_restore(config, on), "dockerd did not set live-restore to {on}");
        g
    }

    /// Writes `config` with live-restore `on`, SIGHUP, and waits until the
    /// running dockerd has it (false: not within 10 s).
    fn set_live_restore(mut config: Value, on: bool) -> bool {
        config["live-restore"] = on.into();
        std::fs::create_dir_all("/etc/docker").unwrap();
        std::fs::write(DOCKERD_CONFIG, format!("{config}\n")).unwrap();
        Dockerd::hup();
        eventually(Duration::from_secs(10), || {
            Dockerd::live_restore_now().is_some_and(|v| v == on.to_string())
        })
    }

    /// SIGHUP (reload daemon.json) to dockerd, by its pid.
    fn hup() {
        if let Some(pid) = Dockerd::pid() {
            quiet("kill", &["-HUP", &pid]);
        }
    }

    fn pid() -> Option<String> {
        let o = run("pidof", &["dockerd"]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// SIGTERM to dockerd, waits for it to exit, starts it again as
    /// `cargo xtask setup` does and waits until it answers.
    pub fn restart(&self) {
        self.stop();
        Dockerd::start();
    }

    /// SIGTERM to dockerd and waits until it has exited (its containers
    /// stop with it unless live-restore is on).
    pub fn stop(&self) {
        let pid = Dockerd::pid().expect("dockerd runs");
        run_ok("kill", &["-TERM", &pid]);
        assert!(
            eventually(Duration::from_secs(30), || Dockerd::pid().is_none()),
            "dockerd did not exit within 30 s"
        );
    }

    /// Starts dockerd as `cargo xtask setup` does, waits until it answers.
    pub fn start() {
        // Through a shell that exits at once: dockerd outlives the test. It
        // must not keep our inherited descriptors: the `flock` lock around
        // this test run would stay held by dockerd for good.
        let script = format!("setsid dockerd </dev/null >>{DOCKERD_LOG} 2>&1 &");
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        // SAFETY: close_range only, between fork and exec.
        unsafe {
            sh.pre_exec(|| {
                libc::close_range(3, u32::MAX, 0);
                Ok(())
            })
        };
        let status = sh.status().expect("sh");
        assert!(status.success(), "starting dockerd: {status}");
        let up = eventually(Duration::from_secs(30), || {
            crate::try_run_for(Duration::from_secs(5), "docker", &["info"]).is_ok_and(|o| o.status.success())
        });
        assert!(up, "dockerd did not answer within 30 s; see {DOCKERD_LOG}");
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // The running dockerd keeps a live-restore the file no longer names:
        // set it back first, then the file as it was.
        let want = self.had_live_restore.as_deref().map(|v| v == "true");
        if Dockerd::pid().is_some()
            && want.is_some_and(|w| Dockerd::live_restore_now() != Some(w.to_string()))
        {
            let config = self.had_config.as_deref().and_then(|t| serde_json::from_str(t).ok());
            if !Dockerd::set_live_restore(config.unwrap_or_else(|| serde_json::json!({})), want.unwrap()) {
                eprintln!("dockerd did not set live-restore back within 10 s");
            }
        }
        match &self.had_config {
            Some(text) => {
                let _ = std::fs::write(DOCKERD_CONFIG, text);
            }
            None => {
                let _ = std::fs::remove_file(DOCKERD_CONFIG);
            }
        }
        if Dockerd::pid().is_none() {
            Dockerd::start();
        }
        Dockerd::hup();
    }
}
