//! Map migration (issue 10): pins of an older layout, as a past release
//! left them, carried into this release by `attach` in place.
//!
//! The older maps are made here with the layouts of the releases before
//! v0.9.0 (RULE_STATS values of 32 bytes, before 101dbf1 added the allowed
//! and dry_run counters; CONFIG of 16 bytes, before 89d5e1b added the
//! fragment seed), filled and pinned where this release's maps were, while
//! the links run this release's programs (the old programs themselves are
//! not built here: the end-to-end upgrade from v0.9.0 is `upgrade.rs`).
//! Asserted: no connection to the blocked port while `attach` migrates,
//! the values carried by the converters, the new maps pinned and used by
//! the programs in the same links (link ids kept, program ids changed), and
//! a layout without a converter refused with nothing changed.
//!
//! Needs root; run serially:
//! `cargo build -p dockblock-agent && cargo test -p dockblock-tests --test migrate -- --test-threads=1`

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use dockblock_agent::link_info;
use dockblock_common::map_names;
use dockblock_tests::agent::Agent;
use dockblock_tests::netns::Outside;
use dockblock_tests::rig::topology::ProbeLoop;
use dockblock_tests::rig::{connects, host_service, links, rule};
use dockblock_tests::{describe, is_root};
use serde_json::Value;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid bpf_attr prefix of its command.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A map as a past release created it: BPF_MAP_CREATE with its layout.
fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> OwnedFd {
    #[repr(C)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        _rest: [u32; 11],
    }
    let mut attr = Attr { map_type, key_size, value_size, max_entries, map_flags: 0, _rest: [0; 11] };
    let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("create the older map");
    // SAFETY: BPF_MAP_CREATE returned a new fd that we now own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Pins `fd` at `path` in place of what is pinned there.
fn replace_pin(fd: &OwnedFd, path: &Path) {
    std::fs::remove_file(path).unwrap_or_else(|e| panic!("unpin {}: {e}", path.display()));
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = Attr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    bpf(BPF_OBJ_PIN, &mut attr).unwrap_or_else(|e| panic!("pin {}: {e}", path.display()));
}

fn open(path: &Path) -> OwnedFd {
    link_info::obj_get(path, 0).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn value_size(path: &Path) -> u32 {
    let data = aya::maps::MapData::from_fd(open(path)).expect("map data");
    data.info().expect("map info").value_size()
}

fn read(fd: &OwnedFd, key: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    link_info::map_lookup(fd, &key.to_ne_bytes(), &mut v).expect("lookup");
    v
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn cpus() -> usize {
    aya::util::nr_cpus().expect("possible cpus")
}

/// (link id, program id) of every link, by interface and role.
fn link_ids(agent: &Agent, iface: &str) -> Vec<(String, u64, u64)> {
    links(agent, iface, None)
        .iter()
        .map(|l: &Value| {
            (
                format!("{}/{}", l["hook"], l["role"]),
                l["link_id"].as_u64().unwrap(),
                l["program_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

struct Rig {
    agent: Agent,
    out: Outside,
    _services: [dockblock_tests::netns::Background; 2],
    port: u16,
}

impl Rig {
    /// An uplink with XDP from `tag`'s namespace, `block <port>/tcp`, a host
    /// service on `port` and an open control on `port + 1`, and drops
    /// counted by the rule.
    fn new(tag: &str, subnet: u8, port: u16) -> Rig {
        assert!(is_root(), "needs root (netns, veth, BPF)");
        let out = Outside::new(tag, subnet);
        let agent = Agent::new(tag);
        agent.ok(&["attach", out.host_if(), "--no-bridge"]);
        let services = [host_service(out.host_ip(), port, 120), host_service(out.host_ip(), port + 1, 120)];
        agent.ok(&["block", &format!("{port}/tcp")]);
        assert!(!connects(&out, out.host_ip(), port), "blocked port connects");
        assert!(connects(&out, out.host_ip(), port + 1), "control port does not connect");
        Rig { agent, out, _services: services, port }
    }

    fn rule(&self) -> Value {
        rule(&self.agent, "dialed", &format!("{}/tcp", self.port)).expect("the port rule")
    }

    /// `attach` again, under a probe loop at the blocked and the control
    /// port; returns the attach output.
    fn attach_probed(&self, expect_ok: bool) -> std::process::Output {
        let host = self.out.host_ip().to_string();
        let targets = [(host.clone(), self.port), (host, self.port + 1)];
        let probe = ProbeLoop::start(&self.out, &targets, Duration::from_millis(20), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let out = self
            .agent
            .command(&["attach", self.out.host_if(), "--no-bridge"])
            .env("RUST_LOG", "info")
            .output()
            .expect("run attach");
        std::thread::sleep(Duration::from_millis(300));
        let tally = probe.finish();
        println!("probe during attach: blocked {:?}, control {:?}", tally[0], tally[1]);
        assert_eq!(out.status.success(), expect_ok, "attach: {}", describe(&out));
        assert_eq!(tally[0].ok, 0, "the blocked port connected during attach: {tally:?}");
        assert!(tally[1].ok > 0, "the control port never connected: {tally:?}");
        out
    }
}

/// RULE_STATS of 32-byte values and CONFIG of 16 bytes, as releases
/// before 101dbf1 / 89d5e1b pinned them: `attach` converts both in place,
/// swaps the programs in the same links, and the rule keeps dropping and
/// counting into the new, pinned map.
#[test]
fn older_rule_stats_and_config_are_migrated_in_place() {
    let r = Rig::new("upm", 180, 21200);
    let id = r.rule()["id"].as_u64().unwrap() as u32;
    let pins = dockblock_agent::paths::PinDir::new(r.agent.pin_dir());
    let (stats_pin, config_pin) = (pins.map(map_names::RULE_STATS), pins.map(map_names::CONFIG));
    let (stats_len, config_len) = (value_size(&stats_pin), value_size(&config_pin));
    assert_eq!((stats_len, config_len), (64, 60), "this build's layouts");
    let max = aya::maps::MapData::from_fd(open(&stats_pin)).unwrap().info().unwrap().max_entries();

    // The older RULE_STATS: dropped and passed only, per CPU; known
    // counts, so what arrives in the new map can only come from it.
    let old_stats = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 32, max);
    let mut value = vec![0u8; 32 * cpus()];
    for cpu in 0..cpus() {
        let base = 1000 * (cpu as u64 + 1);
        for (i, n) in [base, base * 64, base + 7, (base + 7) * 60].iter().enumerate() {
            value[cpu * 32 + 8 * i..][..8].copy_from_slice(&n.to_ne_bytes());
        }
    }
    link_info::map_update(&old_stats, &id.to_ne_bytes(), &value).unwrap();
    // The older CONFIG: generation, flags, log rate, flow timeout.
    let config = read(&open(&config_pin), 0, 60);
    let old_config = create_map(BPF_MAP_TYPE_ARRAY, 4, 16, 1);
    link_info::map_update(&old_config, &0u32.to_ne_bytes(), &config[..16]).unwrap();
    replace_pin(&old_stats, &stats_pin);
    replace_pin(&old_config, &config_pin);

    let status = r.agent.json(&["status"]);
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("RULE_STATS has an older release's layout") && problems.contains("migrates"),
        "status names the migration: {status}"
    );
    let before = link_ids(&r.agent, r.out.host_if());

    let out = r.attach_probed(true);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("migrated RULE_STATS in place: value size 32 -> 64"), "attach log: {log}");
    assert!(log.contains("migrated CONFIG in place: value size 16 -> 60"), "attach log: {log}");

    // Pins swapped: this build's layouts, no staging pin left.
    assert_eq!((value_size(&stats_pin), value_size(&config_pin)), (64, 60));
    let leftovers: Vec<_> = std::fs::read_dir(pins.maps_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_MIGRATING"))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "staging pins left: {leftovers:?}");
    // The converters: old fields kept, new ones zero (RULE_STATS); the
    // settings kept and the fragment seed drawn (CONFIG).
    let stats = read(&open(&stats_pin), id, 64 * cpus());
    for cpu in 0..cpus() {
        let v = &stats[cpu * 64..][..64];
        let base = 1000 * (cpu as u64 + 1);
        assert!(u64_at(v, 0) >= base, "cpu {cpu} dropped packets {} < carried {base}", u64_at(v, 0));
        assert_eq!(u64_at(v, 16), base + 7, "cpu {cpu} passed packets");
        assert_eq!((u64_at(v, 32), u64_at(v, 48)), (0, 0), "cpu {cpu} allowed, dry_run start at 0");
    }
    let new_config = read(&open(&config_pin), 0, 60);
    assert_eq!(new_config[..16], config[..16], "generation, flags, log rate, flow timeout");
    assert_ne!(new_config[20..60], [0u8; 40], "fragment seed drawn");
    assert_ne!(new_config[16..20], [0u8; 4], "fragment mask set");

    // Same links, new programs; status healthy.
    let after = link_ids(&r.agent, r.out.host_if());
    assert_eq!(after.len(), before.len());
    for ((role, link, prog), (role2, link2, prog2)) in before.iter().zip(&after) {
        assert_eq!((role, link), (role2, link2), "link kept: {before:?} -> {after:?}");
        assert_ne!(prog, prog2, "{role}: program replaced: {before:?} -> {after:?}");
    }
    let status = r.agent.json(&["status"]);
    assert_eq!(status["health"], "healthy", "{status}");

    // The programs in the links count into the new pinned map.
    let carried: u64 = (0..cpus() as u64).map(|c| 1000 * (c + 1)).sum();
    let dropped = r.rule()["dropped"]["packets"].as_u64().unwrap();
    assert!(dropped >= carried, "dropped {dropped} < carried {carried}");
    assert!(!connects(&r.out, r.out.host_ip(), r.port), "blocked port connects after the migration");
    let later = r.rule()["dropped"]["packets"].as_u64().unwrap();
    assert!(later > dropped, "drops after the migration not counted in the pinned map: {dropped} -> {later}");
}

/// A layout no converter knows (a RULE_STATS value of 48 bytes, which no
/// release had): `attach` refuses it, names the map and the way out, and
/// changes nothing: the same pins, the same programs, the rule in force.
#[test]
fn an_unknown_layout_is_refused_and_nothing_changes() {
    let r = Rig::new("upu", 182, 21210);
    let pins = dockblock_agent::paths::PinDir::new(r.agent.pin_dir());
    let stats_pin = pins.map(map_names::RULE_STATS);
    let max = aya::maps::MapData::from_fd(open(&stats_pin)).unwrap().info().unwrap().max_entries();
    let odd = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 48, max);
    replace_pin(&odd, &stats_pin);
    let before = link_ids(&r.agent, r.out.host_if());

    let out = r.attach_probed(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pinned map RULE_STATS does not match this release (value size 48, expected 64)")
            && err.contains("detach"),
        "attach's error: {err}"
    );
    assert_eq!(value_size(&stats_pin), 48, "the pin was changed");
    assert_eq!(link_ids(&r.agent, r.out.host_if()), before, "links or programs changed");
    assert!(!connects(&r.out, r.out.host_ip(), r.port), "blocked port connects after the refusal");
}
