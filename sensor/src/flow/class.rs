//! Classes: where a destination is (`loopback`, `internal`, `external`) and what a file holds
//! (`mail_store`, `records`, `secrets`, `other`, or a class the config adds). Detection acts on
//! `external` destinations by default; metrics carry file classes, never paths.

use std::net::IpAddr;

use glob::{MatchOptions, Pattern};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationClass {
    Loopback,
    Internal,
    External,
    /// The `other` row: bytes whose destination was not kept.
    Other,
}

impl DestinationClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Internal => "internal",
            Self::External => "external",
            Self::Other => "other",
        }
    }
}

/// Private and local ranges every host treats as internal: RFC 1918, link-local (RFC 3927,
/// RFC 4291 §2.5.6) and unique-local IPv6 (RFC 4193).
const BUILT_IN_INTERNAL: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// Which destinations are internal: the built-in private ranges plus the config's networks.
#[derive(Debug, Clone)]
pub struct Networks {
    internal: Vec<IpNet>,
}

impl Networks {
    pub fn new(configured: &[IpNet]) -> Self {
        let mut internal: Vec<IpNet> = BUILT_IN_INTERNAL
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect();
        internal.extend_from_slice(configured);
        Self { internal }
    }

    /// `None` is the other row's missing destination.
    pub fn classify(&self, ip: Option<IpAddr>) -> DestinationClass {
        let Some(ip) = ip else {
            return DestinationClass::Other;
        };
        // A dual-stack socket talks to IPv4 peers through IPv4-mapped addresses.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        // 0.0.0.0 and :: as a destination reach this host.
        if ip.is_loopback() || ip.is_unspecified() {
            return DestinationClass::Loopback;
        }
        if self.internal.iter().any(|net| net.contains(&ip)) {
            DestinationClass::Internal
        } else {
            DestinationClass::External
        }
    }
}

impl Default for Networks {
    fn default() -> Self {
        Self::new(&[])
    }
}

/// A class of files, as the config names it, with its path patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClassRule {
    pub name: String,
    pub paths: Vec<String>,
}

/// File classes in match order: the first class with a matching pattern wins.
///
/// Patterns are matched one by one with `glob::Pattern`, a direct matcher with no compiled
/// automata to keep in memory: a path is classified once, when its row is made.
#[derive(Debug, Clone)]
pub struct FileClasses {
    classes: Vec<(String, Vec<Pattern>)>,
}

/// `*` and `?` stay within one path component; `**` crosses them.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A pattern that does not compile, named by its class and position.
#[derive(Debug, thiserror::Error)]
#[error("{class}[{index}] = {pattern:?}: {cause}")]
pub struct PatternError {
    pub class: String,
    pub index: usize,
    pub pattern: String,
    pub cause: glob::PatternError,
}

pub const OTHER_FILE_CLASS: &str = "other";

impl FileClasses {
    /// Pattern rules, each matching a path and everything under it:
    /// - `/var/mail` — that path and below; `*` stays within one path component;
    /// - `~/Maildir` — under any home directory (`/home/*/`, `/root/`);
    /// - `*.pem`, `.ssh` — no leading `/`: at any depth.
    pub fn new(rules: &[FileClassRule]) -> Result<Self, PatternError> {
        let mut classes = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut patterns = Vec::new();
            for (index, pattern) in rule.paths.iter().enumerate() {
                for glob in expand(pattern) {
                    patterns.push(Pattern::new(&glob).map_err(|cause| PatternError {
                        class: rule.name.clone(),
                        index,
                        pattern: pattern.clone(),
                        cause,
                    })?);
                }
            }
            classes.push((rule.name.clone(), patterns));
        }
        Ok(Self { classes })
    }

    /// The class of a path; `other` when no pattern matches or the path is not known yet.
    pub fn classify(&self, path: Option<&str>) -> &str {
        let Some(path) = path else {
            return OTHER_FILE_CLASS;
        };
        self.classes
            .iter()
            .find(|(_, patterns)| patterns.iter().any(|p| p.matches_with(path, MATCH)))
            .map_or(OTHER_FILE_CLASS, |(name, _)| name.as_str())
    }

    /// Every class name, in match order, then `other`: the values the metric's label takes.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(std::iter::once(OTHER_FILE_CLASS))
    }
}

/// The globs one config pattern stands for: the path itself and everything below it.
fn expand(pattern: &str) -> Vec<String> {
    let pattern = pattern.trim_end_matches('/');
    let roots: Vec<String> = if let Some(rest) = pattern.strip_prefix("~/") {
        vec![format!("/home/*/{rest}"), format!("/root/{rest}")]
    } else if pattern.starts_with('/') {
        vec![pattern.to_owned()]
    } else {
        vec![format!("**/{pattern}")]
    };
    roots
        .into_iter()
        .flat_map(|root| [format!("{root}/**"), root])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("test address"))
    }

    #[test]
    fn destinations_are_loopback_internal_or_external() {
        let nets = Networks::new(&["192.0.2.0/24".parse().expect("net")]);
        let class = |text| nets.classify(ip(text));
        assert_eq!(class("127.0.0.1"), DestinationClass::Loopback);
        assert_eq!(class("::1"), DestinationClass::Loopback);
        assert_eq!(class("::ffff:127.0.0.2"), DestinationClass::Loopback);
        assert_eq!(class("0.0.0.0"), DestinationClass::Loopback);
        for internal in [
            "10.1.2.3",
            "172.31.255.1",
            "192.168.0.9",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "192.0.2.7",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(class(internal), DestinationClass::Internal, "{internal}");
        }
        for external in ["198.51.100.2", "172.32.0.1", "8.8.8.8", "2001:db8::2"] {
            assert_eq!(class(external), DestinationClass::External, "{external}");
        }
        assert_eq!(
            Networks::default().classify(ip("192.0.2.7")),
            DestinationClass::External,
            "only configured networks are internal beyond the private ranges"
        );
        assert_eq!(nets.classify(None), DestinationClass::Other);
    }

    fn rules(list: &[(&str, &[&str])]) -> Vec<FileClassRule> {
        list.iter()
            .map(|(name, paths)| FileClassRule {
                name: (*name).to_owned(),
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            })
            .collect()
    }

    #[test]
    fn file_patterns_match_the_path_and_below() {
        let classes = FileClasses::new(&rules(&[
            ("secrets", &["/etc/shadow", "*.pem", ".ssh"]),
            ("mail_store", &["/var/mail", "~/Maildir"]),
            ("records", &["/var/lib/postgresql/"]),
        ]))
        .expect("valid");
        let class = |p| classes.classify(Some(p));
        assert_eq!(class("/var/mail/alice"), "mail_store");
        assert_eq!(class("/var/mail"), "mail_store");
        assert_eq!(
            class("/var/mailbox"),
            "other",
            "a prefix of a name is not a match"
        );
        assert_eq!(class("/home/bob/Maildir/cur/1700.eml"), "mail_store");
        assert_eq!(class("/root/Maildir/new/1"), "mail_store");
        assert_eq!(class("/home/bob/x/Maildir/1"), "other", "~ is one level");
        assert_eq!(class("/var/lib/postgresql/15/main/base/1/2"), "records");
        assert_eq!(class("/etc/shadow"), "secrets");
        assert_eq!(class("/etc/shadow-"), "other");
        assert_eq!(class("/srv/tls/server.pem"), "secrets");
        assert_eq!(class("/home/bob/.ssh/id_ed25519"), "secrets");
        assert_eq!(
            class("/var/mail/alice/.ssh/key"),
            "secrets",
            "first class wins"
        );
        assert_eq!(classes.classify(None), "other");
        assert_eq!(
            classes.names().collect::<Vec<_>>(),
            ["secrets", "mail_store", "records", "other"]
        );
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = FileClasses::new(&rules(&[("records", &["/srv", "/srv/[a"])]))
            .expect_err("unclosed class");
        assert!(
            err.to_string().starts_with("records[1] = \"/srv/[a\": "),
            "{err}"
        );
    }
}
