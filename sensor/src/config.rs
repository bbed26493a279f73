//! The agent's configuration: TOML, every field defaulted, unknown keys refused.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::flow::{
    class::{FileClassRule, FileClasses, Networks},
    flows::Limits,
};

pub mod reload;

/// The default configuration, embedded in the binary (`exfil-sensor config default`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

pub use self::error::{ConfigError, Location};
use self::error::{parse_message, range};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub flows: FlowsConfig,
    pub networks: NetworksConfig,
    pub files: FilesConfig,
    pub http: HttpConfig,
    pub kernel: KernelConfig,
    pub metrics: MetricsConfig,
    pub detect: crate::detect::DetectConfig,
    /// Where alerts go besides `/api/v1/alerts` and the log.
    pub alerts: crate::sinks::SinksConfig,
    pub journal: crate::journal::JournalConfig,
    pub dns: crate::dns::DnsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The length of one interval record.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    pub max_flows: usize,
    pub max_files: usize,
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworksConfig {
    /// Networks that are internal besides the private ranges (office, backup hosts).
    pub internal: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    pub secrets: Vec<String>,
    pub mail_store: Vec<String>,
    pub records: Vec<String>,
    /// More classes, matched after the three above, in order.
    pub class: Vec<FileClassRule>,
    /// Show each file's path in the journal and the files API as `hash:<hex>`, a keyed
    /// BLAKE3 hash, so that responders can match a file across records without its name
    /// (the class is still computed from the real path).
    pub hash_paths: bool,
    /// The hash's 32-byte key: created (random, mode 0600) when missing and `hash_paths` is
    /// on; refused when others may read it.
    pub hash_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub api_socket: PathBuf,
    /// A TCP listener for the JSON API, off unless set; it requires `api_token_file`, or a
    /// `web_config_file` that requires and verifies client certificates.
    pub api_listen: Option<SocketAddr>,
    /// File holding the bearer token TCP API clients must send (mode 0600 or stricter).
    pub api_token_file: Option<PathBuf>,
    /// TLS, basic auth and headers for the TCP listeners, in the Prometheus
    /// exporter-toolkit's `web-config.yml` format (`run --web.config.file` overrides it).
    pub web_config_file: Option<PathBuf>,
    /// How long a client may take to send a request's headers (and, between requests on a
    /// kept-alive connection, to start the next one) before its connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The most bytes of a request line and headers; more is answered 431.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    pub btf: PathBuf,
    pub flow_map_entries: u32,
    pub file_map_entries: u32,
    pub pin_dir: PathBuf,
    /// Probes not to attach, by their names in `exfil_sensor_probe_attached{probe}`.
    pub disable_probes: Vec<ProbeName>,
}

/// A probe of the sensor's table, by name; an unknown name (a typo) or a probe the sensor
/// cannot count without is refused where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeName(pub &'static str);

impl<'de> Deserialize<'de> for ProbeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let name = String::deserialize(d)?;
        match crate::kernel::probe_required(&name) {
            Some((probe, false)) => Ok(Self(probe)),
            Some((probe, true)) => Err(D::Error::custom(format!(
                "{probe} cannot be disabled: the sensor counts no sent bytes without it"
            ))),
            None => Err(D::Error::custom(format!(
                "no probe {name:?}; the probes are {}",
                crate::kernel::probe_names().join(", ")
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub destinations_per_service: usize,
    #[serde(with = "humantime_serde")]
    pub series_ttl: Duration,
    pub max_services: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            interval: Duration::from_secs(10),
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            max_flows: 100_000,
            max_files: 100_000,
            idle_ttl: Duration::from_secs(600),
        }
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            secrets: strings(&[
                "/etc/shadow",
                "/etc/gshadow",
                "/etc/passwd",
                "/etc/ssh",
                "/etc/ssl/private",
                "*.pem",
                "*.key",
                ".ssh",
            ]),
            mail_store: strings(&[
                "/var/mail",
                "/var/vmail",
                "/var/spool/mail",
                "~/Maildir",
                "~/mail",
            ]),
            records: strings(&["/var/lib/postgresql", "/var/lib/pgsql", "/var/lib/mysql"]),
            class: Vec::new(),
            hash_paths: false,
            hash_key_file: PathBuf::from("/var/lib/exfil-sensor/path-hash.key"),
        }
    }
}

impl FilesConfig {
    /// The classes in match order: secrets, mail_store, records, then the config's own.
    pub fn rules(&self) -> Vec<FileClassRule> {
        let rule = |name: &str, paths: &Vec<String>| FileClassRule {
            name: name.to_owned(),
            paths: paths.clone(),
        };
        let mut rules = vec![
            rule("secrets", &self.secrets),
            rule("mail_store", &self.mail_store),
            rule("records", &self.records),
        ];
        rules.extend(self.class.iter().cloned());
        rules
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9967)),
            api_socket: PathBuf::from("/run/exfil-sensor/api.sock"),
            api_listen: None,
            api_token_file: None,
            web_config_file: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
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
            disable_probes: Vec::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            destinations_per_service: 20,
            series_ttl: Duration::from_secs(900),
            max_services: 500,
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        config.validate(path).map_err(|e| e.located(text))?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub(crate) fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, value, reason| ConfigError::invalid(path, key, value, reason);
        let poll = self.agent.poll_interval;
        if poll < Duration::from_millis(100) || poll > Duration::from_secs(3600) {
            return Err(invalid(
                "agent.poll_interval",
                humantime::format_duration(poll).to_string(),
                range("agent.poll_interval"),
            ));
        }
        if !(1..=1 << 24).contains(&self.kernel.flow_map_entries) {
            return Err(invalid(
                "kernel.flow_map_entries",
                self.kernel.flow_map_entries.to_string(),
                range("kernel.flow_map_entries"),
            ));
        }
        if !(1..=1 << 24).contains(&self.kernel.file_map_entries) {
            return Err(invalid(
                "kernel.file_map_entries",
                self.kernel.file_map_entries.to_string(),
                range("kernel.file_map_entries"),
            ));
        }
        if !(1..=10_000).contains(&self.metrics.destinations_per_service) {
            return Err(invalid(
                "metrics.destinations_per_service",
                self.metrics.destinations_per_service.to_string(),
                range("metrics.destinations_per_service"),
            ));
        }
        if !(1..=100_000).contains(&self.metrics.max_services) {
            return Err(invalid(
                "metrics.max_services",
                self.metrics.max_services.to_string(),
                range("metrics.max_services"),
            ));
        }
        let interval = self.agent.interval;
        if interval < poll || interval > Duration::from_secs(3600) {
            return Err(invalid(
                "agent.interval",
                humantime::format_duration(interval).to_string(),
                range("agent.interval"),
            ));
        }
        for (key, value) in [
            ("flows.max_flows", self.flows.max_flows),
            ("flows.max_files", self.flows.max_files),
        ] {
            if !(1..=10_000_000).contains(&value) {
                return Err(invalid(key, value.to_string(), range(key)));
            }
        }
        if self.flows.idle_ttl < interval || self.flows.idle_ttl > Duration::from_secs(30 * 86_400)
        {
            return Err(invalid(
                "flows.idle_ttl",
                humantime::format_duration(self.flows.idle_ttl).to_string(),
                range("flows.idle_ttl"),
            ));
        }
        let timeout = self.http.header_read_timeout;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
            return Err(invalid(
                "http.header_read_timeout",
                humantime::format_duration(timeout).to_string(),
                "must be between 100ms and 10m",
            ));
        }
        if !(1024..=1 << 20).contains(&self.http.max_header_bytes) {
            return Err(invalid(
                "http.max_header_bytes",
                self.http.max_header_bytes.to_string(),
                "must be between 1024 and 1048576",
            ));
        }
        // Whether the web config verifies client certificates is checked where it is read
        // (`http::web_config`): here only that there is one to read.
        if self.http.api_listen.is_some()
            && self.http.api_token_file.is_none()
            && self.http.web_config_file.is_none()
        {
            return Err(invalid(
                "http.api_listen",
                self.http
                    .api_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                "a TCP JSON API needs http.api_token_file (a bearer token) or an http.web_config_file that requires client certificates",
            ));
        }
        self.validate_patterns(path)?;
        self.file_classes(path)?;
        self.validate_detect(path)?;
        self.journal.validate(path)?;
        self.dns.validate(path)?;
        self.alerts.validate().map_err(|cause| ConfigError::Sinks {
            path: path.to_owned(),
            cause: Box::new(cause),
        })?;
        Ok(())
    }

    /// An empty pattern (`""`, or one of spaces) is a slip that would match every file.
    fn validate_patterns(&self, path: &str) -> Result<(), ConfigError> {
        let f = &self.files;
        let builtin = [
            ("files.secrets", &f.secrets),
            ("files.mail_store", &f.mail_store),
            ("files.records", &f.records),
        ]
        .into_iter()
        .map(|(key, paths)| (key.to_owned(), paths));
        let own = f
            .class
            .iter()
            .enumerate()
            .map(|(i, rule)| (format!("files.class[{i}].paths"), &rule.paths));
        for (key, paths) in builtin.chain(own) {
            if let Some(i) = paths.iter().position(|p| p.trim().is_empty()) {
                return Err(ConfigError::EmptyPattern {
                    path: path.to_owned(),
                    at: Location::default(),
                    key: format!("{key}[{i}]"),
                });
            }
        }
        Ok(())
    }

    fn validate_detect(&self, path: &str) -> Result<(), ConfigError> {
        let d = &self.detect;
        let invalid = |key, value, reason| ConfigError::invalid(path, key, value, reason);
        let positive = [
            ("detect.burst.bytes", d.burst.bytes.as_u64()),
            ("detect.burst.spray_bytes", d.burst.spray_bytes.as_u64()),
            ("detect.lineage.bytes", d.lineage.bytes.as_u64()),
            (
                "detect.new_destination.bytes",
                d.new_destination.bytes.as_u64(),
            ),
            ("detect.slow_leak.min_sigma", d.slow_leak.min_sigma.as_u64()),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "0".into(), range(key)));
            }
        }
        let windows = [
            ("detect.burst.window", d.burst.window),
            ("detect.burst.spray_window", d.burst.spray_window),
            ("detect.lineage.window", d.lineage.window),
            ("detect.lineage.file_window", d.lineage.file_window),
            ("detect.quiet", d.quiet),
        ];
        for (key, value) in windows {
            if value < self.agent.interval {
                return Err(invalid(
                    key,
                    humantime::format_duration(value).to_string(),
                    range(key),
                ));
            }
        }
        let factors = [
            ("detect.lineage.fraction", d.lineage.fraction, 0.0, 1.0),
            ("detect.baseline.sigma", d.baseline.sigma, 0.0, 100.0),
            ("detect.slow_leak.k", d.slow_leak.k, 0.0, 100.0),
            ("detect.slow_leak.h", d.slow_leak.h, 0.0, 1000.0),
        ];
        for (key, value, low, high) in factors {
            if !(value > low && value <= high) {
                return Err(invalid(key, value.to_string(), range(key)));
            }
        }
        for (key, value) in [
            ("detect.baseline.min_days", d.baseline.min_days),
            ("detect.slow_leak.min_days", d.slow_leak.min_days),
        ] {
            if !(1..=28).contains(&value) {
                return Err(invalid(key, value.to_string(), range(key)));
            }
        }
        for (key, value) in [
            ("detect.max_alerts", d.max_alerts),
            ("detect.lineage.max_files", d.lineage.max_files),
            (
                "detect.new_destination.max_per_service",
                d.new_destination.max_per_service,
            ),
        ] {
            if !(1..=10_000_000).contains(&value) {
                return Err(invalid(key, value.to_string(), range(key)));
            }
        }
        for (key, list) in d.name_lists() {
            for (i, suffix) in list.iter().enumerate() {
                if let Err(reason) = crate::dns::suffix::check(suffix) {
                    return Err(ConfigError::NameSuffix {
                        path: path.to_owned(),
                        at: Location::default(),
                        key: format!("{key}[{i}]"),
                        value: suffix.clone(),
                        reason,
                    });
                }
            }
        }
        crate::detect::Detector::new(d, path).map(|_| ())
    }

    /// The file classes, compiled.
    pub fn file_classes(&self, path: &str) -> Result<FileClasses, ConfigError> {
        FileClasses::new(&self.files.rules()).map_err(|cause| ConfigError::Pattern {
            path: path.to_owned(),
            cause: Box::new(cause),
        })
    }

    pub fn networks(&self) -> Networks {
        Networks::new(&self.networks.internal)
    }

    pub fn flow_limits(&self) -> Limits {
        Limits {
            max_rows: self.flows.max_flows,
            idle_ttl: self.flows.idle_ttl,
        }
    }

    pub fn file_limits(&self) -> Limits {
        Limits {
            max_rows: self.flows.max_files,
            idle_ttl: self.flows.idle_ttl,
        }
    }
}

mod error;
mod locate;

#[cfg(test)]
mod tests;
