//! `[dns]` in the config: whether destinations are named from DNS answers, and how long and
//! how many names are kept.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Watch DNS answers (the `cgroup:dns_ingress` program) and name destinations by them.
    pub enabled: bool,
    /// How long a name stays with its address after the answer's TTL ran out: a connection
    /// made while the answer was fresh may run for hours.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// At most this many addresses are named; beyond it the least recently answered go.
    pub max_addresses: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            grace: Duration::from_secs(3600),
            max_addresses: 65_536,
        }
    }
}

impl DnsConfig {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, value, reason| ConfigError::invalid(path, key, value, reason);
        if self.grace > Duration::from_secs(7 * 86_400) {
            return Err(invalid(
                "dns.grace",
                humantime::format_duration(self.grace).to_string(),
                "must be at most 7d",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_addresses) {
            return Err(invalid(
                "dns.max_addresses",
                self.max_addresses.to_string(),
                "must be between 1 and 10000000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_and_bounds() {
        let config = Config::parse("", "c.toml").expect("empty");
        assert!(config.dns.enabled);
        assert_eq!(config.dns.grace.as_secs(), 3600);
        assert_eq!(config.dns.max_addresses, 65_536);
        let off = Config::parse("[dns]\nenabled = false\n", "c.toml").expect("off");
        assert!(!off.dns.enabled);
        let err = Config::parse("[dns]\nmax_addresses = 0\n", "c.toml")
            .expect_err("zero")
            .to_string();
        assert_eq!(
            err,
            "config c.toml: line 2, column 17: dns.max_addresses = 0: must be between 1 and 10000000"
        );
        let err = Config::parse("[dns]\ngrace = \"8d\"\n", "c.toml")
            .expect_err("long")
            .to_string();
        assert_eq!(
            err,
            "config c.toml: line 2, column 9: dns.grace = 8days: must be at most 7d"
        );
    }
}
