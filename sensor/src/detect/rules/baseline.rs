//! Per service history of external bytes, and the two rules on it:
//!
//! - `baseline`: an hour above its hour-of-week baseline (or hour-of-day while there are
//!   fewer than `min_days` weeks) by more than `sigma` × σ, and above a floor; median and
//!   1.4826 × MAD, so one odd hour in the samples does not move it. Only with `min_days`
//!   samples (Splunk's email-server rule: mean + 3σ after ≥ 4 days).
//! - `slow_leak`: Page's CUSUM on daily external bytes against the median of past days,
//!   slack k σ, threshold h σ (σ at least `min_sigma`): a steady 20 MiB/day above a quiet
//!   baseline fires on its second day.
//!
//! Hours and days are UTC. Only periods the agent watched for at least 90 % of their length
//! become samples: a restart mid-hour does not teach it a quiet hour.

use crate::detect::HashMap;
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{ByService, DAY_MS, HOUR_MS, largest, robust};
use crate::detect::{
    Hit, Kind, Sender, Traffic,
    config::{BaselineConfig, SlowLeakConfig},
    size,
};

/// Samples kept per hour-of-week slot (weeks) and per hour-of-day slot (days), and days.
const WEEKS: usize = 8;
const DAYS: usize = 28;
/// Services followed; beyond it a new service has no history (bounded memory and state).
const MAX_SERVICES: usize = 1_000;
/// Destinations a service's current period tells apart, to name the largest.
const MAX_NAMED: usize = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// The hour and day being counted (index since the epoch), and how much of each was
    /// watched (ms).
    hour: u64,
    hour_watched_ms: u64,
    day: u64,
    day_watched_ms: u64,
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Service {
    /// External bytes this hour and this day so far.
    hour_bytes: u64,
    day_bytes: u64,
    /// Hour-of-week slot (0 = Monday 00:00 UTC) → past hours' bytes, oldest first.
    hour_of_week: BTreeMap<u16, Vec<u64>>,
    hour_of_day: BTreeMap<u8, Vec<u64>>,
    /// Past days' bytes, oldest first.
    days: Vec<u64>,
    /// CUSUM at the end of the last day, and the day it last rose from 0.
    cusum: f64,
    cusum_since_day: u64,
    /// Largest destinations this hour and this day, and the largest sender.
    #[serde(skip)]
    hour_destinations: HashMap<IpAddr, u64>,
    #[serde(skip)]
    day_destinations: HashMap<IpAddr, u64>,
    #[serde(skip)]
    sender: Sender,
}

fn push(samples: &mut Vec<u64>, value: u64, keep: usize) {
    samples.push(value);
    if samples.len() > keep {
        samples.remove(0);
    }
}

fn add(map: &mut HashMap<IpAddr, u64>, ip: IpAddr, bytes: u64) {
    if map.len() < MAX_NAMED || map.contains_key(&ip) {
        *map.entry(ip).or_default() += bytes;
    }
}

/// Hour-of-week slot of an hour index: 1970-01-01 was a Thursday (slot 72).
fn hour_of_week(hour: u64) -> u16 {
    u16::try_from((hour + 72) % 168).unwrap_or(0)
}

fn hour_of_day(hour: u64) -> u8 {
    u8::try_from(hour % 24).unwrap_or(0)
}

impl History {
    /// Returns the hits, and whether an hour ended (worth saving the state).
    pub fn observe(
        &mut self,
        baseline: &BaselineConfig,
        slow_leak: &SlowLeakConfig,
        traffic: &Traffic<'_>,
    ) -> (Vec<Hit>, bool) {
        let hour = traffic.start_ms / HOUR_MS;
        let day = traffic.start_ms / DAY_MS;
        let mut hour_ended = false;
        if hour != self.hour {
            self.end_hour(hour, day, slow_leak);
            hour_ended = true;
        }
        let length = traffic.end_ms.saturating_sub(traffic.start_ms);
        self.hour_watched_ms += length;
        self.day_watched_ms += length;

        let mut this_interval: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, flows) in traffic.by_service() {
            if !self.services.contains_key(name) && self.services.len() >= MAX_SERVICES {
                continue;
            }
            // A service is known from its first flow, external or not: its days with nothing
            // external are days of 0 bytes, the quiet baseline against which a drip to the
            // outside stands out (a mail service that only ever served the office).
            let s = self.services.service_mut(name);
            let mut watched = flows.iter().filter(|f| f.watched()).peekable();
            if watched.peek().is_none() {
                continue;
            }
            let mut growth = 0;
            for f in watched {
                let flow = f.flow;
                s.hour_bytes += flow.bytes_sent;
                s.day_bytes += flow.bytes_sent;
                if let Some(ip) = flow.destination {
                    add(&mut s.hour_destinations, ip, flow.bytes_sent);
                    add(&mut s.day_destinations, ip, flow.bytes_sent);
                }
                s.sender.keep_larger(flow);
                growth += flow.bytes_sent;
            }
            *this_interval.entry(name).or_default() += growth;
        }
        let mut hits = Vec::new();
        for (name, growth) in this_interval {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            if baseline.enabled
                && let Some(hit) = s.baseline_hit(name, hour, growth, baseline)
            {
                hits.push(hit);
            }
            if slow_leak.enabled
                && let Some(hit) = s.slow_leak_hit(name, day, growth, slow_leak)
            {
                hits.push(hit);
            }
        }
        // Only services that sent in this interval are checked: a service-wide episode grows,
        // and stays open, only while its rule keeps hitting.
        (hits, hour_ended)
    }

    /// Closes the current hour (and day) and starts `hour`.
    fn end_hour(&mut self, hour: u64, day: u64, slow_leak: &SlowLeakConfig) {
        let whole_hour = self.hour_watched_ms >= HOUR_MS * 9 / 10;
        let day_ends = day != self.day;
        let whole_day = self.day_watched_ms >= DAY_MS * 9 / 10;
        for s in self.services.values_mut() {
            if whole_hour {
                push(
                    s.hour_of_week.entry(hour_of_week(self.hour)).or_default(),
                    s.hour_bytes,
                    WEEKS,
                );
                push(
                    s.hour_of_day.entry(hour_of_day(self.hour)).or_default(),
                    s.hour_bytes,
                    DAYS,
                );
            }
            s.hour_bytes = 0;
            s.hour_destinations.clear();
            if day_ends {
                if whole_day {
                    // The CUSUM steps once per day, against the days before it.
                    if let Some(next) = s.cusum_after(s.day_bytes, slow_leak) {
                        if s.cusum <= 0.0 && next > 0.0 {
                            s.cusum_since_day = self.day;
                        }
                        s.cusum = next;
                    }
                    push(&mut s.days, s.day_bytes, DAYS);
                }
                s.day_bytes = 0;
                s.day_destinations.clear();
                s.sender = Sender::default();
            }
        }
        self.hour = hour;
        self.hour_watched_ms = 0;
        if day_ends {
            self.day = day;
            self.day_watched_ms = 0;
        }
    }
}

impl Service {
    /// The CUSUM after a day of `bytes`: S = max(0, S + bytes − μ − kσ); `None` with fewer
    /// than `min_days` past days.
    fn cusum_after(&self, bytes: u64, config: &SlowLeakConfig) -> Option<f64> {
        if self.days.len() < config.min_days as usize {
            return None;
        }
        let (median, sigma) = robust(&self.days)?;
        let sigma = self.sigma(sigma, config);
        Some((self.cusum + bytes as f64 - median - config.k * sigma).max(0.0))
    }

    fn sigma(&self, sigma: f64, config: &SlowLeakConfig) -> f64 {
        sigma.max(config.min_sigma.as_u64() as f64)
    }

    fn slow_leak_hit(
        &self,
        name: &str,
        day: u64,
        growth: u64,
        config: &SlowLeakConfig,
    ) -> Option<Hit> {
        let next = self.cusum_after(self.day_bytes, config)?;
        let (median, sigma) = robust(&self.days)?;
        let sigma = self.sigma(sigma, config);
        let limit = config.h * sigma;
        // A leak runs over days: an excess that began today is a one-day anomaly, which
        // `baseline` and `burst` are for.
        if next <= limit || self.cusum <= 0.0 || self.cusum_since_day >= day {
            return None;
        }
        let since = self.cusum_since_day;
        let destination = largest(&self.day_destinations);
        let days = day.saturating_sub(since) + 1;
        Some(Hit {
            kind: Kind::SlowLeak,
            service: name.to_owned(),
            destination,
            per_destination: false,
            sender: self.sender.clone(),
            bytes: self.day_bytes,
            growth,
            window_s: days * DAY_MS / 1000,
            started_ms: since * DAY_MS,
            class: None,
            summary: format!(
                "{name} has sent more than usual to external destinations for {days} day(s)",
            ),
            description: format!(
                "{name}'s daily external bytes have run above its usual {} a day (σ {}) for {days} day(s): {} today, the most to {}; the cumulative excess {} passed {}σ = {}.",
                size(median as u64),
                size(sigma as u64),
                size(self.day_bytes),
                destination.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                size(next as u64),
                config.h,
                size(limit as u64)
            ),
        })
    }

    fn baseline_hit(
        &self,
        name: &str,
        hour: u64,
        growth: u64,
        config: &BaselineConfig,
    ) -> Option<Hit> {
        let min = config.min_days as usize;
        let week = self
            .hour_of_week
            .get(&hour_of_week(hour))
            .filter(|v| v.len() >= min);
        let samples = week.or_else(|| {
            self.hour_of_day
                .get(&hour_of_day(hour))
                .filter(|v| v.len() >= min)
        })?;
        let (median, sigma) = robust(samples)?;
        let limit = median + config.sigma * sigma;
        let bytes = self.hour_bytes;
        if (bytes as f64) <= limit || bytes <= config.floor.as_u64() {
            return None;
        }
        let destination = largest(&self.hour_destinations);
        let slot = if week.is_some() {
            "hour of the week"
        } else {
            "hour of the day"
        };
        Some(Hit {
            kind: Kind::Baseline,
            service: name.to_owned(),
            destination,
            per_destination: false,
            sender: self.sender.clone(),
            bytes,
            growth,
            window_s: HOUR_MS / 1000,
            started_ms: hour * HOUR_MS,
            class: None,
            summary: format!(
                "{name} sent {} to external destinations this hour, usually {}",
                size(bytes),
                size(median as u64)
            ),
            description: format!(
                "{name} sent {bytes} bytes to external destinations in the hour from {} (the most to {}); over {} samples of the same {slot} its median is {} and σ {}, so the limit is median + {}σ = {} (and at least {}).",
                crate::detect::episodes::rfc3339(hour * HOUR_MS),
                destination.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                samples.len(),
                size(median as u64),
                size(sigma as u64),
                config.sigma,
                size(limit as u64),
                size(config.floor.as_u64())
            ),
        })
    }
}
