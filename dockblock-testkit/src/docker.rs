//! Docker for the tests and the benchmark: the busybox image (nothing can be
//! pulled here, so it is imported from the host's static busybox), networks
//! and containers, each removed on drop.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::cmd::{self, Error};
use crate::{quiet, run, run_ok};

pub const IMAGE: &str = "dockblock-busybox:test";
/// Body of the page every test web server serves.
pub const MARKER: &str = "dockblock-ok";

/// True if the Docker daemon answers.
pub fn docker_available() -> bool {
    crate::try_run_for(Duration::from_secs(20), "docker", &["info"]).is_ok_and(|o| o.status.success())
}

/// Imports `IMAGE` unless it exists; panics if it cannot.
pub fn ensure_image() {
    import_image().unwrap_or_else(|e| panic!("{e}"));
}

/// Imports `IMAGE` (busybox plus one symlink per applet) unless it exists.
pub fn import_image() -> Result<(), Error> {
    if cmd::succeeds(&["docker", "image", "inspect", IMAGE]) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("dockblock-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = build_and_import(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn build_and_import(dir: &std::path::Path) -> Result<(), Error> {
    let io = |what: &str, e: std::io::Error| Error::Unexpected(format!("{what}: {e}"));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| io("create image dir", e))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| io("copy /bin/busybox (install busybox-static)", e))?;
    for applet in cmd::ok(&["/bin/busybox", "--list"])?.lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| io("applet symlink", e))?;
        }
    }
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| io("create /tmp", e))?;
    let script =
        format!("tar -C {} -cf - . | docker import --change 'CMD [\"/bin/sh\"]' - {IMAGE}", dir.display());
    cmd::checked(Duration::from_secs(120), &["sh", "-c", &script], None).map(drop)
}

/// A Docker bridge network with its own bridge device; removed on drop
/// (after its containers: drop those first).
pub struct Network {
    name: String,
}

impl Network {
    /// `docker network create` of `name` on `subnet`, bridge device
    /// `bridge`, after removing a leftover of that name.
    pub fn create(name: &str, subnet: &str, bridge: &str) -> Result<Network, Error> {
        remove_network(name);
        let n = Network { name: name.to_string() };
        let bridge_opt = format!("com.docker.network.bridge.name={bridge}");
        cmd::ok(&[
            "docker",
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            subnet,
            "-o",
            &bridge_opt,
            name,
        ])?;
        Ok(n)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove_network(&self.name);
    }
}

/// `docker network rm NAME`, best effort.
pub fn remove_network(name: &str) {
    quiet("docker", &["network", "rm", name]);
}

/// `docker rm -f NAME`, best effort.
pub fn remove_container(name: &str) {
    quiet("docker", &["rm", "-f", name]);
}

pub struct Container {
    name: String,
    ip: String,
}

impl Container {
    /// Starts `dbt-<tag>`: busybox httpd on container port 80 serving `MARKER`,
    /// published as `host_port`, and waits until it answers.
    pub fn web(tag: &str, host_port: u16) -> Container {
        Container::web_on(tag, host_port, 80)
    }

    /// Like `web`, with httpd on `container_port` instead of 80, so that a
    /// container-port rule on it touches no other container on docker0.
    pub fn web_on(tag: &str, host_port: u16, container_port: u16) -> Container {
        let script = format!(
            "mkdir -p /www && echo {MARKER} > /www/index.html && exec httpd -f -p {container_port} -h /www"
        );
        let publish = format!("{host_port}:{container_port}");
        let c = Container::start(tag, &["-p", &publish, IMAGE, "sh", "-c", &script]);
        c.wait_http(&format!("http://{}:{container_port}/", c.ip));
        c
    }

    /// `docker run -d --name dbt-<tag> <args>`, after removing a leftover.
    pub fn start(tag: &str, args: &[&str]) -> Container {
        Container::run(&format!("dbt-{tag}"), args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `docker run -d --name <name> <args>`, after removing a leftover; the
    /// container's address is read back (it must have one).
    pub fn run(name: &str, args: &[&str]) -> Result<Container, Error> {
        remove_container(name);
        // Guard first, so a failed start is still removed.
        let mut c = Container { name: name.to_string(), ip: String::new() };
        let mut full = vec!["docker", "run", "-d", "--name", name];
        full.extend_from_slice(args);
        cmd::ok(&full)?;
        // Over all networks: the default bridge and user-defined ones alike.
        let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        c.ip = cmd::ok(&["docker", "inspect", "-f", format, name])?.trim().to_string();
        if c.ip.is_empty() {
            return Err(Error::Unexpected(format!("container {name} has no IP")));
        }
        Ok(c)
    }

    /// Pid of the container's init process, for `nsenter -t PID -n`.
    pub fn pid(&self) -> Result<String, Error> {
        Ok(cmd::ok(&["docker", "inspect", "-f", "{{.State.Pid}}", &self.name])?.trim().to_string())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Address on its network (docker0's, 172.17.0.0/16, unless `--network`).
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// `docker exec <name> <args>` (30 s limit).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["exec", &self.name];
        full.extend_from_slice(args);
        run("docker", &full)
    }

    /// Runs a host program inside the container's network namespace only.
    /// The image has no socat or curl, and busybox nc ignores `-p` when
    /// dialing; the traffic still starts in the container's netns, so its
    /// path (veth, docker0, NAT) is the same as from a containerised client.
    pub fn in_netns(&self, cmd: &str, args: &[&str]) -> Output {
        let pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &self.name]);
        let mut full = vec!["-t", pid.trim(), "-n", cmd];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// The command prefix that enters the container's network namespace
    /// (`nsenter -t <pid> -n`), for processes started in the background.
    pub fn netns_cmd(&self) -> Vec<String> {
        let pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &self.name]);
        ["nsenter", "-t", pid.trim(), "-n"].map(String::from).to_vec()
    }

    /// Polls `url` from the host for up to 10 s; the host reaches the
    /// container straight over docker0, before any test rule is in place.
    fn wait_http(&self, url: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let out = run("curl", &["-s", "--max-time", "1", url]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(MARKER) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs = run("docker", &["logs", &self.name]);
        panic!("{} did not serve {url} within 10 s; logs: {}", self.name, crate::describe(&logs));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove_container(&self.name);
    }
}
