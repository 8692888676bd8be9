//! No window when a container starts (issue 9): with a rule in place before
//! `docker run` (the container's own label, `--container` by name,
//! `--label`, the deny policy), probes in both outside namespaces connect
//! every 20 ms from before `docker run` until the container has run for a
//! second, 20 starts per kind: zero connections to the blocked port on any
//! path (published port through the XDP uplink and through the interface
//! without XDP, the container's address by direct routing). The control
//! port 81 stays open, so the probes prove they could connect at all. And
//! what happens to a container started while no daemon runs.
//!
//! Needs root and a running Docker daemon; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test e2e_window -- --test-threads=1`

use std::time::{Duration, Instant};

use dockblock_tests::rig::topology::{
    other_daemons, veth_state, Net, ProbeLoop, Tally, Topology, Web, CONTROL_PORT,
};

const STARTS: u32 = 20;
const EVERY: Duration = Duration::from_millis(20);
const NAME: &str = "dbt-win";
const HOST_PORT: u16 = 19200;

/// The window test's network: a fixed address for the container, so the
/// probes can dial it before it exists.
fn network(tag: &str, third: u8) -> (Net, String) {
    let net = Net::create(&format!("dbt-{tag}"), &format!("172.30.{third}.0/24"), &format!("dbbr{tag}"));
    (net, format!("172.30.{third}.10"))
}

/// Starts `NAME` (with `extra` labels) STARTS times on `net` at `ip`, each
/// for one second after `docker run` returns, while both namespaces probe;
/// asserts no connection to port 80 on any path and some on the control.
fn starts(t: &Topology, net: &Net, ip: &str, extra: &[&str], kind: &str) {
    let (xdp_host, plain_host) = (t.xdp.host_ip().to_string(), t.plain.host_ip().to_string());
    let control = HOST_PORT + 1;
    let xdp_targets = [
        (xdp_host.clone(), HOST_PORT),
        (ip.to_string(), 80),
        (xdp_host, control),
        (ip.to_string(), CONTROL_PORT),
    ];
    let plain_targets = [(plain_host.clone(), HOST_PORT), (plain_host, control)];
    let limit = Duration::from_secs(10 * u64::from(STARTS));
    let xdp = ProbeLoop::start(&t.xdp, &xdp_targets, EVERY, limit);
    let plain = ProbeLoop::start(&t.plain, &plain_targets, EVERY, limit);
    let mut args = vec!["--network", net.name(), "--ip", ip];
    args.extend_from_slice(extra);
    let began = Instant::now();
    for _ in 0..STARTS {
        let web = Web::start(NAME, HOST_PORT, &args);
        std::thread::sleep(Duration::from_secs(1));
        drop(web);
    }
    let took = began.elapsed();
    let (xdp, plain) = (xdp.finish(), plain.finish());
    println!("{kind}: {STARTS} starts in {took:?}");
    let named = [
        ("xdp uplink :80's host port", &xdp[0], false),
        ("container ip :80", &xdp[1], false),
        ("xdp uplink control", &xdp[2], true),
        ("container ip control", &xdp[3], true),
        ("uplink without XDP :80's host port", &plain[0], false),
        ("uplink without XDP control", &plain[1], true),
    ];
    for (name, tally, _) in &named {
        println!("  {name}: {tally:?}");
    }
    let breaches: Vec<(&str, &Tally)> =
        named.iter().filter(|(_, t, control)| !control && t.ok > 0).map(|(n, t, _)| (*n, *t)).collect();
    assert!(breaches.is_empty(), "{kind}: the blocked port connected: {breaches:?}\n{}", t.context());
    for (name, tally, control) in &named {
        if *control {
            assert!(
                tally.ok > 0,
                "{kind}: control {name} never connected in {STARTS} starts: {tally:?}\n{}",
                t.context()
            );
        }
    }
}

#[test]
fn no_window_with_the_containers_own_label() {
    let t = Topology::with_daemon("dwl", 230);
    let (net, ip) = network("dwl", 230);
    starts(&t, &net, &ip, &["-l", "dockblock.block=80/tcp"], "label dockblock.block=80/tcp");
}

#[test]
fn no_window_with_a_container_rule_by_name() {
    let t = Topology::with_daemon("dwc", 232);
    let (net, ip) = network("dwc", 232);
    let web = Web::create(NAME, &[]);
    t.agent.ok(&["block", "--container", NAME, "80/tcp"]);
    drop(web);
    starts(&t, &net, &ip, &[], "block --container dbt-win 80/tcp (named before the first start)");
}

#[test]
fn no_window_with_a_label_rule() {
    let t = Topology::with_daemon("dwb", 234);
    let (net, ip) = network("dwb", 234);
    t.agent.ok(&["block", "--label", "tier=window", "80/tcp"]);
    starts(&t, &net, &ip, &["-l", "tier=window"], "block --label tier=window 80/tcp");
}

#[test]
fn no_window_with_the_deny_policy() {
    let t = Topology::with_daemon("dwp", 236);
    let (net, ip) = network("dwp", 236);
    t.agent.ok(&["policy", "published", "deny"]);
    let web = Web::create(NAME, &[]);
    t.agent.ok(&["allow", "--container", NAME, &format!("{CONTROL_PORT}/tcp")]);
    drop(web);
    starts(&t, &net, &ip, &[], "policy published deny, allow --container dbt-win 81/tcp");
}

/// While no daemon runs, what the kernel holds keeps working (a container
/// covered before stays closed), but a container started meanwhile is not
/// covered by Docker rules: nobody attaches a hook to its veth or derives
/// its XDP rules, so it is open on every path. The next daemon covers it.
#[test]
fn while_the_daemon_is_stopped() {
    let mut t = Topology::with_daemon("dwd", 238);
    let (net, ip) = network("dwd", 238);
    let old = Web::run("dbt-wdold", 19210, &[]);
    t.agent.ok(&["block", "--container", "dbt-wdold", "80/tcp"]);
    let named = Web::create(NAME, &[]);
    t.agent.ok(&["block", "--container", NAME, "80/tcp"]);
    drop(named);
    t.wait_reviewed(&old);
    t.assert_opens(&old, CONTROL_PORT, "control port");
    t.assert_paths(&old, 80, false, "before the daemon stops");

    t.stop_daemon();
    // No dockblock.* label: every daemon on the host (other pin folders,
    // other tests) honours one and would close the port with its own hooks.
    let web = Web::run(NAME, HOST_PORT, &["--network", net.name(), "--ip", &ip]);
    std::thread::sleep(Duration::from_secs(1));
    let new80 = t.paths(&web, 80);
    let new81 = t.paths(&web, CONTROL_PORT);
    let old80 = t.paths(&old, 80);
    println!("daemon stopped, [xdp uplink, uplink without XDP, container ip] open:");
    println!("  covered before the stop, port 80: {old80:?}");
    println!("  started while stopped (a --container rule on its name), port 80: {new80:?}, 81: {new81:?}");
    assert_eq!(old80, [false; 3], "a container covered before the stop lost its rule");
    let veths = web.veths();
    for v in &veths {
        let state = veth_state(t.agent.pin_dir(), *v);
        assert!(
            state.is_none(),
            "veth {v} of a container started while stopped has a VETHS entry: {state:?}"
        );
    }
    let others = other_daemons(t.agent.pin_dir());
    if others.is_empty() {
        assert_eq!(new80, [true; 3], "documented: a container started while no daemon runs is not covered");
    } else {
        println!(
            "  (daemons of other pin folders run, pids {others:?}: their hooks judge this container too)"
        );
    }

    t.start_daemon();
    t.wait_reviewed(&web);
    t.assert_paths(&web, 80, false, "the next daemon covers it");
    t.assert_opens(&web, CONTROL_PORT, "the next daemon covers it");
}
