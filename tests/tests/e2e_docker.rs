//! End-to-end tests of the Docker-aware daemon (issue 9): the real engine,
//! `dockblock-agent run` on an XDP uplink, and connections sent from outside
//! namespaces the way an attacker sends them: to the published port through
//! the XDP uplink, to the same port through an interface without XDP, and
//! to the container's own address by direct routing. Each web container
//! serves on 80 and on the control port 81 (see `rig::topology`): a rule on
//! 80 leaves 81 open, which proves the container was reviewed.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test e2e_docker -- --test-threads=1`

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dockblock_tests::docker::MARKER;
use dockblock_tests::dockerd::Dockerd;
use dockblock_tests::rig::topology::{
    eventually, http, ForwardAll, Net, ProbeLoop, Tally, Topology, Web, CONTROL_PORT,
};
use dockblock_tests::rig::{connects, host_service};
use dockblock_tests::{describe, quiet, run, run_for, run_ok};
use serde_json::Value;

/// Gives the XDP namespace the second source `198.18.<subnet>.6` and
/// returns it: the allowed source of allow-list tests.
fn add_friend(t: &Topology) -> String {
    let ns_ip = t.xdp.ns_ip();
    let friend = format!("{}.6", &ns_ip[..ns_ip.rfind('.').unwrap()]);
    t.xdp.add_source(&friend);
    friend
}

/// The rules of `list --json` for which `want` holds.
fn rules(t: &Topology, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let list = t.agent.json(&["list"]);
    let all = list["rules"].as_array().unwrap_or_else(|| panic!("list --json: {list}"));
    all.iter().filter(|r| want(r)).cloned().collect()
}

/// The one user rule whose target is container `name`.
fn container_rule(t: &Topology, name: &str) -> Value {
    let found = rules(t, |r| r["target"]["kind"] == "container" && r["target"]["name"] == name);
    assert_eq!(found.len(), 1, "want one rule on container {name}\n{}", t.context());
    found[0].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The two holes of the issue: a dialed-port rule on a published port
/// closes the service on the XDP uplink, at the container's own address by
/// direct routing, and through an interface without XDP.
#[test]
fn a_published_port_rule_closes_every_path() {
    let t = Topology::with_daemon("dkh", 200);
    let web = Web::run("dbt-dkh", 19000, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, 80, "no rule yet");

    t.agent.ok(&["block", "19000/tcp"]);
    t.assert_paths(&web, 80, false, "block 19000/tcp");
    t.assert_paths(&web, CONTROL_PORT, true, "block 19000/tcp leaves 19001");

    t.agent.ok(&["unblock", "19000/tcp"]);
    t.assert_opens(&web, 80, "unblock 19000/tcp");
}

/// `block --container NAME` (of a container that exists: an unknown name
/// is refused) closes every published port, `NAME 80/tcp`
/// that port only, `--allow-from` keeps it open to that source; `unblock
/// --container` opens again; `list` shows what the rule covers; an unknown
/// container is refused (exit 2) and changes nothing.
#[test]
fn container_rules() {
    let t = Topology::with_daemon("dkc", 202);
    let friend = add_friend(&t);
    let web = Web::run("dbt-dkc", 19010, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, 80, "no rule yet");

    t.agent.ok(&["block", "--container", "dbt-dkc"]);
    t.assert_paths(&web, 80, false, "block --container (every port)");
    t.assert_paths(&web, CONTROL_PORT, false, "block --container (every port)");
    let r = container_rule(&t, "dbt-dkc");
    assert_eq!(r["action"], "block", "{r}");
    let hosts = strings(&r["covers"]["host_ports"]);
    assert!(hosts.iter().any(|h| h.ends_with(":19010/tcp")), "covers.host_ports: {r}");
    assert!(hosts.iter().any(|h| h.ends_with(":19011/tcp")), "covers.host_ports: {r}");
    assert!(strings(&r["covers"]["addresses"]).contains(&web.ip()), "covers.addresses: {r}");
    assert!(!strings(&r["covers"]["veths"]).is_empty(), "covers.veths: {r}");

    t.agent.ok(&["unblock", "--container", "dbt-dkc"]);
    t.assert_opens(&web, 80, "unblock --container");
    t.assert_opens(&web, CONTROL_PORT, "unblock --container");

    t.agent.ok(&["block", "--container", "dbt-dkc", "80/tcp"]);
    t.assert_paths(&web, 80, false, "block --container dbt-dkc 80/tcp");
    t.assert_paths(&web, CONTROL_PORT, true, "block --container dbt-dkc 80/tcp");
    t.agent.ok(&["unblock", "--container", "dbt-dkc", "80/tcp"]);
    t.assert_opens(&web, 80, "unblock --container dbt-dkc 80/tcp");

    let cidr = format!("{friend}/32");
    t.agent.ok(&["block", "--container", "dbt-dkc", "80/tcp", "--allow-from", &cidr]);
    t.assert_paths(&web, 80, false, "--allow-from: other sources");
    let ip = web.ip();
    for (addr, port) in [(t.xdp.host_ip(), 19010), (ip.as_str(), 80)] {
        assert!(
            http(&t.xdp, Some(&friend), addr, port),
            "allowed {friend} refused at {addr}:{port}\n{}",
            t.context()
        );
    }

    // Unknown container: usage error, nothing changed.
    let before = t.agent.json(&["list"]);
    let err = t.agent.fails(&["block", "--container", "dbt-nosuch"], 2);
    assert!(err.contains("dbt-nosuch"), "the error names the container: {err}");
    assert_eq!(t.agent.json(&["list"])["rules"], before["rules"], "a refused block changed the rules");
    t.assert_paths(&web, 80, false, "after the refused block");
}

/// `--label` and compose rules cover containers started after them, and
/// only those.
#[test]
fn label_and_compose_rules_cover_containers_started_later() {
    let t = Topology::with_daemon("dkl", 204);
    t.agent.ok(&["block", "--label", "tier=internal", "80/tcp"]);
    t.agent.ok(&["block", "--compose-project", "shop", "--compose-service", "db", "80/tcp"]);

    let internal = Web::run("dbt-dkl1", 19020, &["-l", "tier=internal"]);
    let public = Web::run("dbt-dkl2", 19022, &["-l", "tier=public"]);
    let project = ["-l", "com.docker.compose.project=shop"];
    let db = Web::run("dbt-dkl3", 19024, &[&project[..], &["-l", "com.docker.compose.service=db"]].concat());
    let cache =
        Web::run("dbt-dkl4", 19026, &[&project[..], &["-l", "com.docker.compose.service=cache"]].concat());
    for w in [&internal, &public, &db, &cache] {
        t.wait_reviewed(w);
        t.assert_opens(w, CONTROL_PORT, "control port");
    }
    t.assert_paths(&internal, 80, false, "--label tier=internal");
    t.assert_paths(&public, 80, true, "tier=public is not covered");
    t.assert_paths(&db, 80, false, "--compose-project shop --compose-service db");
    t.assert_paths(&cache, 80, true, "service cache is not covered");

    // The whole project, every published port.
    t.agent.ok(&["block", "--compose-project", "shop"]);
    t.assert_paths(&cache, 80, false, "--compose-project shop");
    t.assert_paths(&cache, CONTROL_PORT, false, "--compose-project shop");
    t.assert_paths(&public, 80, true, "--compose-project shop leaves other containers");
}

/// A container's own `dockblock.*` labels close it, with their allow-list;
/// a bad label value is logged as a warning naming container and label,
/// gives no rule, and changes nothing else.
#[test]
fn own_labels_and_bad_label_values() {
    let t = Topology::with_daemon("dkb", 206);
    let friend = add_friend(&t);
    let allow = format!("dockblock.allow-from={friend}/32");
    let web = Web::run("dbt-dkb1", 19030, &["-l", "dockblock.block=80/tcp", "-l", &allow]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "control port");
    t.assert_paths(&web, 80, false, "label dockblock.block=80/tcp");
    let ip = web.ip();
    for (addr, port) in [(t.xdp.host_ip(), 19030), (ip.as_str(), 80)] {
        assert!(
            http(&t.xdp, Some(&friend), addr, port),
            "label-allowed {friend} refused at {addr}:{port}\n{}",
            t.context()
        );
    }

    let bad = Web::run("dbt-dkb2", 19032, &["-l", "dockblock.block=80/bogus"]);
    t.wait_reviewed(&bad);
    t.assert_opens(&bad, 80, "a bad label value gives no rule");
    let warned = eventually(Duration::from_secs(5), || {
        t.log().lines().any(|l| l.contains("WARN") && l.contains("dbt-dkb2") && l.contains("dockblock.block"))
    });
    assert!(warned, "no warning naming dbt-dkb2 and dockblock.block in the daemon log:\n{}", t.log());
    t.assert_paths(&web, 80, false, "the other container's label rule, after the bad label");
    for (addr, port) in [(t.xdp.host_ip(), 19030), (ip.as_str(), 80)] {
        assert!(
            http(&t.xdp, Some(&friend), addr, port),
            "after the bad label: {friend} refused at {addr}:{port}"
        );
    }
}

/// On one user-defined network, `app` reaches `db:80` while outside is
/// blocked; with `--from-containers` it cannot either.
#[test]
fn container_to_container_is_judged_only_with_from_containers() {
    let t = Topology::with_daemon("dkn", 208);
    let net = Net::create("dbt-dkn", "172.28.208.0/24", "dbbrdkn");
    let db = Web::run("dbt-dkn-db", 19040, &["--network", net.name(), "--network-alias", "db"]);
    let app = Web::run("dbt-dkn-app", 19042, &["--network", net.name()]);
    t.wait_reviewed(&db);
    t.wait_reviewed(&app);
    // busybox nc: this static busybox's wget crashes in the container.
    let app_gets = |port: u16| {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 db {port}");
        app.exec(&["sh", "-c", &script]).contains(MARKER)
    };
    assert!(app_gets(80), "rig: app cannot reach db:80");

    t.agent.ok(&["block", "--container", "dbt-dkn-db", "80/tcp"]);
    t.assert_paths(&db, 80, false, "block --container db 80/tcp");
    assert!(app_gets(80), "without --from-containers, app must still reach db:80\n{}", t.context());

    t.agent.ok(&["unblock", "--container", "dbt-dkn-db", "80/tcp"]);
    t.agent.ok(&["block", "--container", "dbt-dkn-db", "80/tcp", "--from-containers"]);
    t.assert_paths(&db, 80, false, "--from-containers");
    assert!(!app_gets(80), "with --from-containers, app reached db:80\n{}", t.context());
    assert!(app_gets(CONTROL_PORT), "--from-containers on 80 closed db:81 to app");
}

/// A `--container` rule follows its container across a restart, a
/// re-creation with the same name on other host ports and a connect to a
/// new network (whose bridge gets hooks); it names a name, so a renamed
/// container leaves it and a container renamed to it enters it.
#[test]
fn a_container_rule_follows_the_container() {
    let t = Topology::with_daemon("dkf", 210);
    let web = Web::run("dbt-dkf", 19050, &[]);
    t.agent.ok(&["block", "--container", "dbt-dkf", "80/tcp"]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "control port");
    t.assert_paths(&web, 80, false, "block --container dbt-dkf 80/tcp");

    run_ok("docker", &["restart", "-t", "1", "dbt-dkf"]);
    web.wait_serving();
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "after docker restart");
    t.assert_paths(&web, 80, false, "after docker restart");

    drop(web);
    // Before the container, so it drops after it (a network with an
    // endpoint cannot be removed).
    let net = Net::create("dbt-dkf", "172.29.210.0/24", "dbbrdkf");
    let mut web = Web::run("dbt-dkf", 19056, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "re-created on 19056");
    t.assert_paths(&web, 80, false, "re-created on 19056");

    // A second network: its address is reachable only where forwarding is
    // opened (Docker accepts published ports on the first network only).
    let _forward = ForwardAll::from(&[t.xdp.host_if()]);
    run_ok("docker", &["network", "connect", net.name(), "dbt-dkf"]);
    let ip2 = web.ip_on(Some(net.name()));
    assert!(eventually(Duration::from_secs(10), || web.veths().len() == 2), "no second veth");
    t.wait_reviewed(&web);
    assert!(
        eventually(Duration::from_secs(10), || http(&t.xdp, None, &ip2, CONTROL_PORT)),
        "{ip2}:{CONTROL_PORT} on the new network unreachable\n{}",
        t.context()
    );
    assert!(!http(&t.xdp, None, &ip2, 80), "{ip2}:80 on the new network open\n{}", t.context());
    let status = t.agent.json(&["status"]);
    let on_bridge = status["links"].as_array().unwrap().iter().any(|l| l["interface"] == "dbbrdkf");
    assert!(on_bridge, "no hook on the new bridge dbbrdkf: {status}");

    web.rename("dbt-dkf-renamed");
    t.assert_opens(&web, 80, "renamed: the rule names dbt-dkf");
    web.rename("dbt-dkf");
    assert!(
        eventually(Duration::from_secs(10), || t.paths(&web, 80) == [false; 3]),
        "renamed back to dbt-dkf: 80 not closed on every path {:?}\n{}",
        t.paths(&web, 80),
        t.context()
    );
}

/// `policy published deny` closes every published port from outside and
/// leaves host services alone (no lockout); `allow` opens a container port,
/// or a host port to one source; `policy published allow` restores Docker's
/// behaviour.
#[test]
fn private_by_default() {
    let t = Topology::with_daemon("dkp", 212);
    let friend = add_friend(&t);
    let web = Web::run("dbt-dkp", 19060, &[]);
    t.wait_reviewed(&web);
    let _sshd = host_service(t.xdp.host_ip(), 19069, 120);
    assert!(connects(&t.xdp, t.xdp.host_ip(), 19069), "rig: host service unreachable");

    t.agent.ok(&["policy", "published", "deny"]);
    t.assert_paths(&web, 80, false, "policy published deny");
    t.assert_paths(&web, CONTROL_PORT, false, "policy published deny");
    assert!(
        connects(&t.xdp, t.xdp.host_ip(), 19069),
        "policy deny closed a host service Docker did not publish"
    );

    t.agent.ok(&["allow", "--container", "dbt-dkp", "80/tcp"]);
    t.assert_opens(&web, 80, "allow --container dbt-dkp 80/tcp");
    t.assert_paths(&web, CONTROL_PORT, false, "allow 80 leaves 81 denied");

    let cidr = format!("{friend}/32");
    t.agent.ok(&["allow", "19061/tcp", "--from", &cidr]);
    assert!(
        eventually(Duration::from_secs(5), || http(&t.xdp, Some(&friend), t.xdp.host_ip(), 19061)),
        "allow 19061/tcp --from {cidr}: {friend} refused\n{}",
        t.context()
    );
    t.assert_paths(&web, CONTROL_PORT, false, "allow --from: other sources");

    t.agent.ok(&["policy", "published", "allow"]);
    t.assert_opens(&web, CONTROL_PORT, "policy published allow");
    assert!(connects(&t.xdp, t.xdp.host_ip(), 19069));
}

/// The `ports --json` entry of host port `port`/tcp.
fn port_entry(ports: &Value, port: u16) -> Value {
    let all = ports["ports"].as_array().unwrap_or_else(|| panic!("ports --json: {ports}"));
    let found: Vec<&Value> = all
        .iter()
        .filter(|p| p["host_port"] == port && p["proto"] == "tcp" && p["host_ip"] == "0.0.0.0")
        .collect();
    assert_eq!(found.len(), 1, "want one entry for 0.0.0.0:{port}/tcp (`::` has its own): {ports}");
    found[0].clone()
}

fn rule_ids(entry: &Value) -> Vec<u64> {
    entry["rules"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// `ports --json`: each published port with its container, container port,
/// verdict from outside and the ids of the rules that decide it.
#[test]
fn ports_shows_each_published_port_and_its_verdict() {
    let t = Topology::with_daemon("dko", 214);
    let a = Web::run("dbt-dko1", 19070, &[]);
    let b = Web::run("dbt-dko2", 19072, &[]);
    t.wait_reviewed(&a);
    t.wait_reviewed(&b);
    t.agent.ok(&["block", "--container", "dbt-dko1", "80/tcp", "--allow-from", "198.18.214.6/32"]);
    t.agent.ok(&["block", "19073/tcp"]);
    let container_id = container_rule(&t, "dbt-dko1")["id"].as_u64().expect("id");
    let plain = rules(&t, |r| r["target"]["kind"] == "ports" && r["spec"] == "19073/tcp");
    assert_eq!(plain.len(), 1, "{}", t.context());
    let plain_id = plain[0]["id"].as_u64().expect("id");

    let ports = t.agent.json(&["ports"]);
    let e = port_entry(&ports, 19070);
    assert_eq!(e["container"], "dbt-dko1", "{e}");
    assert_eq!(e["container_port"], 80, "{e}");
    assert_eq!(e["verdict"], "open_to", "{e}");
    assert_eq!(strings(&e["open_to"]), ["198.18.214.6/32"], "{e}");
    assert_eq!(rule_ids(&e), [container_id], "{e}");
    for port in [19071, 19072] {
        let e = port_entry(&ports, port);
        assert_eq!(e["verdict"], "open", "{e}");
        assert!(rule_ids(&e).is_empty(), "{e}");
    }
    let e = port_entry(&ports, 19073);
    assert_eq!(e["container"], "dbt-dko2", "{e}");
    assert_eq!(e["container_port"], CONTROL_PORT, "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(rule_ids(&e), [plain_id], "{e}");
    // The verdicts are the traffic's.
    t.assert_paths(&b, CONTROL_PORT, false, "19073/tcp blocked");
    t.assert_paths(&a, 80, false, "dbt-dko1 80/tcp blocked to others");
}

/// Asserts that no blocked target of `tallies` connected and that every
/// control target did, naming them with `names`.
fn assert_probe(tallies: &[Tally], names: &[(&str, bool)], context: &str) {
    println!("probe loop ({context}):");
    for (t, (name, control)) in tallies.iter().zip(names) {
        println!("  {name}: {t:?}");
        if *control {
            assert!(t.ok > 0, "{context}: control {name} never connected: {t:?}");
        } else {
            assert_eq!(t.ok, 0, "{context}: blocked {name} connected {} times: {t:?}", t.ok);
        }
    }
}

/// dockerd restarts (live-restore on, so the containers keep running):
/// the rules stay enforced throughout (probe loop: zero connections to the
/// blocked port on every path, the control port answers), and the daemon
/// reconnects and follows the engine again (a container started after the
/// restart is covered by its label).
#[test]
fn rules_hold_while_dockerd_restarts_and_the_daemon_resyncs() {
    let t = Topology::with_daemon("dkd", 216);
    let dockerd = Dockerd::live_restore();
    let web = Web::run("dbt-dkd", 19080, &[]);
    t.agent.ok(&["block", "--container", "dbt-dkd", "80/tcp"]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "control port");
    t.assert_paths(&web, 80, false, "before the restart");

    let ip = web.ip();
    let every = Duration::from_millis(20);
    let xdp_targets =
        [(t.xdp.host_ip().to_string(), 19080), (ip.clone(), 80), (t.xdp.host_ip().to_string(), 19081)];
    let xdp = ProbeLoop::start(&t.xdp, &xdp_targets, every, Duration::from_secs(120));
    let plain = ProbeLoop::start(
        &t.plain,
        &[(t.plain.host_ip().to_string(), 19080)],
        every,
        Duration::from_secs(120),
    );
    let started = Instant::now();
    dockerd.restart();
    println!("dockerd restarted in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let late = Web::run("dbt-dkd2", 19082, &["-l", "dockblock.block=80/tcp"]);
    t.wait_reviewed(&late);
    t.assert_opens(&late, CONTROL_PORT, "a container started after the dockerd restart");
    t.assert_paths(&late, 80, false, "its label rule, after the dockerd restart");
    t.assert_paths(&web, 80, false, "after the dockerd restart");

    assert_probe(
        &xdp.finish(),
        &[("xdp uplink :19080", false), ("container ip :80", false), ("xdp uplink :19081 (control)", true)],
        "dockerd restart",
    );
    assert_probe(&plain.finish(), &[("uplink without XDP :19080", false)], "dockerd restart");
}

/// The daemon killed with SIGKILL and started again: zero connections to
/// the blocked port throughout, on every path; the second daemon adopts the
/// links instead of stacking new ones.
#[test]
fn a_daemon_killed_and_restarted_leaves_no_gap() {
    let mut t = Topology::with_daemon("dkk", 218);
    let web = Web::run("dbt-dkk", 19090, &[]);
    t.agent.ok(&["block", "--container", "dbt-dkk", "80/tcp"]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "control port");
    t.assert_paths(&web, 80, false, "before the kill");
    let links_before = t.agent.json(&["status"])["links"].as_array().map(Vec::len);

    let ip = web.ip();
    let every = Duration::from_millis(20);
    let xdp_targets =
        [(t.xdp.host_ip().to_string(), 19090), (ip.clone(), 80), (t.xdp.host_ip().to_string(), 19091)];
    let xdp = ProbeLoop::start(&t.xdp, &xdp_targets, every, Duration::from_secs(60));
    let plain =
        ProbeLoop::start(&t.plain, &[(t.plain.host_ip().to_string(), 19090)], every, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    t.kill_daemon();
    std::thread::sleep(Duration::from_secs(1));
    t.start_daemon();
    std::thread::sleep(Duration::from_secs(1));
    assert_probe(
        &xdp.finish(),
        &[("xdp uplink :19090", false), ("container ip :80", false), ("xdp uplink :19091 (control)", true)],
        "SIGKILL and restart",
    );
    assert_probe(&plain.finish(), &[("uplink without XDP :19090", false)], "SIGKILL and restart");
    let links_after = t.agent.json(&["status"])["links"].as_array().map(Vec::len);
    assert_eq!(links_after, links_before, "links after the restart\n{}", t.context());
}

/// A SYN flood at a container rule's published port dies in XDP on the
/// uplink: counted as dropped there, never seen by the veth hook, and no
/// conntrack entry for the flood's source.
#[test]
fn a_flood_at_a_container_rule_dies_in_xdp() {
    const SYNS: u64 = 20_000;
    let t = Topology::with_daemon("dkx", 220);
    let web = Web::run("dbt-dkx", 19100, &[]);
    t.agent.ok(&["block", "--container", "dbt-dkx", "80/tcp"]);
    t.wait_reviewed(&web);
    t.assert_paths(&web, 80, false, "before the flood");
    let source = "198.18.220.9";
    quiet("conntrack", &["-D", "-s", source]);

    let xdp_before = t.hook_packets("xdp", "dropped");
    let veth_before = t.hook_packets("veth", "dropped");
    let count = SYNS.to_string();
    let flood = t.xdp.netns_cmd();
    let mut args: Vec<&str> = flood.iter().map(String::as_str).collect();
    args.extend([
        "hping3",
        "-q",
        "-S",
        "-p",
        "19100",
        "-a",
        source,
        "-c",
        &count,
        "-i",
        "u20",
        t.xdp.host_ip(),
    ]);
    let o = run_for(Duration::from_secs(90), args[0], &args[1..]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("rror"), "hping3: {}", describe(&o));

    let xdp = t.hook_packets("xdp", "dropped") - xdp_before;
    let veth = t.hook_packets("veth", "dropped") - veth_before;
    println!("flood of {SYNS} SYNs: xdp dropped {xdp}, veth dropped {veth}");
    assert!(xdp >= SYNS, "XDP dropped {xdp} of {SYNS} SYNs\n{}", t.context());
    assert_eq!(veth, 0, "the veth hook saw flood packets: {veth}");
    let ct = run("conntrack", &["-L", "-s", source]);
    let entries = String::from_utf8_lossy(&ct.stdout).lines().filter(|l| l.contains(source)).count();
    assert_eq!(entries, 0, "conntrack entries for the flood's source: {}", describe(&ct));
}

/// The engine's socket seen through a socat proxy the test owns (its own
/// process group, so stopping it cuts the daemon's event stream too): the
/// engine goes away and comes back for the daemon, without touching dockerd.
struct EngineProxy {
    path: String,
    child: Option<Child>,
}

impl EngineProxy {
    fn new(path: &str) -> EngineProxy {
        let mut p = EngineProxy { path: path.to_string(), child: None };
        p.start();
        p
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.path)
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listen = format!("UNIX-LISTEN:{},fork", self.path);
        let child = Command::new("timeout")
            .args(["300", "socat", &listen, "UNIX-CONNECT:/var/run/docker.sock"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(5), || std::path::Path::new(&self.path).exists());
        assert!(up, "proxy socket {} not there", self.path);
    }

    /// SIGTERM to the proxy's process group: the listener and every
    /// forwarded connection end.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: the group of our own child, not reaped yet.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The engine goes away under the daemon (its socket cut) and comes back:
/// rules stay enforced throughout (probe loop: zero connections to the
/// blocked port, the control port answers); a container started while the
/// daemon has no engine is closed (its veth unreviewed), and reviewed once
/// the daemon has reconnected and synced again.
#[test]
fn rules_hold_while_the_engine_is_away_and_the_daemon_resyncs() {
    let mut proxy = EngineProxy::new("/tmp/dockblock-test-dke.sock");
    let mut t = Topology::new("dke", 222);
    t.start_daemon_env(&[("DOCKER_HOST", &proxy.docker_host())]);
    let web = Web::run("dbt-dke", 19110, &[]);
    t.agent.ok(&["block", "--container", "dbt-dke", "80/tcp"]);
    t.agent.ok(&["block", "--label", "dke=late", "80/tcp"]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, CONTROL_PORT, "control port");
    t.assert_paths(&web, 80, false, "before the engine goes away");

    let every = Duration::from_millis(20);
    let host = t.xdp.host_ip().to_string();
    let xdp_targets = [(host.clone(), 19110), (web.ip(), 80), (host, 19111)];
    let xdp = ProbeLoop::start(&t.xdp, &xdp_targets, every, Duration::from_secs(120));
    let plain = ProbeLoop::start(
        &t.plain,
        &[(t.plain.host_ip().to_string(), 19110)],
        every,
        Duration::from_secs(120),
    );
    proxy.stop();
    let late = Web::run("dbt-dke2", 19112, &["-l", "dke=late"]);
    std::thread::sleep(Duration::from_secs(1));
    let away = t.paths(&late, CONTROL_PORT);
    println!("a container started while the engine is away, control port: {away:?}");
    assert_eq!(away, [false; 3], "unreviewed, it must be closed\n{}", t.context());
    proxy.start();
    t.wait_reviewed(&late);
    t.assert_opens(&late, CONTROL_PORT, "reviewed after the reconnect");
    t.assert_paths(&late, 80, false, "its --label rule after the reconnect");
    t.assert_paths(&web, 80, false, "after the reconnect");

    assert_probe(
        &xdp.finish(),
        &[("xdp uplink :19110", false), ("container ip :80", false), ("xdp uplink :19111 (control)", true)],
        "engine away",
    );
    assert_probe(&plain.finish(), &[("uplink without XDP :19110", false)], "engine away");
}
