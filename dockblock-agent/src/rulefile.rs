//! Rule files (TOML), read by `apply` and written by `export`, so that
//! `export | apply` changes nothing. Every error names its line.
//!
//! ```toml
//! [[rule]]
//! ports = "3306/tcp"              # Docker syntax, as `block` takes it
//! scope = "dialed"                # or "container" (default "dialed")
//! allow_from = ["203.0.113.0/24"] # optional
//! dry_run = true                  # optional, default false
//! log = true                      # optional, default false
//! force = true                    # optional, default false: may close a
//!                                 # failsafe port (config `failsafe`)
//! on = ["eth1"]                   # optional: only packets in on these
//! to = ["198.18.160.1"]           # optional: only to these host addresses
//!
//! [[rule]]                        # a rule that names containers:
//! ports = "3306/tcp"              # container ports (none: every port)
//! container = "db"                # or label = "k=v" / "k", or
//!                                 # compose_project = "p" (+ compose_service)
//! action = "allow"                # optional: opens what the policy closes
//! from_containers = true          # optional: judge other containers too
//!
//! [[rule]]
//! policy = "published-deny"       # `policy published deny`
//! ```
//!
//! Rules the engine state makes (containers' own labels, derived host-port
//! rules) are never written nor read: the daemon makes them again.

use std::ops::Range;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    error::{Error, Result},
    line_index::LineIndex,
    ports::PortSpec,
    rules::{Rule, RuleOptions, RuleSpec, Scope},
    scoping::Scoping,
    target::{too_wide, Action, Selector, Target, MAX_RANGE},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default)]
    rule: Vec<Spanned<RuleIn>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleIn {
    #[serde(default)]
    ports: Option<Spanned<String>>,
    #[serde(default)]
    scope: Option<Spanned<String>>,
    #[serde(default)]
    allow_from: Vec<Spanned<String>>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    log: bool,
    #[serde(default)]
    container: Option<Spanned<String>>,
    #[serde(default)]
    label: Option<Spanned<String>>,
    #[serde(default)]
    compose_project: Option<Spanned<String>>,
    #[serde(default)]
    compose_service: Option<Spanned<String>>,
    #[serde(default)]
    action: Option<Spanned<String>>,
    #[serde(default)]
    from_containers: bool,
    #[serde(default)]
    policy: Option<Spanned<String>>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    on: Vec<Spanned<String>>,
    #[serde(default)]
    to: Vec<Spanned<String>>,
}

#[derive(Serialize)]
struct FileOut {
    rule: Vec<RuleOut>,
}

#[derive(Serialize)]
struct RuleOut {
    ports: String,
    scope: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_from: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    log: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compose_project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compose_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    from_containers: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    on: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to: Vec<String>,
}

/// Largest rules file `apply` reads: 64 MiB, room for a million one-line
/// rules with short allow-lists; a larger input is refused unread.
pub const MAX_BYTES: usize = 64 << 20;
/// Most rules a file may hold: the largest `--max-rules`.
pub const MAX_RULES: usize = 1_000_000;
/// Most allow-list entries over all rules: the largest `--max-allow`.
pub const MAX_ALLOW: usize = 1_000_000;

/// Refuses a file of `len` bytes over [`MAX_BYTES`].
pub fn check_size(path: &str, len: usize) -> Result<()> {
    if len > MAX_BYTES {
        let why = format!("larger than {} MiB; split the rule set or use ranges", MAX_BYTES >> 20);
        return Err(Error::RulesFileTooBig { path: path.to_string(), why });
    }
    Ok(())
}

/// One rule of a file, with what only `apply` needs: `force = true` (it
/// may close a failsafe port) and its line, for the refusal.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub spec: RuleSpec,
    pub force: bool,
    pub line: usize,
}

/// Parses `text` (read from `path`, used in messages) into rule specs.
pub fn parse(path: &str, text: &str) -> Result<Vec<RuleSpec>> {
    Ok(parse_entries(path, text)?.into_iter().map(|e| e.spec).collect())
}

/// [`parse`], keeping each rule's `force` and line.
pub fn parse_entries(path: &str, text: &str) -> Result<Vec<Entry>> {
    check_size(path, text.len())?;
    // A cheap count first, so a file of millions of rules is refused before
    // the TOML parser builds them all (inline tables are counted after).
    let headers = text.lines().filter(|l| l.trim_start().starts_with("[[rule]]")).count();
    if headers > MAX_RULES {
        let why = format!("{headers} rules, more than the {MAX_RULES} any rule table holds");
        return Err(Error::RulesFileTooBig { path: path.to_string(), why });
    }
    let lines = LineIndex::new(text);
    let error = |span: Option<Range<usize>>, why: String| Error::RulesFile {
        path: path.to_string(),
        line: span.map_or(1, |s| lines.line(s.start)),
        why,
    };
    let file: FileIn = toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;
    if file.rule.len() > MAX_RULES {
        let why = format!("{} rules, more than the {MAX_RULES} any rule table holds", file.rule.len());
        return Err(Error::RulesFileTooBig { path: path.to_string(), why });
    }
    let allow: usize = file.rule.iter().map(|r| r.get_ref().allow_from.len()).sum();
    if allow > MAX_ALLOW {
        let why = format!("{allow} allow_from entries, more than the {MAX_ALLOW} any allow table holds");
        return Err(Error::RulesFileTooBig { path: path.to_string(), why });
    }
    let mut specs: Vec<(RuleSpec, Range<usize>, bool)> = Vec::new();
    // (target, scope, lo, hi) -> indexes in `specs`: duplicates found in
    // linear time.
    let mut seen: std::collections::HashMap<(Target, Scoping, u32, u16, u16), Vec<usize>> =
        Default::default();
    for entry in &file.rule {
        let rule = entry.get_ref();
        let target = target_of(rule).map_err(|(span, why)| error(Some(span.unwrap_or(entry.span())), why))?;
        let ports = match &rule.ports {
            Some(p) => PortSpec::parse(p.get_ref()).map_err(|e| error(Some(p.span()), e.to_string()))?,
            None if target.selector != Selector::Ports => PortSpec::EVERY,
            None => return Err(error(Some(entry.span()), "missing field `ports`".into())),
        };
        // Rules that name containers are about container ports.
        let docker = target.selector != Selector::Ports;
        if docker && too_wide(&ports) {
            let why = format!(
                "{ports} covers {} ports; a rule that names containers takes at most {MAX_RANGE}, or every port",
                ports.port_count()
            );
            return Err(error(rule.ports.as_ref().map(|p| p.span()), why));
        }
        let scope = match &rule.scope {
            None if docker => Scope::Container,
            None => Scope::Dialed,
            Some(s) => match s.get_ref().as_str() {
                "dialed" if docker => {
                    return Err(error(
                        Some(s.span()),
                        "a rule that names containers is about container ports: scope must be container"
                            .into(),
                    ))
                }
                "dialed" => Scope::Dialed,
                "container" => Scope::Container,
                other => {
                    return Err(error(
                        Some(s.span()),
                        format!("scope `{other}`: expected dialed or container"),
                    ))
                }
            },
        };
        if rule.from_containers && !docker {
            let why = "from_containers needs container, label or compose_project".to_string();
            return Err(error(Some(entry.span()), why));
        }
        let mut allow = Vec::new();
        for value in &rule.allow_from {
            let net = parse_net(value.get_ref()).map_err(|e| error(Some(value.span()), e.to_string()))?;
            allow.push(net);
        }
        // Syntax only: a file may name an interface that comes up later.
        for value in &rule.on {
            Scoping::parse(std::slice::from_ref(value.get_ref()), &[])
                .map_err(|e| error(Some(value.span()), e.to_string()))?;
        }
        for value in &rule.to {
            Scoping::parse(&[], std::slice::from_ref(value.get_ref()))
                .map_err(|e| error(Some(value.span()), e.to_string()))?;
        }
        if (!rule.on.is_empty() || !rule.to.is_empty()) && target.action == Action::Allow {
            let why = "an allow rule is not scoped (on, to): scope the blocks instead".to_string();
            return Err(error(Some(entry.span()), why));
        }
        let texts = |v: &[Spanned<String>]| v.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>();
        let scoping = Scoping::parse(&texts(&rule.on), &texts(&rule.to))?;
        let options = RuleOptions::new(allow, rule.dry_run, rule.log)
            .with_from_containers(rule.from_containers)
            .with_scoping(scoping.clone());
        let spec = RuleSpec { options, target: target.clone(), ..RuleSpec::plain(scope, ports) };
        let same = seen.entry((target, scoping, scope.raw(), ports.lo, ports.hi)).or_default();
        if let Some(&i) = same.iter().find(|&&i| specs[i].0.ports.protos & ports.protos != 0) {
            let why = format!("{scope} {ports} is already a rule on line {}", lines.line(specs[i].1.start));
            return Err(error(Some(entry.span()), why));
        }
        same.push(specs.len());
        specs.push((spec, entry.span(), rule.force));
    }
    Ok(specs
        .into_iter()
        .map(|(spec, span, force)| Entry { spec, force, line: lines.line(span.start) })
        .collect())
}

/// The target a file entry names; the span of the bad key and why not.
fn target_of(rule: &RuleIn) -> std::result::Result<Target, (Option<Range<usize>>, String)> {
    let given: Vec<&Spanned<String>> =
        [&rule.container, &rule.label, &rule.compose_project, &rule.policy].into_iter().flatten().collect();
    if given.len() > 1 {
        let why = "give one of container, label, compose_project, policy".to_string();
        return Err((Some(given[1].span()), why));
    }
    let value = |s: &Spanned<String>| s.get_ref().clone();
    let selector = if let Some(name) = &rule.container {
        Selector::Container { name: value(name) }
    } else if let Some(label) = &rule.label {
        match label.get_ref().split_once('=') {
            Some((k, v)) => Selector::Label { key: k.into(), value: Some(v.into()) },
            None => Selector::Label { key: value(label), value: None },
        }
    } else if let Some(project) = &rule.compose_project {
        Selector::Compose { project: value(project), service: rule.compose_service.as_ref().map(value) }
    } else if let Some(policy) = &rule.policy {
        if policy.get_ref() != POLICY_PUBLISHED_DENY {
            return Err((
                Some(policy.span()),
                format!("policy `{}`: expected published-deny", policy.get_ref()),
            ));
        }
        Selector::PublishedPolicy
    } else {
        Selector::Ports
    };
    if let (Some(service), false) = (&rule.compose_service, matches!(selector, Selector::Compose { .. })) {
        return Err((Some(service.span()), "compose_service needs compose_project".into()));
    }
    let span = given.first().map(|s| s.span());
    selector.validate().map_err(|e| (span.clone(), e.to_string()))?;
    let action = match rule.action.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
        None | Some(("block", _)) => Action::Block,
        Some(("allow", _)) if selector != Selector::PublishedPolicy => Action::Allow,
        Some((other, span)) => {
            return Err((Some(span), format!("action `{other}`: expected block or allow (not on a policy)")))
        }
    };
    Ok(Target { selector, action })
}

const POLICY_PUBLISHED_DENY: &str = "published-deny";

/// The user rules in the file format, ordered by id (rules the engine
/// state made are left out: they are made again).
pub fn format(rules: &[Rule]) -> String {
    let rule = rules
        .iter()
        .filter(|r| r.is_user())
        .map(|r| {
            let mut out = RuleOut {
                ports: r.ports.to_string(),
                scope: r.scope.to_string(),
                allow_from: r.options.allow_from.iter().map(|n| n.to_string()).collect(),
                dry_run: r.options.dry_run,
                log: r.options.log,
                container: None,
                label: None,
                compose_project: None,
                compose_service: None,
                action: (r.target.action == Action::Allow).then_some("allow"),
                from_containers: r.options.from_containers,
                policy: None,
                on: r.options.scoping.on.clone(),
                to: r.options.scoping.to.iter().map(|a| a.to_string()).collect(),
            };
            match &r.target.selector {
                Selector::Container { name } => out.container = Some(name.clone()),
                Selector::Label { key, value: Some(v) } => out.label = Some(format!("{key}={v}")),
                Selector::Label { key, value: None } => out.label = Some(key.clone()),
                Selector::Compose { project, service } => {
                    out.compose_project = Some(project.clone());
                    out.compose_service = service.clone();
                }
                Selector::PublishedPolicy => out.policy = Some(POLICY_PUBLISHED_DENY),
                Selector::Ports | Selector::OwnLabels { .. } | Selector::Derived { .. } => {}
            }
            out
        })
        .collect();
    let body = toml::to_string(&FileOut { rule }).expect("plain strings and bools serialize");
    format!("# dockblock rules: `dockblock-agent apply FILE` makes them the whole rule set.\n\n{body}")
}

/// An `--allow-from` value: a network, or a bare address (a host).
pub fn parse_net(value: &str) -> Result<IpNet> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| Error::BadCidr { value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: u32, spec: &str, scope: Scope, options: RuleOptions) -> Rule {
        Rule::from_spec(id, RuleSpec { options, ..RuleSpec::plain(scope, PortSpec::parse(spec).unwrap()) })
    }

    #[test]
    fn export_then_parse_round_trips() {
        let rules = vec![
            rule(
                1,
                "3306/tcp",
                Scope::Dialed,
                RuleOptions::new(["203.0.113.0/24".parse().unwrap()], false, true),
            ),
            rule(2, "80", Scope::Container, RuleOptions::new([], true, false)),
            rule(3, "30000-30010/udp", Scope::Dialed, RuleOptions::default()),
            rule(
                4,
                "30000-30010/udp",
                Scope::Dialed,
                RuleOptions::default().with_scoping(
                    Scoping::parse(&["eth1".into()], &["198.18.160.1".into(), "2001:db8::1".into()]).unwrap(),
                ),
            ),
        ];
        let text = format(&rules);
        let specs = parse("x.toml", &text).unwrap();
        assert_eq!(specs, rules.iter().map(Rule::spec).collect::<Vec<_>>(), "{text}");
        assert_eq!(parse("x.toml", &format(&[])).unwrap(), vec![]);
    }

    #[test]
    fn force_is_kept_with_the_line() {
        let text = "[[rule]]\nports = \"80/tcp\"\n\n[[rule]]\nports = \"22/tcp\"\nforce = true\n";
        let entries = parse_entries("r.toml", text).unwrap();
        assert_eq!(entries.iter().map(|e| (e.force, e.line)).collect::<Vec<_>>(), [(false, 1), (true, 4)]);
        assert_eq!(parse("r.toml", text).unwrap(), entries.into_iter().map(|e| e.spec).collect::<Vec<_>>());
    }

    #[test]
    fn defaults_and_bare_addresses() {
        let specs =
            parse("x.toml", "[[rule]]\nports = \"22/tcp\"\nallow_from = [\"198.18.0.2\", \"2001:db8::1\"]\n")
                .unwrap();
        assert_eq!(specs[0].scope, Scope::Dialed);
        let shown: Vec<String> = specs[0].options.allow_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["198.18.0.2/32", "2001:db8::1/128"]);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, why) in [
            ("[[rule]]\nports = \"22/tcp\"\n\n[[rule]]\nports = \"0/tcp\"\n", 5, "1 to 65535"),
            ("[[rule]]\nports = \"22/tcp\"\nscope = \"outside\"\n", 3, "expected dialed or container"),
            ("[[rule]]\nports = \"22/tcp\"\nallow_from = [\"10.0.0.0/33\"]\n", 3, "invalid --allow-from"),
            ("[[rule]]\nports = \"22/tcp\"\nlgo = true\n", 3, "unknown field"),
            ("[[rule]]\nports = 22\n", 2, "invalid type"),
            ("[[rule]\nports = \"22\"\n", 1, ""),
            ("[[rule]]\nports = \"22/tcp\"\n[[rule]]\nports = \"22\"\n", 3, "already a rule on line 1"),
            ("[[rule]]\nports = \"22/tcp\"\nto = [\"198.18.160.0/24\"]\n", 3, "not an IPv4 or IPv6 address"),
            ("[[rule]]\nports = \"22/tcp\"\non = [\"a/b\"]\n", 3, "not an interface name"),
        ] {
            let err = parse("rules.toml", text).unwrap_err();
            let Error::RulesFile { line: got, why: ref msg, .. } = err else { panic!("{err}") };
            assert_eq!(got, line, "{text:?}: {msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
            assert!(err.to_string().starts_with(&format!("rules.toml:{line}: ")), "{err}");
        }
    }

    #[test]
    fn targets_round_trip_and_engine_made_rules_are_left_out() {
        let t = |selector, action| Target { selector, action };
        let rule = |id, ports: &str, target: Target, options: RuleOptions| Rule {
            target,
            ..rule(id, ports, Scope::Container, options)
        };
        let rules = vec![
            rule(
                1,
                "3306/tcp",
                t(Selector::Container { name: "db".into() }, Action::Block),
                RuleOptions::new([], false, true).with_from_containers(true),
            ),
            rule(
                2,
                "1-65535",
                t(Selector::Label { key: "tier".into(), value: Some("web".into()) }, Action::Block),
                RuleOptions::default(),
            ),
            rule(
                3,
                "80/tcp",
                t(Selector::Label { key: "public".into(), value: None }, Action::Allow),
                RuleOptions::new(["203.0.113.0/24".parse().unwrap()], false, false),
            ),
            rule(
                4,
                "5432/tcp",
                t(Selector::Compose { project: "shop".into(), service: Some("pg".into()) }, Action::Block),
                RuleOptions::default(),
            ),
            rule(
                5,
                "6379/tcp",
                t(Selector::Compose { project: "shop".into(), service: None }, Action::Block),
                RuleOptions::default(),
            ),
            rule(6, "1-65535", t(Selector::PublishedPolicy, Action::Block), RuleOptions::default()),
            Rule {
                scope: Scope::Dialed,
                ..rule(7, "8443/tcp", t(Selector::Ports, Action::Allow), RuleOptions::default())
            },
            rule(
                8,
                "80/tcp",
                t(Selector::OwnLabels { container: "ab".repeat(32) }, Action::Block),
                RuleOptions::default(),
            ),
            Rule {
                scope: Scope::Dialed,
                ..rule(
                    9,
                    "13306/tcp",
                    t(Selector::Derived { parent: 1 }, Action::Block),
                    RuleOptions::default(),
                )
            },
        ];
        let text = format(&rules);
        assert!(
            text.contains("container = \"db\"") && text.contains("policy = \"published-deny\""),
            "{text}"
        );
        assert!(
            !text.contains("13306") && !text.contains("abab"),
            "engine-made rules are not exported: {text}"
        );
        let specs = parse("x.toml", &text).unwrap();
        assert_eq!(specs, rules[..7].iter().map(Rule::spec).collect::<Vec<_>>(), "{text}");
        // Written by hand: no ports on a Docker rule is every port.
        let specs =
            parse("x.toml", "[[rule]]\ncontainer = \"db\"\n[[rule]]\npolicy = \"published-deny\"\n").unwrap();
        assert_eq!(specs[0].ports, PortSpec::EVERY);
        assert_eq!(specs[0].scope, Scope::Container);
        assert_eq!(specs[1], rules[5].spec());
    }

    #[test]
    fn bad_targets_name_the_line() {
        for (text, line, why) in [
            ("[[rule]]\nports = \"80/tcp\"\ncontainer = \"-x\"\n", 3, "container name `-x`"),
            ("[[rule]]\nports = \"80/tcp\"\ncontainer = \"a\"\nlabel = \"b\"\n", 4, "give one of"),
            ("[[rule]]\nports = \"80/tcp\"\nlabel = \"=v\"\n", 3, "label key"),
            ("[[rule]]\nports = \"80/tcp\"\ncompose_service = \"s\"\n", 3, "needs compose_project"),
            ("[[rule]]\nports = \"1-2000/tcp\"\ncontainer = \"a\"\n", 2, "at most 1024"),
            ("[[rule]]\nports = \"80/tcp\"\ncontainer = \"a\"\nscope = \"dialed\"\n", 4, "container ports"),
            ("[[rule]]\nports = \"80/tcp\"\nfrom_containers = true\n", 1, "from_containers needs"),
            ("[[rule]]\npolicy = \"published-allow\"\n", 2, "expected published-deny"),
            ("[[rule]]\ncontainer = \"a\"\naction = \"open\"\n", 3, "action `open`"),
            ("[[rule]]\nscope = \"dialed\"\n", 1, "missing field `ports`"),
            (
                "[[rule]]\ncontainer = \"a\"\nports = \"80/tcp\"\n[[rule]]\ncontainer = \"a\"\nports = \"80\"\n",
                4,
                "already a rule on line 1",
            ),
        ] {
            let err = parse("r.toml", text).unwrap_err();
            let Error::RulesFile { line: got, why: ref msg, .. } = err else { panic!("{err}") };
            assert_eq!(got, line, "{text:?}: {msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
        }
    }
}
