//! The bench's own little world: an "outside" namespace joined to the host by
//! a veth (the host end plays the uplink), a Docker network with its own
//! bridge, and one busybox container with published ports. Every name starts
//! with `dbb`/`dockblock-bench`, every address is in 198.18.0.0/15, and
//! nothing touches the machine's own interfaces or docker0. `Topology` tears
//! everything down on drop; `cleanup_leftovers` removes what a killed run
//! left behind.
use super::cmd::{self, in_ns, ok, quiet};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const NS: &str = "dbb-out";
/// Host end of the veth: the uplink under test.
pub const HOST_IF: &str = "dbbu0";
pub const NS_IF: &str = "dbbo0";
pub const HOST_IP: &str = "198.18.200.1";
pub const NS_IP: &str = "198.18.200.2";
pub const NETWORK: &str = "dockblock-bench-net";
pub const BRIDGE: &str = "dbbbr0";
pub const SUBNET: &str = "198.19.200.0/24";
pub const CONTAINER: &str = "dockblock-bench-web";
/// The image the end-to-end tests import from busybox-static.
pub const IMAGE: &str = "dockblock-busybox:test";
/// Published TCP+UDP port every filter blocks (clients dial it) ...
pub const BLOCKED_PORT: u16 = 18080;
/// ... and the container port behind it (what DOCKER-USER and TC see).
pub const BLOCKED_CPORT: u16 = 28080;
/// Published HTTP port that stays open (latency probes).
pub const ALLOWED_PORT: u16 = 18081;
pub const ALLOWED_CPORT: u16 = 28081;
/// Published iperf3 port (throughput probes).
pub const IPERF_PORT: u16 = 15201;
pub const IPERF_CPORT: u16 = 25201;
/// Pin folder of the agent the bench drives.
pub const PIN_DIR: &str = "/sys/fs/bpf/dockblock-bench";
/// Pids of servers the bench started, for cleanup after a killed run.
const PID_FILE: &str = "/run/dockblock-bench.pids";

pub struct Topology {
    pub host_mac: String,
    pub ns_mac: String,
    pub container_ip: String,
    /// The container's pid, for nsenter into its network namespace.
    pid: String,
    iperf: Option<Child>,
}

impl Topology {
    pub fn up() -> Result<Topology> {
        cleanup_leftovers();
        // The guard exists before the first step, so a failure undoes it all.
        let mut t = Topology {
            host_mac: String::new(),
            ns_mac: String::new(),
            container_ip: String::new(),
            pid: String::new(),
            iperf: None,
        };
        ok(&["ip", "netns", "add", NS])?;
        ok(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS])?;
        ok(&["ip", "addr", "add", &format!("{HOST_IP}/30"), "dev", HOST_IF])?;
        ok(&["ip", "link", "set", HOST_IF, "up"])?;
        ok(&in_ns(NS, &["ip", "addr", "add", &format!("{NS_IP}/30"), "dev", NS_IF]))?;
        ok(&in_ns(NS, &["ip", "link", "set", NS_IF, "up"]))?;
        ok(&in_ns(NS, &["ip", "link", "set", "lo", "up"]))?;
        // Like a spoofing attacker, the outside never sees the SYN-ACKs the
        // flood provokes: drop them on arrival, so no RSTs flow back and the
        // host's counters count flood packets only.
        ok_input_ns(&format!(
            "table inet dbb_outside {{\n chain c {{\n  \
             type filter hook prerouting priority raw; policy accept;\n  \
             tcp sport {BLOCKED_PORT} tcp flags & (syn | ack) == (syn | ack) drop\n }}\n}}\n"
        ))?;
        // Frames sent with XDP_TX (the live-frames generator) are only taken
        // in by a veth with NAPI: an XDP program in native mode, or GRO on.
        ok(&["ethtool", "-K", HOST_IF, "gro", "on"])?;
        t.host_mac = read_mac(None, HOST_IF)?;
        t.ns_mac = read_mac(Some(NS), NS_IF)?;

        ensure_image()?;
        ok(&[
            "docker",
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            SUBNET,
            "-o",
            &format!("com.docker.network.bridge.name={BRIDGE}"),
            NETWORK,
        ])?;
        let publish = [
            format!("{HOST_IP}:{BLOCKED_PORT}:{BLOCKED_CPORT}/tcp"),
            format!("{HOST_IP}:{BLOCKED_PORT}:{BLOCKED_CPORT}/udp"),
            format!("{HOST_IP}:{ALLOWED_PORT}:{ALLOWED_CPORT}/tcp"),
            format!("{HOST_IP}:{IPERF_PORT}:{IPERF_CPORT}/tcp"),
        ];
        let script = format!(
            "mkdir -p /www && echo dockblock-ok > /www/index.html && \
             httpd -p {ALLOWED_CPORT} -h /www && exec httpd -f -p {BLOCKED_CPORT} -h /www"
        );
        let mut args = vec!["docker", "run", "-d", "--name", CONTAINER];
        args.extend(["--network", NETWORK]);
        for p in &publish {
            args.extend(["-p", p.as_str()]);
        }
        args.extend([IMAGE, "sh", "-c", &script]);
        ok(&args)?;
        let ip = ok(&[
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            CONTAINER,
        ])?;
        t.container_ip = ip.trim().to_string();
        if t.container_ip.is_empty() {
            bail!("container {CONTAINER} has no IP");
        }
        let pid = ok(&["docker", "inspect", "-f", "{{.State.Pid}}", CONTAINER])?;
        t.pid = pid.trim().to_string();
        // Counts what reaches the container on the blocked port: packets
        // that got past every filter.
        let count = format!(
            "table inet dbb_in {{\n chain c {{\n  type filter hook prerouting priority raw; policy accept;\n  \
             tcp dport {BLOCKED_CPORT} counter\n  udp dport {BLOCKED_CPORT} counter\n }}\n}}\n"
        );
        cmd::ok_input(&["nsenter", "-t", &t.pid, "-n", "nft", "-f", "-"], &count)?;
        // iperf3 (a host binary) in the container's network namespace: the
        // traffic takes the same published-port path as to a containerised one.
        let child = Command::new("nsenter")
            .args(["-t", pid.trim(), "-n", "timeout", "3600", "iperf3", "-s"])
            .args(["-p", &IPERF_CPORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        let _ = fs::write(PID_FILE, format!("{}\n", child.id()));
        t.iperf = Some(child);
        t.wait_ready(pid.trim())?;
        Ok(t)
    }

    /// Packets that reached the container on the blocked port so far.
    pub fn container_hits(&self) -> Result<u64> {
        let out = ok(&["nsenter", "-t", &self.pid, "-n", "nft", "-j", "list", "table", "inet", "dbb_in"])?;
        let j: serde_json::Value = serde_json::from_str(&out).context("nft -j in the container")?;
        Ok(j["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["rule"]["expr"].as_array().into_iter().flatten())
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum())
    }

    /// The web server answers through the published port from outside and
    /// iperf3 listens.
    fn wait_ready(&self, pid: &str) -> Result<()> {
        let url = format!("http://{HOST_IP}:{ALLOWED_PORT}/");
        let sport = format!("sport = :{IPERF_CPORT}");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let http = cmd::succeeds(&in_ns(NS, &["curl", "-sf", "--max-time", "1", &url]));
            let iperf =
                ok(&["nsenter", "-t", pid, "-n", "ss", "-Htln", &sport]).is_ok_and(|o| !o.trim().is_empty());
            if http && iperf {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("container {CONTAINER}: no answer on {url} or no iperf3 on {IPERF_CPORT} after 15 s")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut c) = self.iperf.take() {
            // SIGTERM, which `timeout` passes on to iperf3; SIGKILL would
            // orphan the server instead.
            // SAFETY: the pid is our own child, not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                // Still there: kill the server (the child of our `timeout`,
                // by parent pid), then `timeout` itself.
                quiet(&["pkill", "-KILL", "-P", &c.id().to_string()]);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        cleanup_leftovers();
    }
}

fn ok_input_ns(nft: &str) -> Result<()> {
    cmd::ok_input(&in_ns(NS, &["nft", "-f", "-"]), nft).map(drop)
}

fn read_mac(ns: Option<&str>, ifname: &str) -> Result<String> {
    let path = format!("/sys/class/net/{ifname}/address");
    let out = match ns {
        Some(ns) => ok(&in_ns(ns, &["cat", &path]))?,
        None => fs::read_to_string(&path).with_context(|| format!("reading {path}"))?,
    };
    Ok(out.trim().to_string())
}

/// Imports `IMAGE` from the host's busybox-static unless it exists, the way
/// tests/src/docker.rs does (nothing can be pulled here).
fn ensure_image() -> Result<()> {
    if cmd::succeeds(&["docker", "image", "inspect", IMAGE]) {
        return Ok(());
    }
    let script = format!(
        "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/tmp; cp /bin/busybox $d/bin/; \
         for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $d/bin/$a; done; \
         tar -C $d -cf - . | docker import --change 'CMD [\"/bin/sh\"]' - {IMAGE}; rm -rf $d"
    );
    ok(&["sh", "-c", &script]).map(drop)
}

/// Removes everything a bench run creates, whether or not it exists: agent
/// links and pins, xdp-filter, the bench's iptables rules and nft tables,
/// the container, network, namespace, veth and dummy device, servers, and
/// the bench's conntrack entries.
pub fn cleanup_leftovers() {
    let agent = super::agent_bin();
    if std::path::Path::new(PIN_DIR).exists() {
        quiet(&[agent.to_str().unwrap_or("true"), "--pin-dir", PIN_DIR, "detach"]);
        let _ = fs::remove_dir_all(PIN_DIR);
    }
    super::variants::remove_all_rules();
    if let Ok(pids) = fs::read_to_string(PID_FILE) {
        for pid in pids.split_whitespace() {
            // Only a process that still is our iperf3 server.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("iperf3") && cmdline.contains(&IPERF_CPORT.to_string()) {
                quiet(&["kill", pid]);
            }
        }
        let _ = fs::remove_file(PID_FILE);
    }
    quiet(&["docker", "rm", "-f", CONTAINER]);
    quiet(&["docker", "network", "rm", NETWORK]);
    quiet(&["ip", "netns", "del", NS]);
    quiet(&["ip", "link", "del", HOST_IF]);
    quiet(&["ip", "link", "del", super::program_cost::DUMMY]);
    clear_conntrack();
}

/// Deletes the conntrack entries of flows the outside namespace opened, so
/// every measurement starts from an empty table (for our flows; nobody
/// else's entries are touched).
pub fn clear_conntrack() {
    for _ in 0..4 {
        let out = cmd::run_full(Duration::from_secs(30), &["conntrack", "-D", "-s", NS_IP], None);
        // conntrack exits 1 when nothing matched.
        match out {
            Ok(o) if o.ok && !o.stderr.contains(" 0 flow entries") => continue,
            _ => break,
        }
    }
}
