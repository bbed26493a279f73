//! `[journal]` in the config: where the journal is, how large and old its segments grow,
//! how much of it is kept, and how often it is synced to disk.

use std::{path::PathBuf, time::Duration};

use bytesize::ByteSize;
use serde::Deserialize;

use crate::config::ConfigError;

const DAY: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    pub enabled: bool,
    /// Created (mode 0700) if missing.
    pub dir: PathBuf,
    /// A segment that would grow past this starts a new one ...
    pub segment_size: ByteSize,
    /// ... and so does one older than this.
    #[serde(with = "humantime_serde")]
    pub segment_age: Duration,
    /// The oldest segments are deleted while the journal is larger than this ...
    pub retain_size: ByteSize,
    /// ... and once every record in them is older than this.
    #[serde(with = "humantime_serde")]
    pub retain_age: Duration,
    pub fsync: FsyncPolicy,
    /// Leave file paths out of the journal (they are its only paths).
    pub redact_paths: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After each interval record (and the start and stop records): a crash loses at most
    /// the process and alert records of the interval under way.
    Interval,
    /// Never: the kernel writes back when it likes (about 30 s).
    Never,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/exfil-sensor/journal"),
            segment_size: ByteSize::mib(64),
            segment_age: Duration::from_secs(DAY),
            retain_size: ByteSize::gib(40),
            retain_age: Duration::from_secs(90 * DAY),
            fsync: FsyncPolicy::Interval,
            redact_paths: false,
        }
    }
}

impl JournalConfig {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, value, reason| ConfigError::invalid(path, key, value, reason);
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        if !(ByteSize::mib(1)..=ByteSize::gib(1)).contains(&self.segment_size) {
            return Err(invalid(
                "journal.segment_size",
                self.segment_size.to_string(),
                "must be between 1 MiB and 1 GiB",
            ));
        }
        if self.retain_size.as_u64() < self.segment_size.as_u64().saturating_mul(2) {
            return Err(invalid(
                "journal.retain_size",
                self.retain_size.to_string(),
                "must be at least twice journal.segment_size",
            ));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * DAY)).contains(&self.segment_age) {
            return Err(invalid(
                "journal.segment_age",
                duration(self.segment_age),
                "must be between 1m and 30d",
            ));
        }
        if self.retain_age < self.segment_age {
            return Err(invalid(
                "journal.retain_age",
                duration(self.retain_age),
                "must be at least journal.segment_age",
            ));
        }
        if self.enabled && self.dir.as_os_str().is_empty() {
            return Err(invalid(
                "journal.dir",
                String::new(),
                "must name a directory",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error(toml: &str) -> String {
        Config::parse(toml, "x.toml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn journal_settings_are_read_and_checked_by_key() {
        let c = Config::parse(
            "[journal]\ndir = \"/srv/j\"\nsegment_size = \"8 MiB\"\nfsync = \"never\"\n\
             redact_paths = true\n",
            "x.toml",
        )
        .expect("parses");
        assert_eq!(
            (
                c.journal.dir.to_str(),
                c.journal.segment_size.as_u64(),
                c.journal.fsync,
                c.journal.redact_paths
            ),
            (Some("/srv/j"), 8 << 20, super::FsyncPolicy::Never, true)
        );
        assert_eq!(
            error("[journal]\nsegment_size = \"10 KiB\"\n"),
            "config x.toml: line 2, column 16: journal.segment_size = 10.0 KiB: must be between 1 MiB and 1 GiB"
        );
        assert_eq!(
            error("[journal]\nretain_size = \"100 MiB\"\n"),
            "config x.toml: line 2, column 15: journal.retain_size = 100.0 MiB: must be at least twice journal.segment_size"
        );
        assert_eq!(
            error("[journal]\nsegment_age = \"10s\"\n"),
            "config x.toml: line 2, column 15: journal.segment_age = 10s: must be between 1m and 30d"
        );
        assert_eq!(
            error("[journal]\nretain_age = \"1h\"\n"),
            "config x.toml: line 2, column 14: journal.retain_age = 1h: must be at least journal.segment_age"
        );
        assert_eq!(
            error("[journal]\ndir = \"\"\n"),
            "config x.toml: line 2, column 7: journal.dir = : must name a directory"
        );
        assert!(error("[journal]\nfsync = \"always\"\n").starts_with(
            "config x.toml: line 2, column 9: journal.fsync: unknown variant `always`"
        ),);
    }
}
