//! Docker's IPv6 (issue 9): the test engine runs with IPv6 on (`cargo xtask
//! setup` writes `ipv6`, `fixed-cidr-v6`, `experimental` and `ip6tables`
//! into daemon.json), so docker0 hands containers an address from
//! `fd00:db8:d0c:17::/64` and `-p` publishes on `[::]` too, by DNAT in
//! ip6tables. A container rule closes both IPv6 paths from outside: the
//! published port at the host's IPv6 address (through the XDP uplink and
//! through the interface without XDP) and the container's own IPv6 address
//! by direct routing; the control port stays open, and `unblock` opens
//! them again.
//!
//! Needs root and a running Docker daemon with IPv6; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test e2e_ipv6 -- --test-threads=1`

use std::time::Duration;

use dockblock_tests::docker::MARKER;
use dockblock_tests::netns::Outside;
use dockblock_tests::rig::topology::{eventually, Topology, Web, CONTROL_PORT};
use dockblock_tests::{rig, run_ok};

const SUBNET: u8 = 140;
const HOST_PORT: u16 = 21500;
const NAME: &str = "dbt-v6web";
/// docker0's IPv6 subnet as setup configures it.
const DOCKER6: &str = "fd00:db8:d0c:17::/64";

/// The host's IPv6 address on each outside namespace's link (XDP one, plain
/// one): 2001:db8:e8:<subnet>::1, the namespace ::2, and a route to
/// docker0's IPv6 subnet through the host.
fn add_ipv6(t: &Topology) -> [String; 2] {
    let wire = |o: &Outside, subnet: u8| {
        let prefix = format!("2001:db8:e8:{subnet}");
        let host = format!("{prefix}::1");
        o.add_ipv6(&host, &format!("{prefix}::2"));
        o.exec_ok("ip", &["-6", "route", "add", DOCKER6, "via", &host]);
        host
    };
    [wire(&t.xdp, SUBNET), wire(&t.plain, SUBNET + 1)]
}

/// The engine must hand out IPv6 addresses and forward IPv6; a clear
/// message otherwise (setup's daemon.json is missing).
fn require_ipv6_engine() {
    let on = run_ok("docker", &["network", "inspect", "-f", "{{.EnableIPv6}}", "bridge"]);
    assert_eq!(on.trim(), "true", "docker0 has no IPv6: run `cargo xtask setup` (it turns IPv6 on)");
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap_or_default();
    assert_eq!(fwd.trim(), "1", "IPv6 forwarding is off: dockerd with ipv6 turns it on");
}

fn ipv6_of(web: &Web) -> String {
    let out = run_ok(
        "docker",
        &["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}} {{end}}", web.name()],
    );
    out.split_whitespace().next().unwrap_or_else(|| panic!("{} has no IPv6 address", web.name())).to_string()
}

/// One GET of `http://[addr]:port/` from `out`: true only if the page came.
fn http6(out: &Outside, addr: &str, port: u16) -> bool {
    let url = format!("http://[{addr}]:{port}/");
    let o = out.exec("curl", &["-g", "-s", "--connect-timeout", "1", "--max-time", "2", &url]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains(MARKER)
}

/// Container `port` (80 or the control port) over IPv6 on each path:
/// [published port via the XDP uplink, the same via the interface without
/// XDP, the container's IPv6 address by direct routing from the XDP side].
fn paths6(t: &Topology, hosts: &[String; 2], web: &Web, ip6: &str, port: u16) -> [bool; 3] {
    let host_port = web.host_port(port);
    std::thread::scope(|s| {
        let xdp = s.spawn(|| http6(&t.xdp, &hosts[0], host_port));
        let plain = s.spawn(|| http6(&t.plain, &hosts[1], host_port));
        let direct = s.spawn(|| http6(&t.xdp, ip6, port));
        [xdp, plain, direct].map(|h| h.join().expect("probe thread"))
    })
}

#[test]
fn a_container_rule_closes_the_ipv6_published_port_and_address() {
    require_ipv6_engine();
    let t = Topology::with_daemon("v6", SUBNET);
    let hosts = add_ipv6(&t);
    let web = Web::run(NAME, HOST_PORT, &[]);
    t.wait_reviewed(&web);
    let ip6 = ipv6_of(&web);
    assert!(ip6.starts_with("fd00:db8:d0c:17:"), "{NAME}'s IPv6 address {ip6} is not docker0's");

    // Every IPv6 path is open before the rule: the probes can reach it.
    let open = eventually(Duration::from_secs(10), || paths6(&t, &hosts, &web, &ip6, 80) == [true; 3]);
    assert!(open, "IPv6 paths before any rule: {:?}\n{}", paths6(&t, &hosts, &web, &ip6, 80), t.context());

    // `ports` lists the [::] binding as a row of its own.
    let ports = t.agent.json(&["ports"]);
    let row = |ports: &serde_json::Value| {
        ports["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("ports --json has no ports: {ports}"))
            .iter()
            .find(|p| p["host_port"] == HOST_PORT && p["proto"] == "tcp" && p["host_ip"] == "::")
            .cloned()
            .unwrap_or_else(|| panic!("no [::]:{HOST_PORT}/tcp row in ports: {ports}"))
    };
    let before = row(&ports);

    t.agent.ok(&["block", "--container", NAME, "80/tcp"]);
    let closed = eventually(Duration::from_secs(10), || paths6(&t, &hosts, &web, &ip6, 80) == [false; 3]);
    assert!(closed, "IPv6 paths after block: {:?}\n{}", paths6(&t, &hosts, &web, &ip6, 80), t.context());
    // The control port stays open on IPv6, and IPv4 is closed too.
    assert_eq!(paths6(&t, &hosts, &web, &ip6, CONTROL_PORT), [true; 3], "control port over IPv6");
    t.assert_paths(&web, 80, false, "IPv4 under the same container rule");

    // The drops were counted on the rule (with what it derived).
    let list = t.agent.json(&["list"]);
    let rule = list["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["target"]["kind"] == "container" && r["target"]["name"] == NAME))
        .cloned()
        .unwrap_or_else(|| panic!("no rule for {NAME}: {list}"));
    assert!(rig::dropped_with_derived(&t.agent, &rule) > 0, "no drop counted: {rule}");
    // `ports` tells the IPv6 row is blocked now, by that rule.
    let after = row(&t.agent.json(&["ports"]));
    assert_eq!(before["verdict"], "open", "[::] row before the rule: {before}");
    assert_eq!(after["verdict"], "blocked", "[::] row under the rule: {after}");
    assert!(
        after["rules"].as_array().is_some_and(|r| r.contains(&rule["id"])),
        "[::] row: {after}\nrule: {rule}"
    );

    t.agent.ok(&["unblock", "--container", NAME, "80/tcp"]);
    let reopened = eventually(Duration::from_secs(10), || paths6(&t, &hosts, &web, &ip6, 80) == [true; 3]);
    assert!(reopened, "IPv6 paths after unblock: {:?}\n{}", paths6(&t, &hosts, &web, &ip6, 80), t.context());
}
