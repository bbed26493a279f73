//! `[alerts]` in the config: which sinks are on and how they deliver. Every sink is off
//! unless configured; a network sink needs its `url`, the rest is defaulted.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{SinkError, alertmanager, post, webhook};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Append one JSON object per raised and per resolved alert to this file (created mode
    /// 0600, its directory 0700), e.g. `/var/log/exfil-sensor/alerts.jsonl`. Off when unset.
    pub json_lines: Option<PathBuf>,
    pub alertmanager: Option<AlertmanagerConfig>,
    pub webhook: Option<WebhookConfig>,
}

/// Alertmanager's v2 API: the firing alerts are posted on every change and re-sent every
/// `resend`, the way Prometheus does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The base URL, e.g. `http://127.0.0.1:9093`; alerts go to `{url}/api/v2/alerts`.
    pub url: String,
    /// How often every firing alert is posted again. Alertmanager resolves an alert it has
    /// not heard of for 4 × this (each post says so in `endsAt`).
    #[serde(
        with = "humantime_serde",
        default = "AlertmanagerConfig::default_resend"
    )]
    pub resend: Duration,
    /// One post, connect to answer.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// At most this many alerts with a change not yet delivered; more are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The alerts' `generatorURL`: where a responder finds more, e.g. a dashboard.
    #[serde(default)]
    pub generator_url: Option<String>,
}

/// A JSON POST of each alert event, signed with HMAC-SHA256 when a secret is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// The HMAC key, the file's contents less trailing whitespace (mode 0600 or stricter,
    /// not empty). Unset: requests are not signed.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// One attempt, connect to answer.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// At most this many events waiting or being delivered; more are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Retries after a failed attempt (connection error, timeout, non-2xx answer), waiting
    /// 1s, 2s, 4s … up to `max_backoff` between them; then the event is dropped.
    #[serde(default = "WebhookConfig::default_max_retries")]
    pub max_retries: u32,
    #[serde(
        with = "humantime_serde",
        default = "WebhookConfig::default_max_backoff"
    )]
    pub max_backoff: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_queue() -> usize {
    1000
}

impl AlertmanagerConfig {
    /// `url` with every other key defaulted.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            resend: Self::default_resend(),
            timeout: default_timeout(),
            queue: default_queue(),
            generator_url: None,
        }
    }

    fn default_resend() -> Duration {
        Duration::from_secs(60)
    }

    pub(super) fn target(&self, instance: &str) -> Result<alertmanager::Target, SinkError> {
        let base = post::http_url("alertmanager.url", &self.url)?;
        let url = post::http_url(
            "alertmanager.url",
            &format!("{}/api/v2/alerts", base.to_string().trim_end_matches('/')),
        )?;
        if let Some(link) = &self.generator_url {
            post::absolute_url("alertmanager.generator_url", link)?;
        }
        between("alertmanager.resend", self.resend, 100, 3_600_000)?;
        between("alertmanager.timeout", self.timeout, 100, 600_000)?;
        queue_size("alertmanager.queue", self.queue)?;
        Ok(alertmanager::Target {
            url,
            instance: instance.to_owned(),
            generator_url: self.generator_url.clone(),
            resend: self.resend,
            timeout: self.timeout,
            queue: self.queue,
        })
    }
}

impl WebhookConfig {
    /// `url` with every other key defaulted.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret_file: None,
            timeout: default_timeout(),
            queue: default_queue(),
            max_retries: Self::default_max_retries(),
            max_backoff: Self::default_max_backoff(),
        }
    }

    fn default_max_retries() -> u32 {
        8
    }

    fn default_max_backoff() -> Duration {
        Duration::from_secs(60)
    }

    pub(super) fn target(&self) -> Result<webhook::Target, SinkError> {
        let url = post::http_url("webhook.url", &self.url)?;
        let signer = self
            .secret_file
            .as_deref()
            .map(|path| webhook::Signer::new(path, &read_secret(path)?))
            .transpose()?;
        between("webhook.timeout", self.timeout, 100, 600_000)?;
        between("webhook.max_backoff", self.max_backoff, 1, 86_400_000)?;
        queue_size("webhook.queue", self.queue)?;
        Ok(webhook::Target {
            url,
            signer,
            timeout: self.timeout,
            queue: self.queue,
            max_retries: self.max_retries,
            max_backoff: self.max_backoff,
        })
    }
}

impl SinksConfig {
    /// What [`super::Sinks::start`] checks before it starts anything — URLs, durations, queue
    /// sizes, the webhook's secret file — for `check-config`.
    pub fn validate(&self) -> Result<(), SinkError> {
        if let Some(am) = &self.alertmanager {
            am.target("")?;
        }
        if let Some(hook) = &self.webhook {
            hook.target()?;
        }
        if let Some(path) = &self.json_lines
            && (path.as_os_str().is_empty() || path.file_name().is_none())
        {
            return Err(SinkError::Invalid {
                key: "json_lines",
                value: path.display().to_string(),
                reason: "must name a file".to_owned(),
            });
        }
        Ok(())
    }
}

fn between(key: &'static str, value: Duration, min_ms: u64, max_ms: u64) -> Result<(), SinkError> {
    let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
    if value < min || value > max {
        return Err(SinkError::Invalid {
            key,
            value: humantime::format_duration(value).to_string(),
            reason: format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        });
    }
    Ok(())
}

fn queue_size(key: &'static str, value: usize) -> Result<(), SinkError> {
    if !(1..=1_000_000).contains(&value) {
        return Err(SinkError::Invalid {
            key,
            value: value.to_string(),
            reason: "must be between 1 and 1000000".to_owned(),
        });
    }
    Ok(())
}

/// The webhook's HMAC key: the file's bytes less trailing whitespace (so `echo secret >
/// file` works), readable by its owner only, not empty.
fn read_secret(path: &Path) -> Result<Vec<u8>, SinkError> {
    let bad = |reason: String| SinkError::Secret {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:04o} lets others read it; chmod 0600",
            mode & 0o7777
        )));
    }
    let mut key = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    while key.last().is_some_and(u8::is_ascii_whitespace) {
        key.pop();
    }
    if key.is_empty() {
        return Err(bad(
            "it is empty; the webhook secret is its contents".to_owned()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::testing::TempDir;

    fn parse(text: &str) -> Result<SinksConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn defaults() {
        assert_eq!(parse(""), Ok(SinksConfig::default()));
        assert_eq!(
            SinksConfig::default(),
            SinksConfig {
                json_lines: None,
                alertmanager: None,
                webhook: None
            }
        );
        let c = parse(
            "json_lines = \"/var/log/exfil-sensor/alerts.jsonl\"\n\
             [alertmanager]\nurl = \"http://127.0.0.1:9093\"\n\
             [webhook]\nurl = \"http://127.0.0.1:8080/hook\"\n",
        )
        .expect("parses");
        assert_eq!(
            c.json_lines,
            Some(PathBuf::from("/var/log/exfil-sensor/alerts.jsonl"))
        );
        assert_eq!(
            c.alertmanager,
            Some(AlertmanagerConfig {
                url: "http://127.0.0.1:9093".to_owned(),
                resend: Duration::from_secs(60),
                timeout: Duration::from_secs(10),
                queue: 1000,
                generator_url: None,
            })
        );
        assert_eq!(
            c.webhook,
            Some(WebhookConfig {
                url: "http://127.0.0.1:8080/hook".to_owned(),
                secret_file: None,
                timeout: Duration::from_secs(10),
                queue: 1000,
                max_retries: 8,
                max_backoff: Duration::from_secs(60),
            })
        );
        assert_eq!(
            c.alertmanager,
            Some(AlertmanagerConfig::new("http://127.0.0.1:9093"))
        );
        assert_eq!(
            c.webhook,
            Some(WebhookConfig::new("http://127.0.0.1:8080/hook"))
        );
        assert_eq!(c.validate().map_err(|e| e.to_string()), Ok(()));
        let c =
            parse("[alertmanager]\nurl = \"http://am:9093\"\nresend = \"30s\"\n").expect("parses");
        assert_eq!(
            c.alertmanager.map(|a| a.resend),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_refused() {
        assert_eq!(
            parse("jsonlines = \"/tmp/a\"\n"),
            Err("unknown field `jsonlines`, expected one of `json_lines`, `alertmanager`, `webhook`"
                .to_owned())
        );
        assert_eq!(
            parse("[webhook]\nurl = \"http://h/\"\nretries = 3\n"),
            Err(
                "unknown field `retries`, expected one of `url`, `secret_file`, `timeout`, \
                 `queue`, `max_retries`, `max_backoff`"
                    .to_owned()
            )
        );
        assert_eq!(
            parse("[alertmanager]\nresend = \"1m\"\n"),
            Err("missing field `url`".to_owned())
        );
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        let err = |c: SinksConfig| c.validate().err().map(|e| e.to_string());
        let am = |url: &str| SinksConfig {
            alertmanager: Some(AlertmanagerConfig::new(url)),
            ..SinksConfig::default()
        };
        assert_eq!(
            err(am("https://am.example:9093")),
            Some(
                "alerts.alertmanager.url = https://am.example:9093: only http:// is supported \
                 (no TLS yet); put a TLS-terminating proxy on this host in front"
                    .to_owned()
            )
        );
        assert_eq!(
            err(am("127.0.0.1:9093")),
            Some(
                "alerts.alertmanager.url = 127.0.0.1:9093: must be an http:// URL with a host"
                    .to_owned()
            )
        );
        assert_eq!(
            err(am("http://am:9093/a b")),
            Some("alerts.alertmanager.url = http://am:9093/a b: invalid uri character".to_owned())
        );
        let mut slow = AlertmanagerConfig::new("http://am:9093");
        slow.resend = Duration::from_millis(10);
        assert_eq!(
            err(SinksConfig {
                alertmanager: Some(slow),
                ..SinksConfig::default()
            }),
            Some("alerts.alertmanager.resend = 10ms: must be between 100ms and 1h".to_owned())
        );
        let mut hook = WebhookConfig::new("http://h:8080/x");
        hook.queue = 0;
        assert_eq!(
            err(SinksConfig {
                webhook: Some(hook),
                ..SinksConfig::default()
            }),
            Some("alerts.webhook.queue = 0: must be between 1 and 1000000".to_owned())
        );
        assert_eq!(
            err(SinksConfig {
                json_lines: Some(PathBuf::from("/")),
                ..SinksConfig::default()
            }),
            Some("alerts.json_lines = /: must name a file".to_owned())
        );
    }

    #[test]
    fn secret_files_must_be_private_and_not_empty() {
        let dir = TempDir::new("secret");
        let hook = |path: &Path| SinksConfig {
            webhook: Some(WebhookConfig {
                secret_file: Some(path.to_path_buf()),
                ..WebhookConfig::new("http://127.0.0.1:1/hook")
            }),
            ..SinksConfig::default()
        };
        let err = |path: &Path| hook(path).validate().err().map(|e| e.to_string());
        let open = dir.file("open", "s3cret\n", 0o644);
        assert_eq!(
            err(&open),
            Some(format!(
                "alerts.webhook.secret_file {}: mode 0644 lets others read it; chmod 0600",
                open.display()
            ))
        );
        let empty = dir.file("empty", " \n", 0o600);
        assert_eq!(
            err(&empty),
            Some(format!(
                "alerts.webhook.secret_file {}: it is empty; the webhook secret is its contents",
                empty.display()
            ))
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            err(&missing),
            Some(format!(
                "alerts.webhook.secret_file {}: No such file or directory (os error 2)",
                missing.display()
            ))
        );
        let good = dir.file("good", "s3cret\n", 0o400);
        assert_eq!(err(&good), None);
        assert_eq!(read_secret(&good).expect("reads"), b"s3cret");
    }
}
