//! The config file (TOML), `/etc/dockblock/dockblock.toml` unless
//! `--config FILE` or `$DOCKBLOCK_CONFIG` names another. `run` takes its
//! uplinks, capacities, settings and policy from it (flags override); the
//! CLI verbs take `state_dir` and `failsafe`. Every key is optional; an
//! unknown key or a bad value is `FILE:LINE: why` (exit 2), never a
//! silent default. `packaging/dockblock.toml` documents every key.
//!
//! ```toml
//! uplinks = ["eth0"]
//! bridges = "auto"            # the only value: every Docker bridge
//! xdp_mode = "auto"           # native, skb
//! policy = "deny"             # published ports; absent: left as it is
//! failsafe = ["22/tcp"]       # never closed by a plain block or the policy
//! [capacities]
//! max_rules = 4095
//! ```

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use dockblock_common::{
    DEFAULT_EVENTS_BYTES, DEFAULT_FLOW_TIMEOUT_SECS, DEFAULT_LOG_RATE, DEFAULT_MAX_ALLOW, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FRAGS, DEFAULT_MAX_RULES, DEFAULT_MAX_VETHS, DEFAULT_MAX_VETH_RULES,
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    error::{Error, Result},
    line_index::LineIndex,
    loader::{Capacities, Settings, XdpModeChoice},
    ports::PortSpec,
    rulefile::Entry,
    rules::{Rule, RuleSpec, Scope},
};

pub const DEFAULT_CONFIG: &str = "/etc/dockblock/dockblock.toml";
pub const CONFIG_ENV: &str = "DOCKBLOCK_CONFIG";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dockblock";
/// The ports no plain block and no deny policy closes unless forced: the
/// one you are logged in through.
pub const DEFAULT_FAILSAFE: &str = "22/tcp";
/// Largest config file read (it holds settings, not rules).
const MAX_BYTES: u64 = 1 << 20;

/// Which Docker bridges get the bridge programs: every one, always (see
/// `bridges()` below for why a list is refused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Bridges {
    /// Every Docker bridge (docker0, br-*), as they come and go.
    #[default]
    Auto,
}

/// `policy published deny|allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishedPolicy {
    Deny,
    Allow,
}

/// How log lines are written (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (journald, Loki): level, target, fields.
    Json,
}

/// The effective configuration: the file's keys, defaults for the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub uplinks: Vec<String>,
    pub bridges: Bridges,
    pub xdp_mode: XdpModeChoice,
    pub capacities: Capacities,
    pub settings: Settings,
    pub policy: Option<PublishedPolicy>,
    pub state_dir: PathBuf,
    pub rule_files: Vec<PathBuf>,
    pub failsafe: Vec<PortSpec>,
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            uplinks: Vec::new(),
            bridges: Bridges::Auto,
            xdp_mode: XdpModeChoice::Auto,
            capacities: Capacities::default(),
            settings: Settings::default(),
            policy: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            rule_files: Vec::new(),
            failsafe: vec![PortSpec::parse(DEFAULT_FAILSAFE).expect("a valid spec")],
            metrics: None,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    uplinks: Option<Vec<Spanned<String>>>,
    bridges: Option<Spanned<toml::Value>>,
    xdp_mode: Option<Spanned<String>>,
    capacities: Option<CapacitiesIn>,
    judge_host_traffic: Option<bool>,
    log_rate: Option<Spanned<i64>>,
    flow_timeout: Option<Spanned<i64>>,
    policy: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    rule_files: Option<Vec<Spanned<String>>>,
    failsafe: Option<Vec<Spanned<String>>>,
    metrics: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapacitiesIn {
    max_rules: Option<Spanned<i64>>,
    max_allow: Option<Spanned<i64>>,
    max_flows: Option<Spanned<i64>>,
    max_frags: Option<Spanned<i64>>,
    max_veths: Option<Spanned<i64>>,
    max_veth_rules: Option<Spanned<i64>>,
    events_bytes: Option<Spanned<i64>>,
}

type Bad = (Range<usize>, String);

/// Reads and checks `path`; a missing file is an error (it was named).
pub fn load(path: &Path) -> Result<Config> {
    use std::io::Read as _;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ConfigMissing { path: name.clone(), default: DEFAULT_CONFIG },
        _ => Error::io("read config", path, e),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io("read config", path, e))?;
    let bad = |why: &str| Error::Config { path: name.clone(), line: 1, why: why.into() };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(bad("larger than 1 MiB; a config holds settings (rules go in rule_files)"));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
    parse(&name, &text)
}

/// `$DOCKBLOCK_CONFIG` if set (it must exist), else [`DEFAULT_CONFIG`]
/// (defaults when missing); with the file read, if any.
pub fn load_default() -> Result<(Config, Option<PathBuf>)> {
    load_named(std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from).as_deref())
}

/// `named` (from `--config` or the environment) must exist; without one
/// the default file is read when it exists.
pub fn load_named(named: Option<&Path>) -> Result<(Config, Option<PathBuf>)> {
    if let Some(path) = named {
        return Ok((load(path)?, Some(path.to_path_buf())));
    }
    let path = Path::new(DEFAULT_CONFIG);
    match path.try_exists() {
        Ok(true) => Ok((load(path)?, Some(path.to_path_buf()))),
        _ => Ok((Config::default(), None)),
    }
}

/// Parses `text` (read from `path`, named in messages).
pub fn parse(path: &str, text: &str) -> Result<Config> {
    let error = |span: Option<Range<usize>>, why: String| Error::Config {
        path: path.to_string(),
        line: span.map_or(1, |s| LineIndex::new(text).line(s.start)),
        why,
    };
    let file: FileIn = toml::from_str(text).map_err(|e| error(e.span(), e.message().trim().to_string()))?;
    build(file).map_err(|(span, why)| error(Some(span), why))
}

fn build(f: FileIn) -> std::result::Result<Config, Bad> {
    let mut c = Config::default();
    if let Some(uplinks) = f.uplinks {
        c.uplinks = uplinks.iter().map(interface).collect::<std::result::Result<_, _>>()?;
        if let Some(dup) = first_duplicate(&c.uplinks) {
            let span = uplinks.iter().rev().find(|u| u.get_ref() == dup).expect("present").span();
            return Err((span, format!("uplink `{dup}` is named twice")));
        }
    }
    if let Some(b) = f.bridges {
        c.bridges = bridges(&b)?;
    }
    if let Some(mode) = f.xdp_mode {
        c.xdp_mode = match mode.get_ref().as_str() {
            "auto" => XdpModeChoice::Auto,
            "native" => XdpModeChoice::Native,
            "skb" => XdpModeChoice::Skb,
            other => return Err((mode.span(), format!("xdp_mode `{other}`: expected auto, native or skb"))),
        };
    }
    if let Some(caps) = f.capacities {
        let n = |v: &Option<Spanned<i64>>, key| v.as_ref().map(|v| number(v, key, 1, 1_000_000)).transpose();
        c.capacities = Capacities {
            max_rules: n(&caps.max_rules, "max_rules")?,
            max_allow: n(&caps.max_allow, "max_allow")?,
            max_flows: n(&caps.max_flows, "max_flows")?,
            max_frags: n(&caps.max_frags, "max_frags")?,
            max_veths: n(&caps.max_veths, "max_veths")?,
            max_veth_rules: n(&caps.max_veth_rules, "max_veth_rules")?,
            events_bytes: caps.events_bytes.as_ref().map(ring_size).transpose()?,
        };
    }
    c.settings = Settings {
        judge_host_traffic: f.judge_host_traffic,
        log_rate: f.log_rate.as_ref().map(|v| number(v, "log_rate", 1, 1_000_000)).transpose()?,
        flow_timeout_secs: f
            .flow_timeout
            .as_ref()
            .map(|v| number(v, "flow_timeout", 1, 86_400))
            .transpose()?,
    };
    if let Some(p) = f.policy {
        c.policy = Some(match p.get_ref().as_str() {
            "deny" => PublishedPolicy::Deny,
            "allow" => PublishedPolicy::Allow,
            other => return Err((p.span(), format!("policy `{other}`: expected deny or allow"))),
        });
    }
    if let Some(dir) = f.state_dir {
        c.state_dir = absolute(&dir, "state_dir")?;
    }
    if let Some(files) = f.rule_files {
        c.rule_files =
            files.iter().map(|p| absolute(p, "rule_files")).collect::<std::result::Result<_, _>>()?;
    }
    if let Some(ports) = f.failsafe {
        c.failsafe = Vec::new();
        for p in &ports {
            let spec = PortSpec::parse(p.get_ref()).map_err(|e| (p.span(), format!("failsafe: {e}")))?;
            if c.failsafe.iter().any(|s: &PortSpec| s.overlaps(&spec)) {
                return Err((p.span(), format!("failsafe `{spec}` overlaps an earlier entry")));
            }
            c.failsafe.push(spec);
        }
    }
    if let Some(m) = f.metrics {
        let addr = m.get_ref().parse::<SocketAddr>().map_err(|_| {
            (
                m.span(),
                format!("metrics `{}`: expected ADDRESS:PORT (127.0.0.1:9469, [::1]:9469)", m.get_ref()),
            )
        })?;
        c.metrics = Some(addr);
    }
    if let Some(format) = f.log_format {
        c.log_format = match format.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err((format.span(), format!("log_format `{other}`: expected text or json"))),
        };
    }
    Ok(c)
}

/// An interface name the kernel could have (IFNAMSIZ, no `/`, no space).
fn interface(name: &Spanned<String>) -> std::result::Result<String, Bad> {
    let n = name.get_ref();
    if n.is_empty() || n.len() > 15 || n.contains(['/', ':']) || n.chars().any(char::is_whitespace) {
        return Err((
            name.span(),
            format!("`{n}` is not an interface name (1 to 15 characters, no / : or space)"),
        ));
    }
    Ok(n.clone())
}

/// Only `"auto"`: a list would leave the containers of every other Docker
/// network without their bridge and veth hooks, open on the paths only
/// those hooks see (direct routing, other interfaces). Refused, not
/// ignored, so a file written for "only these" does not silently mean
/// "every bridge".
fn bridges(value: &Spanned<toml::Value>) -> std::result::Result<Bridges, Bad> {
    match value.get_ref() {
        toml::Value::String(s) if s == "auto" => Ok(Bridges::Auto),
        toml::Value::Array(_) => Err((
            value.span(),
            "bridges: only \"auto\" is supported (every Docker bridge, as networks come and go); a \
             list would leave the containers of the other networks unhooked; remove the key"
                .to_string(),
        )),
        _ => Err((value.span(), "bridges: expected \"auto\"".to_string())),
    }
}

fn number(v: &Spanned<i64>, key: &str, lo: u32, hi: u32) -> std::result::Result<u32, Bad> {
    let n = *v.get_ref();
    match u32::try_from(n) {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err((v.span(), format!("{key} = {n}: expected {lo} to {hi}"))),
    }
}

fn ring_size(v: &Spanned<i64>) -> std::result::Result<u32, Bad> {
    let n = *v.get_ref();
    match u32::try_from(n) {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err((v.span(), format!("events_bytes = {n}: must be a power of two, at least 4096"))),
    }
}

fn absolute(p: &Spanned<String>, key: &str) -> std::result::Result<PathBuf, Bad> {
    let path = PathBuf::from(p.get_ref());
    if !path.is_absolute() {
        return Err((p.span(), format!("{key}: `{}` is not an absolute path", p.get_ref())));
    }
    Ok(path)
}

fn first_duplicate(names: &[String]) -> Option<&String> {
    names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n)
}

/// The failsafe port `spec` would close, if any: a plain block of dialed
/// ports that drops (not dry-run) and whose allow-list does not hold every
/// address, IPv4 and IPv6.
pub fn closes_failsafe(failsafe: &[PortSpec], spec: &RuleSpec) -> Option<PortSpec> {
    use crate::target::{Action, Selector};
    if spec.target.selector != Selector::Ports
        || spec.target.action != Action::Block
        || spec.scope != Scope::Dialed
        || spec.options.dry_run
        || allows_everyone(&spec.options.allow_from)
    {
        return None;
    }
    let hit = failsafe.iter().find(|f| f.overlaps(&spec.ports))?;
    // The part of the failsafe entry the rule covers: `block 1-1024`
    // closes 22/tcp, not all of a failsafe range.
    Some(PortSpec {
        lo: hit.lo.max(spec.ports.lo),
        hi: hit.hi.min(spec.ports.hi),
        protos: hit.protos & spec.ports.protos,
    })
}

fn allows_everyone(nets: &[ipnet::IpNet]) -> bool {
    let v4 = nets.iter().any(|n| matches!(n, ipnet::IpNet::V4(_)) && n.prefix_len() == 0);
    let v6 = nets.iter().any(|n| matches!(n, ipnet::IpNet::V6(_)) && n.prefix_len() == 0);
    v4 && v6
}

/// The refusal of a block on failsafe port `port`: exit 2 with the way out.
pub fn failsafe_refusal(spec: &RuleSpec, port: PortSpec, config: Option<&Path>, force: &str) -> Error {
    let file = config
        .map_or_else(|| format!("the default; {DEFAULT_CONFIG} does not exist"), |p| p.display().to_string());
    Error::Failsafe {
        what: format!(
            "blocking dialed {} would close failsafe port {port} (config key `failsafe`, {file}): \
             nothing changed; use {force} to block it anyway, or take {port} out of `failsafe`",
            spec.ports
        ),
    }
}

/// A rule file's check (`apply`, and rule files the daemon adds): a rule
/// of file `name` that closes a failsafe port is refused at its line
/// unless it says `force = true` or is in force already (`in_force`: it
/// was forced once, so `export | apply` stays a no-op).
pub fn refuse_unforced(
    failsafe: &[PortSpec],
    config: Option<&Path>,
    name: &str,
    entries: &[Entry],
    in_force: &[Rule],
) -> Result<()> {
    for e in entries.iter().filter(|e| !e.force) {
        let Some(port) = closes_failsafe(failsafe, &e.spec) else { continue };
        if in_force.iter().any(|r| r.is_user() && r.spec() == e.spec) {
            continue;
        }
        let why = failsafe_refusal(&e.spec, port, config, "`force = true` on that rule");
        return Err(Error::Failsafe { what: format!("{name}:{}: {why}", e.line) });
    }
    Ok(())
}

impl Config {
    /// What `config check` prints: every key with its effective value, in
    /// the file's syntax.
    pub fn render(&self) -> String {
        let list = |items: Vec<String>| {
            format!("[{}]", items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "))
        };
        // Unset: the built-in value when the maps are created (pins that
        // exist keep theirs), shown so an operator sees what that is.
        let opt = |v: Option<u32>, d: u32| v.map_or_else(|| format!("default ({d})"), |n| n.to_string());
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
        line("uplinks", list(self.uplinks.clone()));
        line(
            "bridges",
            match self.bridges {
                Bridges::Auto => "\"auto\"".into(),
            },
        );
        let mode = match self.xdp_mode {
            XdpModeChoice::Auto => "auto",
            XdpModeChoice::Native => "native",
            XdpModeChoice::Skb => "skb",
        };
        line("xdp_mode", format!("{mode:?}"));
        let s = &self.settings;
        line(
            "judge_host_traffic",
            s.judge_host_traffic.map_or_else(|| "default (false)".into(), |b| b.to_string()),
        );
        line("log_rate", opt(s.log_rate, DEFAULT_LOG_RATE));
        line("flow_timeout", opt(s.flow_timeout_secs, DEFAULT_FLOW_TIMEOUT_SECS));
        line(
            "policy",
            match self.policy {
                None => "unset (left as it is)".into(),
                Some(PublishedPolicy::Deny) => "\"deny\"".into(),
                Some(PublishedPolicy::Allow) => "\"allow\"".into(),
            },
        );
        line("state_dir", format!("{:?}", self.state_dir.display().to_string()));
        line("rule_files", list(self.rule_files.iter().map(|p| p.display().to_string()).collect()));
        line("failsafe", list(self.failsafe.iter().map(|p| p.to_string()).collect()));
        line("metrics", self.metrics.map_or_else(|| "off".into(), |a| format!("{:?}", a.to_string())));
        line("log_format", format!("{:?}", if self.log_format == LogFormat::Json { "json" } else { "text" }));
        let c = &self.capacities;
        out.push_str("\n[capacities]\n");
        for (k, v, d) in [
            ("max_rules", c.max_rules, DEFAULT_MAX_RULES - 1),
            ("max_allow", c.max_allow, DEFAULT_MAX_ALLOW),
            ("max_flows", c.max_flows, DEFAULT_MAX_FLOWS),
            ("max_frags", c.max_frags, DEFAULT_MAX_FRAGS),
            ("max_veths", c.max_veths, DEFAULT_MAX_VETHS),
            ("max_veth_rules", c.max_veth_rules, DEFAULT_MAX_VETH_RULES),
            ("events_bytes", c.events_bytes, DEFAULT_EVENTS_BYTES),
        ] {
            out.push_str(&format!("{k} = {}\n", opt(v, d)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_defaults() {
        assert_eq!(parse("c.toml", "").unwrap(), Config::default());
        let d = Config::default();
        assert_eq!(d.failsafe, [PortSpec::parse("22/tcp").unwrap()]);
        assert_eq!(d.state_dir, Path::new("/var/lib/dockblock"));
        assert_eq!((d.metrics, d.policy, d.log_format), (None, None, LogFormat::Text));
    }

    #[test]
    fn every_key() {
        let text = r#"
uplinks = ["eth1", "bond0"]
bridges = "auto"
xdp_mode = "skb"
judge_host_traffic = true
log_rate = 50
flow_timeout = 60
policy = "deny"
state_dir = "/srv/dockblock"
rule_files = ["/etc/dockblock/rules.d/base.toml"]
failsafe = ["22/tcp", "2222"]
metrics = "127.0.0.1:9469"
log_format = "json"

[capacities]
max_rules = 100
max_allow = 200
max_flows = 300
max_frags = 400
max_veths = 500
max_veth_rules = 600
events_bytes = 8192
"#;
        let c = parse("c.toml", text).unwrap();
        assert_eq!(c.uplinks, ["eth1", "bond0"]);
        assert_eq!(c.bridges, Bridges::Auto);
        assert_eq!(c.xdp_mode, XdpModeChoice::Skb);
        assert_eq!(c.settings.judge_host_traffic, Some(true));
        assert_eq!((c.settings.log_rate, c.settings.flow_timeout_secs), (Some(50), Some(60)));
        assert_eq!(c.policy, Some(PublishedPolicy::Deny));
        assert_eq!(c.state_dir, Path::new("/srv/dockblock"));
        assert_eq!(c.rule_files, [Path::new("/etc/dockblock/rules.d/base.toml")]);
        assert_eq!(c.failsafe, [PortSpec::parse("22/tcp").unwrap(), PortSpec::parse("2222").unwrap()]);
        assert_eq!(c.metrics, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        let k = c.capacities;
        assert_eq!(
            [
                k.max_rules,
                k.max_allow,
                k.max_flows,
                k.max_frags,
                k.max_veths,
                k.max_veth_rules,
                k.events_bytes
            ],
            [100, 200, 300, 400, 500, 600, 8192].map(Some)
        );
        // What `config check` prints parses back to the same settings
        // (less the "default" placeholders).
        let shown = c.render();
        assert!(shown.contains("failsafe = [\"22/tcp\", \"2222\"]"), "{shown}");
        assert!(parse("c.toml", &shown).is_ok(), "{shown}");
        assert_eq!(parse("c.toml", "bridges = \"auto\"\nfailsafe = []\n").unwrap().failsafe, []);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, why) in [
            ("uplinks = [\"eth0\"]\nuplnks = [\"eth1\"]\n", 2, "unknown field `uplnks`"),
            ("\n[capacities]\nmax_rule = 5\n", 3, "unknown field `max_rule`"),
            ("[capacities]\nmax_rules = 0\n", 2, "max_rules = 0: expected 1 to 1000000"),
            ("[capacities]\nevents_bytes = 5000\n", 2, "power of two"),
            ("log_rate = \"fast\"\n", 1, "invalid type"),
            ("\n\nflow_timeout = 90000\n", 3, "expected 1 to 86400"),
            ("xdp_mode = \"driver\"\n", 1, "expected auto, native or skb"),
            ("policy = \"closed\"\n", 1, "expected deny or allow"),
            ("\nfailsafe = [\"22/tcp\",\n  \"0/tcp\"]\n", 3, "failsafe: invalid port spec `0/tcp`"),
            ("failsafe = [\"22/tcp\", \"20-30\"]\n", 1, "overlaps"),
            ("metrics = \"localhost\"\n", 1, "expected ADDRESS:PORT"),
            ("log_format = \"yaml\"\n", 1, "expected text or json"),
            ("state_dir = \"var/lib\"\n", 1, "not an absolute path"),
            ("rule_files = [\"rules.toml\"]\n", 1, "not an absolute path"),
            ("uplinks = [\"eth0\", \"a very long interface\"]\n", 1, "not an interface name"),
            ("\nuplinks = [\"eth0\",\n\"eth0\"]\n", 3, "named twice"),
            ("bridges = \"all\"\n", 1, "expected \"auto\""),
            ("\nbridges = [\"docker0\"]\n", 2, "only \"auto\" is supported"),
            ("judge_host_traffic = \"yes\"\n", 1, "invalid type"),
            ("uplinks = [\"eth0\"\n", 1, ""),
        ] {
            let err = parse("/etc/d.toml", text).unwrap_err();
            let Error::Config { line: got, why: ref msg, .. } = err else { panic!("{err}") };
            assert_eq!(got, line, "{text:?}: {msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
            assert!(err.to_string().starts_with(&format!("/etc/d.toml:{line}: ")), "{err}");
            assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Usage);
        }
    }

    #[test]
    fn rule_files_need_force_for_a_failsafe_port() {
        let fs = [PortSpec::parse("22/tcp").unwrap()];
        let text = "[[rule]]\nports = \"80/tcp\"\n\n[[rule]]\nports = \"22/tcp\"\n";
        let entries = crate::rulefile::parse_entries("r.toml", text).unwrap();
        let err = refuse_unforced(&fs, None, "r.toml", &entries, &[]).unwrap_err();
        assert!(err.to_string().starts_with("r.toml:4: blocking dialed 22/tcp"), "{err}");
        assert!(err.to_string().contains("`force = true`"), "{err}");
        assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Usage);
        let forced = crate::rulefile::parse_entries("r.toml", &format!("{text}force = true\n")).unwrap();
        assert!(refuse_unforced(&fs, None, "r.toml", &forced, &[]).is_ok());
        let in_force = [Rule::from_spec(1, entries[1].spec.clone())];
        assert!(refuse_unforced(&fs, None, "r.toml", &entries, &in_force).is_ok());
        assert!(refuse_unforced(&[], None, "r.toml", &entries, &[]).is_ok());
    }

    #[test]
    fn failsafe_hits_plain_dropping_dialed_blocks_only() {
        use crate::{
            rules::RuleOptions,
            target::{Action, Selector, Target},
        };
        let fs = [PortSpec::parse("22/tcp").unwrap()];
        let spec = |ports: &str, options: RuleOptions| RuleSpec {
            options,
            ..RuleSpec::plain(Scope::Dialed, PortSpec::parse(ports).unwrap())
        };
        let none = RuleOptions::default;
        assert_eq!(closes_failsafe(&fs, &spec("22/tcp", none())), Some(fs[0]));
        assert_eq!(closes_failsafe(&fs, &spec("1-1024", none())), Some(fs[0]));
        assert_eq!(closes_failsafe(&fs, &spec("22/udp", none())), None);
        assert_eq!(closes_failsafe(&fs, &spec("23/tcp", none())), None);
        assert_eq!(closes_failsafe(&fs, &spec("22/tcp", RuleOptions::new([], true, false))), None);
        let part = RuleOptions::new(["198.18.0.0/15".parse().unwrap()], false, false);
        assert_eq!(closes_failsafe(&fs, &spec("22/tcp", part)), Some(fs[0]));
        let all = RuleOptions::new(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()], false, false);
        assert_eq!(closes_failsafe(&fs, &spec("22/tcp", all)), None);
        let container = RuleSpec::plain(Scope::Container, fs[0]);
        assert_eq!(closes_failsafe(&fs, &container), None);
        let allow = RuleSpec {
            target: Target { selector: Selector::Ports, action: Action::Allow },
            ..spec("22/tcp", none())
        };
        assert_eq!(closes_failsafe(&fs, &allow), None);
        assert_eq!(closes_failsafe(&[], &spec("22/tcp", none())), None);
    }
}
