//! `exfil-sensor report`: what left the host, from which service, to where and when, from a
//! journal's interval records, with the alerts the agent raised — the page of an incident
//! report. Only external destinations count: the volume that left.
//!
//! One pass over the records: hourly sums per (host, service, destination), rolled up to days
//! for spans longer than three days; the timeline keeps the top destinations apart and sums
//! the rest of each service into `other`, so its size is bounded by hosts × services × top,
//! not by the number of hosts a mail server talked to. Journals of several hosts merge into
//! one report: the top destinations are the fleet's, each naming the hosts that sent to it.

mod render;
mod svg;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::{
    api::{AlertEvent, AlertRecord},
    detect::rfc3339,
    flow::{class::DestinationClass, interval::Interval},
    journal::{Counts, PreviousRun, ResumeRecord},
};

pub use render::{csv, json, table};
pub use svg::svg;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Spans longer than this are shown per day when the bucket is `auto`.
const HOURLY_UP_TO_MS: u64 = 3 * DAY_MS;
/// The destination name of a service's bytes to destinations outside the top.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn ms(self) -> u64 {
        match self {
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }
}

/// What to report on.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this service (exact name).
    pub service: Option<String>,
    /// Only intervals that end after `from_ms` and start before `to_ms` (Unix ms).
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// `None`: hours for spans up to three days, days beyond.
    pub bucket: Option<Bucket>,
    /// How many destinations the timeline keeps apart.
    pub top: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            service: None,
            from_ms: None,
            to_ms: None,
            bucket: None,
            top: 10,
        }
    }
}

/// A destination's external bytes over the report's span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub destination: String,
    /// The DNS names its flow rows had (`[dns]`), most bytes first; left out when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub bytes: u64,
    /// The hosts that sent to it, most bytes first.
    pub hosts: Vec<String>,
    /// The services that sent to it, most bytes first.
    pub services: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// One (host, service, destination)'s bytes per bucket; destination `other` for the rest of
/// the service's destinations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Series {
    pub host: String,
    pub service: String,
    pub destination: String,
    pub bytes: u64,
    /// (bucket start, RFC 3339; bytes) for each bucket with bytes, in time order.
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    pub start: String,
    #[serde(skip)]
    pub start_ms: u64,
    pub bytes: u64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The span of the intervals reported on (RFC 3339), `None` when there were none.
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(skip)]
    pub span_ms: Option<(u64, u64)>,
    pub bucket: Bucket,
    /// The hosts whose journals were read, by name.
    pub hosts: Vec<String>,
    /// External bytes sent in the span.
    pub external_bytes: u64,
    /// The top destinations, most bytes first.
    pub destinations: Vec<Destination>,
    /// The timeline: the top destinations' pairs, then each service's `other`.
    pub series: Vec<Series>,
    /// The alerts the agents raised in the span, in the state of their last change.
    pub alerts: Vec<HostAlert>,
    /// Agent starts that took over pinned kernel totals or followed a run that ended
    /// without a stop record, in time order.
    pub restarts: Vec<Restart>,
}

/// An agent start, from its resume record. The bytes it carried (counted by the kernel
/// beyond the journal's last totals: while no agent ran, or in the interval the previous
/// agent died in) are in the first interval after it, so the timeline holds them; these say
/// how many. Per host, not per service (the record keys flows by process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    pub host: String,
    pub at: String,
    /// `stopped`, `unclean` (no stop record: killed, crashed) or `none` (no earlier record).
    pub previous: String,
    /// The previous run's stop, or its last record when it ended without one.
    pub previous_end: Option<String>,
    /// Bytes sent beyond the journal's last totals, new in the first interval.
    pub carried_bytes: u64,
    pub carried_flows: u64,
    /// Bytes sent the journal had no totals for, taken as accounted for (not in the timeline).
    pub adopted_bytes: u64,
    pub adopted_flows: u64,
}

/// An alert and the host whose agent raised it (alert ids are per agent).
#[derive(Debug, Clone, Serialize)]
pub struct HostAlert {
    pub host: String,
    #[serde(flatten)]
    pub alert: AlertRecord,
}

#[derive(Default)]
struct PairSums {
    bytes: u64,
    hourly: BTreeMap<u64, u64>,
}

#[derive(Default)]
struct DestinationSums {
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
    /// Bytes per DNS name of its rows.
    names: HashMap<String, u64>,
}

/// (host, service, destination).
type PairKey = (String, String, String);
/// (is `other`, destination rank, host, service).
type SeriesKey = (bool, Option<usize>, String, String);

/// Collects interval records and alerts, then [`Builder::finish`]es into a [`Report`].
pub struct Builder {
    options: Options,
    /// The host the records fed now come from.
    host: String,
    hosts: BTreeSet<String>,
    pairs: HashMap<PairKey, PairSums>,
    destinations: HashMap<String, DestinationSums>,
    span: Option<(u64, u64)>,
    alerts: BTreeMap<(String, u64), AlertRecord>,
    restarts: Vec<(u64, Restart)>,
}

impl Builder {
    pub fn new(options: Options) -> Self {
        Self {
            options,
            host: String::new(),
            hosts: BTreeSet::new(),
            pairs: HashMap::new(),
            destinations: HashMap::new(),
            span: None,
            alerts: BTreeMap::new(),
            restarts: Vec::new(),
        }
    }

    /// The records fed from now on are `name`'s (a journal's start records name its host).
    pub fn host(&mut self, name: &str) {
        if self.host != name {
            name.clone_into(&mut self.host);
        }
        if !self.hosts.contains(name) {
            self.hosts.insert(name.to_owned());
        }
    }

    fn in_range(&self, start_ms: u64, end_ms: u64) -> bool {
        self.options.from_ms.is_none_or(|from| end_ms > from)
            && self.options.to_ms.is_none_or(|to| start_ms < to)
    }

    pub fn interval(&mut self, interval: &Interval) {
        if !self.in_range(interval.start_ms, interval.end_ms) {
            return;
        }
        let (start, end) = self.span.unwrap_or((interval.start_ms, interval.end_ms));
        self.span = Some((start.min(interval.start_ms), end.max(interval.end_ms)));
        let hour = interval.start_ms - interval.start_ms % HOUR_MS;
        for flow in &interval.flows {
            if flow.class != DestinationClass::External || flow.bytes_sent == 0 {
                continue;
            }
            if self
                .options
                .service
                .as_ref()
                .is_some_and(|s| *s != flow.service)
            {
                continue;
            }
            let Some(ip) = flow.destination else {
                continue;
            };
            let destination = ip.to_string();
            let pair = self
                .pairs
                .entry((self.host.clone(), flow.service.clone(), destination.clone()))
                .or_default();
            pair.bytes += flow.bytes_sent;
            *pair.hourly.entry(hour).or_default() += flow.bytes_sent;
            let sums = self
                .destinations
                .entry(destination)
                .or_insert(DestinationSums {
                    bytes: 0,
                    first_ms: interval.start_ms,
                    last_ms: interval.end_ms,
                    names: HashMap::new(),
                });
            sums.bytes += flow.bytes_sent;
            if let Some(name) = &flow.destination_name {
                match sums.names.get_mut(name) {
                    Some(bytes) => *bytes += flow.bytes_sent,
                    None => {
                        sums.names.insert(name.clone(), flow.bytes_sent);
                    }
                }
            }
            sums.first_ms = sums.first_ms.min(interval.start_ms);
            sums.last_ms = sums.last_ms.max(interval.end_ms);
        }
    }

    /// An agent start: kept when it took over pinned totals or followed an unclean end.
    pub fn resume(&mut self, resume: &ResumeRecord) {
        if !self.in_range(resume.at_ms, resume.at_ms.saturating_add(1)) {
            return;
        }
        let (previous, previous_end) = match resume.previous {
            PreviousRun::None => ("none", None),
            PreviousRun::Stopped { at_ms } => ("stopped", Some(rfc3339(at_ms))),
            PreviousRun::Unclean { last_at_ms } => ("unclean", Some(rfc3339(last_at_ms))),
        };
        let mut restart = Restart {
            host: self.host.clone(),
            at: rfc3339(resume.at_ms),
            previous: previous.to_owned(),
            previous_end,
            carried_bytes: 0,
            carried_flows: 0,
            adopted_bytes: 0,
            adopted_flows: 0,
        };
        for flow in &resume.flows {
            if flow.journaled.is_none() {
                restart.adopted_bytes += flow.kernel.sent;
                restart.adopted_flows += 1;
            } else if flow.carried() != Counts::default() {
                restart.carried_bytes += flow.carried().sent;
                restart.carried_flows += 1;
            }
        }
        if resume.flows.is_empty() && previous != "unclean" {
            return;
        }
        self.restarts.push((resume.at_ms, restart));
    }

    /// An alert change the agent recorded; the report keeps each alert's last state.
    pub fn alert(&mut self, event: &AlertEvent) {
        let alert = &event.alert;
        if self
            .options
            .service
            .as_ref()
            .is_some_and(|s| *s != alert.service)
        {
            return;
        }
        let raised_ms = crate::detect::parse_rfc3339_ms(&alert.raised_at).unwrap_or(0);
        let updated_ms = crate::detect::parse_rfc3339_ms(&alert.updated_at).unwrap_or(raised_ms);
        if !self.in_range(raised_ms, updated_ms.saturating_add(1)) {
            return;
        }
        self.alerts
            .insert((self.host.clone(), alert.id), alert.clone());
    }

    pub fn finish(self) -> Report {
        let bucket = self.options.bucket.unwrap_or(match self.span {
            Some((start, end)) if end - start > HOURLY_UP_TO_MS => Bucket::Day,
            _ => Bucket::Hour,
        });
        let mut ranked: Vec<(&String, &DestinationSums)> = self.destinations.iter().collect();
        ranked.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(self.options.top);
        let top: HashMap<&str, usize> = ranked
            .iter()
            .enumerate()
            .map(|(rank, (d, _))| (d.as_str(), rank))
            .collect();
        let destinations = ranked
            .iter()
            .map(|(destination, sums)| {
                let mut hosts: HashMap<&String, u64> = HashMap::new();
                let mut services: HashMap<&String, u64> = HashMap::new();
                for ((host, service, _), pair) in
                    self.pairs.iter().filter(|((_, _, d), _)| d == *destination)
                {
                    *hosts.entry(host).or_default() += pair.bytes;
                    *services.entry(service).or_default() += pair.bytes;
                }
                Destination {
                    destination: (*destination).clone(),
                    names: most_first(sums.names.iter().map(|(n, b)| (n, *b)).collect()),
                    bytes: sums.bytes,
                    hosts: most_first(hosts),
                    services: most_first(services),
                    first_seen: rfc3339(sums.first_ms),
                    last_seen: rfc3339(sums.last_ms),
                }
            })
            .collect();
        // Pairs of top destinations as they are; the rest summed per host and service into
        // `other`. Keyed so that the map's order is the timeline's: top destinations by rank,
        // then each `other`.
        let mut merged: BTreeMap<SeriesKey, PairSums> = BTreeMap::new();
        for ((host, service, destination), pair) in &self.pairs {
            let rank = top.get(destination.as_str()).copied();
            let into = merged
                .entry((rank.is_none(), rank, host.clone(), service.clone()))
                .or_default();
            into.bytes += pair.bytes;
            for (hour, bytes) in &pair.hourly {
                *into.hourly.entry(hour - hour % bucket.ms()).or_default() += bytes;
            }
        }
        let series = merged
            .into_iter()
            .map(|((_, rank, host, service), sums)| Series {
                destination: rank
                    .and_then(|r| ranked.get(r))
                    .map_or_else(|| OTHER.to_owned(), |(d, _)| (*d).clone()),
                host,
                service,
                bytes: sums.bytes,
                points: sums
                    .hourly
                    .into_iter()
                    .map(|(start_ms, bytes)| Point {
                        start: rfc3339(start_ms),
                        start_ms,
                        bytes,
                    })
                    .collect(),
            })
            .collect();
        let mut alerts: Vec<HostAlert> = self
            .alerts
            .into_iter()
            .map(|((host, _), alert)| HostAlert { host, alert })
            .collect();
        alerts.sort_by(|a, b| {
            (&a.alert.raised_at, &a.host, a.alert.id).cmp(&(
                &b.alert.raised_at,
                &b.host,
                b.alert.id,
            ))
        });
        Report {
            from: self.span.map(|(s, _)| rfc3339(s)),
            to: self.span.map(|(_, e)| rfc3339(e)),
            span_ms: self.span,
            bucket,
            hosts: self.hosts.into_iter().collect(),
            external_bytes: self.destinations.values().map(|d| d.bytes).sum(),
            destinations,
            series,
            alerts,
            restarts: {
                let mut restarts = self.restarts;
                restarts.sort_by(|a, b| (a.0, &a.1.host).cmp(&(b.0, &b.1.host)));
                restarts.into_iter().map(|(_, r)| r).collect()
            },
        }
    }
}

/// The keys by their bytes, most first (ties by name).
fn most_first(sums: HashMap<&String, u64>) -> Vec<String> {
    let mut sums: Vec<(&String, u64)> = sums.into_iter().collect();
    sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    sums.into_iter().map(|(k, _)| k.clone()).collect()
}

#[cfg(test)]
mod tests;
