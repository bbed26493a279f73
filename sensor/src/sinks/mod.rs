//! Alert sinks: where each raised, updated and resolved alert goes besides the JSON API — a
//! JSON lines file, Alertmanager, a webhook.
//!
//! Detection calls [`Sinks::send`], which never blocks and never fails: each configured sink
//! has its own bounded queue and its own worker (a thread for the file, a tokio task for each
//! network sink), so a sink that is down or slow costs only its own queue, never detection or
//! the other sinks. A full queue drops the event and counts it in
//! `exfil_sensor_alert_sink_dropped_total{sink}`.

mod alertmanager;
mod config;
mod json_lines;
mod post;
mod webhook;

use std::{
    fmt::Display,
    io,
    path::PathBuf,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use thiserror::Error;
use tokio::sync::{Notify, mpsc};

pub use self::config::{AlertmanagerConfig, SinksConfig, WebhookConfig};
use crate::api::{AlertChange, AlertEvent};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("alerts.{key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("alerts.webhook.secret_file {}: {reason}", path.display())]
    Secret { path: PathBuf, reason: String },
    #[error("alerts.json_lines {}: {cause}", path.display())]
    JsonLines { path: PathBuf, cause: io::Error },
    #[error("alert sink metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the alert sinks need a tokio runtime to run on: {0}")]
    Runtime(#[from] tokio::runtime::TryCurrentError),
    #[error("cannot start the alert json_lines writer thread: {0}")]
    Thread(io::Error),
}

/// How long the first retry waits; each further one waits twice as long as the one before.
/// Tests shorten it.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(1),
        }
    }
}

/// The wait before retry number `retry` (0-based): `first`, `2 × first`, `4 × first` …, at
/// most `cap`.
fn backoff(first: Duration, retry: u32, cap: Duration) -> Duration {
    first.saturating_mul(1 << retry.min(30)).min(cap)
}

/// The handle detection sends alert events through: cheap to clone, `Send + Sync`. The
/// default has no sinks.
#[derive(Clone, Default)]
pub struct Sinks {
    queues: Arc<[Queue]>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.queues.iter().map(|q| q.sink))
            .finish()
    }
}

impl Sinks {
    /// Validates `config` (URLs, the webhook's secret file), opens the JSON lines file,
    /// registers the sinks' metrics in `registry` and starts one worker per sink, the network
    /// ones on the current tokio runtime (so this must be called inside one). `instance` is
    /// this host's name, Alertmanager's `instance` label.
    pub fn start(
        config: &SinksConfig,
        registry: &Registry,
        instance: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self::start_with(
            config,
            registry,
            instance,
            Timing::default(),
        )?)
    }

    fn start_with(
        config: &SinksConfig,
        registry: &Registry,
        instance: &str,
        timing: Timing,
    ) -> Result<Self, SinkError> {
        let alertmanager = config
            .alertmanager
            .as_ref()
            .map(|am| am.target(instance))
            .transpose()?;
        let webhook = config
            .webhook
            .as_ref()
            .map(WebhookConfig::target)
            .transpose()?;
        let runtime = tokio::runtime::Handle::try_current()?;
        // Opened before anything is registered or started: a start that fails leaves nothing
        // behind.
        let alert_file = config
            .json_lines
            .as_deref()
            .map(json_lines::AlertFile::open)
            .transpose()?;
        let mut names = Vec::new();
        if alert_file.is_some() {
            names.push(json_lines::SINK);
        }
        if alertmanager.is_some() {
            names.push(alertmanager::SINK);
        }
        if webhook.is_some() {
            names.push(webhook::SINK);
        }
        let metrics = SinkMetrics::register(registry, &names)?;
        let mut queues = Vec::new();
        if let Some(file) = alert_file {
            let (queue, rx) = Queue::new(json_lines::SINK, false, json_lines::QUEUE, &metrics);
            json_lines::start(file, rx, queue.backlog.clone(), queue.metrics.clone())?;
            queues.push(queue);
        }
        if let Some(target) = alertmanager {
            let (queue, rx) = Queue::new(alertmanager::SINK, true, target.queue, &metrics);
            runtime.spawn(alertmanager::run(
                target,
                rx,
                queue.backlog.clone(),
                queue.metrics.clone(),
                timing,
            ));
            queues.push(queue);
        }
        if let Some(target) = webhook {
            let (queue, rx) = Queue::new(webhook::SINK, true, target.queue, &metrics);
            runtime.spawn(webhook::run(
                target,
                rx,
                queue.backlog.clone(),
                queue.metrics.clone(),
                timing,
            ));
            queues.push(queue);
        }
        Ok(Self {
            queues: queues.into(),
        })
    }

    /// Hands `event` to each sink that takes it (JSON lines only takes raised and resolved);
    /// a sink whose queue is full drops it and counts the drop. Never blocks.
    pub fn send(&self, event: &AlertEvent) {
        let mut shared = None;
        for queue in self.queues.iter() {
            if !queue.takes_updates && event.change == AlertChange::Updated {
                continue;
            }
            let event = shared.get_or_insert_with(|| Arc::new(event.clone()));
            queue.push(Arc::clone(event));
        }
    }

    /// Waits until every sink has delivered or given up on each event it accepted, or until
    /// `within` has passed: for a clean shutdown, and for tests.
    pub async fn flush(&self, within: Duration) {
        let drained = async {
            for queue in self.queues.iter() {
                queue.backlog.drained().await;
            }
        };
        let _ = tokio::time::timeout(within, drained).await;
    }
}

/// One sink's end of its queue.
struct Queue {
    sink: &'static str,
    /// Whether it takes `updated` events (JSON lines does not: a line per interval of a
    /// growing alert is noise; raised and resolved carry the story).
    takes_updates: bool,
    tx: mpsc::UnboundedSender<Arc<AlertEvent>>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
    /// Whether the drops of the current full-queue streak were logged already.
    full_logged: AtomicBool,
}

impl Queue {
    fn new(
        sink: &'static str,
        takes_updates: bool,
        capacity: usize,
        metrics: &SinkMetrics,
    ) -> (Self, mpsc::UnboundedReceiver<Arc<AlertEvent>>) {
        let metrics = metrics.for_sink(sink);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Self {
            sink,
            takes_updates,
            tx,
            backlog: Arc::new(Backlog {
                len: AtomicUsize::new(0),
                capacity,
                drained: Notify::new(),
                gauge: metrics.queue.clone(),
            }),
            metrics,
            full_logged: AtomicBool::new(false),
        };
        (queue, rx)
    }

    fn push(&self, event: Arc<AlertEvent>) {
        if !self.backlog.reserve() {
            self.metrics.dropped.inc();
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    sink = self.sink,
                    capacity = self.backlog.capacity,
                    "alert sink queue full: dropping alert events until it drains \
                     (exfil_sensor_alert_sink_dropped_total counts them)"
                );
            }
            return;
        }
        self.full_logged.store(false, Ordering::Relaxed);
        if self.tx.send(event).is_err() {
            // The worker is gone (its runtime shut down): nothing will deliver it.
            self.backlog.release(1);
            self.metrics.dropped.inc();
        }
    }
}

/// The events a sink accepted and has not yet delivered or given up on — queued or being
/// delivered, so that a queue of 2 holds 2 events whatever its worker is doing. The channel
/// itself is unbounded; this count bounds it.
struct Backlog {
    len: AtomicUsize,
    capacity: usize,
    drained: Notify,
    gauge: IntGauge,
}

impl Backlog {
    /// Takes a slot if one is free.
    fn reserve(&self) -> bool {
        let taken = self
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.gauge.inc();
        }
        taken
    }

    /// Frees `n` slots: their events were delivered, merged or given up on.
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.len.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(i64::try_from(n).unwrap_or(i64::MAX));
        if before == n {
            self.drained.notify_waiters();
        }
    }

    async fn drained(&self) {
        loop {
            let mut notified = pin!(self.drained.notified());
            // Registered before the check, so a release between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            if self.len.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The four metric families, registered once for all configured sinks.
struct SinkMetrics {
    sent: IntCounterVec,
    failures: IntCounterVec,
    dropped: IntCounterVec,
    queue: IntGaugeVec,
}

/// One sink's series.
#[derive(Clone)]
struct Metrics {
    sent: IntCounter,
    failures: IntCounter,
    dropped: IntCounter,
    queue: IntGauge,
}

impl SinkMetrics {
    /// Registers the families when at least one sink is configured, and each configured
    /// sink's series at zero (so that `increase()` sees its first count).
    fn register(registry: &Registry, sinks: &[&str]) -> Result<Self, SinkError> {
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["sink"]);
        let metrics = Self {
            sent: counter(
                "exfil_sensor_alert_sink_sent_total",
                "Alert deliveries that succeeded: lines written, webhook events posted, \
                 Alertmanager posts (each carries every alert the sink holds).",
            )?,
            failures: counter(
                "exfil_sensor_alert_sink_failures_total",
                "Alert delivery attempts that failed: write errors, connection errors, \
                 timeouts, non-2xx answers. Retries count again.",
            )?,
            dropped: counter(
                "exfil_sensor_alert_sink_dropped_total",
                "Alert events a sink gave up on: its queue was full, or retries ran out.",
            )?,
            queue: IntGaugeVec::new(
                Opts::new(
                    "exfil_sensor_alert_sink_queue_length",
                    "Alert events a sink accepted and has not yet delivered or given up on.",
                ),
                &["sink"],
            )?,
        };
        if !sinks.is_empty() {
            registry.register(Box::new(metrics.sent.clone()))?;
            registry.register(Box::new(metrics.failures.clone()))?;
            registry.register(Box::new(metrics.dropped.clone()))?;
            registry.register(Box::new(metrics.queue.clone()))?;
        }
        for sink in sinks {
            metrics.for_sink(sink);
        }
        Ok(metrics)
    }

    fn for_sink(&self, sink: &str) -> Metrics {
        Metrics {
            sent: self.sent.with_label_values(&[sink]),
            failures: self.failures.with_label_values(&[sink]),
            dropped: self.dropped.with_label_values(&[sink]),
            queue: self.queue.with_label_values(&[sink]),
        }
    }
}

/// Logs the first failure of a streak and the recovery, not every attempt: a sink that is
/// down for an hour must not flood the log (the failures metric counts each one).
struct Trouble {
    sink: &'static str,
    failures: u64,
}

impl Trouble {
    fn new(sink: &'static str) -> Self {
        Self { sink, failures: 0 }
    }

    fn failed(&mut self, what: impl Display) {
        if self.failures == 0 {
            tracing::warn!(
                sink = self.sink,
                "alert delivery failed: {what}; retrying (further failures are counted in \
                 exfil_sensor_alert_sink_failures_total, not logged, until it recovers)"
            );
        }
        self.failures += 1;
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                sink = self.sink,
                failures = self.failures,
                "alert delivery works again"
            );
        }
        self.failures = 0;
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (0..8).map(|r| backoff(s(1), r, s(60))).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60].map(s));
        assert_eq!(backoff(s(1), u32::MAX, s(60)), s(60));
    }

    #[tokio::test]
    async fn no_sinks_registers_nothing_and_send_is_a_no_op() {
        let registry = Registry::new();
        let sinks = Sinks::start(&SinksConfig::default(), &registry, "host").expect("starts empty");
        sinks.send(&testing::event(AlertChange::Raised));
        sinks.flush(Duration::from_secs(1)).await;
        assert!(registry.gather().is_empty());
    }

    /// The exposition of two configured sinks: their series only, at zero.
    #[tokio::test]
    async fn metrics_have_series_for_configured_sinks_only() {
        let dir = testing::TempDir::new("metrics");
        let config = SinksConfig {
            json_lines: Some(dir.path().join("alerts.jsonl")),
            webhook: Some(WebhookConfig::new("http://127.0.0.1:1/hook")),
            ..SinksConfig::default()
        };
        let registry = Registry::new();
        let _sinks = Sinks::start(&config, &registry, "host").expect("starts");
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .expect("encodes");
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            "# HELP exfil_sensor_alert_sink_dropped_total Alert events a sink gave up on: its \
             queue was full, or retries ran out.\n\
             # TYPE exfil_sensor_alert_sink_dropped_total counter\n\
             exfil_sensor_alert_sink_dropped_total{sink=\"json_lines\"} 0\n\
             exfil_sensor_alert_sink_dropped_total{sink=\"webhook\"} 0\n\
             # HELP exfil_sensor_alert_sink_failures_total Alert delivery attempts that failed: \
             write errors, connection errors, timeouts, non-2xx answers. Retries count again.\n\
             # TYPE exfil_sensor_alert_sink_failures_total counter\n\
             exfil_sensor_alert_sink_failures_total{sink=\"json_lines\"} 0\n\
             exfil_sensor_alert_sink_failures_total{sink=\"webhook\"} 0\n\
             # HELP exfil_sensor_alert_sink_queue_length Alert events a sink accepted and has \
             not yet delivered or given up on.\n\
             # TYPE exfil_sensor_alert_sink_queue_length gauge\n\
             exfil_sensor_alert_sink_queue_length{sink=\"json_lines\"} 0\n\
             exfil_sensor_alert_sink_queue_length{sink=\"webhook\"} 0\n\
             # HELP exfil_sensor_alert_sink_sent_total Alert deliveries that succeeded: lines \
             written, webhook events posted, Alertmanager posts (each carries every alert the \
             sink holds).\n\
             # TYPE exfil_sensor_alert_sink_sent_total counter\n\
             exfil_sensor_alert_sink_sent_total{sink=\"json_lines\"} 0\n\
             exfil_sensor_alert_sink_sent_total{sink=\"webhook\"} 0\n"
        );
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let dir = testing::TempDir::new("no-runtime");
        let config = SinksConfig {
            json_lines: Some(dir.path().join("alerts.jsonl")),
            ..SinksConfig::default()
        };
        let err = Sinks::start(&config, &Registry::new(), "host").expect_err("no runtime");
        assert!(
            err.to_string()
                .starts_with("the alert sinks need a tokio runtime to run on: "),
            "{err}"
        );
    }
}
