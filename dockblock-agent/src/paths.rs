//! Every path dockblock uses, built in one place.
//!
//! ```text
//! /sys/fs/bpf/dockblock/          pin folder (flock'ed by changing commands)
//!   maps/PORT_RULES ...           one pin per map in dockblock_common::map_names
//!   links/xdpskb_eth1             one pin per link: <kind>_<interface>
//!   links/tc_docker0
//!   links/veth_vethd846a2f        a container's host veth (judge; vetht_: tracker)
//! ```
//!
//! bpffs refuses names with a dot (reserved for its own files), and VLAN
//! interfaces have dots (`eth0.100`), so a dot in an interface name is stored
//! as `:`, which interface names cannot contain.
//! ```text
//! ```

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Default pin folder.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/dockblock";
/// Environment variable that overrides the pin folder (as `--pin-dir` does).
pub const PIN_DIR_ENV: &str = "DOCKBLOCK_PIN_DIR";
/// Where bpffs is mounted when missing.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Where the intent journals live (one per pin folder; see `journal`).
pub const JOURNAL_DIR: &str = "/run/dockblock";
/// Mode of the pin folder and its subfolders: root only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every pin (maps, links): root only, as BPF_OBJ_PIN creates them.
pub const PIN_MODE: u32 = 0o600;

/// The kind of an attachment, which is also the prefix of its link pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// XDP in the driver (native mode).
    XdpNative,
    /// XDP in the generic (skb) path.
    XdpSkb,
    /// TCX egress on a bridge: judges container ports.
    TcEgress,
    /// TCX egress on an uplink: records UDP flows the host opens.
    TrackUplink,
    /// TCX ingress on a bridge: records UDP flows containers open.
    TrackBridge,
    /// TCX egress on a container's host-side veth: judges what enters the
    /// container (`VETH_RULES`, closed while unreviewed).
    VethJudge,
    /// TCX ingress on a container's host-side veth: records UDP flows the
    /// container opens.
    VethTrack,
}

impl LinkKind {
    const ALL: [LinkKind; 7] = [
        LinkKind::XdpNative,
        LinkKind::XdpSkb,
        LinkKind::TcEgress,
        LinkKind::TrackUplink,
        LinkKind::TrackBridge,
        LinkKind::VethJudge,
        LinkKind::VethTrack,
    ];
    /// The kinds that can judge an uplink (one at a time).
    pub const XDP: [LinkKind; 2] = [LinkKind::XdpNative, LinkKind::XdpSkb];

    fn prefix(self) -> &'static str {
        match self {
            LinkKind::XdpNative => "xdpdrv",
            LinkKind::XdpSkb => "xdpskb",
            LinkKind::TcEgress => "tc",
            LinkKind::TrackUplink => "trackup",
            LinkKind::TrackBridge => "trackbr",
            LinkKind::VethJudge => "veth",
            LinkKind::VethTrack => "vetht",
        }
    }

    /// How the CLI names the attachment.
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::XdpNative => "XDP (native mode)",
            LinkKind::XdpSkb => "XDP (skb mode)",
            LinkKind::TcEgress => "TC (tcx egress)",
            LinkKind::TrackUplink => "UDP flow tracking (tcx egress)",
            LinkKind::TrackBridge => "UDP flow tracking (tcx ingress)",
            LinkKind::VethJudge => "container veth TC (tcx egress)",
            LinkKind::VethTrack => "container veth UDP flow tracking (tcx ingress)",
        }
    }

    pub fn is_xdp(self) -> bool {
        Self::XDP.contains(&self)
    }

    /// Whether the program sees packets leaving the interface (TCX egress).
    pub fn is_egress(self) -> bool {
        matches!(self, LinkKind::TcEgress | LinkKind::TrackUplink | LinkKind::VethJudge)
    }

    /// Whether the program only records UDP flows (and never drops).
    pub fn is_tracking(self) -> bool {
        matches!(self, LinkKind::TrackUplink | LinkKind::TrackBridge | LinkKind::VethTrack)
    }

    /// The hooks of a container's host-side veth, which the daemon makes
    /// and removes as containers come and go.
    pub fn is_veth(self) -> bool {
        matches!(self, LinkKind::VethJudge | LinkKind::VethTrack)
    }

    /// "xdp" or "tc", for status.
    pub fn hook(self) -> &'static str {
        if self.is_xdp() {
            "xdp"
        } else {
            "tc"
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// A pinned link, as named in the links folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub kind: LinkKind,
    pub interface: String,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    /// Where the saved rule set lives (`saved`); none: not saved.
    state_dir: Option<PathBuf>,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), state_dir: None }
    }

    /// The same pin folder, its rule set saved in `dir` (see [`state_file`](Self::state_file)).
    pub fn with_state_dir(self, dir: impl Into<PathBuf>) -> Self {
        Self { state_dir: Some(dir.into()), ..self }
    }

    /// The saved rule set (`saved`), outside bpffs so it outlives a reboot:
    /// `<state dir>/<pin folder name>.rules.toml`; none without a state dir.
    pub fn state_file(&self) -> Option<PathBuf> {
        self.state_path("rules.toml")
    }

    /// The rule set an `apply --confirm` restores at its deadline:
    /// `<state dir>/<pin folder name>.pending.toml`.
    pub fn pending_file(&self) -> Option<PathBuf> {
        self.state_path("pending.toml")
    }

    /// The Docker bridges the daemon last saw, one name a line:
    /// `<state dir>/<pin folder name>.bridges`. After a reboot, veths
    /// enslaved to a network's own bridge name (`com.docker.network.bridge.name`)
    /// are hooked from their first packet, before the engine answers.
    pub fn bridges_file(&self) -> Option<PathBuf> {
        self.state_path("bridges")
    }

    fn state_path(&self, suffix: &str) -> Option<PathBuf> {
        let name = self.root.file_name().map_or("dockblock".into(), |n| n.to_string_lossy());
        self.state_dir.as_ref().map(|d| d.join(format!("{name}.{suffix}")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, kind: LinkKind, interface: &str) -> PathBuf {
        self.links_dir().join(format!("{}_{}", kind.prefix(), interface.replace('.', ":")))
    }

    /// The link pins present, sorted by name.
    pub fn links(&self) -> Vec<LinkPin> {
        let Ok(entries) = std::fs::read_dir(self.links_dir()) else {
            return vec![];
        };
        let mut pins: Vec<LinkPin> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (prefix, interface) = name.split_once('_')?;
                let kind = LinkKind::ALL.into_iter().find(|k| k.prefix() == prefix)?;
                Some(LinkPin { kind, interface: interface.replace(':', "."), path: e.path() })
            })
            .collect();
        pins.sort_by(|a, b| a.path.cmp(&b.path));
        pins
    }

    /// Whether `attach` has created the maps.
    pub fn is_attached(&self) -> bool {
        self.map(dockblock_common::map_names::PORT_RULES).exists()
    }

    /// The intent journal of this pin folder, outside bpffs (which holds
    /// only pins): `/run/dockblock/<pin folder, '/' as '_'>.json`.
    pub fn journal(&self) -> PathBuf {
        let name = self.root.to_string_lossy().trim_matches('/').replace('/', "_");
        Path::new(JOURNAL_DIR).join(format!("{name}.json"))
    }

    /// The daemon's state file (`run` writes it, `status` reads it), next
    /// to the journal: `/run/dockblock/<pin folder, '/' as '_'>.daemon.json`.
    pub fn daemon_state(&self) -> PathBuf {
        self.journal().with_extension("daemon.json")
    }

    /// Gives the pin folder, its subfolders and every pin in them to root
    /// with modes 0700 and 0600, so no other user can open a map or a link.
    /// Returns the paths it had to fix.
    pub fn secure(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut fixed = Vec::new();
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            if !dir.exists() {
                continue;
            }
            if secure_one(&dir, DIR_MODE)? {
                fixed.push(dir.clone());
            }
            if dir == self.root {
                continue;
            }
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if secure_one(&path, PIN_MODE)? {
                    fixed.push(path);
                }
            }
        }
        Ok(fixed)
    }

    /// Pins and folders whose owner or mode is not root's 0700/0600.
    pub fn insecure(&self) -> Vec<PathBuf> {
        let mut bad = Vec::new();
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            if !is_secure(&meta, DIR_MODE) {
                bad.push(dir.clone());
            }
            if dir == self.root {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.metadata().is_ok_and(|m| !is_secure(&m, PIN_MODE)) {
                    bad.push(entry.path());
                }
            }
        }
        bad
    }
}

fn is_secure(meta: &std::fs::Metadata, mode: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    meta.uid() == 0 && meta.gid() == 0 && meta.mode() & 0o7777 == mode
}

/// Sets root ownership and `mode` on `path`; true when it was not so.
fn secure_one(path: &Path, mode: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    if is_secure(&meta, mode) {
        return Ok(false);
    }
    std::os::unix::fs::chown(path, Some(0), Some(0))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_round_trip_through_their_names() {
        let dir = std::env::temp_dir().join(format!("dockblock-paths-{}", std::process::id()));
        let pins = PinDir::new(&dir);
        std::fs::create_dir_all(pins.links_dir()).unwrap();
        for (kind, iface) in [
            (LinkKind::XdpSkb, "eth0.100"),
            (LinkKind::TcEgress, "br-1a2b"),
            (LinkKind::XdpNative, "en_s3"),
            (LinkKind::VethJudge, "veth1a2b3c"),
            (LinkKind::VethTrack, "veth1a2b3c"),
        ] {
            std::fs::write(pins.link(kind, iface), b"").unwrap();
        }
        std::fs::write(pins.links_dir().join("stray"), b"").unwrap();
        let found: Vec<(LinkKind, String)> =
            pins.links().into_iter().map(|p| (p.kind, p.interface)).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(pins
            .link(LinkKind::XdpSkb, "eth0.100")
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .find('.')
            .is_none());
        assert_eq!(
            found,
            vec![
                (LinkKind::TcEgress, "br-1a2b".to_string()),
                (LinkKind::VethJudge, "veth1a2b3c".to_string()),
                (LinkKind::VethTrack, "veth1a2b3c".to_string()),
                (LinkKind::XdpNative, "en_s3".to_string()),
                (LinkKind::XdpSkb, "eth0.100".to_string()),
            ]
        );
    }
}
