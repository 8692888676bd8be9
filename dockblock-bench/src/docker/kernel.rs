//! What the daemon has put in the kernel, read straight from its pins as
//! often as every millisecond: the reviewed veths (`VETHS`, each naming its
//! container), their entries (`VETH_RULES`) and the veth hooks' link pins.
//! The maps are opened once (read through aya as plain bytes, laid out as
//! dockblock-common says) and re-read on every poll; a [`Timeline`] keeps
//! when each container was first seen reviewed with entries, and when its
//! entry went.
use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use dockblock_common::{map_names, veth_flag, PortRule, VethRuleKey, VethState};
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    mem::size_of,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

const STATE_LEN: usize = size_of::<VethState>();
const KEY_LEN: usize = size_of::<VethRuleKey>();
const RULE_LEN: usize = size_of::<PortRule>();
/// Where `VethState::container` starts: after `flags` and `_pad`.
const CONTAINER_AT: usize = 8;
const _: () = assert!(STATE_LEN == CONTAINER_AT + 32);
const _: () = assert!(KEY_LEN == 12);

/// Nanoseconds since the epoch, the clock of the engine's `timeNano`.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One reviewed veth as `VETHS` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub ifindex: u32,
    pub flags: u32,
    /// The container id, 64 lowercase hex digits (as `docker run -d` prints it).
    pub container: String,
}

/// The pinned veth table of one pin folder.
pub struct Tables {
    states: HashMap<MapData, u32, [u8; STATE_LEN]>,
    rules: HashMap<MapData, [u8; KEY_LEN], [u8; RULE_LEN]>,
    links: PathBuf,
}

impl Tables {
    pub fn open(pin_dir: &str) -> Result<Tables> {
        let open = |name: &str| -> Result<Map> {
            let path = Path::new(pin_dir).join("maps").join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {name}"))
        };
        Ok(Tables {
            states: HashMap::try_from(open(map_names::VETHS)?).context("VETHS")?,
            rules: HashMap::try_from(open(map_names::VETH_RULES)?).context("VETH_RULES")?,
            links: Path::new(pin_dir).join("links"),
        })
    }

    /// Every reviewed veth (entries that vanish while iterated are skipped).
    pub fn reviewed(&self) -> Vec<Reviewed> {
        self.states
            .iter()
            .filter_map(|e| e.ok())
            .map(|(ifindex, v)| Reviewed {
                ifindex,
                flags: u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                container: v[CONTAINER_AT..].iter().map(|b| format!("{b:02x}")).collect(),
            })
            .collect()
    }

    /// The veths that have at least one `VETH_RULES` entry.
    pub fn with_entries(&self) -> BTreeSet<u32> {
        self.rules
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]))
            .collect()
    }

    /// Interfaces whose veth judge hook is pinned (`veth_<ifname>`).
    pub fn hooked(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(&self.links) else { return vec![] };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("veth_").map(|i| i.replace(':', ".")))
            .collect()
    }
}

/// What the polls saw of one container.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub ifindex: u32,
    /// The host-side veth, named while it existed.
    pub ifname: Option<String>,
    /// First poll that found it reviewed with at least one entry.
    pub ruled_ns: Option<u64>,
    /// First poll that found its `VETHS` entry gone (after it was there).
    pub gone_ns: Option<u64>,
}

/// Times of first sightings, every poll adding to them.
#[derive(Debug, Default)]
pub struct Timeline {
    pub containers: BTreeMap<String, Seen>,
    /// Interface -> first poll that found its veth hook pinned.
    pub hooks: BTreeMap<String, u64>,
    pub polls: u64,
    /// Longest time between two polls, in nanoseconds (the resolution).
    pub max_gap_ns: u64,
    last_ns: u64,
}

impl Timeline {
    /// One poll of `t` at about `now` (ns since the epoch).
    pub fn poll(&mut self, t: &Tables) {
        let now = now_ns();
        if self.last_ns > 0 {
            self.max_gap_ns = self.max_gap_ns.max(now.saturating_sub(self.last_ns));
        }
        self.last_ns = now;
        self.polls += 1;
        for ifname in t.hooked() {
            self.hooks.entry(ifname).or_insert(now);
        }
        let reviewed = t.reviewed();
        let entries = t.with_entries();
        let present: BTreeSet<&str> = reviewed.iter().map(|r| r.container.as_str()).collect();
        for r in &reviewed {
            let seen = self.containers.entry(r.container.clone()).or_default();
            if seen.ifname.is_none() || seen.ifindex != r.ifindex {
                seen.ifindex = r.ifindex;
                seen.ifname = ifname(r.ifindex);
            }
            if seen.ruled_ns.is_none() && r.flags & veth_flag::REVIEWED != 0 && entries.contains(&r.ifindex) {
                seen.ruled_ns = Some(now);
            }
        }
        for (id, seen) in self.containers.iter_mut() {
            if seen.gone_ns.is_none() && !present.contains(id.as_str()) {
                seen.gone_ns = Some(now);
            }
        }
    }

    /// When `id`'s veth hook was first seen pinned.
    pub fn hook_ns(&self, id: &str) -> Option<u64> {
        let name = self.containers.get(id)?.ifname.as_ref()?;
        self.hooks.get(name).copied()
    }
}

/// The name of interface `ifindex`, while it exists.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}
