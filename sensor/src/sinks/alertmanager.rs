//! The Alertmanager sink: `POST {url}/api/v2/alerts`, the way Prometheus feeds Alertmanager.
//!
//! The task holds every firing alert and posts all of them on each change and again every
//! `resend`. A firing alert's `endsAt` is the post's time + 4 × `resend`, as Prometheus sets
//! it (rules/alerting.go, `sendAlerts`: `ValidUntil = ts + 4 × max(resend delay, interval)`):
//! should the agent stop posting (killed, host cut off), Alertmanager resolves the alert by
//! itself after four missed resends rather than keep it firing forever. A resolved alert is
//! posted with `endsAt` = its `resolved_at` until a post of it succeeds, then forgotten.
//!
//! Labels (what Alertmanager groups, routes, silences and deduplicates on):
//! `alertname` = `ExfilSensor` + the kind in CamelCase (`ExfilSensorBurst`,
//! `ExfilSensorNewDestination`, …: one alert rule per kind, as a Prometheus rule file would
//! name them), `kind`, `severity`, `service`, `destination`, `instance`, and `class` for
//! alerts that have one (lineage). Everything else — numbers that change while it fires, the
//! process, the id — is an annotation, so an update never makes it a different alert.
//!
//! A failed post (connection error, timeout, non-2xx) is retried after 1s, 2s, 4s … up to
//! `resend`; while it fails, changes merge into the alerts held, so the queue bound is on
//! alerts with undelivered changes, not on events. A resolve that could not be delivered
//! for 4 × `resend` is given up (counted as dropped): by then the `endsAt` of the last post
//! that did reach Alertmanager has passed and it has resolved the alert itself.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper::{HeaderMap, Uri, body::Bytes};
use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};

use super::{
    Backlog, Metrics, Timing, Trouble, backoff,
    post::{self, PostError},
};
use crate::api::{AlertChange, AlertEvent, AlertRecord};

pub(super) const SINK: &str = "alertmanager";

/// Resends Alertmanager may miss before it resolves an alert itself (Prometheus's factor).
const RESENDS_MISSED: u32 = 4;

/// The validated `[alerts.alertmanager]`.
pub(super) struct Target {
    /// `{url}/api/v2/alerts`.
    pub(super) url: Uri,
    pub(super) instance: String,
    pub(super) generator_url: Option<String>,
    pub(super) resend: Duration,
    pub(super) timeout: Duration,
    pub(super) queue: usize,
}

/// `ExfilSensor` + `kind` in CamelCase: `new_destination` → `ExfilSensorNewDestination`.
pub(super) fn alert_name(kind: &str) -> String {
    let mut name = String::from("ExfilSensor");
    for word in kind.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// One alert of Alertmanager's v2 `postableAlerts`.
#[derive(Debug, Serialize)]
struct PostableAlert<'a> {
    labels: BTreeMap<&'static str, &'a str>,
    annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "startsAt")]
    starts_at: &'a str,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    generator_url: Option<&'a str>,
}

impl<'a> PostableAlert<'a> {
    /// `firing_until`: the `endsAt` of a firing alert.
    fn new(
        alert: &'a AlertRecord,
        alertname: &'a str,
        resolved: bool,
        target: &'a Target,
        firing_until: &str,
    ) -> Self {
        let mut labels = BTreeMap::from([
            ("alertname", alertname),
            ("kind", alert.kind.as_str()),
            ("severity", alert.severity.as_str()),
            ("service", alert.service.as_str()),
            ("destination", alert.destination.as_str()),
            ("instance", target.instance.as_str()),
        ]);
        if let Some(class) = &alert.class {
            labels.insert("class", class);
        }
        let mut annotations = BTreeMap::from([
            ("summary", alert.summary.clone()),
            ("description", alert.description.clone()),
            ("alert_id", alert.id.to_string()),
            ("bytes", alert.bytes.to_string()),
            ("port", alert.port.to_string()),
            ("pid", alert.pid.to_string()),
            ("comm", alert.comm.clone()),
            ("window_s", alert.window_s.to_string()),
            ("started_at", alert.started_at.clone()),
        ]);
        // Not a label: a name can change between answers, and an alert's labels never do.
        if let Some(name) = &alert.destination_name {
            annotations.insert("destination_name", name.clone());
        }
        let ends_at = match (&alert.resolved_at, resolved) {
            (Some(at), true) => at.clone(),
            // Resolved without a time (should not happen): now ends it.
            (None, true) => humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            (_, false) => firing_until.to_owned(),
        };
        Self {
            labels,
            annotations,
            starts_at: &alert.raised_at,
            ends_at,
            generator_url: target.generator_url.as_deref(),
        }
    }
}

struct Tracked {
    alert: AlertRecord,
    alertname: String,
    /// When its resolve arrived; `None` while it fires.
    resolved: Option<Instant>,
    /// Of its last change: a post delivers the change only if it carried this generation.
    generation: u64,
    /// A change not yet delivered; it holds one queue slot.
    undelivered: bool,
}

/// The alerts the sink holds: firing ones, and resolved ones until their resolve is delivered.
#[derive(Default)]
struct Alerts {
    tracked: BTreeMap<u64, Tracked>,
    generation: u64,
}

impl Alerts {
    /// Takes in a change; returns the queue slots to free now: 1 when it merged into a change
    /// of the same alert still waiting (the event's slot), else 0 (the alert holds it).
    fn apply(&mut self, event: &AlertEvent, now: Instant) -> usize {
        self.generation += 1;
        let resolved = (event.change == AlertChange::Resolved).then_some(now);
        match self.tracked.entry(event.alert.id) {
            Entry::Occupied(mut entry) => {
                let tracked = entry.get_mut();
                let merged = tracked.undelivered;
                tracked.resolved = resolved.map(|at| tracked.resolved.unwrap_or(at));
                tracked.alertname = alert_name(&event.alert.kind);
                tracked.alert = event.alert.clone();
                tracked.generation = self.generation;
                tracked.undelivered = true;
                usize::from(merged)
            }
            Entry::Vacant(entry) => {
                entry.insert(Tracked {
                    alert: event.alert.clone(),
                    alertname: alert_name(&event.alert.kind),
                    resolved,
                    generation: self.generation,
                    undelivered: true,
                });
                0
            }
        }
    }

    /// A post of every alert held, and (id, generation) of what it carries.
    fn post(&self, target: &Target) -> serde_json::Result<(Bytes, Vec<(u64, u64)>)> {
        let ends = SystemTime::now() + target.resend.saturating_mul(RESENDS_MISSED);
        // Milliseconds: with a sub-second resend, seconds could put endsAt in the past.
        let firing_until = humantime::format_rfc3339_millis(ends).to_string();
        let alerts: Vec<_> = self
            .tracked
            .values()
            .map(|t| {
                PostableAlert::new(
                    &t.alert,
                    &t.alertname,
                    t.resolved.is_some(),
                    target,
                    &firing_until,
                )
            })
            .collect();
        let body = serde_json::to_vec(&alerts)?;
        let carried = self
            .tracked
            .iter()
            .map(|(id, t)| (*id, t.generation))
            .collect();
        Ok((Bytes::from(body), carried))
    }

    /// A post of `carried` succeeded: the changes it carried are delivered, the resolved
    /// alerts it carried forgotten. Returns the queue slots to free.
    fn delivered(&mut self, carried: &[(u64, u64)]) -> usize {
        let mut freed = 0;
        for (id, generation) in carried {
            let Some(tracked) = self.tracked.get_mut(id) else {
                continue;
            };
            if tracked.generation != *generation {
                continue;
            }
            freed += usize::from(tracked.undelivered);
            tracked.undelivered = false;
            if tracked.resolved.is_some() {
                self.tracked.remove(id);
            }
        }
        freed
    }

    /// Forgets resolved alerts that are `after` past their resolve and still undelivered.
    /// Returns how many, and the queue slots to free.
    fn give_up(&mut self, now: Instant, after: Duration) -> (u64, usize) {
        let mut given_up = 0;
        let mut freed = 0;
        self.tracked.retain(|_, t| {
            let keep = t.resolved.is_none_or(|at| now.duration_since(at) < after);
            if !keep {
                given_up += 1;
                freed += usize::from(t.undelivered);
            }
            keep
        });
        (given_up, freed)
    }

    fn has_undelivered(&self) -> bool {
        self.tracked.values().any(|t| t.undelivered)
    }

    fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }
}

type Exchange = Pin<Box<dyn Future<Output = Result<(), PostError>> + Send>>;

struct InFlight {
    started: Instant,
    carried: Vec<(u64, u64)>,
    exchange: Exchange,
}

/// The sink's task: takes events in as they come (never waiting on a post), posts one at a
/// time.
pub(super) async fn run(
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Arc<AlertEvent>>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
    timing: Timing,
) {
    let client = post::client();
    let mut trouble = Trouble::new(SINK);
    let mut alerts = Alerts::default();
    let valid_for = target.resend.saturating_mul(RESENDS_MISSED);
    // When the next post is due; `None` while nothing is held, or while one is in flight.
    let mut next_post: Option<Instant> = None;
    let mut failed_in_a_row: u32 = 0;
    let mut in_flight: Option<InFlight> = None;
    loop {
        if in_flight.is_none() && next_post.is_some_and(|at| at <= Instant::now()) {
            next_post = None;
            let now = Instant::now();
            let (given_up, freed) = alerts.give_up(now, valid_for);
            if given_up > 0 {
                metrics.dropped.inc_by(given_up);
                tracing::warn!(
                    sink = SINK,
                    alerts = given_up,
                    "gave up delivering resolved alerts; Alertmanager resolves them itself \
                     once their endsAt passes"
                );
            }
            backlog.release(freed);
            if !alerts.is_empty() {
                match alerts.post(&target) {
                    Ok((body, carried)) => {
                        let (client, url, timeout) =
                            (client.clone(), target.url.clone(), target.timeout);
                        in_flight = Some(InFlight {
                            started: now,
                            carried,
                            exchange: Box::pin(async move {
                                post::post(&client, &url, HeaderMap::new(), body, timeout).await
                            }),
                        });
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        trouble.failed(format_args!("cannot encode the alerts: {e}"));
                        next_post = Some(now + target.resend);
                    }
                }
            }
        }
        let wake = if in_flight.is_none() { next_post } else { None };
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => {
                    backlog.release(alerts.apply(&event, Instant::now()));
                    // Post now, unless failing: then the retry already set carries it.
                    if failed_in_a_row == 0 || (next_post.is_none() && in_flight.is_none()) {
                        next_post = Some(Instant::now());
                    }
                }
                None => break,
            },
            result = finished(&mut in_flight) => {
                let now = Instant::now();
                let Some(done) = in_flight.take() else { continue };
                match result {
                    Ok(()) => {
                        metrics.sent.inc();
                        trouble.recovered();
                        failed_in_a_row = 0;
                        backlog.release(alerts.delivered(&done.carried));
                        next_post = if alerts.is_empty() {
                            None
                        } else if alerts.has_undelivered() {
                            Some(now)
                        } else {
                            Some(done.started + target.resend)
                        };
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        trouble.failed(e);
                        let wait = backoff(timing.first_backoff, failed_in_a_row, target.resend);
                        failed_in_a_row = failed_in_a_row.saturating_add(1);
                        next_post = Some(now + wait);
                    }
                }
            }
            () = until(wake) => {}
        }
    }
}

async fn finished(in_flight: &mut Option<InFlight>) -> Result<(), PostError> {
    match in_flight {
        Some(f) => (&mut f.exchange).await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "alertmanager_tests.rs"]
mod tests;
