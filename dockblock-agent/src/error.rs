//! The library's one error type. Each variant says what went wrong in words
//! an operator can act on; `exit_code` maps it to the CLI's exit codes.

use std::path::PathBuf;

use crate::exit_code::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port spec that does not follow Docker's syntax or range.
    #[error("invalid port spec `{spec}`: {why}")]
    BadPortSpec { spec: String, why: String },

    /// An `--allow-from` value that is not an address or network.
    #[error(
        "invalid --allow-from `{value}`: expected an address or CIDR network (203.0.113.0/24, 2001:db8::/32)"
    )]
    BadCidr { value: String },

    /// The process lacks the privileges to load programs and open pins.
    #[error("dockblock-agent must run as root (it needs CAP_BPF and CAP_NET_ADMIN)")]
    NotRoot,

    /// No pinned maps: `attach` has not run, or `detach` removed them.
    #[error(
        "dockblock is not attached (nothing pinned in {pin_dir}); run `dockblock-agent attach IFACE` first"
    )]
    NotAttached { pin_dir: PathBuf },

    /// An interface named on the command line does not exist.
    #[error("interface `{name}` does not exist{hint}")]
    UnknownInterface { name: String, hint: &'static str },

    /// `detach IFACE` for an interface dockblock is not attached to.
    #[error("dockblock is not attached to `{name}`")]
    NotAttachedTo { name: String },

    /// `attach --xdp-mode` asks for another mode than the live link has.
    #[error("{name} already has dockblock's {have}; run `dockblock-agent detach {name}` first to switch to {wanted} (rules are kept)")]
    ModeChange { name: String, have: &'static str, wanted: &'static str },

    /// `unblock` of ports no rule covers.
    #[error("no rule blocks {spec}; `dockblock-agent list` shows the rules")]
    NotBlocked { spec: String },

    /// The rule catalog is full.
    #[error("rule table full ({capacity} rules); unblock rules or re-attach with a larger --max-rules after detach")]
    RulesFull { capacity: u32 },

    /// The allow-list table is full.
    #[error("allow-list table full ({capacity} entries in all rules); re-attach with a larger --max-allow after detach")]
    AllowFull { capacity: u32 },

    /// A veth table (`VETHS`, `VETH_RULES`) cannot hold what the
    /// containers' rules need; nothing was written.
    #[error("{map} full: the containers' rules need {needed} entries, it holds {capacity}; run `dockblock-agent detach`, then attach with a larger {flag}")]
    VethTableFull { map: &'static str, needed: usize, capacity: u32, flag: &'static str },

    /// A rules file that does not parse or names bad values.
    #[error("{path}:{line}: {why}")]
    RulesFile { path: String, line: usize, why: String },

    /// A config file that does not parse or names bad values.
    #[error("{path}:{line}: {why}")]
    Config { path: String, line: usize, why: String },

    /// A config file named (`--config`, `$DOCKBLOCK_CONFIG`, `config
    /// check`) that does not exist: a typo must not mean "the defaults".
    #[error("{path}: no such config file (named by --config, $DOCKBLOCK_CONFIG or `config check`; when none is named, {default} is read if it exists)")]
    ConfigMissing { path: String, default: &'static str },

    /// A block that would close a failsafe port (config `failsafe`),
    /// without `--force`.
    #[error("{what}")]
    Failsafe { what: String },

    /// An interface without an Ethernet header (wireguard, tun, ...).
    #[error("interface `{name}` has no Ethernet header (link type {link_type}); dockblock judges Ethernet frames only")]
    NotEthernet { name: String, link_type: u32 },

    /// A command-line value (an `explain` packet's protocol, address, port,
    /// flags) that cannot be used.
    #[error("invalid {what} `{value}`: {why}")]
    BadArgument { what: &'static str, value: String, why: String },

    /// `explain`: the kernel programs and the reference model judged the
    /// same packet differently (a bug in one of them).
    #[error("kernel and model disagree on {hooks}; please report this with the command line")]
    Disagreement { hooks: String },

    /// bpffs is missing and could not be mounted.
    #[error("cannot mount bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: std::io::Error },

    /// Another dockblock-agent holds the lock for too long.
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },

    /// The kernel refused to open a pin: not root, or the pin's owner or
    /// mode (root, 0600) keeps this user out.
    #[error("permission denied opening {path} (pins are root's, mode 0600): run dockblock-agent as root")]
    Denied { path: PathBuf, source: std::io::Error },

    /// The pinned state is damaged or left half-changed; `fix` is the
    /// command that repairs it.
    #[error("{what}; run `{fix}`")]
    Unhealthy { what: String, fix: String },

    /// A pinned map cannot be reused by this release.
    #[error("pinned map {name} does not match this release ({why}); export the rules with the version that attached, run `dockblock-agent detach`, then `attach` and `apply` them")]
    MapMismatch { name: String, why: String },

    /// A rules file over the size or rule-count limit.
    #[error("{path}: {why}")]
    RulesFileTooBig { path: String, why: String },

    /// The Docker engine could not be reached or answered with an error.
    #[error("Docker engine: {what}: {why}")]
    Engine { what: String, why: String },

    /// A selector names a container (or label, compose service) that does
    /// not exist, or a value a Docker rule cannot use.
    #[error("{what}")]
    BadSelector { what: String },

    /// A netlink request (links, bridges, a container's netns) failed.
    #[error("netlink: {what}: {why}")]
    Netlink { what: String, why: String },

    /// A filesystem operation on the pin folder failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    /// Loading, attaching or a map operation failed in the kernel.
    #[error("{what}: {source}")]
    Bpf { what: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl Error {
    /// Wraps a kernel/aya error with what we were doing.
    pub fn bpf(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Bpf { what: what.into(), source: Box::new(source) }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }

    /// Usage errors are what the command line alone shows to be wrong.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::BadPortSpec { .. }
            | Self::BadCidr { .. }
            | Self::RulesFile { .. }
            | Self::Config { .. }
            | Self::ConfigMissing { .. }
            | Self::Failsafe { .. }
            | Self::RulesFileTooBig { .. }
            | Self::BadArgument { .. }
            | Self::BadSelector { .. } => ExitCode::Usage,
            _ => ExitCode::Failure,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
