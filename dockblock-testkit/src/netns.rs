//! An "outside" host in its own network namespace, wired to the real host by a
//! veth pair. The host end plays the Docker host's uplink, so the agent can
//! attach XDP to it without ever touching the machine's real eth0.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::cmd::{self, in_ns, Error};
use crate::{quiet, run, run_for, run_ok};

/// Names and addresses of an outside namespace and its veth pair.
#[derive(Clone, Debug)]
pub struct Wiring {
    pub ns: String,
    /// The host end: the uplink under test.
    pub host_if: String,
    pub ns_if: String,
    /// Addresses of a /30 on the pair.
    pub host_ip: String,
    pub ns_ip: String,
}

impl Wiring {
    /// The tests' naming: netns `dbt-<tag>`, veth `dbu<tag>` (host) /
    /// `dbo<tag>` (ns), 198.18.<subnet>.0/30 (host .1, ns .2).
    pub fn tagged(tag: &str, subnet: u8) -> Wiring {
        assert!(tag.len() <= 12, "tag {tag:?} too long for an interface name");
        Wiring {
            ns: format!("dbt-{tag}"),
            host_if: format!("dbu{tag}"),
            ns_if: format!("dbo{tag}"),
            host_ip: format!("198.18.{subnet}.1"),
            ns_ip: format!("198.18.{subnet}.2"),
        }
    }
}

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
        Outside::create(Wiring::tagged(tag, subnet)).unwrap_or_else(|e| panic!("outside namespace: {e}"))
    }

    /// Creates the namespace and veth pair of `w` (after removing leftovers
    /// of a crashed run), addresses both ends and brings them up.
    pub fn create(w: Wiring) -> Result<Outside, Error> {
        let Wiring { ns, host_if, ns_if, host_ip, ns_ip } = w;
        // The guard exists before the first step, so a failure undoes it all.
        let o = Outside { ns, host_if, ns_if, host_ip, ns_ip };
        o.remove();
        cmd::ok(&["ip", "netns", "add", &o.ns])?;
        cmd::ok(&[
            "ip", "link", "add", &o.host_if, "type", "veth", "peer", "name", &o.ns_if, "netns", &o.ns,
        ])?;
        cmd::ok(&["ip", "addr", "add", &format!("{}/30", o.host_ip), "dev", &o.host_if])?;
        cmd::ok(&["ip", "link", "set", &o.host_if, "up"])?;
        cmd::ok(&o.argv(&["ip", "addr", "add", &format!("{}/30", o.ns_ip), "dev", &o.ns_if]))?;
        cmd::ok(&o.argv(&["ip", "link", "set", &o.ns_if, "up"]))?;
        cmd::ok(&o.argv(&["ip", "link", "set", "lo", "up"]))?;
        Ok(o)
    }

    /// `argv` run inside the namespace (`ip netns exec <ns> argv...`), for
    /// the fallible runners in [`cmd`].
    pub fn argv<'a>(&'a self, argv: &[&'a str]) -> Vec<&'a str> {
        in_ns(&self.ns, argv)
    }

    /// MAC address of the host end.
    pub fn host_mac(&self) -> Result<String, Error> {
        let path = format!("/sys/class/net/{}/address", self.host_if);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::Unexpected(format!("reading {path}: {e}")))
    }

    /// MAC address of the namespace end.
    pub fn ns_mac(&self) -> Result<String, Error> {
        let path = format!("/sys/class/net/{}/address", self.ns_if);
        Ok(cmd::ok(&self.argv(&["cat", &path]))?.trim().to_string())
    }

    /// The namespace end of the veth.
    pub fn ns_if(&self) -> &str {
        &self.ns_if
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

    /// The command prefix that runs a program in the namespace
    /// (`ip netns exec <ns>`).
    pub fn netns_cmd(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].map(String::from).to_vec()
    }

    /// Gives the namespace a second IPv4 source address `ip` (a /32 on its
    /// veth) and routes it back from the host over the uplink.
    pub fn add_source(&self, ip: &str) {
        self.exec_ok("ip", &["addr", "add", &format!("{ip}/32"), "dev", &self.ns_if]);
        run_ok("ip", &["route", "add", &format!("{ip}/32"), "dev", &self.host_if]);
    }

    /// `curl_ok` with the request sent from source address `src`.
    pub fn curl_from(&self, src: &str, url: &str, marker: &str) -> bool {
        let full = ["netns", "exec", &self.ns, "curl", "-s", "--max-time", "3", "--interface", src, url];
        let out = run_for(Duration::from_secs(10), "ip", &full);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(marker)
    }

    /// Enables IPv6 on both ends of the veth and adds `host`/64 on the host
    /// end and `ns`/64 in the namespace, without duplicate address detection
    /// so they are usable at once.
    pub fn add_ipv6(&self, host: &str, ns: &str) {
        let host_sysctl = format!("net.ipv6.conf.{}.disable_ipv6=0", self.host_if);
        let ns_sysctl = format!("net.ipv6.conf.{}.disable_ipv6=0", self.ns_if);
        run_ok("sysctl", &["-qw", &host_sysctl]);
        self.exec_ok("sysctl", &["-qw", &ns_sysctl]);
        run_ok("ip", &["-6", "addr", "add", &format!("{host}/64"), "dev", &self.host_if, "nodad"]);
        self.exec_ok("ip", &["-6", "addr", "add", &format!("{ns}/64"), "dev", &self.ns_if, "nodad"]);
    }

    fn remove(&self) {
        remove(&self.ns, &self.host_if);
    }
}

/// Removes namespace `ns` and host link `host_if` if they exist.
pub fn remove(ns: &str, host_if: &str) {
    // Deleting the namespace destroys the ns end, which takes the host end
    // with it; deleting the host end too covers a half-built earlier run.
    quiet("ip", &["netns", "del", ns]);
    remove_link(host_if);
}

/// A server process started by a test; stopped on drop. Bound it in time
/// itself (e.g. under `timeout`) in case the test process gets killed.
pub struct Background(Child);

impl Background {
    /// Starts `cmd` (program and arguments only, inside namespace `netns`
    /// if given) and waits up to 5 s until something listens on TCP `port`
    /// there, so the first connect does not race the server.
    pub fn spawn(cmd: &mut Command, port: u16, netns: Option<&str>) -> Background {
        Background::spawn_bound(cmd, port, netns, "TCP")
    }

    /// Like `spawn`, but waits until a UDP socket is bound to `port`.
    pub fn spawn_udp(cmd: &mut Command, port: u16, netns: Option<&str>) -> Background {
        Background::spawn_bound(cmd, port, netns, "UDP")
    }

    /// `spawn`, waiting for a `proto` ("TCP" or "UDP") socket on `port`.
    fn spawn_bound(cmd: &mut Command, port: u16, netns: Option<&str>, proto: &str) -> Background {
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
        let ss_flags = if proto == "UDP" { "-Hlun" } else { "-Htln" };
        let mut ss = vec!["ss", ss_flags, &filter];
        if let Some(ns) = netns {
            ss.splice(0..0, ["ip", "netns", "exec", ns]);
        }
        for _ in 0..50 {
            if !run_ok(ss[0], &ss[1..]).trim().is_empty() {
                return bg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{cmd:?}: nothing listens on {proto} {port} after 5 s");
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

/// A background process whose standard output the test reads once it has
/// stopped (e.g. a UDP sink). Stopped on drop. Bound it in time itself (run
/// it under `timeout`) in case the test process gets killed.
pub struct Capture(Option<Child>);

impl Capture {
    /// Runs `enter... args...` (`enter` is a namespace prefix such as
    /// `Outside::netns_cmd`, or empty for the host) with stdout captured,
    /// and waits up to 5 s until a UDP socket is bound to `udp_port` in
    /// that namespace.
    pub fn udp(enter: &[String], args: &[&str], udp_port: u16) -> Capture {
        let all: Vec<&str> = enter.iter().map(String::as_str).chain(args.iter().copied()).collect();
        let child = Command::new(all[0])
            .args(&all[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {all:?}: {e}"));
        let capture = Capture(Some(child));
        let filter = format!("sport = :{udp_port}");
        let ss: Vec<&str> =
            enter.iter().map(String::as_str).chain(["ss", "-Hlun", filter.as_str()]).collect();
        for _ in 0..50 {
            if !run_ok(ss[0], &ss[1..]).trim().is_empty() {
                return capture;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{all:?}: nothing bound to UDP {udp_port} after 5 s");
    }

    /// Stops the process (SIGTERM) and returns what it wrote to stdout.
    pub fn stop(mut self) -> Vec<u8> {
        let child = self.0.take().expect("running");
        // SAFETY: the pid is our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait_with_output().map(|o| o.stdout).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: the pid is our own child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// A veth pair on the host, both ends up, nothing sent through it: an idle
/// uplink and bridge for programs that are attached but only test-run.
/// Removed on drop (deleting one end deletes both).
pub struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    /// Creates `a` <-> `b` after removing a leftover `a`.
    pub fn create(a: &str, b: &str) -> Result<VethPair, Error> {
        remove_link(a);
        let pair = VethPair { a: a.to_string(), b: b.to_string() };
        cmd::ok(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
        cmd::ok(&["ip", "link", "set", a, "up"])?;
        cmd::ok(&["ip", "link", "set", b, "up"])?;
        Ok(pair)
    }

    pub fn a(&self) -> &str {
        &self.a
    }

    pub fn b(&self) -> &str {
        &self.b
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        remove_link(&self.a);
    }
}

/// `ip link del NAME`, best effort.
pub fn remove_link(name: &str) {
    quiet("ip", &["link", "del", name]);
}
