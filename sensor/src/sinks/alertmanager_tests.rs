//! The Alertmanager sink against a fake Alertmanager (and, on request, a real one).

use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use prometheus::Registry;
use serde_json::{Value, json};

use super::*;
use crate::sinks::{
    AlertmanagerConfig, Sinks, SinksConfig,
    testing::{Received, Receiver, Reply, event, metric},
};

const PATH: &str = "/api/v2/alerts";
const OK: Reply = Reply::Status(StatusCode::OK);
const FAIL: Reply = Reply::Status(StatusCode::INTERNAL_SERVER_ERROR);

fn start(am: AlertmanagerConfig, registry: &Registry) -> Sinks {
    let config = SinksConfig {
        alertmanager: Some(am),
        ..SinksConfig::default()
    };
    let timing = Timing {
        first_backoff: Duration::from_millis(10),
    };
    Sinks::start_with(&config, registry, "mail-1", timing).expect("starts")
}

/// Alert 7 as posted, but for `endsAt`.
fn expected(bytes: &str) -> Value {
    json!({
        "labels": {
            "alertname": "ExfilSensorBurst",
            "kind": "burst",
            "severity": "critical",
            "service": "postfix.service",
            "destination": "203.0.113.9",
            "instance": "mail-1",
        },
        "annotations": {
            "summary": "postfix.service sent 50 MiB to 203.0.113.9 in 60s",
            "description": "52428800 bytes to 203.0.113.9:443 within 60s; the burst rule \
                            fires at 10 MiB.",
            "alert_id": "7",
            "bytes": bytes,
            "port": "443",
            "pid": "4242",
            "comm": "smtp",
            "window_s": "60",
            "started_at": "2026-11-23T19:39:10Z",
        },
        "startsAt": "2026-11-23T19:39:40Z",
        "generatorURL": "http://grafana.example/d/exfil",
    })
}

/// The one alert of a post, without its `endsAt`, and its `endsAt`.
fn only_alert(received: &Received) -> (Value, String) {
    let Value::Array(mut alerts) = received.json() else {
        panic!("not an array: {}", String::from_utf8_lossy(&received.body));
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let mut alert = alerts.remove(0);
    let ends_at = alert
        .as_object_mut()
        .and_then(|a| a.remove("endsAt"))
        .and_then(|e| e.as_str().map(str::to_owned))
        .expect("endsAt");
    (alert, ends_at)
}

fn config(receiver: &Receiver, resend: Duration) -> AlertmanagerConfig {
    AlertmanagerConfig {
        resend,
        generator_url: Some("http://grafana.example/d/exfil".to_owned()),
        ..AlertmanagerConfig::new(receiver.base.clone())
    }
}

#[test]
fn alert_names_are_exfil_sensor_and_the_kind_in_camel_case() {
    assert_eq!(alert_name("burst"), "ExfilSensorBurst");
    assert_eq!(alert_name("new_destination"), "ExfilSensorNewDestination");
    assert_eq!(alert_name("slow_leak"), "ExfilSensorSlowLeak");
    assert_eq!(alert_name(""), "ExfilSensor");
}

#[test]
fn a_lineage_alert_carries_its_class_label() {
    let target = Target {
        url: "http://am:9093/api/v2/alerts".parse().expect("url"),
        instance: "mail-1".to_owned(),
        generator_url: None,
        resend: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        queue: 10,
    };
    let mut alert = event(AlertChange::Raised).alert;
    alert.kind = "lineage".to_owned();
    alert.class = Some("mail_store".to_owned());
    let posted = PostableAlert::new(&alert, "ExfilSensorLineage", false, &target, "T");
    let value = serde_json::to_value(&posted).expect("json");
    assert_eq!(
        value["labels"],
        json!({
            "alertname": "ExfilSensorLineage",
            "kind": "lineage",
            "severity": "critical",
            "service": "postfix.service",
            "destination": "203.0.113.9",
            "instance": "mail-1",
            "class": "mail_store",
        })
    );
    assert_eq!(value["endsAt"], "T");
    assert_eq!(value.get("generatorURL"), None);
}

#[test]
fn a_named_destination_is_an_annotation_not_a_label() {
    let target = Target {
        url: "http://am:9093/api/v2/alerts".parse().expect("url"),
        instance: "mail-1".to_owned(),
        generator_url: None,
        resend: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        queue: 10,
    };
    let mut alert = event(AlertChange::Raised).alert;
    alert.destination_name = Some("upload.example.test".to_owned());
    let posted = PostableAlert::new(&alert, "ExfilSensorBurst", false, &target, "T");
    let value = serde_json::to_value(&posted).expect("json");
    assert_eq!(
        value["annotations"]["destination_name"],
        "upload.example.test"
    );
    assert_eq!(value["labels"]["destination"], "203.0.113.9");
    assert_eq!(value["labels"].get("destination_name"), None);
    // The webhook and JSON-lines sinks post the event itself: the field is in it.
    let event = AlertEvent {
        change: AlertChange::Raised,
        alert,
    };
    let json = serde_json::to_value(&event).expect("json");
    assert_eq!(json["alert"]["destination_name"], "upload.example.test");
}

/// Raised: posted at once; re-sent after `resend`; updated: posted at once; resolved: posted
/// with its endsAt, then never again.
#[tokio::test]
async fn raise_resend_update_resolve() {
    let mut receiver = Receiver::start(PATH, &[], OK).await;
    let registry = Registry::new();
    let resend = Duration::from_millis(200);
    let started = Instant::now();
    let sinks = start(config(&receiver, resend), &registry);

    let before = SystemTime::now();
    sinks.send(&event(AlertChange::Raised));
    let first = receiver.next(Duration::from_secs(5)).await.expect("posted");
    let after = SystemTime::now();
    let (alert, ends_at) = only_alert(&first);
    assert_eq!(alert, expected("52428800"));
    // Firing: endsAt is 4 resends ahead (milliseconds, truncated).
    let ends_at = humantime::parse_rfc3339(&ends_at).expect("RFC 3339");
    assert!(
        ends_at + Duration::from_millis(1) >= before + 4 * resend && ends_at <= after + 4 * resend,
        "{ends_at:?} not 4 × {resend:?} after {before:?}..{after:?}"
    );
    sinks.flush(Duration::from_secs(5)).await;
    assert_eq!(metric(&registry, "queue_length", SINK), 0.0);

    // No new event: the resend, no sooner than `resend` after the start.
    let second = receiver.next(Duration::from_secs(5)).await.expect("resent");
    assert!(
        second.at >= (started + resend).into_std(),
        "resent too early"
    );
    assert_eq!(only_alert(&second).0, expected("52428800"));
    let mut posts = 2;

    // Updated: posted at once with the new numbers (a resend may come first).
    sinks.send(&event(AlertChange::Updated));
    loop {
        let got = receiver.next(Duration::from_secs(5)).await.expect("posted");
        posts += 1;
        let (alert, _) = only_alert(&got);
        if alert == expected("73400320") {
            break;
        }
        assert_eq!(
            alert,
            expected("52428800"),
            "only a resend may come between"
        );
    }

    // Resolved: endsAt is the resolve time.
    sinks.send(&event(AlertChange::Resolved));
    loop {
        let got = receiver.next(Duration::from_secs(5)).await.expect("posted");
        posts += 1;
        let (alert, ends_at) = only_alert(&got);
        assert_eq!(alert, expected("73400320"));
        if ends_at == "2026-11-23T19:45:00Z" {
            break;
        }
    }
    sinks.flush(Duration::from_secs(5)).await;
    // Delivered: forgotten, no more resends.
    assert!(
        receiver.next(resend * 3).await.is_none(),
        "posted after resolve"
    );
    assert_eq!(metric(&registry, "sent", SINK), f64::from(posts));
    assert_eq!(metric(&registry, "failures", SINK), 0.0);
    assert_eq!(metric(&registry, "dropped", SINK), 0.0);
    assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
}

#[tokio::test]
async fn a_failed_post_is_retried() {
    let mut receiver = Receiver::start(PATH, &[FAIL], OK).await;
    let registry = Registry::new();
    let sinks = start(config(&receiver, Duration::from_secs(60)), &registry);
    sinks.send(&event(AlertChange::Raised));
    sinks.flush(Duration::from_secs(5)).await;
    let failed = receiver.next(Duration::from_secs(1)).await.expect("first");
    let retried = receiver.next(Duration::from_secs(1)).await.expect("retry");
    assert_eq!(only_alert(&failed).0, expected("52428800"));
    assert_eq!(only_alert(&retried).0, expected("52428800"));
    assert!(receiver.next(Duration::from_millis(100)).await.is_none());
    assert_eq!(metric(&registry, "sent", SINK), 1.0);
    assert_eq!(metric(&registry, "failures", SINK), 1.0);
    assert_eq!(metric(&registry, "dropped", SINK), 0.0);
    assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
}

/// While Alertmanager fails, changes of one alert merge into one queue slot; a resolve still
/// undelivered 4 resends later is given up, and posting stops.
#[tokio::test]
async fn an_undeliverable_resolve_is_given_up() {
    let mut receiver = Receiver::start(PATH, &[], FAIL).await;
    let registry = Registry::new();
    let resend = Duration::from_millis(100);
    // The alert's slot, and one for each of the two events until the task takes them in.
    let sinks = start(
        AlertmanagerConfig {
            queue: 3,
            ..config(&receiver, resend)
        },
        &registry,
    );
    sinks.send(&event(AlertChange::Raised));
    assert!(receiver.next(Duration::from_secs(5)).await.is_some());
    sinks.send(&event(AlertChange::Updated));
    sinks.send(&event(AlertChange::Resolved));
    assert_eq!(metric(&registry, "dropped", SINK), 0.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        metric(&registry, "queue_length", SINK),
        1.0,
        "three changes of one alert merged into one"
    );
    sinks.flush(Duration::from_secs(5)).await;
    assert_eq!(metric(&registry, "queue_length", SINK), 0.0);
    assert_eq!(metric(&registry, "dropped", SINK), 1.0);
    let mut posts = 1;
    while receiver.next(Duration::from_millis(300)).await.is_some() {
        posts += 1;
    }
    assert!(posts >= 3, "retried: {posts}");
    assert_eq!(metric(&registry, "failures", SINK), f64::from(posts));
    assert_eq!(metric(&registry, "sent", SINK), 0.0);
}
