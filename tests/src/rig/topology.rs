//! Issue 9's end-to-end topology: an agent with its own pin folder and its
//! daemon (`run`), an outside namespace on an uplink the daemon attaches XDP
//! to, a second one on an interface without XDP, both routed to the Docker
//! subnets (direct routing to container addresses, as a neighbour on the LAN
//! can do), web containers that serve on two ports, and the probes, which
//! dial from the namespaces as an attacker does.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dockblock_agent::{paths::PinDir, vethtable};
use dockblock_common::{veth_flag, VethState};
use dockblock_testkit::daemon::Daemon;
use serde_json::Value;

use crate::agent::Agent;
use crate::docker::{remove_container, remove_network, IMAGE, MARKER};
use crate::netns::Outside;
use crate::{describe, quiet, run, run_ok};

/// Every Docker subnet the tests use: docker0's 172.17.0.0/16 and the
/// user-defined networks they create (172.2x.0.0/16).
pub const DOCKER_SUBNETS: &str = "172.16.0.0/12";
/// The web containers' second port: rules on port 80 leave it open, so a
/// page from it proves the container is up and reviewed.
pub const CONTROL_PORT: u16 = 81;

/// The topology. Fields drop in declaration order: the daemon stops, the
/// agent detaches (while the interfaces exist), then the namespaces go.
/// Declare containers after it, so they are removed first.
pub struct Topology {
    daemon: Option<Daemon>,
    pub agent: Agent,
    /// Its host end is the uplink the daemon attaches XDP to.
    pub xdp: Outside,
    /// Joined by an interface without any dockblock program.
    pub plain: Outside,
}

impl Topology {
    /// Namespaces `dbt-<tag>x` on 198.18.<subnet>.0/30 and `dbt-<tag>p` on
    /// 198.18.<subnet + 1>.0/30, pin folder `dockblock-test-<tag>`; no
    /// daemon yet.
    pub fn new(tag: &str, subnet: u8) -> Topology {
        crate::rig::require_env();
        let xdp = Outside::new(&format!("{tag}x"), subnet);
        let plain = Outside::new(&format!("{tag}p"), subnet + 1);
        for o in [&xdp, &plain] {
            o.exec_ok("ip", &["route", "add", DOCKER_SUBNETS, "via", o.host_ip()]);
        }
        Topology { daemon: None, agent: Agent::new(tag), xdp, plain }
    }

    /// `new`, then the daemon started on the XDP uplink and synced.
    pub fn with_daemon(tag: &str, subnet: u8) -> Topology {
        let mut t = Topology::new(tag, subnet);
        t.start_daemon();
        t
    }

    /// `dockblock-agent run <xdp uplink>`; returns once it has synced.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "a daemon runs already");
        let bin = std::path::Path::new(self.agent.bin());
        self.daemon = Some(Daemon::started(bin, self.agent.pin_dir(), &[self.xdp.host_if()]));
    }

    /// `start_daemon` with extra environment (e.g. `DOCKER_HOST`).
    pub fn start_daemon_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "a daemon runs already");
        let bin = std::path::Path::new(self.agent.bin());
        let d = Daemon::start_env(bin, self.agent.pin_dir(), &[self.xdp.host_if()], env)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
        self.daemon = Some(d);
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("no daemon runs")
    }

    /// SIGKILL: nothing runs on exit, as after a crash or the OOM killer.
    pub fn kill_daemon(&mut self) {
        let mut d = self.daemon.take().expect("no daemon runs");
        d.kill();
    }

    /// SIGTERM; the daemon must exit 0. Returns its log.
    pub fn stop_daemon(&mut self) -> String {
        let mut d = self.daemon.take().expect("no daemon runs");
        let status = d.stop();
        let log = d.log();
        assert!(status.is_some_and(|s| s.success()), "daemon exited {status:?} on SIGTERM; log:\n{log}");
        log
    }

    /// The daemon's log so far (empty when none runs).
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Both namespaces, for checks that every path agrees.
    pub fn outsides(&self) -> [&Outside; 2] {
        [&self.xdp, &self.plain]
    }

    /// Whether `web`'s container `port` (80 or [`CONTROL_PORT`]) serves the
    /// page from outside, on each path: (the published port through the XDP
    /// uplink, the same through the interface without XDP, the container's
    /// own address by direct routing from the XDP namespace).
    pub fn paths(&self, web: &Web, port: u16) -> [bool; 3] {
        let host_port = web.host_port(port);
        let ip = web.ip();
        // At once: a closed path costs its whole connect timeout.
        std::thread::scope(|s| {
            let xdp = s.spawn(|| http(&self.xdp, None, self.xdp.host_ip(), host_port));
            let plain = s.spawn(|| http(&self.plain, None, self.plain.host_ip(), host_port));
            let direct = s.spawn(|| http(&self.xdp, None, &ip, port));
            [xdp, plain, direct].map(|h| h.join().expect("probe thread"))
        })
    }

    /// Panics with the log unless `web`'s `port` is `open` on every path.
    pub fn assert_paths(&self, web: &Web, port: u16, open: bool, what: &str) {
        let got = self.paths(web, port);
        assert!(
            got == [open; 3],
            "{what}: {} port {port} want {} on [xdp uplink, uplink without XDP, container ip] got {got:?}\n{}",
            web.name(),
            if open { "open" } else { "closed" },
            self.context()
        );
    }

    /// Waits up to 10 s until `web`'s `port` is open on every path, then
    /// panics if not: after an engine event the daemon needs a moment.
    pub fn assert_opens(&self, web: &Web, port: u16, what: &str) {
        if !eventually(Duration::from_secs(10), || self.paths(web, port) == [true; 3]) {
            self.assert_paths(web, port, true, what);
        }
    }

    /// The rules, the daemon log tail and `ports`, for failure messages.
    pub fn context(&self) -> String {
        let list = self.agent.run(&["list", "--json"]);
        let ports = self.agent.run(&["ports", "--json"]);
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "list --json: {}\nports --json: {}\ndaemon log (last lines):\n{}",
            String::from_utf8_lossy(&list.stdout).trim(),
            String::from_utf8_lossy(&ports.stdout).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Waits up to 10 s until every veth of `web` is reviewed in `VETHS`.
    pub fn wait_reviewed(&self, web: &Web) {
        let ok = eventually(Duration::from_secs(10), || {
            let veths = web.veths();
            !veths.is_empty()
                && veths.iter().all(|v| veth_state(self.agent.pin_dir(), *v).is_some_and(reviewed))
        });
        assert!(ok, "{}'s veths {:?} not reviewed within 10 s\n{}", web.name(), web.veths(), self.context());
    }

    /// `hooks.<hook>.<outcome>.packets` from `stats --json`.
    pub fn hook_packets(&self, hook: &str, outcome: &str) -> u64 {
        let stats = self.agent.json(&["stats"]);
        stats["hooks"][hook][outcome]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no hooks.{hook}.{outcome}.packets: {stats}"))
    }
}

fn reviewed(s: VethState) -> bool {
    s.flags & veth_flag::REVIEWED != 0
}

/// `VETHS[ifindex]` from the pins, if the map or entry exists.
pub fn veth_state(pin_dir: &str, ifindex: u32) -> Option<VethState> {
    let (states, _) = vethtable::read(&PinDir::new(pin_dir)).ok()?;
    states.into_iter().find(|(i, _)| *i == ifindex).map(|(_, s)| s)
}

/// Pids of daemons of other pin folders running now, from their state
/// files in /run/dockblock (no `stopped`, pid alive). Each hooks every
/// container veth on the host and honours every `dockblock.*` label and its
/// own policy, so it can close what a test expects open.
pub fn other_daemons(pin_dir: &str) -> Vec<u32> {
    let mine = format!("{}.daemon.json", pin_dir.trim_matches('/').replace('/', "_"));
    let Ok(dir) = std::fs::read_dir("/run/dockblock") else { return vec![] };
    dir.flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with(".daemon.json") && e.file_name() != mine.as_str()
        })
        .filter_map(|e| serde_json::from_str::<Value>(&std::fs::read_to_string(e.path()).ok()?).ok())
        .filter(|v| v["stopped"].is_null())
        .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
        // SAFETY: signal 0 only checks that the pid exists.
        .filter(|p| unsafe { libc::kill(*p as libc::pid_t, 0) } == 0)
        .collect()
}

/// Polls `f` every 100 ms until it holds, for at most `within`.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET of `http://addr:port/` from `out` (from source `src` if given):
/// true only if the page came back. A 1 s connect timeout: a dropped SYN
/// is not retried within it.
pub fn http(out: &Outside, src: Option<&str>, addr: &str, port: u16) -> bool {
    let url = format!("http://{addr}:{port}/");
    let mut args = vec!["-s", "--connect-timeout", "1", "--max-time", "2"];
    if let Some(src) = src {
        args.extend(["--interface", src]);
    }
    args.push(&url);
    let o = out.exec("curl", &args);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains(MARKER)
}

/// The shell script of a web container: busybox httpd serving `MARKER` on
/// ports 80 and [`CONTROL_PORT`].
pub fn web_script() -> String {
    format!(
        "mkdir -p /www && echo {MARKER} > /www/index.html && httpd -p {CONTROL_PORT} -h /www && exec httpd -f -p 80 -h /www"
    )
}

/// A web container (see [`web_script`]) published as `host_port` -> 80 and
/// `host_port + 1` -> 81; removed on drop under its current name.
pub struct Web {
    name: String,
    host_port: u16,
}

impl Web {
    /// `docker run -d --name <name> -p .. <extra> IMAGE ..` after removing a
    /// leftover; returns as soon as `docker run` does (the window test
    /// probes from then on). Panics if it fails.
    pub fn start(name: &str, host_port: u16, extra: &[&str]) -> Web {
        remove_container(name);
        let web = Web { name: name.to_string(), host_port };
        let (p80, p81) = (format!("{host_port}:80"), format!("{}:{CONTROL_PORT}", host_port + 1));
        let script = web_script();
        let mut args = vec!["run", "-d", "--name", name, "-p", &p80, "-p", &p81];
        args.extend_from_slice(extra);
        args.extend([IMAGE, "sh", "-c", &script]);
        run_ok("docker", &args);
        web
    }

    /// `docker create --name <name> <args> IMAGE true`, not started: a
    /// name the engine knows (`block --container` refuses unknown names).
    pub fn create(name: &str, args: &[&str]) -> Web {
        remove_container(name);
        let web = Web { name: name.to_string(), host_port: 0 };
        let mut full = vec!["create", "--name", name];
        full.extend_from_slice(args);
        full.extend([IMAGE, "true"]);
        run_ok("docker", &full);
        web
    }

    /// `start`, then waits until the host gets the page from port 80 at the
    /// container's address (host traffic passes every dockblock hook).
    pub fn run(name: &str, host_port: u16, extra: &[&str]) -> Web {
        let web = Web::start(name, host_port, extra);
        web.wait_serving();
        web
    }

    pub fn wait_serving(&self) {
        let ok = eventually(Duration::from_secs(10), || {
            let url = format!("http://{}:80/", self.ip());
            let o = run("curl", &["-s", "--max-time", "1", &url]);
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(MARKER)
        });
        assert!(
            ok,
            "{} does not serve within 10 s: {}",
            self.name,
            describe(&run("docker", &["logs", &self.name]))
        );
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host port published for container `port` (80 or [`CONTROL_PORT`]).
    pub fn host_port(&self, port: u16) -> u16 {
        if port == CONTROL_PORT {
            self.host_port + 1
        } else {
            self.host_port
        }
    }

    /// The container's first address (docker0's or its first network's).
    pub fn ip(&self) -> String {
        self.ip_on(None)
    }

    /// Its address on `network` (the first one if None).
    pub fn ip_on(&self, network: Option<&str>) -> String {
        let format = match network {
            Some(n) => format!("{{{{(index .NetworkSettings.Networks \"{n}\").IPAddress}}}}"),
            None => "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}".to_string(),
        };
        let out = run_ok("docker", &["inspect", "-f", &format, &self.name]);
        out.split_whitespace().next().unwrap_or_else(|| panic!("{} has no address", self.name)).to_string()
    }

    /// Host-side ifindexes of its veths: each `eth*`'s iflink, read in the
    /// container (its own sysfs).
    pub fn veths(&self) -> Vec<u32> {
        let o = run("docker", &["exec", &self.name, "sh", "-c", "cat /sys/class/net/eth*/iflink"]);
        String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|w| w.parse().ok()).collect()
    }

    /// `docker exec <name> args..`; stdout, whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["exec", self.name.as_str()];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&run("docker", &full).stdout).into_owned()
    }

    /// `docker rename`; the guard follows the new name.
    pub fn rename(&mut self, to: &str) {
        run_ok("docker", &["rename", &self.name, to]);
        self.name = to.to_string();
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        remove_container(&self.name);
    }
}

/// A Docker bridge network `name` on `subnet` with bridge device `bridge`;
/// removed on drop (its containers first).
pub struct Net(String);

impl Net {
    pub fn create(name: &str, subnet: &str, bridge: &str) -> Net {
        remove_network(name);
        let net = Net(name.to_string());
        let opt = format!("com.docker.network.bridge.name={bridge}");
        run_ok("docker", &["network", "create", "--subnet", subnet, "-o", &opt, name]);
        net
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_network(&self.0);
    }
}

/// `iptables -I DOCKER-USER -i <iface> -j ACCEPT` for each interface:
/// forwarding from there to any container port, as on a host whose admin
/// opened routing (Docker itself accepts only published ports). Removed on
/// drop.
pub struct ForwardAll(Vec<String>);

impl ForwardAll {
    pub fn from(ifaces: &[&str]) -> ForwardAll {
        let g = ForwardAll(ifaces.iter().map(|s| s.to_string()).collect());
        for i in &g.0 {
            run_ok("iptables", &["-I", "DOCKER-USER", "-i", i, "-j", "ACCEPT"]);
        }
        g
    }
}

impl Drop for ForwardAll {
    fn drop(&mut self) {
        for i in &self.0 {
            quiet("iptables", &["-D", "DOCKER-USER", "-i", i, "-j", "ACCEPT"]);
        }
    }
}

/// Connects from an outside namespace to each target every `every`, each
/// attempt a new socket given 300 ms to complete, until finished; counts
/// per target what came back. Started before what it watches: `start`
/// returns once the first round is out.
pub struct ProbeLoop(Option<Child>);

/// What one target answered over a probe loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Handshakes completed: the service was reachable.
    pub ok: u64,
    /// Refused (reset) or failed at once (no route): no service reached.
    pub refused: u64,
    /// No answer within 300 ms: dropped.
    pub silent: u64,
}

const PROBE_PY: &str = r#"
import errno, json, select, signal, socket, sys, time
every, limit = float(sys.argv[1]), float(sys.argv[2])
targets = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[3:]]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
tally = [[0, 0, 0] for _ in targets]
pending = []  # [sock, target index, deadline]
end = time.time() + limit
first = True
while True:
    now = time.time()
    running = not stop and now <= end
    if running:
        for i, t in enumerate(targets):
            s = socket.socket()
            s.setblocking(False)
            rc = s.connect_ex(t)
            if rc in (0, errno.EINPROGRESS):
                pending.append([s, i, now + 0.3])
            else:  # unreachable at once: no route, no neighbour
                tally[i][1] += 1
                s.close()
        if first:
            print("ready", flush=True)
            first = False
    elif not pending:
        break
    tick_end = now + every if running else max(p[2] for p in pending)
    while pending:
        wait = tick_end - time.time()
        if wait <= 0:
            break
        try:
            _, w, _ = select.select([], [p[0] for p in pending], [], wait)
        except InterruptedError:
            continue
        for p in [p for p in pending if p[0] in w]:
            err = p[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            tally[p[1]][0 if err == 0 else 1] += 1
            p[0].close()
            pending.remove(p)
    if running:
        time.sleep(max(0, tick_end - time.time()))
    now = time.time()
    for p in [p for p in pending if now >= p[2]]:
        tally[p[1]][2] += 1
        p[0].close()
        pending.remove(p)
print(json.dumps(tally), flush=True)
"#;

impl ProbeLoop {
    /// Dials `targets` (`(address, port)`) from `out` every `every`, for at
    /// most `limit`.
    pub fn start(out: &Outside, targets: &[(String, u16)], every: Duration, limit: Duration) -> ProbeLoop {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", out.name(), "/usr/bin/python3", "-c", PROBE_PY])
            .arg(every.as_secs_f64().to_string())
            .arg(limit.as_secs_f64().to_string())
            .args(targets.iter().map(|(a, p)| format!("{a}:{p}")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: prctl only, between fork and exec: the probe dies with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("start probe loop");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("piped");
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).expect("probe loop output");
        assert_eq!(line.trim(), "ready", "probe loop did not start");
        ProbeLoop(Some(child))
    }

    /// Stops the loop (the last attempts get their 300 ms) and returns a
    /// tally per target, in order.
    pub fn finish(mut self) -> Vec<Tally> {
        let child = self.0.take().expect("running");
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().expect("probe loop");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("probe loop output {text:?}: {e}"));
        v.as_array()
            .expect("array")
            .iter()
            .map(|t| Tally {
                ok: t[0].as_u64().unwrap(),
                refused: t[1].as_u64().unwrap(),
                silent: t[2].as_u64().unwrap(),
            })
            .collect()
    }
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
