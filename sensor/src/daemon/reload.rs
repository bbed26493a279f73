//! SIGHUP: the config file read again, checked, and its runtime keys handed to the
//! aggregating thread (`Message::Reload`); a file that does not parse or validate is logged
//! with its line and column and counted, and the config in force stays whole.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{Gauge, IntCounter, IntGauge, Registry};
use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot},
};

use crate::{
    agent::{Message, Reload},
    config::{
        Config,
        reload::{Changes, Overrides, reload},
    },
};

/// Prometheus's own reload metrics, under the agent's names.
#[derive(Clone)]
pub struct ReloadMetrics {
    errors: IntCounter,
    success: IntGauge,
    success_time: Gauge,
}

impl ReloadMetrics {
    /// Registered with the start counted as the first successful load.
    pub fn register(registry: &Registry) -> Self {
        let errors = IntCounter::new(
            "exfil_sensor_config_reload_errors_total",
            "Config reloads (SIGHUP) refused: the file did not read, parse or validate; the config in force was kept (the log names the line and column).",
        )
        .expect("static metric definition");
        let success = IntGauge::new(
            "exfil_sensor_config_last_reload_success",
            "Whether the last config load (the start, or the last SIGHUP) succeeded: 1, or 0.",
        )
        .expect("static metric definition");
        let success_time = Gauge::new(
            "exfil_sensor_config_last_reload_success_timestamp_seconds",
            "When the config in force was last loaded successfully (the start or a reload), Unix seconds.",
        )
        .expect("static metric definition");
        for metric in [
            Box::new(errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(success.clone()),
            Box::new(success_time.clone()),
        ] {
            registry
                .register(metric)
                .expect("each metric is registered once, with a static definition");
        }
        let metrics = Self {
            errors,
            success,
            success_time,
        };
        metrics.succeeded();
        metrics
    }

    fn succeeded(&self) {
        self.success.set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.success_time.set(now.as_secs_f64());
    }

    fn failed(&self) {
        self.errors.inc();
        self.success.set(0);
    }
}

/// Reloads `file` on each SIGHUP until the aggregating thread is gone. `config` is the one
/// in force at start (overrides applied). Without a file (the embedded default), a SIGHUP is
/// logged and changes nothing.
pub async fn on_hangup(
    mut hangups: Signal,
    file: Option<PathBuf>,
    mut config: Config,
    overrides: Overrides,
    agent: mpsc::Sender<Message>,
    metrics: ReloadMetrics,
) {
    while hangups.recv().await.is_some() {
        let Some(path) = &file else {
            tracing::info!(
                "SIGHUP: the agent runs on the embedded default config (no --config); nothing to reload"
            );
            continue;
        };
        let (new, changes, text) = match reload(&config, path, &overrides) {
            Ok(loaded) => loaded,
            Err(e) => {
                metrics.failed();
                tracing::error!("config reload refused, the config in force is kept: {e}");
                continue;
            }
        };
        let (reply, answer) = oneshot::channel();
        let message = Message::Reload(
            Box::new(Reload {
                config: new.clone(),
                at: SystemTime::now(),
                source: path.display().to_string(),
                text,
            }),
            reply,
        );
        if agent.send(message).await.is_err() {
            return; // stopping
        }
        match answer.await {
            Ok(Ok(())) => {
                metrics.succeeded();
                config = new;
                tracing::info!("{}", reloaded_line(&path.display().to_string(), &changes));
            }
            Ok(Err(e)) => {
                metrics.failed();
                tracing::error!("config reload refused, the config in force is kept: {e}");
            }
            Err(_) => return,
        }
    }
}

/// The reload's one log line: what took effect and what waits for a restart.
pub fn reloaded_line(path: &str, changes: &Changes) -> String {
    if changes.is_empty() {
        return format!("config {path} reloaded: no change");
    }
    let list = |keys: &[&str]| {
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        }
    };
    format!(
        "config {path} reloaded: applied: {}; changed but in force only after a restart: {}",
        list(&changes.applied),
        list(&changes.need_restart)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_what_applied_and_what_waits() {
        assert_eq!(
            reloaded_line("/etc/c.toml", &Changes::default()),
            "config /etc/c.toml reloaded: no change"
        );
        assert_eq!(
            reloaded_line(
                "/etc/c.toml",
                &Changes {
                    applied: vec!["detect.burst"],
                    need_restart: vec!["kernel.pin_dir", "journal.dir"],
                }
            ),
            "config /etc/c.toml reloaded: applied: detect.burst; changed but in force only \
             after a restart: kernel.pin_dir, journal.dir"
        );
    }

    #[test]
    fn metrics_start_as_a_success_and_count_failures() {
        let registry = Registry::new();
        let metrics = ReloadMetrics::register(&registry);
        assert_eq!(metrics.success.get(), 1);
        assert!(metrics.success_time.get() > 1.7e9);
        metrics.failed();
        metrics.failed();
        assert_eq!((metrics.errors.get(), metrics.success.get()), (2, 0));
        metrics.succeeded();
        assert_eq!((metrics.errors.get(), metrics.success.get()), (2, 1));
    }
}
