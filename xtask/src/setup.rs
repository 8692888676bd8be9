//! `cargo xtask setup`: bring a Debian host to the point where dockblock
//! builds and its tests run. Every step checks first and only acts when
//! something is missing, so re-running is cheap.
use crate::util::{self, output, probe};
use anyhow::{bail, Context, Result};
use std::{
    fs::{self, OpenOptions},
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Everything the build and the tests shell out to (docker, xdp-loader,
/// trafgen, iperf3, hping3, bpftool, nft, ...), by Debian package name.
const DEBIAN_PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "xdp-tools",
    "netsniff-ng",
    "iperf3",
    "hping3",
    "bpftool",
    "socat",
    "tcpdump",
    "iptables",
    "nftables",
    "curl",
    "ethtool",
    "iproute2",
    "util-linux",
    // cargo xtask bench: conntrack entry cleanup between floods, plots.
    "conntrack",
    "python3-matplotlib",
    // tests/tests/packaging.rs: packaging/compose.yaml run as written.
    "docker-compose",
];

const DOCKERD_LOG: &str = "/var/log/dockblock-dockerd.log";
const DOCKER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DOCKER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Options {
    /// Skip checking/starting the Docker engine (enough for build and run).
    #[arg(long)]
    pub no_docker: bool,
}

/// What a step did, for its one-line summary.
enum Outcome {
    AlreadyThere,
    Done(&'static str),
}

fn step(name: &str, f: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    let outcome = f().with_context(|| format!("setup step `{name}` failed"))?;
    match outcome {
        Outcome::AlreadyThere => println!("setup: {name} ... ok (already there)"),
        Outcome::Done(what) => println!("setup: {name} ... ok ({what})"),
    }
    Ok(())
}

pub fn run(opts: &Options) -> Result<()> {
    step("debian packages", debian_packages)?;
    step("nightly toolchain", nightly)?;
    step("rust-src", rust_src)?;
    step("clippy + rustfmt", lint_tools)?;
    step("bpf-linker", bpf_linker)?;
    step("bpffs", bpffs)?;
    if !opts.no_docker {
        step("docker engine", docker)?;
    }
    Ok(())
}

fn debian_packages() -> Result<Outcome> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            // Status is e.g. "install ok installed"; removed-but-configured
            // packages report "deinstall ok config-files".
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !status.is_ok_and(|s| s.ends_with(" installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::AlreadyThere);
    }
    println!("setup: debian packages ... missing: {}", missing.join(" "));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    Ok(Outcome::Done("installed"))
}

fn nightly() -> Result<Outcome> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if has_nightly(&list) {
        return Ok(Outcome::AlreadyThere);
    }
    util::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    Ok(Outcome::Done("installed"))
}

/// Lines look like "nightly-x86_64-unknown-linux-gnu (default)". A dated
/// "nightly-2025-01-01-..." is not what `+nightly` resolves to.
fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().filter_map(|l| l.split_whitespace().next()).any(|name| {
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

/// build-std (used for the bpfel target) compiles `core` from rust-src.
fn rust_src() -> Result<Outcome> {
    if nightly_sysroot()?.join("lib/rustlib/src/rust/library").is_dir() {
        return Ok(Outcome::AlreadyThere);
    }
    util::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Outcome::Done("installed"))
}

/// `cargo xtask test` runs rustfmt and clippy on the default toolchain and
/// clippy on nightly (for the eBPF crate); `--profile minimal` lacks both.
fn lint_tools() -> Result<Outcome> {
    let works = |args: &[&str]| probe(Command::new("cargo").args(args), Duration::from_secs(30));
    let mut did = false;
    if !works(&["fmt", "--version"]) || !works(&["clippy", "--version"]) {
        util::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
        did = true;
    }
    if !works(&["+nightly", "clippy", "--version"]) {
        util::run(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", "nightly"]))?;
        did = true;
    }
    Ok(if did { Outcome::Done("installed") } else { Outcome::AlreadyThere })
}

/// bpf-linker must use the same LLVM as the nightly rustc that emits the
/// bitcode, so we link it against the libLLVM shipped inside that toolchain
/// instead of a system LLVM (Debian's is too old).
fn bpf_linker() -> Result<Outcome> {
    // main() put the cargo bin dirs on PATH, so this also finds ~/.cargo/bin.
    // `--version` loads libLLVM, so a linker whose LLVM vanished (nightly
    // update) fails here and gets rebuilt.
    if probe(Command::new("bpf-linker").arg("--version"), Duration::from_secs(10)) {
        return Ok(Outcome::AlreadyThere);
    }

    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&vv).context("no `LLVM version: N.x` line in `rustc +nightly -vV`")?;

    // The toolchain ships e.g. lib/libLLVM.so.22.1-rust-1.97.0-nightly but no
    // plain libLLVM.so, which the linker (-lLLVM) needs. Build a fake LLVM
    // prefix with both names. bpf-linker's RUNPATH points at this folder, so
    // it must stay: it is part of the installed linker.
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let libllvm = find_libllvm(&sysroot_lib)?;
    let prefix = util::home()?.join(".cache/dockblock/llvm");
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let file_name = libllvm.file_name().expect("read_dir entry has a name");
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(file_name)] {
        ensure_symlink(&libllvm, &link)?;
    }

    // --force: we only get here when the installed one (if any) is broken.
    util::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["+nightly", "install", "bpf-linker", "--version", "^0.13"])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .arg("--force"),
    )?;
    if !probe(Command::new("bpf-linker").arg("--version"), Duration::from_secs(10)) {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails");
    }
    Ok(Outcome::Done("built against nightly's LLVM"))
}

/// "LLVM version: 22.1.4" -> 22.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.trim().split('.').next()?.parse().ok()
}

fn find_libllvm(sysroot_lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("libLLVM.so."))
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no libLLVM.so.* in {}", sysroot_lib.display()),
        many => bail!("several libLLVM.so.* in {}: {many:?}", sysroot_lib.display()),
    }
}

/// Point `link` at `target`, leaving a correct link untouched (a running
/// bpf-linker may be loading through it).
fn ensure_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|cur| cur == target) {
        return Ok(());
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing stale {}", link.display()))?;
    }
    symlink(target, link).with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// aya pins maps under /sys/fs/bpf; containers and minimal hosts often lack
/// the mount.
fn bpffs() -> Result<Outcome> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(Outcome::AlreadyThere);
    }
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(Outcome::Done("mounted"))
}

fn docker_up() -> bool {
    probe(Command::new("docker").arg("info"), DOCKER_PROBE_TIMEOUT)
}

/// dockerd's config file: the IPv6 settings the tests need go here (so
/// every later start of dockerd, by anyone, keeps them).
const DOCKERD_CONFIG: &str = "/etc/docker/daemon.json";
/// docker0's IPv6 subnet unless the config names one: a ULA /64
/// (fd00:db8:d0c::/48 is the tests' IPv6 space; 17 echoes 172.17).
const FIXED_CIDR_V6: &str = "fd00:db8:d0c:17::/64";
const DOCKERD_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What `config` lacks for Docker's IPv6 end to end on 20.10: IPv6 on
/// docker0, a subnet for it, and ip6tables (DNAT of published ports over
/// IPv6; without it docker-proxy carries them, experimental on 20.10). The
/// keys the config has already and other keys are kept.
fn with_ipv6(config: &serde_json::Value) -> Result<serde_json::Value> {
    let serde_json::Value::Object(map) = config else { bail!("{DOCKERD_CONFIG} is not a JSON object") };
    let mut map = map.clone();
    for key in ["ipv6", "experimental", "ip6tables"] {
        map.insert(key.into(), true.into());
    }
    map.entry("fixed-cidr-v6").or_insert_with(|| FIXED_CIDR_V6.into());
    Ok(serde_json::Value::Object(map))
}

/// Writes the IPv6 settings into `DOCKERD_CONFIG`; true if it changed.
fn ensure_ipv6_config() -> Result<bool> {
    let old = match fs::read_to_string(DOCKERD_CONFIG) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {DOCKERD_CONFIG}")),
    };
    let config = match &old {
        Some(text) => serde_json::from_str(text).with_context(|| format!("parsing {DOCKERD_CONFIG}"))?,
        None => serde_json::json!({}),
    };
    let new = with_ipv6(&config)?;
    if new == config && old.is_some() {
        return Ok(false);
    }
    let dir = Path::new(DOCKERD_CONFIG).parent().expect("an absolute path");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&new)? + "\n";
    fs::write(DOCKERD_CONFIG, text).with_context(|| format!("writing {DOCKERD_CONFIG}"))?;
    println!("setup: docker engine ... {DOCKERD_CONFIG}: ipv6, ip6tables, experimental, fixed-cidr-v6");
    Ok(true)
}

/// Whether the running engine has what `with_ipv6` asks for: IPv6 on the
/// default bridge with a subnet, experimental, and its ip6tables NAT chain.
fn engine_has_ipv6() -> bool {
    let inspect = |format: &str| {
        output(Command::new("docker").args(["network", "inspect", "bridge", "-f", format]))
            .unwrap_or_default()
    };
    let ipv6 = inspect("{{.EnableIPv6}}").trim() == "true" && inspect("{{json .IPAM.Config}}").contains(':');
    let experimental = output(Command::new("docker").args(["info", "-f", "{{.ExperimentalBuild}}"]))
        .is_ok_and(|o| o.trim() == "true");
    let ip6tables =
        probe(Command::new("ip6tables").args(["-w", "-t", "nat", "-S", "DOCKER"]), DOCKER_PROBE_TIMEOUT);
    ipv6 && experimental && ip6tables
}

/// Without systemd nobody starts dockerd for us, so start it ourselves;
/// one that runs without the IPv6 settings is restarted. A restart stops
/// the containers (unless live-restore is on): run setup while no Docker
/// test runs.
fn docker() -> Result<Outcome> {
    let changed = ensure_ipv6_config()?;
    if docker_up() {
        if !changed && engine_has_ipv6() {
            return Ok(Outcome::AlreadyThere);
        }
        println!("setup: docker engine ... restarting dockerd for its IPv6 settings");
        stop_dockerd()?;
    }
    start_dockerd()?;
    if !engine_has_ipv6() {
        bail!(
            "dockerd runs without IPv6 on docker0 after a restart with {DOCKERD_CONFIG}; see {DOCKERD_LOG}"
        );
    }
    Ok(Outcome::Done(if changed { "started dockerd with IPv6" } else { "started dockerd" }))
}

/// SIGTERM to every dockerd, then waits until they are gone.
fn stop_dockerd() -> Result<()> {
    if Path::new("/run/systemd/system").is_dir() {
        bail!("dockerd runs under systemd: `systemctl restart docker` to apply {DOCKERD_CONFIG}");
    }
    let pids = output(Command::new("pidof").arg("dockerd")).unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    for pid in &pids {
        util::run(Command::new("kill").args(["-TERM", pid]))?;
    }
    let deadline = Instant::now() + DOCKERD_STOP_TIMEOUT;
    while pids.iter().any(|pid| Path::new("/proc").join(pid).exists()) {
        if Instant::now() > deadline {
            bail!("dockerd {pids:?} did not exit within {}s of SIGTERM", DOCKERD_STOP_TIMEOUT.as_secs());
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn start_dockerd() -> Result<()> {
    // /usr/sbin may be missing from a non-login PATH.
    let dockerd = if probe(Command::new("dockerd").arg("--version"), Duration::from_secs(10)) {
        PathBuf::from("dockerd")
    } else {
        PathBuf::from("/usr/sbin/dockerd")
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    // setsid puts dockerd in its own session, so it survives xtask exiting
    // and Ctrl-C / hangup of this terminal. Our child is not a process-group
    // leader, so setsid(1) execs dockerd in place (no fork) and the pid we
    // hold is dockerd's own: we can notice if it dies during start-up.
    let mut cmd = Command::new("setsid");
    cmd.arg(&dockerd).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // dockerd (and containerd under it) runs for good: it must not keep a
    // descriptor we inherited, such as a `flock` lock taken around setup.
    // SAFETY: close_range only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(3, u32::MAX, 0);
            Ok(())
        })
    };
    println!("+ {} >>{DOCKERD_LOG} 2>&1 &", util::show(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", util::show(&cmd)))?;

    let deadline = Instant::now() + DOCKER_READY_TIMEOUT;
    while Instant::now() < deadline {
        if docker_up() {
            // Dropping `child` neither kills nor waits: dockerd keeps running.
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("dockerd exited during start-up ({status}); see {DOCKERD_LOG}");
        }
        thread::sleep(Duration::from_secs(1));
    }
    bail!(
        "dockerd did not answer `docker info` within {}s; see {DOCKERD_LOG}",
        DOCKER_READY_TIMEOUT.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::{has_nightly, llvm_major, with_ipv6, FIXED_CIDR_V6};

    #[test]
    fn finds_nightly() {
        assert!(has_nightly("stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n"));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn parses_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn ipv6_settings_keep_the_rest_of_the_config() {
        let got = with_ipv6(&serde_json::json!({"live-restore": true, "fixed-cidr-v6": "2001:db8:1::/64"}))
            .unwrap();
        assert_eq!(
            got,
            serde_json::json!({"live-restore": true, "fixed-cidr-v6": "2001:db8:1::/64",
                "ipv6": true, "experimental": true, "ip6tables": true})
        );
        let got = with_ipv6(&serde_json::json!({"ipv6": false})).unwrap();
        assert_eq!(got["ipv6"], true);
        assert_eq!(got["fixed-cidr-v6"], FIXED_CIDR_V6);
        assert!(with_ipv6(&serde_json::json!([1])).is_err());
    }
}
