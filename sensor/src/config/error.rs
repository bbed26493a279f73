//! Config errors, and where in the text each refused value is: the line and column, the key,
//! and what the key allows.

use thiserror::Error;

use super::locate;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    /// toml's message names the line and column and shows the offending text.
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: {at}{key} = {value}: {reason}")]
    Invalid {
        path: String,
        /// Filled in by [`Config::parse`] from the text.
        at: Location,
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("config {path}: detect.profile {profile:?}: {message}")]
    Profile {
        path: String,
        profile: String,
        message: String,
    },
    #[error("config {path}: {cause}")]
    Sinks {
        path: String,
        cause: Box<crate::sinks::SinkError>,
    },
    /// A DNS name suffix of an allow or deny list that is not one.
    #[error("config {path}: {at}{key} = {value:?}: {reason}")]
    NameSuffix {
        path: String,
        at: Location,
        /// `detect.profile[0].allow_names[2]`.
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("config {path}: {at}{key} = \"\": an empty pattern would match every file; remove it")]
    EmptyPattern {
        path: String,
        at: Location,
        key: String,
    },
    #[error("config {path}: files.{cause}")]
    Pattern {
        path: String,
        cause: Box<crate::flow::class::PatternError>,
    },
}

/// Where a refused value is in the text: `line 2, column 20: `, or nothing (line 0) when the
/// text does not set the key (a default that conflicts with a set value). u32s: it rides in
/// every `ConfigError`, which must stay small.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    line: u32,
    column: u32,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => Ok(()),
            line => write!(f, "line {line}, column {}: ", self.column),
        }
    }
}

impl ConfigError {
    /// `key = value` of the file at `path` refused for `reason`; [`Config::parse`] then names
    /// its line and column.
    pub(crate) fn invalid(
        path: &str,
        key: &'static str,
        value: String,
        reason: &'static str,
    ) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            at: Location::default(),
            key,
            value,
            reason,
        }
    }

    /// Names the line and column of the refused value, found in `text` by its key.
    pub(super) fn located(mut self, text: &str) -> Self {
        let find = |key: &str| {
            locate::value_span(text, key).map_or_else(Location::default, |span| {
                let (line, column) = locate::line_column(text, span.start);
                Location {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    column: u32::try_from(column).unwrap_or(u32::MAX),
                }
            })
        };
        match &mut self {
            Self::Invalid { at, key, .. } => *at = find(key),
            Self::EmptyPattern { at, key, .. } => *at = find(key),
            Self::NameSuffix { at, key, .. } => *at = find(key),
            _ => {}
        }
        self
    }
}

/// The allowed range of each bounded key, as validation words it; a value of the wrong type
/// there (`-5` for a count) gets it too.
const RANGES: &[(&str, &str)] = &[
    ("agent.poll_interval", "must be between 100ms and 1h"),
    (
        "agent.interval",
        "must be between agent.poll_interval and 1h",
    ),
    ("kernel.flow_map_entries", "must be between 1 and 16777216"),
    ("kernel.file_map_entries", "must be between 1 and 16777216"),
    (
        "metrics.destinations_per_service",
        "must be between 1 and 10000",
    ),
    ("metrics.max_services", "must be between 1 and 100000"),
    ("flows.max_flows", "must be between 1 and 10000000"),
    ("flows.max_files", "must be between 1 and 10000000"),
    ("flows.idle_ttl", "must be between agent.interval and 30d"),
    ("detect.burst.bytes", "must be more than 0 bytes"),
    ("detect.burst.spray_bytes", "must be more than 0 bytes"),
    ("detect.lineage.bytes", "must be more than 0 bytes"),
    ("detect.new_destination.bytes", "must be more than 0 bytes"),
    ("detect.slow_leak.min_sigma", "must be more than 0 bytes"),
    ("detect.burst.window", "must be at least agent.interval"),
    (
        "detect.burst.spray_window",
        "must be at least agent.interval",
    ),
    ("detect.lineage.window", "must be at least agent.interval"),
    (
        "detect.lineage.file_window",
        "must be at least agent.interval",
    ),
    ("detect.quiet", "must be at least agent.interval"),
    ("detect.lineage.fraction", "must be above 0 and at most 1"),
    ("detect.baseline.sigma", "must be above 0 and at most 100"),
    ("detect.slow_leak.k", "must be above 0 and at most 100"),
    ("detect.slow_leak.h", "must be above 0 and at most 1000"),
    ("detect.baseline.min_days", "must be between 1 and 28"),
    ("detect.slow_leak.min_days", "must be between 1 and 28"),
    ("detect.max_alerts", "must be between 1 and 10000000"),
    ("detect.lineage.max_files", "must be between 1 and 10000000"),
    (
        "detect.new_destination.max_per_service",
        "must be between 1 and 10000000",
    ),
];

pub(super) fn range(key: &str) -> &'static str {
    RANGES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("out of range", |(_, r)| r)
}

/// toml's message with the line and column, and for a value of the wrong type the key it is
/// under: `line 2, column 10: http.listen: invalid socket address syntax`. A negative or huge
/// integer for a bounded key reads like validation's refusal: `line 2, column 20:
/// kernel.flow_map_entries = -5: must be between 1 and 16777216` (serde's words for it,
/// "expected u32" or bytesize's "expected integer overflow", do not say what is allowed).
pub(super) fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(span) = e.span() else {
        return message.to_owned();
    };
    let (line, column) = locate::line_column(text, span.start);
    let at = format!("line {line}, column {column}");
    match locate::key_at(text, span.start) {
        // An unknown key's message names it already.
        Some(place) if !place.on_key => {
            let range = RANGES.iter().find(|(k, _)| *k == place.key).map(|r| r.1);
            let value = text.get(span).unwrap_or_default().trim();
            match range {
                Some(range) if message.contains("integer `") => {
                    format!("{at}: {} = {value}: {range}", place.key)
                }
                Some(range) => format!("{at}: {}: {message} ({range})", place.key),
                None => format!("{at}: {}: {message}", place.key),
            }
        }
        // toml does not say which key; the span is it.
        _ if message == "duplicate key" => {
            let key = text.get(span).unwrap_or_default().trim();
            format!("{at}: duplicate key `{key}`")
        }
        _ => format!("{at}: {message}"),
    }
}
