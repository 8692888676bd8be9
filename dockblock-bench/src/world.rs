//! The bench's world (the bottom layer: peers, traffic and parts build on
//! it, nothing here imports them): an "outside" namespace joined to the host
//! by a veth (the host end plays the uplink), a Docker network with its own
//! bridge, and one busybox container with published ports, all from the
//! test kit's guards; plus where the agent and this binary are. Every name
//! starts with `dbb`/`dockblock-bench`, every address is in 198.18.0.0/15,
//! and nothing touches the machine's own interfaces or docker0. `Topology`
//! tears its world down on drop; `remove_leftovers` removes what a killed
//! run left behind.
use anyhow::{bail, Context, Result};
use dockblock_testkit::{
    agent::Cli,
    cmd::{self, in_ns, ok},
    docker::{self, Container, Network},
    netns::{self, Outside, Wiring},
};
use std::{
    fs,
    path::PathBuf,
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

/// The config file of every agent the bench runs.
const CONFIG_FILE: &str = "/run/dockblock-bench.toml";

/// Gives every agent the bench runs (CLI and daemon, through the inherited
/// `DOCKBLOCK_CONFIG`) a config without failsafe ports: the bench blocks
/// every port (`1-65535`, 65,535-rule files) on its own veth, where no
/// session can be cut off. An environment variable, so agents of releases
/// without config files ignore it.
pub fn use_bench_config() -> Result<()> {
    std::fs::write(CONFIG_FILE, "# written by dockblock-bench\nfailsafe = []\n")
        .with_context(|| format!("writing {CONFIG_FILE}"))?;
    // Set before any thread or child starts.
    std::env::set_var("DOCKBLOCK_CONFIG", CONFIG_FILE);
    Ok(())
}

/// The agent binary: `$DOCKBLOCK_AGENT_BIN`, else `dockblock-agent` next to
/// this binary (`cargo xtask bench` builds both into target/release).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DOCKBLOCK_AGENT_BIN") {
        return PathBuf::from(p);
    }
    bench_bin().with_file_name("dockblock-agent")
}

/// This binary, which the bench runs again for its probes (see probe/).
pub fn bench_bin() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dockblock-bench"))
}

/// The agent under test, with the bench's own pin folder.
pub fn agent() -> Cli {
    Cli::new(agent_bin(), PIN_DIR)
}

/// Runs the agent, failing unless it exits 0; returns stdout.
pub fn agent_ok(args: &[&str]) -> Result<String> {
    Ok(agent().ok(args)?)
}

/// Runs the agent with `limit` (large rule sets take long to plan).
pub fn agent_ok_within(limit: Duration, args: &[&str]) -> Result<String> {
    Ok(agent().ok_within(limit, args)?)
}

/// Detaches the agent and removes its pin folder, if there is one.
pub fn detach_agent() {
    agent().detach_and_remove();
}

/// The agent's pins gone as after a reboot; its saved rule set kept.
pub fn reboot_agent() {
    agent().detach_keep_state();
}

pub struct Topology {
    pub host_mac: String,
    pub ns_mac: String,
    pub container_ip: String,
    /// The container's pid, for nsenter into its network namespace.
    pid: String,
    iperf: Option<Child>,
    // Guards, dropped in this order: the container before its network, the
    // namespace last.
    _web: Container,
    _net: Network,
    _out: Outside,
}

impl Topology {
    pub fn up() -> Result<Topology> {
        let out = Outside::create(Wiring {
            ns: NS.into(),
            host_if: HOST_IF.into(),
            ns_if: NS_IF.into(),
            host_ip: HOST_IP.into(),
            ns_ip: NS_IP.into(),
        })?;
        // Like a spoofing attacker, the outside never sees the SYN-ACKs the
        // flood provokes: drop them on arrival, so no RSTs flow back and the
        // host's counters count flood packets only.
        let nft = format!(
            "table inet dbb_outside {{\n chain c {{\n  \
             type filter hook prerouting priority raw; policy accept;\n  \
             tcp sport {BLOCKED_PORT} tcp flags & (syn | ack) == (syn | ack) drop\n }}\n}}\n"
        );
        cmd::ok_input(&out.argv(&["nft", "-f", "-"]), &nft)?;
        // Frames sent with XDP_TX (the live-frames generator) are only taken
        // in by a veth with NAPI: an XDP program in native mode, or GRO on.
        ok(&["ethtool", "-K", HOST_IF, "gro", "on"])?;
        let (host_mac, ns_mac) = (out.host_mac()?, out.ns_mac()?);

        docker::import_image()?;
        let net = Network::create(NETWORK, SUBNET, BRIDGE)?;
        let publish = [
            format!("{HOST_IP}:{BLOCKED_PORT}:{BLOCKED_CPORT}/tcp"),
            format!("{HOST_IP}:{BLOCKED_PORT}:{BLOCKED_CPORT}/udp"),
            format!("{HOST_IP}:{ALLOWED_PORT}:{ALLOWED_CPORT}/tcp"),
            format!("{HOST_IP}:{IPERF_PORT}:{IPERF_CPORT}/tcp"),
        ];
        let script = format!(
            "mkdir -p /www && echo {marker} > /www/index.html && \
             httpd -p {ALLOWED_CPORT} -h /www && exec httpd -f -p {BLOCKED_CPORT} -h /www",
            marker = docker::MARKER
        );
        let mut args = vec!["--network", NETWORK];
        for p in &publish {
            args.extend(["-p", p.as_str()]);
        }
        args.extend([docker::IMAGE, "sh", "-c", &script]);
        let web = Container::run(CONTAINER, &args)?;
        let pid = web.pid()?;
        // Counts what reaches the container on the blocked port: packets
        // that got past every filter.
        let count = format!(
            "table inet dbb_in {{\n chain c {{\n  type filter hook prerouting priority raw; policy accept;\n  \
             tcp dport {BLOCKED_CPORT} counter\n  udp dport {BLOCKED_CPORT} counter\n }}\n}}\n"
        );
        cmd::ok_input(&["nsenter", "-t", &pid, "-n", "nft", "-f", "-"], &count)?;
        let mut t = Topology {
            host_mac,
            ns_mac,
            container_ip: web.ip().to_string(),
            pid,
            iperf: None,
            _web: web,
            _net: net,
            _out: out,
        };
        // iperf3 (a host binary) in the container's network namespace: the
        // traffic takes the same published-port path as to a containerised one.
        let child = Command::new("nsenter")
            .args(["-t", &t.pid, "-n", "timeout", "3600", "iperf3", "-s"])
            .args(["-p", &IPERF_CPORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        let _ = fs::write(PID_FILE, format!("{}\n", child.id()));
        t.iperf = Some(child);
        t.wait_ready()?;
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
    fn wait_ready(&self) -> Result<()> {
        let url = format!("http://{HOST_IP}:{ALLOWED_PORT}/");
        let sport = format!("sport = :{IPERF_CPORT}");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let http = cmd::succeeds(&in_ns(NS, &["curl", "-sf", "--max-time", "1", &url]));
            let iperf = ok(&["nsenter", "-t", &self.pid, "-n", "ss", "-Htln", &sport])
                .is_ok_and(|o| !o.trim().is_empty());
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
                cmd::ignore(&["pkill", "-KILL", "-P", &c.id().to_string()]);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = fs::remove_file(PID_FILE);
        // Then the guards: container, network, namespace and veth.
    }
}

/// Removes what a killed run left of the world, whether or not it exists:
/// the iperf3 server, the container, network, namespace and veth. (Peers
/// and parts remove their own; see run.rs.)
pub fn remove_leftovers() {
    if let Ok(pids) = fs::read_to_string(PID_FILE) {
        for pid in pids.split_whitespace() {
            // Only a process that still is our iperf3 server.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("iperf3") && cmdline.contains(&IPERF_CPORT.to_string()) {
                cmd::ignore(&["kill", pid]);
            }
        }
        let _ = fs::remove_file(PID_FILE);
    }
    docker::remove_container(CONTAINER);
    docker::remove_network(NETWORK);
    netns::remove(NS, HOST_IF);
    clear_conntrack();
}

/// Deletes the conntrack entries of flows the outside namespace opened, so
/// every measurement starts from an empty table (for our flows; nobody
/// else's entries are touched).
pub fn clear_conntrack() {
    for _ in 0..4 {
        let out = cmd::output(Duration::from_secs(30), &["conntrack", "-D", "-s", NS_IP], None);
        // conntrack exits 1 when nothing matched.
        match out {
            Ok(o)
                if o.status.success() && !String::from_utf8_lossy(&o.stderr).contains(" 0 flow entries") =>
            {
                continue
            }
            _ => break,
        }
    }
}
