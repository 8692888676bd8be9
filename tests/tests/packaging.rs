//! The agent as a container (issue 10): the image `cargo xtask image`
//! builds, run three ways on the one engine: the README's `docker run`
//! line, packaging/compose.yaml through docker-compose, and
//! packaging/swarm-stack.yaml as a global service on a one-node swarm.
//! Each time the containerised daemon must enforce a container rule on the
//! host: the outside namespaces cannot reach the blocked port of a web
//! container on any path, its control port stays open. Each run has a test
//! pin folder (`dockblock-test-pk*`), which the host CLI shares.
//!
//! Needs root, a running Docker daemon and docker-compose; builds the
//! release agent and the image once per run. Under the shared lock:
//! `flock -o /tmp/db/tests.lock cargo test -p dockblock-tests --test packaging -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use dockblock_tests::agent::Agent;
use dockblock_tests::rig::topology::{eventually, Topology, Web, CONTROL_PORT};
use dockblock_tests::{describe, quiet, run, run_ok};

/// The tests' image tag: a developer's own `dockblock:latest` is left alone.
const IMAGE: &str = "dockblock-test-pk:latest";
/// How long a containerised daemon may take to attach and sync.
const READY_WITHIN: Duration = Duration::from_secs(90);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `cargo xtask image --tag IMAGE`, once per test process: what an
/// operator runs (cargo rebuilds the release binary only when it is stale).
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = std::process::Command::new("cargo")
            .current_dir(workspace())
            .args(["xtask", "image", "--tag", IMAGE])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("start cargo xtask image");
        assert!(out.status.success(), "cargo xtask image: {}", describe(&out));
    });
    IMAGE
}

/// The daemon of `agent`'s pin folder runs in `container` and has synced
/// with the engine, as the host's `status` sees it: by the pid the daemon
/// recorded, which must be the container's init process as the host names
/// it (shared pid namespace, or the host's /proc in the swarm's case).
fn wait_daemon(agent: &Agent, container: &str, what: &str) {
    let mut last = serde_json::Value::Null;
    let ready = eventually(READY_WITHIN, || {
        last = agent.json(&["status"]);
        let pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", container]);
        last["daemon"]["running"] == true
            && last["daemon"]["last_sync"].is_string()
            && last["daemon"]["pid"].as_u64() == pid.trim().parse().ok()
    });
    assert!(
        ready,
        "{what}: no running, synced daemon with {container}'s pid within {READY_WITHIN:?}: {last}\n{}",
        logs(container)
    );
}

/// `docker logs` of a container, for failure messages.
fn logs(container: &str) -> String {
    describe(&run("docker", &["logs", "--tail", "40", container]))
}

/// A container stopped (SIGTERM, as `docker stop` sends) and removed on drop.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        quiet("docker", &["stop", "-t", "15", &self.0]);
        quiet("docker", &["rm", "-f", &self.0]);
    }
}

/// A config folder for the containerised daemon (mounted at /etc/dockblock):
/// `dockblock.toml` with these lines; removed on drop.
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn new(tag: &str, toml: &str) -> ConfigDir {
        let dir = std::env::temp_dir().join(format!("dockblock-test-{tag}-etc"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create config dir");
        std::fs::write(dir.join("dockblock.toml"), toml).expect("write config");
        ConfigDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host folders the run line binds (`docker run -v` would create them,
/// swarm bind mounts must exist), and the test agent's state folder: it
/// stands in for /var/lib/dockblock, so a rule a test saved is not restored
/// by the next run (or a real install) and the host CLI saves to the same
/// file as the daemon in the container. Returned as a path string.
fn host_dirs(agent: &Agent) -> String {
    let state = agent.state_dir();
    for dir in [Path::new("/run/dockblock"), &state] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    state.to_str().expect("utf-8 path").to_string()
}

/// The `docker run` line of the README's "Container image" section, as
/// words without `docker`: the line that starts with `docker run` and its
/// `\` continuations.
fn readme_run_line() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("read README.md");
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("docker run -d --name dockblock "));
    let mut words = Vec::new();
    for line in lines.by_ref() {
        let (text, more) = match line.trim_end().strip_suffix('\\') {
            Some(t) => (t, true),
            None => (line, false),
        };
        words.extend(text.split_whitespace().map(str::to_string));
        if !more {
            break;
        }
    }
    assert!(words.len() > 3, "README.md has no `docker run -d --name dockblock ...` line");
    words.remove(0);
    words
}

/// Asserts the container rule's effect: `web`'s port 80 closed on every
/// path from outside, its control port open.
fn assert_enforced(t: &Topology, web: &Web, what: &str) {
    let ok = eventually(Duration::from_secs(10), || t.paths(web, 80) == [false; 3]);
    if !ok {
        t.assert_paths(web, 80, false, what);
    }
    t.assert_opens(web, CONTROL_PORT, what);
}

/// `GET /metrics` on the host network: the daemon in the container serves it.
fn metrics(addr: &str) -> String {
    run_ok("curl", &["-s", "--max-time", "5", &format!("http://{addr}/metrics")])
}

#[test]
fn readme_docker_run_line_enforces_a_container_rule_on_the_host() {
    let image = image();
    let t = Topology::new("pkr", 130);
    let state = host_dirs(&t.agent);
    let web = Web::run("dbt-pkr-web", 21400, &[]);
    let config = ConfigDir::new("pkr", "failsafe = [\"22/tcp\"]\n");
    let name = "dbt-pkr-agent";
    quiet("docker", &["rm", "-f", name]);
    let metrics_addr = "127.0.0.1:21402";

    // The README's words, with a test name, config folder and image; the
    // agent's arguments after the image: a test pin folder, the uplink.
    let mut words = readme_run_line();
    for w in words.iter_mut() {
        if w == "dockblock" {
            *w = name.to_string();
        } else if w == "dockblock:latest" {
            *w = image.to_string();
        } else if let Some(rest) = w.strip_prefix("/etc/dockblock:") {
            *w = format!("{}:{rest}", config.path());
        } else if let Some(rest) = w.strip_prefix("/var/lib/dockblock:") {
            *w = format!("{state}:{rest}");
        }
    }
    words.extend(
        ["--pin-dir", t.agent.pin_dir(), "run", t.xdp.host_if(), "--metrics", metrics_addr].map(String::from),
    );
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let _agent = Removed(name.to_string());
    run_ok("docker", &args);
    wait_daemon(&t.agent, name, "docker run");

    // Open before the rule, on every path.
    t.assert_opens(&web, 80, "before the rule");

    // The rule, given through the CLI in the agent's container.
    let out = run(
        "docker",
        &[
            "exec",
            name,
            "dockblock-agent",
            "--pin-dir",
            t.agent.pin_dir(),
            "block",
            "--container",
            web.name(),
            "80/tcp",
        ],
    );
    assert!(out.status.success(), "block in the container: {}", describe(&out));
    assert_enforced(&t, &web, "block --container from the agent's container");
    // Saved through the state mount, for the daemon's restore at boot.
    let saved = std::fs::read_to_string(t.agent.state_file()).unwrap_or_default();
    assert!(saved.contains(web.name()), "the rule saved on the host: {saved:?}");

    // The host CLI sees the same pins and the same daemon.
    let list = t.agent.json(&["list"]);
    let rules = list["rules"].as_array().expect("rules");
    assert!(
        rules.iter().any(|r| r["target"]["kind"] == "container" && r["target"]["name"] == web.name()),
        "the container rule in the host's list: {list}"
    );

    // The daemon's metrics, on the host network.
    let m = metrics(metrics_addr);
    assert!(m.contains("dockblock_engine_connected 1"), "{m}");
    assert!(m.contains("dockblock_attached 1"), "{m}");

    // docker stop (SIGTERM): a clean exit, and the rule stays enforced.
    run_ok("docker", &["stop", "-t", "15", name]);
    let code = run_ok("docker", &["inspect", "-f", "{{.State.ExitCode}}", name]);
    assert_eq!(code.trim(), "0", "exit code after docker stop\n{}", logs(name));
    assert_eq!(t.paths(&web, 80), [false; 3], "still closed with the daemon's container stopped");
}

/// `docker-compose -p <project> -f packaging/<file>` with the test knobs of
/// the file in the environment.
fn compose(project: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let file = workspace().join("packaging/compose.yaml");
    std::process::Command::new("docker-compose")
        .args(["--no-ansi", "-p", project, "-f"])
        .arg(&file)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("start docker-compose (Debian package docker-compose; cargo xtask setup installs it)")
}

/// `docker-compose down` on drop, even after a failure.
struct ComposeUp<'a> {
    project: &'a str,
    env: Vec<(&'a str, &'a str)>,
}

impl Drop for ComposeUp<'_> {
    fn drop(&mut self) {
        let _ = compose(self.project, &self.env, &["down", "--timeout", "15"]);
    }
}

#[test]
fn compose_file_runs_the_daemon_that_enforces_a_container_rule() {
    let image = image();
    let t = Topology::new("pkc", 132);
    let state = host_dirs(&t.agent);
    let web = Web::run("dbt-pkc-web", 21410, &[]);
    // Uplink and metrics from the config, as a real install has them.
    let metrics_addr = "127.0.0.1:21412";
    let toml = format!("uplinks = [\"{}\"]\nmetrics = \"{metrics_addr}\"\n", t.xdp.host_if());
    let config = ConfigDir::new("pkc", &toml);
    let project = "dbt-pkc";
    let env = vec![
        ("DOCKBLOCK_IMAGE", image),
        ("DOCKBLOCK_PIN_DIR", t.agent.pin_dir()),
        ("DOCKBLOCK_CONFIG_DIR", config.path()),
        ("DOCKBLOCK_STATE_DIR", &state),
    ];
    let _ = compose(project, &env, &["down", "--timeout", "15"]);
    let up = compose(project, &env, &["up", "-d"]);
    let _guard = ComposeUp { project, env: env.clone() };
    assert!(up.status.success(), "docker-compose up: {}", describe(&up));
    let container = format!("{project}_dockblock_1");
    wait_daemon(&t.agent, &container, "docker-compose up");

    // What the file asks of the engine.
    let inspect = run_ok(
        "docker",
        &[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}}",
            &container,
        ],
    );
    assert_eq!(inspect.trim(), "always host host", "{container}");

    // The uplink from the config got its XDP program.
    let xdp = dockblock_tests::rig::links(&t.agent, t.xdp.host_if(), Some("xdp"));
    assert_eq!(xdp.len(), 1, "XDP on the config's uplink: {}", t.context());

    // The rule from the host CLI, on the pins the daemon in the container uses.
    t.assert_opens(&web, 80, "before the rule");
    t.agent.ok(&["block", "--container", web.name(), "80/tcp"]);
    assert_enforced(&t, &web, "block --container from the host, daemon from compose");
    assert!(metrics(metrics_addr).contains("dockblock_engine_connected 1"));
}

/// A one-node swarm on this engine, left (`docker swarm leave --force`) on
/// drop even after a failure: other tests share the engine, and swarm mode
/// must not stay on. Its bridge `docker_gwbridge` is made first on a test
/// subnet (else Docker takes the next free /16) and removed with it.
struct Swarm;

impl Swarm {
    fn init(addr: &str) -> Swarm {
        let state = run_ok("docker", &["info", "-f", "{{.Swarm.LocalNodeState}}"]);
        assert_eq!(state.trim(), "inactive", "this engine is in a swarm already: not touching it");
        let live_restore = run_ok("docker", &["info", "-f", "{{.LiveRestoreEnabled}}"]);
        assert_eq!(
            live_restore.trim(),
            "false",
            "dockerd runs with live-restore, which swarm mode refuses (did a test restart it so?)"
        );
        let swarm = Swarm;
        quiet("docker", &["network", "rm", "docker_gwbridge"]);
        run_ok(
            "docker",
            &[
                "network",
                "create",
                "--subnet",
                "172.30.134.0/24",
                "-o",
                "com.docker.network.bridge.name=docker_gwbridge",
                "-o",
                "com.docker.network.bridge.enable_icc=false",
                "-o",
                "com.docker.network.bridge.enable_ip_masquerade=true",
                "docker_gwbridge",
            ],
        );
        run_ok(
            "docker",
            &[
                "swarm",
                "init",
                "--advertise-addr",
                addr,
                "--listen-addr",
                &format!("{addr}:21420"),
                "--data-path-port",
                "21421",
                "--default-addr-pool",
                "172.30.135.0/24",
                "--default-addr-pool-mask-length",
                "24",
            ],
        );
        swarm
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        quiet("docker", &["swarm", "leave", "--force"]);
        quiet("docker", &["network", "rm", "docker_gwbridge"]);
    }
}

/// `docker stack rm` on drop, waiting until its containers are gone (the
/// swarm is left right after: its tasks must have stopped by then).
struct Stack(&'static str);

impl Drop for Stack {
    fn drop(&mut self) {
        quiet("docker", &["stack", "rm", self.0]);
        let label = format!("label=com.docker.stack.namespace={}", self.0);
        eventually(Duration::from_secs(30), || {
            run("docker", &["ps", "-aq", "--filter", &label]).stdout.iter().all(u8::is_ascii_whitespace)
        });
    }
}

#[test]
fn swarm_stack_runs_a_global_service_that_enforces_a_container_rule() {
    let image = image();
    let t = Topology::new("pks", 136);
    let state = host_dirs(&t.agent);
    let web = Web::run("dbt-pks-web", 21430, &[]);
    let toml = format!("uplinks = [\"{}\"]\n", t.xdp.host_if());
    let config = ConfigDir::new("pks", &toml);
    // Dropped in reverse: the stack goes, then the swarm is left.
    let _swarm = Swarm::init(t.xdp.host_ip());
    let stack = "dbt-pks";
    let file = workspace().join("packaging/swarm-stack.yaml");
    let out = std::process::Command::new("docker")
        .args(["stack", "deploy", "--resolve-image", "never", "-c"])
        .arg(&file)
        .arg(stack)
        .envs([
            ("DOCKBLOCK_IMAGE", image),
            ("DOCKBLOCK_PIN_DIR", t.agent.pin_dir()),
            ("DOCKBLOCK_CONFIG_DIR", config.path()),
            ("DOCKBLOCK_STATE_DIR", &state),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("start docker stack deploy");
    let _stack = Stack(stack);
    assert!(out.status.success(), "docker stack deploy: {}", describe(&out));
    let service = format!("{stack}_dockblock");

    // Global: one task on the one node, running.
    let tasks = || {
        run_ok(
            "docker",
            &["service", "ps", "--no-trunc", "--format", "{{.CurrentState}} {{.Error}}", &service],
        )
    };
    let running = eventually(READY_WITHIN, || tasks().lines().any(|l| l.starts_with("Running")));
    assert!(running, "no running task of {service}: {}", tasks());
    let mode =
        run_ok("docker", &["service", "inspect", "-f", "{{if .Spec.Mode.Global}}global{{end}}", &service]);
    assert_eq!(mode.trim(), "global");
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let container = run_ok("docker", &["ps", "-q", "--filter", &filter]);
    wait_daemon(&t.agent, container.trim(), "docker stack deploy");
    let xdp = dockblock_tests::rig::links(&t.agent, t.xdp.host_if(), Some("xdp"));
    assert_eq!(xdp.len(), 1, "XDP on the config's uplink: {}", t.context());

    t.assert_opens(&web, 80, "before the rule");
    t.agent.ok(&["block", "--container", web.name(), "80/tcp"]);
    assert_enforced(&t, &web, "block --container from the host, daemon a swarm service");
}
