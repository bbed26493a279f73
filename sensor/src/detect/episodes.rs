//! Alert lifecycle: a hit opens an episode (one alert) unless one is open for the same
//! (kind, service, destination); the episode grows while bytes keep flowing, and is resolved
//! after `quiet` without growth. Never a storm of duplicates.

use crate::detect::HashMap;
use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{Hit, Kind, Traffic};
use crate::api::{AlertChange, AlertEvent, AlertRecord};

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Episodes {
    next_id: u64,
    /// Open episodes by key (`kind/service/destination`).
    open: BTreeMap<String, Open>,
    /// Every alert kept for the API, by id (open ones included).
    records: BTreeMap<u64, AlertRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Open {
    id: u64,
    service: String,
    /// `None`: a service-wide episode, which grows only while its rule hits.
    destination: Option<IpAddr>,
    last_growth_ms: u64,
}

fn key(kind: Kind, service: &str, destination: Option<IpAddr>) -> String {
    match destination {
        Some(ip) => format!("{kind}/{service}/{ip}"),
        None => format!("{kind}/{service}/*"),
    }
}

/// How long the episode of key `k` may go without growth before it is resolved: `quiet`, and
/// for the rules that judge whole hours and days at least that long, so that a drip of a few
/// sessions a day is one `slow_leak` episode growing for days, not one alert per session.
fn quiet_ms(k: &str, quiet: Duration) -> u64 {
    let quiet = super::rules::ms(quiet);
    let kind = k.split('/').next().unwrap_or_default();
    if kind == Kind::SlowLeak.as_str() {
        quiet.max(super::rules::DAY_MS)
    } else if kind == Kind::Baseline.as_str() {
        quiet.max(super::rules::HOUR_MS)
    } else {
        quiet
    }
}

/// RFC 3339, UTC, seconds.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Unix ms of an RFC 3339 time as [`rfc3339`] writes it; `None` when it is not one.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    u64::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

impl Episodes {
    pub fn open(&self) -> usize {
        self.open.len()
    }

    pub fn records(&self) -> impl Iterator<Item = &AlertRecord> {
        self.records.values()
    }

    /// Opens an episode for an alert no traffic rule raises (`tamper`): keyed by `subject`, so
    /// that the same thing found again while its alert is open updates it (never a storm),
    /// and resolved like a service-wide episode, `quiet` after it was last found.
    pub fn event(&mut self, hit: Hit, subject: &str, now: u64) -> AlertEvent {
        let k = format!("{}/{}/{subject}", hit.kind, hit.service);
        if let Some(open) = self.open.get_mut(&k) {
            open.last_growth_ms = now;
            if let Some(record) = self.records.get_mut(&open.id) {
                record.updated_at = rfc3339(now);
                record.summary.clone_from(&hit.summary);
                record.description.clone_from(&hit.description);
                return AlertEvent {
                    change: AlertChange::Updated,
                    alert: record.clone(),
                };
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        let record = AlertRecord {
            id,
            kind: hit.kind.as_str().to_owned(),
            severity: hit.kind.severity().to_owned(),
            service: hit.service.clone(),
            pid: hit.sender.pid,
            comm: hit.sender.comm.clone(),
            destination: "*".to_owned(),
            port: 0,
            bytes: hit.bytes,
            window_s: hit.window_s,
            started_at: rfc3339(hit.started_ms),
            raised_at: rfc3339(now),
            updated_at: rfc3339(now),
            resolved_at: None,
            status: "firing".to_owned(),
            class: None,
            summary: hit.summary,
            description: hit.description,
            destination_name: None,
        };
        self.open.insert(
            k,
            Open {
                id,
                service: hit.service,
                destination: None,
                last_growth_ms: now,
            },
        );
        self.records.insert(id, record.clone());
        AlertEvent {
            change: AlertChange::Raised,
            alert: record,
        }
    }

    /// Takes a `tamper` alert the live agent recorded (for replay, which cannot see what the
    /// live checks saw): the same id, open until the same quiet period after its last
    /// update, so that the alerts after it get the live agent's ids. `None` for a change
    /// replay makes itself (resolution) or knows nothing of.
    pub fn recorded(&mut self, event: &AlertEvent) -> Option<AlertEvent> {
        let alert = &event.alert;
        let updated = super::parse_rfc3339_ms(&alert.updated_at)?;
        match event.change {
            AlertChange::Raised => {
                self.next_id = self.next_id.max(alert.id);
                self.open.insert(
                    format!("{}/{}/#{}", alert.kind, alert.service, alert.id),
                    Open {
                        id: alert.id,
                        service: alert.service.clone(),
                        destination: None,
                        last_growth_ms: updated,
                    },
                );
            }
            AlertChange::Updated => {
                let open = self.open.values_mut().find(|o| o.id == alert.id)?;
                open.last_growth_ms = updated;
            }
            AlertChange::Resolved => return None,
        }
        let record = AlertRecord {
            resolved_at: None,
            status: "firing".to_owned(),
            ..alert.clone()
        };
        self.records.insert(alert.id, record.clone());
        Some(AlertEvent {
            change: event.change,
            alert: record,
        })
    }

    /// Grows open episodes with this interval's bytes, opens one per new hit, resolves the
    /// quiet ones. Hits come sorted, so ids are the same on every run over the same input.
    pub fn observe(
        &mut self,
        traffic: &Traffic<'_>,
        hits: Vec<Hit>,
        quiet: Duration,
        max_records: usize,
    ) -> Vec<AlertEvent> {
        let now = traffic.end_ms;
        let mut events = Vec::new();
        // Bytes to each open per-destination episode's (service, destination) this interval.
        let mut sent: HashMap<String, HashMap<IpAddr, u64>> = HashMap::default();
        for open in self.open.values() {
            if let Some(ip) = open.destination {
                sent.entry(open.service.clone()).or_default().insert(ip, 0);
            }
        }
        if !sent.is_empty() {
            for f in &traffic.flows {
                if let Some(ip) = f.flow.destination
                    && let Some(bytes) = sent
                        .get_mut(f.flow.service.as_str())
                        .and_then(|s| s.get_mut(&ip))
                {
                    *bytes += f.flow.bytes_sent;
                }
            }
        }
        let mut hits_by_key: BTreeMap<String, Hit> = BTreeMap::new();
        for hit in hits {
            let k = key(
                hit.kind,
                &hit.service,
                hit.per_destination.then_some(hit.destination).flatten(),
            );
            hits_by_key.entry(k).or_insert(hit);
        }
        // Open episodes grow.
        for (k, open) in &mut self.open {
            let growth = match open.destination {
                Some(ip) => sent
                    .get(open.service.as_str())
                    .and_then(|s| s.get(&ip))
                    .copied()
                    .unwrap_or(0),
                None => hits_by_key.get(k).map_or(0, |h| h.growth),
            };
            if hits_by_key.contains_key(k) && open.destination.is_none() {
                open.last_growth_ms = now;
            }
            if growth == 0 {
                continue;
            }
            open.last_growth_ms = now;
            if let Some(record) = self.records.get_mut(&open.id) {
                if let Some(ip) = open.destination {
                    record.bytes += growth;
                    // Raised before a DNS answer named its address (a restart): named now.
                    if record.destination_name.is_none() {
                        record.destination_name =
                            traffic.name_of(ip, record.pid).map(str::to_owned);
                    }
                } else if let Some(hit) = hits_by_key.get(k) {
                    record.bytes = record.bytes.max(hit.bytes);
                }
                record.updated_at = rfc3339(now);
                events.push(AlertEvent {
                    change: AlertChange::Updated,
                    alert: record.clone(),
                });
            }
        }
        // New hits open episodes.
        for (k, hit) in hits_by_key {
            if self.open.contains_key(&k) {
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            let record = AlertRecord {
                id,
                kind: hit.kind.as_str().to_owned(),
                severity: hit.kind.severity().to_owned(),
                service: hit.service.clone(),
                pid: hit.sender.pid,
                comm: hit.sender.comm.clone(),
                destination: hit
                    .destination
                    .map_or_else(|| "*".to_owned(), |ip| ip.to_string()),
                port: hit.sender.port,
                bytes: hit.bytes,
                window_s: hit.window_s,
                started_at: rfc3339(hit.started_ms),
                raised_at: rfc3339(now),
                updated_at: rfc3339(now),
                resolved_at: None,
                status: "firing".to_owned(),
                class: hit.class.clone(),
                summary: hit.summary.clone(),
                description: hit.description.clone(),
                destination_name: hit
                    .destination
                    .and_then(|ip| traffic.name_of(ip, hit.sender.pid))
                    .map(str::to_owned),
            };
            self.open.insert(
                k,
                Open {
                    id,
                    service: hit.service,
                    destination: hit.per_destination.then_some(hit.destination).flatten(),
                    last_growth_ms: now,
                },
            );
            events.push(AlertEvent {
                change: AlertChange::Raised,
                alert: record.clone(),
            });
            self.records.insert(id, record);
        }
        // Quiet ones are resolved.
        let records = &mut self.records;
        self.open.retain(|k, open| {
            if now.saturating_sub(open.last_growth_ms) < quiet_ms(k, quiet) {
                return true;
            }
            if let Some(record) = records.get_mut(&open.id) {
                record.status = "resolved".to_owned();
                record.resolved_at = Some(rfc3339(now));
                events.push(AlertEvent {
                    change: AlertChange::Resolved,
                    alert: record.clone(),
                });
            }
            false
        });
        // Keep at most `max_records`: the oldest resolved go first, then the oldest.
        while self.records.len() > max_records.max(1) {
            let oldest_resolved = self
                .records
                .iter()
                .find(|(_, r)| r.resolved_at.is_some())
                .map(|(id, _)| *id);
            let Some(id) = oldest_resolved.or_else(|| self.records.keys().next().copied()) else {
                break;
            };
            self.records.remove(&id);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_and_daily_rules_stay_open_at_least_their_scale() {
        let ten_minutes = Duration::from_secs(600);
        let ip = Some("198.51.100.7".parse().expect("ip"));
        let quiet = |kind| quiet_ms(&key(kind, "dovecot.service", ip), ten_minutes);
        assert_eq!(quiet(Kind::Burst), 600_000);
        assert_eq!(quiet(Kind::NewDestination), 600_000);
        assert_eq!(quiet(Kind::Baseline), 3_600_000);
        assert_eq!(quiet(Kind::SlowLeak), 86_400_000);
        // A longer configured quiet period wins.
        let two_days = Duration::from_secs(2 * 86_400);
        assert_eq!(
            quiet_ms(&key(Kind::SlowLeak, "dovecot.service", None), two_days),
            172_800_000
        );
    }
}
