//! The engine and netlink layer (dockblock_agent::docker) against the real
//! Docker engine and the host's links: snapshots of a created then started
//! container, its host veths found through its netns (cross-checked with
//! `ip -j link` on both sides), the link events that come before `start`,
//! the engine's events, and no engine at all.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo test -p dockblock-tests --test engine -- --test-threads=1`

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::unix::net::UnixListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dockblock_agent::{
    docker::{
        engine::{self, Engine},
        events::EngineEvent,
        links::{self, LinkEvent, LinkInfo},
        netns,
        snapshot::{PortBinding, Snapshot},
    },
    Error,
};
use dockblock_common::proto;
use dockblock_tests::{
    docker::{remove_container, remove_network, IMAGE},
    rig::require_env,
    run_ok,
};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Removes the named containers, then networks, now and on drop.
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Cleanup {
    fn new(containers: &[&str], networks: &[&str]) -> Cleanup {
        let c = Cleanup {
            containers: containers.iter().map(|s| s.to_string()).collect(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
        };
        c.clean();
        c
    }

    fn clean(&self) {
        self.containers.iter().for_each(|c| remove_container(c));
        self.networks.iter().for_each(|n| remove_network(n));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.clean();
    }
}

/// What a stream yielded, each item with the moment it arrived.
type Log<T> = Arc<Mutex<Vec<(Instant, T)>>>;

fn record<T: Send + 'static>(rt: &Runtime, mut s: impl Stream<Item = T> + Send + Unpin + 'static) -> Log<T> {
    let log: Log<T> = Arc::default();
    let l = log.clone();
    rt.spawn(async move {
        while let Some(x) = s.next().await {
            l.lock().unwrap().push((Instant::now(), x));
        }
    });
    log
}

/// Waits up to `limit` for the first entry matching `pred`; its arrival.
fn wait_for<T>(log: &Log<T>, limit: Duration, pred: impl Fn(&T) -> bool) -> Option<Instant> {
    let start = Instant::now();
    loop {
        if let Some((t, _)) = log.lock().unwrap().iter().find(|(_, x)| pred(x)) {
            return Some(*t);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ip_links(prefix: &[&str]) -> Vec<Value> {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend(["ip", "-j", "link"]);
    serde_json::from_str(&run_ok(argv[0], &argv[1..])).unwrap()
}

fn inspect(name: &str, format: &str) -> String {
    run_ok("docker", &["inspect", "-f", format, name]).trim().to_string()
}

fn by_name<'a>(links: &'a [LinkInfo], name: &str) -> &'a LinkInfo {
    links.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("{name} not in the link dump"))
}

/// A created container, started, renamed, disconnected, stopped and
/// removed, followed by snapshots, veth owners, link events and engine events.
#[test]
fn engine_follows_a_container_life() {
    require_env();
    let tag = std::process::id();
    let (name, renamed, net) = (format!("dbe-c-{tag}"), format!("dbe-c2-{tag}"), format!("dbe-net-{tag}"));
    let _cleanup = Cleanup::new(&[&name, &renamed], &[&net]);
    let rt = runtime();
    let engine = rt.block_on(Engine::connect()).expect("connect to the engine");

    // The event stream is taken first, as the daemon does, but polled only
    // after the network and the container exist: the engine replays what
    // happened since the call.
    let event_stream = rt.block_on(engine.events());
    let link_events = {
        let _in_rt = rt.enter();
        record(&rt, links::watch().expect("watch links"))
    };

    run_ok("docker", &["network", "create", &net]);
    let host_port = 40000 + (tag % 20000) as u16;
    let publish = format!("{host_port}:80");
    run_ok(
        "docker",
        &[
            "create",
            "--name",
            &name,
            "-l",
            "dockblock.block=80/tcp",
            "-l",
            "tier=internal",
            "-p",
            &publish,
            "-p",
            "127.0.0.1::53/udp",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    run_ok("docker", &["network", "connect", &net, &name]);
    let id = inspect(&name, "{{.Id}}");
    let events = record(&rt, event_stream);

    // Created: labels and the bindings asked for (53/udp's host port is
    // chosen at start: 0), no process, no veth.
    let s = rt.block_on(engine.snapshot()).expect("snapshot");
    let c = s.containers.iter().find(|c| c.name == name).expect("created container in the snapshot").clone();
    assert_eq!(c.id, id);
    assert_eq!(c.labels.get("dockblock.block").map(String::as_str), Some("80/tcp"));
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("internal"));
    assert!(!c.running && c.pid == 0, "created, not running: {c:?}");
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        c.ports,
        vec![
            PortBinding { host_ip: Some(localhost), host_port: 0, container_port: 53, proto: proto::UDP },
            PortBinding { host_ip: None, host_port, container_port: 80, proto: proto::TCP },
        ]
    );
    assert_eq!(rt.block_on(engine.container(&name)).unwrap().as_ref(), Some(&c));
    assert_eq!(rt.block_on(engine.container(&id)).unwrap().as_ref(), Some(&c));
    assert_eq!(rt.block_on(engine.container(&format!("dbe-none-{tag}"))).unwrap(), None);
    let dump = rt.block_on(links::dump()).unwrap();
    assert!(rt.block_on(netns::veth_owners(&s, &dump)).iter().all(|o| o.container != id));

    run_ok("docker", &["start", &name]);

    // Started: pid, the ports Docker bound, one endpoint per network.
    let s = rt.block_on(engine.snapshot()).expect("snapshot");
    let c = s.containers.iter().find(|c| c.id == id).expect("started container").clone();
    assert!(c.running, "{c:?}");
    assert_eq!(c.pid.to_string(), inspect(&name, "{{.State.Pid}}"));
    let udp_port: u16 =
        run_ok("docker", &["port", &name, "53/udp"]).trim().rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(udp_port, 0);
    // An engine with IPv6 on (`cargo xtask setup` starts it so) binds the
    // port for `::` too: the same host port, a binding of its own.
    let any6: IpAddr = "::".parse().unwrap();
    let (v6, v4): (Vec<_>, Vec<_>) = c.ports.iter().cloned().partition(|b| b.host_ip == Some(any6));
    assert!(
        v6.iter().all(|b| (b.host_port, b.container_port, b.proto) == (host_port, 80, proto::TCP)),
        "{v6:?}"
    );
    assert_eq!(
        v4,
        vec![
            PortBinding {
                host_ip: Some(localhost),
                host_port: udp_port,
                container_port: 53,
                proto: proto::UDP
            },
            PortBinding { host_ip: None, host_port, container_port: 80, proto: proto::TCP },
        ]
    );
    let names: Vec<&str> = c.networks.iter().map(|e| e.network.as_str()).collect();
    assert_eq!(names, vec!["bridge", net.as_str()]);
    for e in &c.networks {
        let want =
            inspect(&name, &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", e.network));
        assert_eq!(e.ipv4.map(|a| a.to_string()), Some(want), "address on {}", e.network);
        assert_eq!(e.network_id, inspect(&e.network, "{{.Id}}"), "network id of {}", e.network);
    }
    let net_id = inspect(&net, "{{.Id}}");
    let bridge_of =
        |s: &Snapshot, n: &str| s.networks.iter().find(|x| x.name == n).and_then(|x| x.bridge.clone());
    let user_bridge = format!("br-{}", &net_id[..12]);
    assert_eq!(bridge_of(&s, "bridge").as_deref(), Some("docker0"));
    assert_eq!(bridge_of(&s, &net).as_deref(), Some(user_bridge.as_str()));

    let dump = rt.block_on(links::dump()).unwrap();
    let docker0 = by_name(&dump, "docker0").clone();
    let br = by_name(&dump, &user_bridge).clone();
    assert_eq!((docker0.kind.as_deref(), br.kind.as_deref()), (Some("bridge"), Some("bridge")));

    // The host veths, from `ip` on both sides: eth*'s iflink inside is the
    // host veth, whose own iflink is that eth* (a pair, not a guess).
    let pid = c.pid.to_string();
    let inside = ip_links(&["nsenter", "-t", &pid, "-n"]);
    let host = ip_links(&[]);
    let mut want = BTreeSet::new();
    for eth in inside.iter().filter(|l| l["ifname"].as_str().unwrap().starts_with("eth")) {
        let peer = eth["link_index"].as_u64().expect("eth has a peer");
        let h = host.iter().find(|l| l["ifindex"].as_u64() == Some(peer)).expect("peer in the host");
        assert_eq!(h["link_index"], eth["ifindex"], "host veth {h} is not the peer of {eth}");
        want.insert((
            peer as u32,
            h["ifname"].as_str().unwrap().to_string(),
            h["master"].as_str().map(String::from),
        ));
    }
    assert_eq!(want.len(), 2, "one veth per network: {want:?}");
    let t = Instant::now();
    let peers = netns::host_peers(c.pid).expect("host_peers");
    eprintln!("host_peers({}) took {:?}", c.pid, t.elapsed());
    assert_eq!(peers.iter().copied().collect::<BTreeSet<_>>(), want.iter().map(|w| w.0).collect());
    let t = Instant::now();
    let owners = rt.block_on(netns::veth_owners(&s, &dump));
    let running = s.containers.iter().filter(|c| c.running).count();
    eprintln!("veth_owners: {running} running containers in {:?}", t.elapsed());
    let got: BTreeSet<_> = owners
        .iter()
        .filter(|o| o.container == id)
        .map(|o| (o.ifindex, o.ifname.clone(), o.bridge.clone()))
        .collect();
    assert_eq!(got, want);
    let bridges: BTreeSet<_> = want.iter().filter_map(|w| w.2.clone()).collect();
    assert_eq!(bridges, BTreeSet::from(["docker0".to_string(), user_bridge.clone()]));

    // Each veth's NEWLINK with its bridge as master came before `start`.
    let started = wait_for(
        &events,
        Duration::from_secs(5),
        |e| matches!(e, Ok(EngineEvent::Container { id: i, action }) if *i == id && action == "start"),
    )
    .expect("start event");
    for (ifindex, ifname, bridge) in &want {
        let master = by_name(&dump, bridge.as_deref().unwrap()).ifindex;
        let enslaved = wait_for(&link_events, Duration::ZERO, |e| {
            matches!(e, LinkEvent::New(l) if l.ifindex == *ifindex && l.master == Some(master) && l.kind.as_deref() == Some("veth") && l.name == *ifname)
        })
        .unwrap_or_else(|| panic!("no NEWLINK of {ifname} with master {bridge:?}"));
        assert!(enslaved < started, "NEWLINK of {ifname} came {:?} after start", enslaved - started);
        eprintln!("NEWLINK of {ifname} (master {bridge:?}) {:?} before the start event", started - enslaved);
    }

    // The CLI's view: the same owners.
    let (view, veths) = engine::view_blocking().expect("view").expect("an engine answers");
    assert!(view.containers.iter().any(|x| x.id == id && x.running));
    let mine: BTreeSet<_> = veths.iter().filter(|o| o.container == id).map(|o| o.ifindex).collect();
    assert_eq!(mine, want.iter().map(|w| w.0).collect());

    run_ok("docker", &["rename", &name, &renamed]);
    run_ok("docker", &["network", "disconnect", &net, &renamed]);
    run_ok("docker", &["stop", "-t", "1", &renamed]);
    run_ok("docker", &["rm", &renamed]);
    let destroyed = |e: &Result<EngineEvent, Error>| matches!(e, Ok(EngineEvent::Container { id: i, action }) if *i == id && action == "destroy");
    assert!(wait_for(&events, Duration::from_secs(10), destroyed).is_some(), "no destroy event");

    let log = events.lock().unwrap();
    let actions: Vec<&str> = log
        .iter()
        .filter_map(|(_, e)| match e {
            Ok(EngineEvent::Container { id: i, action }) if *i == id => Some(action.as_str()),
            _ => None,
        })
        .collect();
    let mut expected = ["create", "start", "rename", "die", "destroy"].into_iter().peekable();
    for a in &actions {
        expected.next_if(|e| e == a);
    }
    assert_eq!(expected.next(), None, "container events out of order or missing: {actions:?}");
    let on_net = |action: &str, network: &str| {
        log.iter().any(|(_, e)| {
            matches!(e, Ok(EngineEvent::Network { id: n, action: a, container: Some(c) }) if a == action && *n == network && *c == id)
        })
    };
    assert!(
        log.iter().any(|(_, e)| matches!(e, Ok(EngineEvent::Network { id: n, action, container: None }) if *n == net_id && action == "create")),
        "network create not replayed: {log:?}"
    );
    let bridge_id = inspect("bridge", "{{.Id}}");
    assert!(on_net("connect", &bridge_id) && on_net("connect", &net_id), "connect events: {log:?}");
    assert!(on_net("disconnect", &net_id) && on_net("disconnect", &bridge_id), "disconnect events: {log:?}");
    drop(log);

    // And the veths went away as DELLINK.
    for (ifindex, ifname, _) in &want {
        let gone = |e: &LinkEvent| matches!(e, LinkEvent::Del { ifindex: i, .. } if i == ifindex);
        assert!(wait_for(&link_events, Duration::from_secs(5), gone).is_some(), "no DELLINK of {ifname}");
    }
}

/// `--network container:X` owns no veth (X's veths are X's), nor does
/// `--network host` (the host's veths are nobody's); each of N containers
/// gets exactly its own veth; and how long `veth_owners` takes for them.
#[test]
fn veth_owners_of_many_and_shared_namespaces() {
    require_env();
    const N: usize = 10;
    let tag = std::process::id();
    let names: Vec<String> = (0..N).map(|i| format!("dbe-m{i}-{tag}")).collect();
    let (sharer, hostnet) = (format!("dbe-share-{tag}"), format!("dbe-host-{tag}"));
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.extend([sharer.as_str(), hostnet.as_str()]);
    let _cleanup = Cleanup::new(&all, &[]);
    for n in &names {
        run_ok("docker", &["run", "-d", "--name", n, IMAGE, "sleep", "600"]);
    }
    let share = format!("container:{}", names[0]);
    run_ok("docker", &["run", "-d", "--name", &sharer, "--network", &share, IMAGE, "sleep", "600"]);
    run_ok("docker", &["run", "-d", "--name", &hostnet, "--network", "host", IMAGE, "sleep", "600"]);

    let rt = runtime();
    let engine = rt.block_on(Engine::connect()).unwrap();
    let t = Instant::now();
    let s = rt.block_on(engine.snapshot()).unwrap();
    eprintln!(
        "snapshot: {} containers, {} networks in {:?}",
        s.containers.len(),
        s.networks.len(),
        t.elapsed()
    );
    let dump = rt.block_on(links::dump()).unwrap();
    let running = s.containers.iter().filter(|c| c.running).count();
    let t = Instant::now();
    let owners = rt.block_on(netns::veth_owners(&s, &dump));
    let took = t.elapsed();
    eprintln!("veth_owners: {running} running containers in {took:?} ({:?} each)", took / running as u32);

    let ifindexes: BTreeSet<u32> = owners.iter().map(|o| o.ifindex).collect();
    assert_eq!(ifindexes.len(), owners.len(), "a veth owned twice: {owners:?}");
    for n in &names {
        let id = inspect(n, "{{.Id}}");
        let mine: Vec<_> = owners.iter().filter(|o| o.container == id).collect();
        let pid = inspect(n, "{{.State.Pid}}");
        let inside = ip_links(&["nsenter", "-t", &pid, "-n"]);
        let eth0 = inside.iter().find(|l| l["ifname"] == "eth0").expect("eth0");
        assert_eq!(mine.len(), 1, "{n}: {mine:?}");
        assert_eq!(Some(u64::from(mine[0].ifindex)), eth0["link_index"].as_u64(), "{n}");
        assert_eq!(mine[0].bridge.as_deref(), Some("docker0"));
    }
    for n in [&sharer, &hostnet] {
        let id = inspect(n, "{{.Id}}");
        assert!(owners.iter().all(|o| o.container != id), "{n} owns a veth: {owners:?}");
    }
}

/// A scratch netns with one end of a veth pair, a bridge in the host, and
/// a process in the netns; all removed on drop.
struct Scratch {
    ns: String,
    host_if: String,
    bridge: String,
    sleeper: Option<std::process::Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.sleeper.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dockblock_tests::netns::remove(&self.ns, &self.host_if);
        dockblock_tests::quiet("ip", &["link", "del", &self.bridge]);
    }
}

/// Without Docker: host_peers finds the host end of a veth whose other end
/// is in a scratch netns; nothing for a process in our own netns; an error
/// for a pid that does not exist. links::watch reports the enslaving NEWLINK
/// with master and kind, and the DELLINK.
#[test]
fn host_peers_in_a_scratch_namespace() {
    assert!(dockblock_tests::is_root(), "needs root (netns, veth)");
    let tag = std::process::id() % 100_000;
    let mut scratch = Scratch {
        ns: format!("dbe-ns-{tag}"),
        host_if: format!("dbeh{tag}"),
        bridge: format!("dbeb{tag}"),
        sleeper: None,
    };
    let ns_if = format!("dben{tag}");
    dockblock_tests::netns::remove(&scratch.ns, &scratch.host_if);
    let rt = runtime();
    let link_events = {
        let _in_rt = rt.enter();
        record(&rt, links::watch().expect("watch links"))
    };
    run_ok("ip", &["netns", "add", &scratch.ns]);
    run_ok("ip", &["link", "add", &scratch.host_if, "type", "veth", "peer", "name", &ns_if]);
    run_ok("ip", &["link", "set", &ns_if, "netns", &scratch.ns]);
    run_ok("ip", &["link", "add", &scratch.bridge, "type", "bridge"]);
    run_ok("ip", &["link", "set", &scratch.host_if, "master", &scratch.bridge]);
    let sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &scratch.ns, "sleep", "30"])
        .spawn()
        .expect("sleep in the netns");
    let pid = sleeper.id();
    scratch.sleeper = Some(sleeper);

    let dump = rt.block_on(links::dump()).unwrap();
    let host_end = by_name(&dump, &scratch.host_if).clone();
    let bridge = by_name(&dump, &scratch.bridge).clone();
    assert_eq!(host_end.kind.as_deref(), Some("veth"));
    assert_eq!(host_end.master, Some(bridge.ifindex));
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    // `ip netns exec` execs sleep once it has entered the netns.
    let start = Instant::now();
    let peers = loop {
        let p = netns::host_peers(pid).expect("host_peers");
        if !p.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(peers, vec![host_end.ifindex]);
    assert_eq!(netns::host_peers(std::process::id()).unwrap(), Vec::<u32>::new(), "our own netns");
    assert!(matches!(netns::host_peers(u32::MAX / 2), Err(Error::Netlink { .. })));
    // The caller's thread is still in the host's netns.
    assert!(rt.block_on(links::dump()).unwrap().iter().any(|l| l.name == scratch.host_if));

    let enslaved = |e: &LinkEvent| matches!(e, LinkEvent::New(l) if l.ifindex == host_end.ifindex && l.master == Some(bridge.ifindex) && l.kind.as_deref() == Some("veth"));
    assert!(wait_for(&link_events, Duration::from_secs(2), enslaved).is_some(), "no enslaving NEWLINK");
    run_ok("ip", &["link", "del", &scratch.host_if]);
    let gone = |e: &LinkEvent| matches!(e, LinkEvent::Del { ifindex, name } if *ifindex == host_end.ifindex && *name == scratch.host_if);
    assert!(wait_for(&link_events, Duration::from_secs(2), gone).is_some(), "no DELLINK");
}

/// Sets DOCKER_HOST for the test's duration (tests run serially).
struct DockerHost;

impl DockerHost {
    fn set(value: &str) -> DockerHost {
        std::env::set_var("DOCKER_HOST", value);
        DockerHost
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        std::env::remove_var("DOCKER_HOST");
    }
}

fn connect_fails(rt: &Runtime, limit: Duration) -> String {
    let t = Instant::now();
    let err = rt.block_on(Engine::connect()).expect_err("connect with no engine");
    assert!(t.elapsed() < limit, "connect took {:?}", t.elapsed());
    assert!(matches!(err, Error::Engine { .. }), "{err:?}");
    err.to_string()
}

/// No socket, or a socket nobody listens at: a fast, clear error, and
/// "no engine" for the CLI. A socket that accepts but never answers: an
/// error within the connect timeout (that is not "no engine").
#[test]
fn no_engine_is_said_fast() {
    let rt = runtime();
    {
        let _host = DockerHost::set("unix:///nonexistent");
        let msg = connect_fails(&rt, Duration::from_millis(500));
        assert!(msg.contains("unix:///nonexistent") && msg.contains("dockerd"), "{msg}");
        let t = Instant::now();
        assert!(matches!(engine::view_blocking(), Ok(None)));
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    let path = std::env::temp_dir().join(format!("dbe-engine-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let host = format!("unix://{}", path.display());
    {
        // Bound then closed: the file stays, connecting is refused.
        drop(UnixListener::bind(&path).unwrap());
        let _host = DockerHost::set(&host);
        let msg = connect_fails(&rt, Duration::from_millis(500));
        assert!(msg.contains(&host), "{msg}");
        assert!(matches!(engine::view_blocking(), Ok(None)));
    }
    std::fs::remove_file(&path).unwrap();
    {
        // Listening, never accepting: the kernel completes the connection,
        // nothing answers.
        let _listener = UnixListener::bind(&path).unwrap();
        let _host = DockerHost::set(&host);
        let msg = connect_fails(&rt, Duration::from_secs(7));
        assert!(msg.contains("no answer"), "{msg}");
        assert!(matches!(engine::view_blocking(), Err(Error::Engine { .. })));
    }
    let _ = std::fs::remove_file(&path);

    let _host = DockerHost::set("tcp://127.0.0.1:2375");
    assert!(connect_fails(&rt, Duration::from_millis(500)).contains("unix://"));
}
