//! End-to-end tests of scoped rules (`--on IFACE`, `--to ADDR`): the real
//! CLI and daemon, a web container published on the host, real connections
//! from the two outside namespaces of `Topology` (`xdp` on the uplink the
//! daemon attaches XDP to, `plain` on an interface without XDP).
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo test -p dockblock-tests --test e2e_scope -- --test-threads=1`

use dockblock_tests::netns::Outside;
use dockblock_tests::rig::topology::{http, Topology, Web, CONTROL_PORT};
use serde_json::Value;

/// The rule of `list --json` with this spec and `on`/`to`.
fn scoped_rule(t: &Topology, spec: &str) -> Value {
    let list = t.agent.json(&["list"]);
    let rules = list["rules"].as_array().cloned().unwrap_or_default();
    rules
        .into_iter()
        .find(|r| r["spec"] == spec && r["target"]["kind"] == "ports")
        .unwrap_or_else(|| panic!("{spec} not in list --json: {list}"))
}

/// `block PORT --on <xdp uplink>` closes the published port to clients that
/// come in on that uplink only; `--to <host address>` closes it on that
/// address only (the other host address, dialed through the same uplink,
/// stays open); `list --json` shows both; bad values exit 2 and change
/// nothing; `explain --on` judges the packet as coming in on that
/// interface.
#[test]
fn on_and_to_close_one_interface_or_one_address() {
    let t = Topology::with_daemon("sc", 160);
    let web = Web::run("dbt-sc1", 21000, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, 80, "no rule yet");
    let uplink = t.xdp.host_if().to_string();
    let (a, b) = (t.xdp.host_ip().to_string(), t.plain.host_ip().to_string());
    // The xdp namespace dials both host addresses through the XDP uplink.
    t.xdp.exec_ok("ip", &["route", "add", &format!("{b}/32"), "via", &a]);
    assert!(http(&t.xdp, None, &b, 21000), "rig broken: {b}:21000 from the xdp namespace");

    t.agent.ok(&["block", "21000/tcp", "--on", &uplink]);
    assert_eq!(
        t.paths(&web, 80),
        [false, true, true],
        "--on the XDP uplink: [xdp, plain, direct]\n{}",
        t.context()
    );
    assert!(!http(&t.xdp, None, &b, 21000), "the other address, through the uplink, is closed too");
    let r = scoped_rule(&t, "21000/tcp");
    assert_eq!(r["on"], serde_json::json!([uplink]), "{r}");
    assert_eq!(r["to"], serde_json::json!([]), "{r}");
    assert!(r["dropped"]["packets"].as_u64().unwrap() >= 1, "{r}");
    assert!(t.agent.ok(&["list"]).contains(&format!("on {uplink}")));
    // `ports`: the path without XDP stays open; XDP's scoped verdict apart.
    let ports = t.agent.json(&["ports"]);
    let row = ports["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["host_port"] == 21000 && p["host_ip"] == "0.0.0.0").cloned())
        .unwrap_or_else(|| panic!("no 21000 in ports --json: {ports}"));
    assert_eq!(row["verdict"], "open", "{row}");
    assert_eq!(row["scoped"][0]["on"], serde_json::json!([uplink]), "{row}");
    assert_eq!(row["scoped"][0]["verdict"], "blocked", "{row}");
    let explain = |on: &str| {
        let report = t.agent.json(&[
            "explain",
            "tcp",
            "203.0.113.5",
            &format!("{a}:21000"),
            "--hook",
            "xdp",
            "--on",
            on,
        ]);
        report.to_string()
    };
    assert!(
        explain(&uplink).contains("\"outcome\":\"dropped\""),
        "explain --on {uplink}: {}",
        explain(&uplink)
    );
    assert!(explain("lo").contains("\"outcome\":\"passed_no_rule\""), "explain --on lo: {}", explain("lo"));

    t.agent.ok(&["unblock", "21000/tcp", "--on", &uplink]);
    t.assert_opens(&web, 80, "unblock --on");

    t.agent.ok(&["block", "21000/tcp", "--to", &a]);
    assert!(!http(&t.xdp, None, &a, 21000), "--to {a}: closed there");
    assert!(http(&t.xdp, None, &b, 21000), "--to {a}: {b} stays open through the same uplink");
    assert!(http(&t.xdp, None, &a, 21000 + 1), "another port stays open");
    let r = scoped_rule(&t, "21000/tcp");
    assert_eq!(r["to"], serde_json::json!([a]), "{r}");
    let export = t.agent.ok(&["export"]);
    assert!(export.contains(&format!("to = [\"{a}\"]")), "{export}");

    // Bad input: exit 2, nothing changed.
    let before = t.agent.ok(&["export"]);
    let err = t.agent.fails(&["block", "21002/tcp", "--on", "dbt-sc-none"], 2);
    assert!(err.contains("no interface has this name"), "{err}");
    let err = t.agent.fails(&["block", "21002/tcp", "--to", "198.18.160.0/24"], 2);
    assert!(err.contains("not an IPv4 or IPv6 address"), "{err}");
    let err = t.agent.fails(&["allow", "--container", "dbt-sc1", "80/tcp", "--on", &uplink], 2);
    assert!(err.contains("not scoped"), "{err}");
    assert_eq!(t.agent.ok(&["export"]), before);

    t.agent.ok(&["unblock", "21000/tcp", "--to", &a]);
    t.assert_opens(&web, 80, "unblock --to");
}

/// A Docker rule with `--on`: the container's veth hook judges the
/// interface the packet came in on (`skb->ingress_ifindex`), so
/// `block --container X --on <uplink>` closes the container from that
/// uplink's namespace, on the published port and by direct routing to the
/// container's address, and leaves it open from the other namespace; on
/// the interface without XDP only the veth hook can do it. `ports` and
/// `explain --hook veth --on` say so. A rule with `--to` cannot be judged
/// after DNAT: it still closes every path. unblock with the same scoping
/// opens it again.
/// Whether `out` gets the web page [through the published `host_port`,
/// routed straight to the container's `ip`:80], both tried at once.
fn published_and_direct(out: &Outside, host_port: u16, ip: &str) -> [bool; 2] {
    std::thread::scope(|s| {
        let p = s.spawn(|| http(out, None, out.host_ip(), host_port));
        let d = s.spawn(|| http(out, None, ip, 80));
        [p.join().unwrap(), d.join().unwrap()]
    })
}

/// `ports --json` says host port `host_port` is open from interfaces no
/// rule names, and blocked at `hook` for packets from `on`.
fn assert_blocked_only_on(t: &Topology, host_port: u16, hook: &str, on: &str) {
    let ports = t.agent.json(&["ports"]);
    let row = ports["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["host_port"] == host_port && p["host_ip"] == "0.0.0.0").cloned())
        .unwrap_or_else(|| panic!("no {host_port} in ports --json: {ports}"));
    assert_eq!(row["verdict"], "open", "from interfaces the rule does not name: {row}");
    let scoped = row["scoped"].as_array().and_then(|s| s.iter().find(|s| s["hook"] == hook).cloned());
    let scoped = scoped.unwrap_or_else(|| panic!("no {hook} scoped verdict: {row}"));
    assert_eq!(
        (scoped["on"].clone(), scoped["verdict"].clone()),
        (serde_json::json!([on]), "blocked".into())
    );
}

#[test]
fn a_docker_rule_on_one_uplink_is_judged_at_the_veth() {
    let t = Topology::with_daemon("sd", 162);
    let web = Web::run("dbt-sc2", 21010, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, 80, "no rule yet");
    let ip = web.ip();
    let from = |out: &Outside| published_and_direct(out, 21010, &ip);
    let (a, b) = (t.xdp.host_if().to_string(), t.plain.host_if().to_string());
    for (on, closed, open) in [(&b, &t.plain, &t.xdp), (&a, &t.xdp, &t.plain)] {
        t.agent.ok(&["block", "--container", "dbt-sc2", "80/tcp", "--on", on]);
        assert_eq!(from(closed), [false, false], "--on {on}: closed from its side\n{}", t.context());
        assert_eq!(from(open), [true, true], "--on {on}: open from the other side\n{}", t.context());
        t.assert_paths(&web, CONTROL_PORT, true, "--container 80/tcp leaves 81");
        assert_blocked_only_on(&t, 21010, "veth", on);
        let ifindex = web.veths()[0].to_string();
        let explain = |iface: &str| {
            let dst = format!("{ip}:80");
            let args =
                ["explain", "tcp", "203.0.113.5", &dst, "--hook", "veth", "--veth", &ifindex, "--on", iface];
            t.agent.json(&args).to_string()
        };
        let (here, there) = (explain(on), explain(if on == &a { &b } else { &a }));
        assert!(here.contains("\"outcome\":\"dropped\""), "explain --on {on}: {here}");
        assert!(there.contains("\"outcome\":\"passed_no_rule\""), "explain on the other: {there}");
        t.agent.ok(&["unblock", "--container", "dbt-sc2", "80/tcp", "--on", on]);
        t.assert_opens(&web, 80, "unblock --container --on");
    }
    let list = t.agent.json(&["list"]);
    assert!(
        !list["rules"].as_array().unwrap().iter().any(|r| r["target"]["kind"] == "derived"),
        "unblock removed the derived rule too: {list}"
    );

    // --to: not judged at the veth, so every path closes (fail closed).
    let addr = t.xdp.host_ip().to_string();
    t.agent.ok(&["block", "--container", "dbt-sc2", "80/tcp", "--to", &addr]);
    t.assert_paths(&web, 80, false, "--container --to: closed everywhere (veth hook)");
    assert_eq!(from(&t.plain), [false, false], "--to: closed from the other side too");
    t.assert_paths(&web, CONTROL_PORT, true, "--to leaves 81");
    t.agent.ok(&["unblock", "--container", "dbt-sc2", "80/tcp", "--to", &addr]);
    t.assert_opens(&web, 80, "unblock --container --to");
}

/// A plain container-port rule with `--on`: the bridge hook judges the
/// interface the packet came in on (`skb->ingress_ifindex`), as the veth
/// hook does for Docker rules, so `block --container-port 80/tcp --on X`
/// closes the container's port 80 from X's namespace, on the published
/// port and by direct routing, and leaves it open from the other side.
/// With `--to` it cannot be judged after DNAT and closes every path.
#[test]
fn a_container_port_rule_on_one_uplink_is_judged_at_the_bridge() {
    let t = Topology::with_daemon("sb", 163);
    let web = Web::run("dbt-sc3", 21011, &[]);
    t.wait_reviewed(&web);
    t.assert_opens(&web, 80, "no rule yet");
    let ip = web.ip();
    let from = |out: &Outside| published_and_direct(out, 21011, &ip);
    let (a, b) = (t.xdp.host_if().to_string(), t.plain.host_if().to_string());
    for (on, closed, open) in [(&b, &t.plain, &t.xdp), (&a, &t.xdp, &t.plain)] {
        t.agent.ok(&["block", "--container-port", "80/tcp", "--on", on]);
        assert_eq!(from(closed), [false, false], "--on {on}: closed from its side\n{}", t.context());
        assert_eq!(from(open), [true, true], "--on {on}: open from the other side\n{}", t.context());
        t.assert_paths(&web, CONTROL_PORT, true, "--container-port 80/tcp leaves 81");
        assert_blocked_only_on(&t, 21011, "bridge", on);
        t.agent.ok(&["unblock", "--container-port", "80/tcp", "--on", on]);
        t.assert_opens(&web, 80, "unblock --container-port --on");
    }

    let addr = t.xdp.host_ip().to_string();
    t.agent.ok(&["block", "--container-port", "80/tcp", "--to", &addr]);
    t.assert_paths(&web, 80, false, "--container-port --to: closed everywhere (bridge)");
    assert_eq!(from(&t.plain), [false, false], "--to: closed from the other side too");
    t.agent.ok(&["unblock", "--container-port", "80/tcp", "--to", &addr]);
    t.assert_opens(&web, 80, "unblock --container-port --to");
}
