//! An "outside" host in its own network namespace, wired to the real host by a
//! veth pair. The host end plays the Docker host's uplink, so the agent can
//! attach XDP to it without ever touching the machine's real eth0.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{quiet, run, run_for, run_ok};

pub struct Outside {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Outside {
    /// Creates netns `dbt-<tag>` and veth `dbu<tag>` (host) / `dbo<tag>` (ns)
    /// on 198.18.<subnet>.0/30: host .1, ns .2. Tests pick distinct subnets.
    pub fn new(tag: &str, subnet: u8) -> Outside {
        assert!(tag.len() <= 12, "tag {tag:?} too long for an interface name");
        let o = Outside {
            ns: format!("dbt-{tag}"),
            host_if: format!("dbu{tag}"),
            ns_if: format!("dbo{tag}"),
            host_ip: format!("198.18.{subnet}.1"),
            ns_ip: format!("198.18.{subnet}.2"),
        };
        o.remove(); // leftovers of a crashed run
        run_ok("ip", &["netns", "add", &o.ns]);
        run_ok("ip", &["link", "add", &o.host_if, "type", "veth", "peer", "name", &o.ns_if, "netns", &o.ns]);
        run_ok("ip", &["addr", "add", &format!("{}/30", o.host_ip), "dev", &o.host_if]);
        run_ok("ip", &["link", "set", &o.host_if, "up"]);
        o.exec_ok("ip", &["addr", "add", &format!("{}/30", o.ns_ip), "dev", &o.ns_if]);
        o.exec_ok("ip", &["link", "set", &o.ns_if, "up"]);
        o.exec_ok("ip", &["link", "set", "lo", "up"]);
        o
    }

    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The host end of the veth: the uplink the agent attaches XDP to.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    pub fn ns_ip(&self) -> &str {
        &self.ns_ip
    }

    /// Runs a command inside the namespace (30 s limit).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.ns, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.ns, cmd];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// One bounded HTTP GET from inside the namespace. True only if curl exits
    /// 0 and the body contains `marker`, so an error page does not count.
    pub fn curl_ok(&self, url: &str, marker: &str) -> bool {
        let full = ["netns", "exec", &self.ns, "curl", "-s", "--max-time", "3", url];
        let out = run_for(Duration::from_secs(10), "ip", &full);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(marker)
    }

    /// Serves `pong` on TCP `port` in the namespace for at most 20 s, until
    /// the returned guard drops.
    pub fn serve_pong(&self, port: u16) -> Background {
        let listen = format!("TCP-LISTEN:{port},reuseaddr,fork");
        let mut cmd = Command::new("timeout");
        cmd.args(["20", "socat", &listen, "SYSTEM:echo pong"]);
        Background::spawn(&mut cmd, port, Some(&self.ns))
    }

    fn remove(&self) {
        // Deleting the namespace destroys the ns end, which takes the host end
        // with it; deleting the host end too covers a half-built earlier run.
        quiet("ip", &["netns", "del", &self.ns]);
        quiet("ip", &["link", "del", &self.host_if]);
    }
}

/// A server process started by a test; stopped on drop. Bound it in time
/// itself (e.g. under `timeout`) in case the test process gets killed.
pub struct Background(Child);

impl Background {
    /// Starts `cmd` (program and arguments only, inside namespace `netns`
    /// if given) and waits up to 5 s until something listens on TCP `port`
    /// there, so the first connect does not race the server.
    pub fn spawn(cmd: &mut Command, port: u16, netns: Option<&str>) -> Background {
        let mut in_ns = Command::new("ip");
        let cmd = match netns {
            Some(ns) => in_ns.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args()),
            None => cmd,
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        // The guard exists before any check can panic, so the server stops.
        let bg = Background(child);
        let filter = format!("sport = :{port}");
        let mut ss = vec!["ss", "-Htln", &filter];
        if let Some(ns) = netns {
            ss.splice(0..0, ["ip", "netns", "exec", ns]);
        }
        for _ in 0..50 {
            if !run_ok(ss[0], &ss[1..]).trim().is_empty() {
                return bg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{cmd:?}: nothing listens on TCP {port} after 5 s");
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: `timeout` passes it on to its child.
        // SAFETY: the pid is our own child, not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.remove();
    }
}
