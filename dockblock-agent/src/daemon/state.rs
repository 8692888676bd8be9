//! The daemon's state file: written by `run` after each sync and on engine
//! (dis)connects, read by `status`. A small JSON file next to the journal,
//! replaced by rename so a reader sees the old or the new one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    paths::PinDir,
};

/// What the daemon writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// When it started (RFC 3339, UTC).
    pub since: String,
    /// When the kernel last matched the engine's state (null before the
    /// first sync).
    pub last_sync: Option<String>,
    /// "connected" or "down".
    pub engine: String,
    /// What the last sync could not do (a bad label, a veth it could not
    /// hook, the engine unreachable), one sentence each.
    pub problems: Vec<String>,
    /// Set when it stopped on SIGTERM/SIGINT (the kernel state stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The daemon's part of `status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonStatus {
    /// A daemon process of this pin folder is alive.
    pub running: bool,
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub last_sync: Option<String>,
    /// "connected", "down", or null when no daemon runs.
    pub engine: Option<String>,
    pub problems: Vec<String>,
    /// When the last daemon stopped on SIGTERM/SIGINT (null while one runs,
    /// and after a crash: then `status` names the pid that is gone).
    pub stopped: Option<String>,
}

impl DaemonStatus {
    /// From the state file of `pins`; no file: no daemon ever ran.
    pub fn read(pins: &PinDir) -> Result<(DaemonStatus, Option<DaemonState>)> {
        let Some(state) = read(pins)? else { return Ok((DaemonStatus::default(), None)) };
        let running = state.stopped.is_none() && pid_alive(state.pid);
        let status = DaemonStatus {
            running,
            pid: running.then_some(state.pid),
            since: running.then(|| state.since.clone()),
            last_sync: running.then(|| state.last_sync.clone()).flatten(),
            engine: running.then(|| state.engine.clone()),
            problems: if running { state.problems.clone() } else { vec![] },
            stopped: state.stopped.clone().filter(|_| !running),
        };
        Ok((status, Some(state)))
    }
}

pub fn read(pins: &PinDir) -> Result<Option<DaemonState>> {
    let path = pins.daemon_state();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::io("parse daemon state", &path, std::io::Error::other(e.to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read daemon state", &path, e)),
    }
}

pub fn write(pins: &PinDir, state: &DaemonState) -> Result<()> {
    let path = pins.daemon_state();
    let text = serde_json::to_vec(state).expect("daemon state serializes");
    crate::private_file::write(&path, &text, "write daemon state")
}

/// This process's pid as /proc names it, which is what the state file
/// records and `status` looks up. The same as `std::process::id()`, except
/// in a container that has the host's /proc bind-mounted in a pid
/// namespace of its own (a Swarm service cannot share the host's): there
/// it is the host's pid, the one the host CLI sees.
pub fn own_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// Whether a process with this pid exists, in /proc's pid namespace (see
/// [`own_pid`]).
fn pid_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Now as RFC 3339 UTC with milliseconds: `2026-12-02T04:22:14.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_millis(951_782_400_250)), "2000-02-29T00:00:00.250Z");
        assert_eq!(rfc3339(Duration::from_secs(1_796_185_334)), "2026-12-02T04:22:14.000Z");
    }

    #[test]
    fn own_pid_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert_eq!(own_pid(), std::process::id());
        assert!(!pid_alive(0));
    }
}
