//! The daemon (`dockblock-agent run`) against the real engine: hooks follow
//! containers and networks, restarts leak nothing, the engine going away and
//! coming back is survived, SIGTERM leaves everything enforced.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test daemon -- --test-threads=1`

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dockblock_agent::{paths::PinDir, vethtable};
use dockblock_common::{veth_flag, PortRule, VethRuleKey, VethState};
use dockblock_testkit::daemon::Daemon;
use dockblock_tests::agent::Agent;
use dockblock_tests::docker::{self, remove_container, remove_network, IMAGE, MARKER};
use dockblock_tests::netns::Outside;
use dockblock_tests::rig::topology::eventually;
use dockblock_tests::{is_root, run, run_ok};

fn require_env() {
    assert!(is_root(), "daemon tests need root (netns, veth, BPF)");
    assert!(docker::docker_available(), "daemon tests need a running Docker daemon (`cargo xtask setup`)");
    docker::ensure_image();
}

fn start_daemon(agent: &Agent, args: &[&str]) -> Daemon {
    Daemon::started(Path::new(agent.bin()), agent.pin_dir(), args)
}

/// A container removed on drop, under a fixed name.
struct Ctr(String);

impl Ctr {
    /// `docker run -d --name <name> <args> IMAGE sh -c <busybox httpd on 80>`.
    fn web(name: &str, args: &[&str]) -> Ctr {
        remove_container(name);
        let c = Ctr(name.to_string());
        let script =
            format!("mkdir -p /www && echo {MARKER} > /www/index.html && exec httpd -f -p 80 -h /www");
        let mut full = vec!["run", "-d", "--name", name];
        full.extend_from_slice(args);
        full.extend([IMAGE, "sh", "-c", &script]);
        run_ok("docker", &full);
        c
    }

    /// Host-side veths of the running container: (ifindex, name), found
    /// through its netns (eth*'s peer index).
    fn veths(&self) -> Vec<(u32, String)> {
        let pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &self.0]);
        let inside = run("nsenter", &["-t", pid.trim(), "-n", "ip", "-o", "link", "show", "type", "veth"]);
        let text = String::from_utf8_lossy(&inside.stdout).into_owned();
        let peers: Vec<u32> =
            text.lines().filter_map(|l| l.split("@if").nth(1)?.split(':').next()?.parse().ok()).collect();
        peers.into_iter().filter_map(|i| Some((i, ifname(i)?))).collect()
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        remove_container(&self.0);
    }
}

/// A Docker network removed on drop (after the containers, declared later).
struct Net(String);

impl Drop for Net {
    fn drop(&mut self) {
        remove_network(&self.0);
    }
}

fn ifname(ifindex: u32) -> Option<String> {
    let out = run("ip", &["-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (idx, rest) = l.split_once(": ")?;
        (idx.trim().parse::<u32>().ok()? == ifindex)
            .then(|| rest.split([':', '@']).next().unwrap().to_string())
    })
}

/// Names in the pin folder's links folder.
fn link_pins(agent: &Agent) -> BTreeSet<String> {
    std::fs::read_dir(PathBuf::from(agent.pin_dir()).join("links"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

fn pins_naming(agent: &Agent, iface: &str) -> Vec<String> {
    link_pins(agent).into_iter().filter(|p| p.ends_with(iface)).collect()
}

/// Links `status` finds live in the kernel on `iface` (the link's own
/// ifindex, asked of the kernel, is that interface's).
fn live_links(agent: &Agent, iface: &str) -> usize {
    let status = agent.json(&["status"]);
    status["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["interface"] == iface && l["state"] == "attached" && l["link_id"].as_u64() > Some(0))
        .count()
}

fn vethmap(agent: &Agent) -> Vec<(u32, VethState)> {
    vethtable::read(&PinDir::new(agent.pin_dir())).expect("VETHS pinned").0
}

fn veth_rules(agent: &Agent) -> Vec<(VethRuleKey, PortRule)> {
    vethtable::read(&PinDir::new(agent.pin_dir())).expect("VETH_RULES pinned").1
}

fn reviewed(agent: &Agent, ifindex: u32) -> bool {
    vethmap(agent).iter().any(|(i, s)| *i == ifindex && s.flags & veth_flag::REVIEWED != 0)
}

/// A started container's veth gets both hooks (pinned, and in the kernel)
/// and is reviewed; removing the container removes its pins and its entries.
#[test]
fn veth_hooks_follow_containers() {
    require_env();
    let agent = Agent::new("dmv");
    let d = start_daemon(&agent, &[]);
    let c = Ctr::web("dbt-dmv", &["-l", "dockblock.block=80/tcp"]);
    let veths = c.veths();
    assert_eq!(veths.len(), 1, "one network, one veth: {veths:?}");
    let (ifindex, name) = veths[0].clone();
    assert!(
        eventually(Duration::from_secs(2), || pins_naming(&agent, &name).len() == 2),
        "no veth pins for {name} 2 s after docker run: {:?}\n{}",
        link_pins(&agent),
        d.log_tail()
    );
    assert_eq!(live_links(&agent, &name), 2, "{name}: the judge (egress) and the tracker (ingress)");
    assert!(
        eventually(Duration::from_secs(10), || reviewed(&agent, ifindex)),
        "{name} not reviewed\n{}",
        d.log_tail()
    );
    assert!(
        veth_rules(&agent).iter().any(|(k, _)| k.ifindex == ifindex && k.port == 80),
        "the label's 80/tcp is not in VETH_RULES: {:?}",
        veth_rules(&agent)
    );
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || pins_naming(&agent, &name).is_empty()),
        "pins of {name} outlive its container: {:?}",
        link_pins(&agent)
    );
    assert!(
        eventually(Duration::from_secs(10), || !vethmap(&agent).iter().any(|(i, _)| *i == ifindex)
            && !veth_rules(&agent).iter().any(|(k, _)| k.ifindex == ifindex)),
        "entries of veth {ifindex} outlive its container"
    );
}

/// A veth's link pins removed by hand (the pins held the links: the
/// container is unjudged) are noticed at the next sync, here the one a CLI
/// change starts, and the hooks are attached again.
#[test]
fn veth_hooks_whose_pins_are_removed_are_attached_again() {
    require_env();
    let agent = Agent::new("dmp");
    let d = start_daemon(&agent, &[]);
    let c = Ctr::web("dbt-dmp", &["-l", "dockblock.block=80/tcp"]);
    let (ifindex, name) = c.veths()[0].clone();
    assert!(
        eventually(Duration::from_secs(10), || reviewed(&agent, ifindex) && live_links(&agent, &name) == 2),
        "{name} not hooked and reviewed\n{}",
        d.log_tail()
    );
    let links = PathBuf::from(agent.pin_dir()).join("links");
    for pin in pins_naming(&agent, &name) {
        std::fs::remove_file(links.join(pin)).unwrap();
    }
    assert_eq!(live_links(&agent, &name), 0, "the links died with their pins");
    agent.ok(&["block", "21998/udp"]);
    assert!(
        eventually(Duration::from_secs(10), || live_links(&agent, &name) == 2),
        "{name}'s hooks not attached again after a sync: {:?}\n{}",
        link_pins(&agent),
        d.log_tail()
    );
    assert!(d.log().contains("veth hooks gone"), "not logged:\n{}", d.log_tail());
    assert!(reviewed(&agent, ifindex), "the veth's review is kept");
}

/// A user-defined network's bridge (named by Docker, br-<id>) gets the
/// bridge programs when the network appears and loses them with it.
#[test]
fn bridge_networks_get_and_lose_hooks() {
    require_env();
    let agent = Agent::new("dmb");
    let d = start_daemon(&agent, &[]);
    remove_network("dbt-dmb");
    let net = Net("dbt-dmb".into());
    let id = run_ok("docker", &["network", "create", "--subnet", "10.222.0.0/24", &net.0]);
    let bridge = format!("br-{}", &id.trim()[..12]);
    assert!(
        eventually(Duration::from_secs(5), || pins_naming(&agent, &bridge).len() == 2),
        "no bridge pins for {bridge}: {:?}\n{}",
        link_pins(&agent),
        d.log_tail()
    );
    assert_eq!(live_links(&agent, &bridge), 2, "{bridge}: the judge (egress) and the tracker (ingress)");
    drop(net);
    assert!(
        eventually(Duration::from_secs(5), || pins_naming(&agent, &bridge).is_empty()),
        "pins of {bridge} outlive its network: {:?}",
        link_pins(&agent)
    );
}

/// What the kernel holds for one container, without its veth's ifindex
/// (a restarted container gets a new veth), and what it holds for
/// interfaces that no longer exist (leaks). Other tests' containers may
/// come and go meanwhile (the daemon hooks every Docker veth), so only
/// ours and the leaks are compared.
#[derive(Debug, PartialEq)]
struct Shape {
    state: Option<u32>,
    rules: Vec<(u32, u32, u32, u32)>,
    pins: Vec<String>,
    leaked_entries: Vec<u32>,
    leaked_pins: Vec<String>,
}

fn shape(agent: &Agent, c: &Ctr) -> Shape {
    let veths = c.veths();
    let (ifindex, name) = veths.first().cloned().unwrap_or((0, String::new()));
    let states = vethmap(agent);
    let rules = veth_rules(agent);
    let mut ours: Vec<(u32, u32, u32, u32)> = rules
        .iter()
        .filter(|(k, _)| k.ifindex == ifindex)
        .map(|(k, r)| (k.proto, k.port, r.rule_id, r.flags))
        .collect();
    ours.sort();
    let mut leaked_entries: Vec<u32> = states
        .iter()
        .map(|(i, _)| *i)
        .chain(rules.iter().map(|(k, _)| k.ifindex))
        .filter(|i| ifname(*i).is_none())
        .collect();
    leaked_entries.dedup();
    let pins = link_pins(agent);
    let leaked_pins = pins
        .iter()
        .filter(|p| {
            p.split_once('_')
                .is_some_and(|(_, iface)| !Path::new("/sys/class/net").join(iface.replace(':', ".")).exists())
        })
        .cloned()
        .collect();
    Shape {
        state: states.iter().find(|(i, _)| *i == ifindex).map(|(_, s)| s.flags),
        rules: ours,
        pins: pins
            .into_iter()
            .filter(|p| p.ends_with(&format!("_{name}")))
            .map(|p| p.replace(&name, "VETH"))
            .collect(),
        leaked_entries,
        leaked_pins,
    }
}

/// Restarting one container 50 times leaves the kernel as it was: the same
/// entries (for its new veth), no pins of veths gone.
#[test]
fn fifty_restarts_leak_nothing() {
    require_env();
    let agent = Agent::new("dmr");
    let mut d = start_daemon(&agent, &[]);
    let c = Ctr::web("dbt-dmr", &["-l", "dockblock.block=80/tcp,8080/tcp"]);
    let settled = |agent: &Agent, c: &Ctr| {
        let v = c.veths();
        v.len() == 1 && reviewed(agent, v[0].0) && pins_naming(agent, &v[0].1).len() == 2
    };
    assert!(eventually(Duration::from_secs(10), || settled(&agent, &c)), "not settled\n{}", d.log_tail());
    assert!(eventually(Duration::from_secs(10), || shape(&agent, &c).leaked_pins.is_empty()), "leaks before");
    let before = shape(&agent, &c);
    assert!(before.state.is_some() && before.rules.len() >= 2 && before.pins.len() == 2, "{before:?}");
    assert!(before.leaked_entries.is_empty() && before.leaked_pins.is_empty(), "{before:?}");
    for i in 0..50 {
        let out = run("docker", &["restart", "-t", "0", &c.0]);
        assert!(out.status.success(), "restart {i}: {}", dockblock_tests::describe(&out));
    }
    let last = d.last_sync();
    assert!(eventually(Duration::from_secs(15), || settled(&agent, &c)), "not settled\n{}", d.log_tail());
    d.wait_sync_after(last.as_deref(), Duration::from_secs(15)).ok();
    assert!(
        eventually(Duration::from_secs(10), || shape(&agent, &c) == before),
        "after 50 restarts: {:?}, before: {before:?}\n{}",
        shape(&agent, &c),
        d.log_tail()
    );
}

/// A unix socket proxy in front of the engine's, which the test can cut
/// (as a dockerd restart does: connections reset, socket gone) and
/// restore, without touching the engine other tests use.
struct EngineProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineProxy {
    fn start(path: &Path) -> EngineProxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the proxy socket");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(UnixStream, UnixStream)> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let engine = UnixStream::connect("/var/run/docker.sock").expect("engine socket");
                        for (a, b) in [
                            (client.try_clone().unwrap(), engine.try_clone().unwrap()),
                            (engine.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            std::thread::spawn(move || pump(a, b));
                        }
                        conns.push((client, engine));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for (a, b) in conns {
                let _ = a.shutdown(std::net::Shutdown::Both);
                let _ = b.shutdown(std::net::Shutdown::Both);
            }
        });
        EngineProxy { path: path.to_path_buf(), stop, thread: Some(thread) }
    }

    /// Closes every connection and removes the socket.
    fn cut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The engine going away: the daemon says "down", keeps every rule and
/// hook, reconnects when it is back and re-syncs: a container removed while
/// it was away loses its entries, one started meanwhile is reviewed.
#[test]
fn engine_down_reconnect_resync() {
    require_env();
    let agent = Agent::new("dme");
    let sock = std::env::temp_dir().join(format!("dockblock-dme-{}.sock", std::process::id()));
    let mut proxy = EngineProxy::start(&sock);
    let gone = Ctr::web("dbt-dme-a", &["-l", "dockblock.block=80/tcp"]);
    let stays = Ctr::web("dbt-dme-b", &["-l", "dockblock.block=80/tcp"]);
    let host = format!("unix://{}", sock.display());
    let mut d = Daemon::start_env(Path::new(agent.bin()), agent.pin_dir(), &[], &[("DOCKER_HOST", &host)])
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    let (gone_if, _) = gone.veths()[0].clone();
    let (stays_if, stays_name) = stays.veths()[0].clone();
    assert!(
        eventually(Duration::from_secs(10), || reviewed(&agent, gone_if) && reviewed(&agent, stays_if)),
        "not reviewed\n{}",
        d.log_tail()
    );

    proxy.cut();
    d.wait_until(Duration::from_secs(10), "engine down", |s| s["engine"] == "down").unwrap();
    drop(gone);
    let late = Ctr::web("dbt-dme-c", &["-l", "dockblock.block=80/tcp"]);
    let (late_if, late_name) = late.veths()[0].clone();
    // The veth is hooked from netlink alone, and stays unreviewed (closed).
    assert!(
        eventually(Duration::from_secs(2), || pins_naming(&agent, &late_name).len() == 2),
        "{late_name} not hooked while the engine is down\n{}",
        d.log_tail()
    );
    assert!(!reviewed(&agent, late_if), "reviewed without an engine?");
    assert!(reviewed(&agent, stays_if), "a running container lost its entry while the engine was down");
    assert_eq!(pins_naming(&agent, &stays_name).len(), 2);

    let last = d.last_sync();
    let _proxy = EngineProxy::start(&sock);
    d.wait_until(Duration::from_secs(15), "engine connected", |s| s["engine"] == "connected").unwrap();
    d.wait_sync_after(last.as_deref(), Duration::from_secs(15)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || reviewed(&agent, late_if)
            && !vethmap(&agent).iter().any(|(i, _)| *i == gone_if)
            && !veth_rules(&agent).iter().any(|(k, _)| k.ifindex == gone_if)),
        "no resync after the engine came back: VETHS {:?}\n{}",
        vethmap(&agent),
        d.log_tail()
    );
    assert!(d.log().contains("engine connected"), "{}", d.log_tail());
}

/// SIGTERM: exit 0, and the kernel keeps judging: the published port of a
/// labelled container stays closed from outside, its hooks stay pinned.
#[test]
fn sigterm_exits_zero_and_rules_stay() {
    require_env();
    let agent = Agent::new("dms");
    let out = Outside::new("dms", 221);
    let mut d = start_daemon(&agent, &[out.host_if()]);
    let c = Ctr::web("dbt-dms", &["-p", "18221:80", "-l", "dockblock.block=80/tcp"]);
    let url = format!("http://{}:18221/", out.host_ip());
    let (ifindex, name) = c.veths()[0].clone();
    assert!(eventually(Duration::from_secs(10), || reviewed(&agent, ifindex)), "{}", d.log_tail());
    assert!(!out.curl_ok(&url, MARKER), "labelled container reachable at {url}");
    let pins = link_pins(&agent);
    let status = d.stop().expect("daemon exits on SIGTERM within 15 s");
    assert!(status.success(), "daemon exit: {status}\n{}", d.log_tail());
    assert_eq!(link_pins(&agent), pins, "pins changed at exit");
    assert_eq!(live_links(&agent, &name), 2);
    assert!(reviewed(&agent, ifindex));
    assert!(!out.curl_ok(&url, MARKER), "reachable at {url} after the daemon stopped");
    let status = agent.json(&["status"]);
    assert_eq!(status["daemon"]["running"], false, "{status}");
}

/// A container that runs before the daemon starts stays reviewed when its
/// bridge port changes afterwards (the bridge's port notices carry no link
/// kind: the daemon once forgot the veth was a veth and closed it).
#[test]
fn veths_present_at_start_stay_reviewed_after_port_notices() {
    require_env();
    let agent = Agent::new("dmk");
    let first = Ctr::web("dbt-dmk-a", &[]);
    let mut d = start_daemon(&agent, &[]);
    let (ifindex, name) = first.veths()[0].clone();
    assert!(eventually(Duration::from_secs(10), || reviewed(&agent, ifindex)), "{}", d.log_tail());
    // One AF_BRIDGE RTM_NEWLINK for the port, without IFLA_LINKINFO (fails
    // without the fix, as `ip link set .. type bridge_slave` does not:
    // that one is followed by a full notice).
    run_ok("bridge", &["link", "set", "dev", &name, "cost", "7"]);
    let last = d.last_sync();
    let second = Ctr::web("dbt-dmk-b", &[]);
    let (other, _) = second.veths()[0].clone();
    assert!(eventually(Duration::from_secs(10), || reviewed(&agent, other)), "{}", d.log_tail());
    d.wait_sync_after(last.as_deref(), Duration::from_secs(10)).unwrap();
    assert!(reviewed(&agent, ifindex), "{name} lost its review after a port notice\n{}", d.log_tail());
}
