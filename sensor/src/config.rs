//! The agent's configuration: TOML, every field defaulted, unknown keys refused.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

/// The default configuration, embedded in the binary (`exfil-sensor config default`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    /// toml's message names the line and column and shows the offending text.
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: {key} = {value}: {reason}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub http: HttpConfig,
    pub kernel: KernelConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub api_socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    pub btf: PathBuf,
    pub flow_map_entries: u32,
    pub file_map_entries: u32,
    pub pin_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub destinations_per_service: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9967)),
            api_socket: PathBuf::from("/run/exfil-sensor/api.sock"),
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            flow_map_entries: 65_536,
            file_map_entries: 65_536,
            pin_dir: PathBuf::from("/sys/fs/bpf/exfil-sensor"),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            destinations_per_service: 20,
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}: {}", e.message())
                }
                None => e.message().to_owned(),
            },
        })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, value: String, reason| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            value,
            reason,
        };
        let poll = self.agent.poll_interval;
        if poll < Duration::from_millis(100) || poll > Duration::from_secs(3600) {
            return Err(invalid(
                "agent.poll_interval",
                humantime::format_duration(poll).to_string(),
                "must be between 100ms and 1h",
            ));
        }
        if !(1..=1 << 24).contains(&self.kernel.flow_map_entries) {
            return Err(invalid(
                "kernel.flow_map_entries",
                self.kernel.flow_map_entries.to_string(),
                "must be between 1 and 16777216",
            ));
        }
        if !(1..=1 << 24).contains(&self.kernel.file_map_entries) {
            return Err(invalid(
                "kernel.file_map_entries",
                self.kernel.file_map_entries.to_string(),
                "must be between 1 and 16777216",
            ));
        }
        if !(1..=10_000).contains(&self.metrics.destinations_per_service) {
            return Err(invalid(
                "metrics.destinations_per_service",
                self.metrics.destinations_per_service.to_string(),
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_default() {
        let parsed = Config::parse(DEFAULT_TOML, "default.toml").expect("default parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(
            Config::parse("", "empty.toml").expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named_with_line_and_column() {
        let err = Config::parse(
            "[agent]\npoll_interval = \"2s\"\npol_interval = \"1s\"\n",
            "x.toml",
        )
        .expect_err("unknown key");
        assert_eq!(
            err.to_string(),
            "config x.toml: line 3, column 1: unknown field `pol_interval`, expected `poll_interval`"
        );
    }

    #[test]
    fn absurd_values_are_refused_by_key() {
        let err = Config::parse("[agent]\npoll_interval = \"0s\"\n", "x.toml").expect_err("zero");
        assert_eq!(
            err.to_string(),
            "config x.toml: agent.poll_interval = 0s: must be between 100ms and 1h"
        );
        let err =
            Config::parse("[kernel]\nflow_map_entries = 0\n", "x.toml").expect_err("zero map");
        assert_eq!(
            err.to_string(),
            "config x.toml: kernel.flow_map_entries = 0: must be between 1 and 16777216"
        );
        let err = Config::parse("[http]\nlisten = \"nowhere\"\n", "x.toml").expect_err("addr");
        assert_eq!(
            err.to_string(),
            "config x.toml: line 2, column 10: invalid socket address syntax"
        );
    }

    #[test]
    fn values_are_read() {
        let c = Config::parse(
            "[agent]\npoll_interval = \"250ms\"\n[http]\nlisten = \"127.0.0.1:19967\"\n",
            "x.toml",
        )
        .expect("parses");
        assert_eq!(c.agent.poll_interval, Duration::from_millis(250));
        assert_eq!(c.http.listen, "127.0.0.1:19967".parse().expect("addr"));
    }
}
