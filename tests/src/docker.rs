//! Docker containers for the tests. Nothing can be pulled here, so the image is
//! imported from the host's static busybox.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::{quiet, run, run_ok};

pub const IMAGE: &str = "dockblock-busybox:test";
/// Body of the page every test web server serves.
pub const MARKER: &str = "dockblock-ok";

/// True if the Docker daemon answers.
pub fn docker_available() -> bool {
    crate::try_run_for(Duration::from_secs(20), "docker", &["info"]).is_ok_and(|o| o.status.success())
}

/// Imports `IMAGE` (busybox plus one symlink per applet) unless it exists.
pub fn ensure_image() {
    if run("docker", &["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dockblock-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create image dir");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (install busybox-static)");
    for applet in run_ok("/bin/busybox", &["--list"]).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
    }
    std::fs::create_dir_all(dir.join("tmp")).expect("create /tmp");
    let script =
        format!("tar -C {} -cf - . | docker import --change 'CMD [\"/bin/sh\"]' - {IMAGE}", dir.display());
    let out = run("sh", &["-c", &script]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "docker import failed: {}", crate::describe(&out));
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
        let name = format!("dbt-{tag}");
        quiet("docker", &["rm", "-f", &name]);
        // Guard first, so a failed start is still removed.
        let mut c = Container { name, ip: String::new() };
        let mut full = vec!["run", "-d", "--name", &c.name];
        full.extend_from_slice(args);
        run_ok("docker", &full);
        let ip = run_ok("docker", &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &c.name]);
        c.ip = ip.trim().to_string();
        assert!(!c.ip.is_empty(), "container {} has no IP", c.name);
        c
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Address on docker0's network (172.17.0.0/16 by default).
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
        quiet("docker", &["rm", "-f", &self.name]);
    }
}
