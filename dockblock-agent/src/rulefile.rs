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
//! ```

use std::ops::Range;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    error::{Error, Result},
    ports::PortSpec,
    rules::{Rule, RuleOptions, RuleSpec, Scope},
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
    ports: Spanned<String>,
    #[serde(default)]
    scope: Option<Spanned<String>>,
    #[serde(default)]
    allow_from: Vec<Spanned<String>>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    log: bool,
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

/// Parses `text` (read from `path`, used in messages) into rule specs.
pub fn parse(path: &str, text: &str) -> Result<Vec<RuleSpec>> {
    check_size(path, text.len())?;
    // A cheap count first, so a file of millions of rules is refused before
    // the TOML parser builds them all (inline tables are counted after).
    let headers = text.lines().filter(|l| l.trim_start().starts_with("[[rule]]")).count();
    if headers > MAX_RULES {
        let why = format!("{headers} rules, more than the {MAX_RULES} any rule table holds");
        return Err(Error::RulesFileTooBig { path: path.to_string(), why });
    }
    let error = |span: Option<Range<usize>>, why: String| Error::RulesFile {
        path: path.to_string(),
        line: span.map_or(1, |s| line_of(text, s.start)),
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
    let mut specs: Vec<(RuleSpec, Range<usize>)> = Vec::new();
    // (scope, lo, hi) -> index in `specs`: duplicates found in linear time.
    let mut seen: std::collections::HashMap<(u32, u16, u16), Vec<usize>> = Default::default();
    for entry in &file.rule {
        let rule = entry.get_ref();
        let ports = PortSpec::parse(rule.ports.get_ref())
            .map_err(|e| error(Some(rule.ports.span()), e.to_string()))?;
        let scope = match &rule.scope {
            None => Scope::Dialed,
            Some(s) => match s.get_ref().as_str() {
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
        let mut allow = Vec::new();
        for value in &rule.allow_from {
            let net = parse_net(value.get_ref()).map_err(|e| error(Some(value.span()), e.to_string()))?;
            allow.push(net);
        }
        let spec = RuleSpec {
            options: RuleOptions::new(allow, rule.dry_run, rule.log),
            ..RuleSpec::plain(scope, ports)
        };
        let same = seen.entry((scope.raw(), ports.lo, ports.hi)).or_default();
        if let Some(&i) = same.iter().find(|&&i| specs[i].0.ports.protos & ports.protos != 0) {
            let why =
                format!("{scope} {ports} is already a rule on line {}", line_of(text, specs[i].1.start));
            return Err(error(Some(entry.span()), why));
        }
        same.push(specs.len());
        specs.push((spec, entry.span()));
    }
    Ok(specs.into_iter().map(|(s, _)| s).collect())
}

/// The rules in the file format, ordered by id.
pub fn format(rules: &[Rule]) -> String {
    let rule = rules
        .iter()
        .map(|r| RuleOut {
            ports: r.ports.to_string(),
            scope: r.scope.to_string(),
            allow_from: r.options.allow_from.iter().map(|n| n.to_string()).collect(),
            dry_run: r.options.dry_run,
            log: r.options.log,
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

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
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
        ];
        let text = format(&rules);
        let specs = parse("x.toml", &text).unwrap();
        assert_eq!(specs, rules.iter().map(Rule::spec).collect::<Vec<_>>(), "{text}");
        assert_eq!(parse("x.toml", &format(&[])).unwrap(), vec![]);
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
        ] {
            let err = parse("rules.toml", text).unwrap_err();
            let Error::RulesFile { line: got, why: ref msg, .. } = err else { panic!("{err}") };
            assert_eq!(got, line, "{text:?}: {msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
            assert!(err.to_string().starts_with(&format!("rules.toml:{line}: ")), "{err}");
        }
    }
}
