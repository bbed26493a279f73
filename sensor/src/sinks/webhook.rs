//! The webhook sink: each [`AlertEvent`] (raised, updated, resolved) as a JSON POST, in
//! order, with `X-Exfil-Sensor-Event: raised|updated|resolved` and, when a secret is
//! configured, `X-Exfil-Sensor-Signature: sha256=<hex HMAC-SHA256 of the exact body>` (the
//! scheme GitHub's webhooks use, so receivers have code for it).
//!
//! A failed attempt (connection error, timeout, non-2xx) is retried after 1s, 2s, 4s … up to
//! `max_backoff`, `max_retries` times; then the event is dropped and counted. Events wait
//! behind the one being retried: order is kept, and the queue bound says how many may wait.

use std::{path::Path, sync::Arc};

use hmac::{Hmac, KeyInit as _, Mac as _};
use hyper::{
    HeaderMap, Uri,
    body::Bytes,
    header::{HeaderName, HeaderValue},
};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{Backlog, Metrics, SinkError, Timing, Trouble, backoff, post};
use crate::api::{AlertChange, AlertEvent};

pub(super) const SINK: &str = "webhook";

const EVENT_HEADER: HeaderName = HeaderName::from_static("x-exfil-sensor-event");
const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-exfil-sensor-signature");

/// The validated `[alerts.webhook]`.
pub(super) struct Target {
    pub(super) url: Uri,
    pub(super) signer: Option<Signer>,
    pub(super) timeout: std::time::Duration,
    pub(super) queue: usize,
    pub(super) max_retries: u32,
    pub(super) max_backoff: std::time::Duration,
}

/// HMAC-SHA256 keyed with the webhook secret, ready to clone per body.
#[derive(Clone)]
pub(super) struct Signer(Hmac<Sha256>);

impl Signer {
    pub(super) fn new(path: &Path, key: &[u8]) -> Result<Self, SinkError> {
        // HMAC takes keys of any length; the error exists for fixed-key MACs.
        Hmac::<Sha256>::new_from_slice(key)
            .map(Self)
            .map_err(|e| SinkError::Secret {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// `sha256=<hex of HMAC-SHA256(body)>`.
    fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let mut text = String::with_capacity(7 + 2 * tag.len());
        text.push_str("sha256=");
        for byte in tag.iter() {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn change_name(change: AlertChange) -> &'static str {
    match change {
        AlertChange::Raised => "raised",
        AlertChange::Updated => "updated",
        AlertChange::Resolved => "resolved",
    }
}

pub(super) async fn run(
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Arc<AlertEvent>>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
    timing: Timing,
) {
    let client = post::client();
    let mut trouble = Trouble::new(SINK);
    while let Some(event) = rx.recv().await {
        deliver(&client, &target, &event, &metrics, &mut trouble, timing).await;
        backlog.release(1);
    }
}

/// Posts one event, retrying as configured; sent, or dropped when retries run out.
async fn deliver(
    client: &post::Client,
    target: &Target,
    event: &AlertEvent,
    metrics: &Metrics,
    trouble: &mut Trouble,
    timing: Timing,
) {
    let body = match serde_json::to_vec(event) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            metrics.dropped.inc();
            tracing::warn!(sink = SINK, alert = event.alert.id, "cannot encode: {e}");
            return;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        EVENT_HEADER,
        HeaderValue::from_static(change_name(event.change)),
    );
    if let Some(signer) = &target.signer
        && let Ok(value) = HeaderValue::try_from(signer.sign(&body))
    {
        headers.insert(SIGNATURE_HEADER, value);
    }
    let attempts = target.max_retries.saturating_add(1);
    for attempt in 0..attempts {
        if let Some(retry) = attempt.checked_sub(1) {
            tokio::time::sleep(backoff(timing.first_backoff, retry, target.max_backoff)).await;
        }
        match post::post(
            client,
            &target.url,
            headers.clone(),
            body.clone(),
            target.timeout,
        )
        .await
        {
            Ok(()) => {
                metrics.sent.inc();
                trouble.recovered();
                return;
            }
            Err(e) => {
                metrics.failures.inc();
                trouble.failed(e);
            }
        }
    }
    metrics.dropped.inc();
    tracing::warn!(
        sink = SINK,
        alert = event.alert.id,
        change = change_name(event.change),
        attempts,
        "gave up delivering an alert event (exfil_sensor_alert_sink_dropped_total)"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use prometheus::Registry;

    use super::*;
    use crate::sinks::{
        Sinks, SinksConfig, WebhookConfig,
        testing::{Receiver, Reply, TempDir, event, metric},
    };

    const OK: Reply = Reply::Status(StatusCode::OK);
    const FAIL: Reply = Reply::Status(StatusCode::INTERNAL_SERVER_ERROR);

    fn fast() -> Timing {
        Timing {
            first_backoff: Duration::from_millis(10),
        }
    }

    fn start(hook: WebhookConfig, registry: &Registry) -> Sinks {
        let config = SinksConfig {
            webhook: Some(hook),
            ..SinksConfig::default()
        };
        Sinks::start_with(&config, registry, "host", fast()).expect("starts")
    }

    /// The signature computed here, apart from the sink's code.
    fn expected_signature(key: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256={hex}")
    }

    #[tokio::test]
    async fn each_event_is_posted_in_order_and_signed() {
        let dir = TempDir::new("webhook");
        let secret = dir.file("secret", "s3cret-key\n", 0o600);
        let mut receiver = Receiver::start("/hook", &[], OK).await;
        let registry = Registry::new();
        let sinks = start(
            WebhookConfig {
                secret_file: Some(secret),
                ..WebhookConfig::new(format!("{}/hook", receiver.base))
            },
            &registry,
        );
        let events = [
            event(AlertChange::Raised),
            event(AlertChange::Updated),
            event(AlertChange::Resolved),
        ];
        for e in &events {
            sinks.send(e);
        }
        sinks.flush(Duration::from_secs(10)).await;
        for (e, name) in events.iter().zip(["raised", "updated", "resolved"]) {
            let got = receiver
                .next(Duration::from_secs(1))
                .await
                .expect("a request");
            assert_eq!(
                got.body.as_ref(),
                serde_json::to_vec(e).expect("json").as_slice()
            );
            assert_eq!(
                serde_json::from_slice::<AlertEvent>(&got.body).expect("an event"),
                *e
            );
            assert_eq!(got.header("x-exfil-sensor-event"), Some(name));
            assert_eq!(got.header("content-type"), Some("application/json"));
            assert_eq!(
                got.header("x-exfil-sensor-signature"),
                Some(expected_signature(b"s3cret-key", &got.body).as_str())
            );
        }
        assert!(receiver.next(Duration::from_millis(100)).await.is_none());
        assert_eq!(metric(&registry, "sent", SINK), 3.0);
        assert_eq!(metric(&registry, "failures", SINK), 0.0);
        assert_eq!(metric(&registry, "dropped", SINK), 0.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
    }

    #[tokio::test]
    async fn without_a_secret_there_is_no_signature() {
        let mut receiver = Receiver::start("/hook", &[], OK).await;
        let sinks = start(
            WebhookConfig::new(format!("{}/hook", receiver.base)),
            &Registry::new(),
        );
        sinks.send(&event(AlertChange::Raised));
        let got = receiver
            .next(Duration::from_secs(5))
            .await
            .expect("a request");
        assert_eq!(got.header("x-exfil-sensor-signature"), None);
        assert_eq!(got.header("x-exfil-sensor-event"), Some("raised"));
    }

    #[tokio::test]
    async fn failed_attempts_are_retried_until_delivered() {
        let mut receiver = Receiver::start("/hook", &[FAIL, FAIL], OK).await;
        let registry = Registry::new();
        let sinks = start(
            WebhookConfig::new(format!("{}/hook", receiver.base)),
            &registry,
        );
        let raised = event(AlertChange::Raised);
        sinks.send(&raised);
        sinks.flush(Duration::from_secs(10)).await;
        let mut bodies = Vec::new();
        while let Some(got) = receiver.next(Duration::from_millis(100)).await {
            bodies.push(got.body);
        }
        let body = Bytes::from(serde_json::to_vec(&raised).expect("json"));
        assert_eq!(bodies, [body.clone(), body.clone(), body]);
        assert_eq!(metric(&registry, "sent", SINK), 1.0);
        assert_eq!(metric(&registry, "failures", SINK), 2.0);
        assert_eq!(metric(&registry, "dropped", SINK), 0.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
    }

    #[tokio::test]
    async fn retries_run_out_then_the_event_is_dropped() {
        let mut receiver = Receiver::start("/hook", &[], FAIL).await;
        let registry = Registry::new();
        let sinks = start(
            WebhookConfig {
                max_retries: 2,
                ..WebhookConfig::new(format!("{}/hook", receiver.base))
            },
            &registry,
        );
        sinks.send(&event(AlertChange::Raised));
        sinks.flush(Duration::from_secs(10)).await;
        let mut requests = 0;
        while receiver.next(Duration::from_millis(200)).await.is_some() {
            requests += 1;
        }
        assert_eq!(requests, 3, "one attempt and two retries");
        assert_eq!(metric(&registry, "sent", SINK), 0.0);
        assert_eq!(metric(&registry, "failures", SINK), 3.0);
        assert_eq!(metric(&registry, "dropped", SINK), 1.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
    }

    /// The queue counts the event being delivered too, so what is dropped does not depend on
    /// whether the worker has picked up the first event yet: with a receiver that never
    /// answers (and a timeout far beyond the test), 2 of 5 are held and 3 dropped.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let mut receiver = Receiver::start("/hook", &[], Reply::Hang).await;
        let registry = Registry::new();
        let sinks = start(
            WebhookConfig {
                queue: 2,
                timeout: Duration::from_secs(600),
                ..WebhookConfig::new(format!("{}/hook", receiver.base))
            },
            &registry,
        );
        for _ in 0..5 {
            sinks.send(&event(AlertChange::Raised));
        }
        assert_eq!(metric(&registry, "dropped", SINK), 3.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 2.0);
        // The first is in delivery, the second waits behind it.
        assert!(receiver.next(Duration::from_secs(5)).await.is_some());
        assert!(receiver.next(Duration::from_millis(200)).await.is_none());
        sinks.send(&event(AlertChange::Resolved));
        assert_eq!(metric(&registry, "dropped", SINK), 4.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 2.0);
        assert_eq!(metric(&registry, "sent", SINK), 0.0);
        assert_eq!(metric(&registry, "failures", SINK), 0.0);
    }
}
