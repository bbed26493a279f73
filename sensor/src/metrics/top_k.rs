//! Bounded egress series: per service, at most K (destination, port, protocol) series of their
//! own, the rest summed in one `destination="other"` series, so a service talking to 10,000
//! hosts costs K+1 series.
//!
//! Who gets a series: the first K seen, then the top K by bytes over the last hour. A series
//! that leaves the top K keeps counting until it has been out for `ttl`, so a label does not
//! flap; its slot then goes to the highest-ranked destination without one. A label that comes
//! back later resumes its last value: a counter never goes down within a process lifetime.
//!
//! Ranking memory is bounded too: per service at most `4K` (at least 64) candidates, kept by
//! the Space-Saving rule (Metwally, Agrawal, El Abbadi 2005): a newcomer replaces the smallest
//! and inherits its count, so a heavy destination is never starved by a crowd of small ones.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use prometheus::{IntCounter, IntCounterVec};

/// A destination as a series tells it apart: address, port label, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
}

/// Ten-minute buckets of the last hour.
const BUCKETS: usize = 6;
const BUCKET_SECS: u64 = 600;

#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    bytes: [u64; BUCKETS],
    /// The bucket number (Unix seconds / 600) last written.
    epoch: u64,
}

impl Hour {
    fn advance(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        let stale = (epoch - self.epoch).min(BUCKETS as u64);
        for step in 1..=stale {
            self.bytes[usize::try_from((self.epoch + step) % BUCKETS as u64).unwrap_or(0)] = 0;
        }
        self.epoch = epoch;
    }

    fn add(&mut self, epoch: u64, bytes: u64) {
        self.advance(epoch);
        let slot = usize::try_from(epoch % BUCKETS as u64).unwrap_or(0);
        self.bytes[slot] = self.bytes[slot].saturating_add(bytes);
    }

    fn total(&self) -> u64 {
        self.bytes.iter().fold(0, |a, b| a.saturating_add(*b))
    }
}

struct Own {
    counter: IntCounter,
    /// When it was last seen outside the top K; `None` while inside.
    out_since: Option<SystemTime>,
}

struct ServiceSeries {
    own: HashMap<Dest, Own>,
    other: IntCounter,
    candidates: HashMap<Dest, Hour>,
    /// Values of labels that lost their series, to resume from if they come back.
    retired: HashMap<Dest, u64>,
}

pub struct TopK {
    vec: IntCounterVec,
    k: usize,
    ttl: Duration,
    capacity: usize,
    services: HashMap<String, ServiceSeries>,
}

fn epoch(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / BUCKET_SECS)
}

impl TopK {
    /// `vec` has labels `service, destination, port, protocol`.
    pub fn new(vec: IntCounterVec, k: usize, ttl: Duration) -> Self {
        Self {
            vec,
            k,
            ttl,
            capacity: (4 * k).max(64),
            services: HashMap::new(),
        }
    }

    /// Counts `bytes` for a service's destination (`None`: a destination not kept apart).
    pub fn add(&mut self, service: &str, dest: Option<Dest>, bytes: u64, now: SystemTime) {
        if !self.services.contains_key(service) {
            let other = self
                .vec
                .with_label_values(&[service, "other", "other", "other"]);
            self.services.insert(
                service.to_owned(),
                ServiceSeries {
                    own: HashMap::new(),
                    other,
                    candidates: HashMap::new(),
                    retired: HashMap::new(),
                },
            );
        }
        let Some(series) = self.services.get_mut(service) else {
            return;
        };
        let Some(dest) = dest else {
            series.other.inc_by(bytes);
            return;
        };
        series.note(dest, bytes, epoch(now), self.capacity);
        if let Some(own) = series.own.get(&dest) {
            own.counter.inc_by(bytes);
        } else if series.own.len() < self.k {
            let counter = series.open(&self.vec, service, dest);
            counter.inc_by(bytes);
        } else {
            series.other.inc_by(bytes);
        }
    }

    /// Re-ranks every service: series out of the top K for `ttl` give their slot to the
    /// best-ranked destinations without one. Call it every interval.
    pub fn review(&mut self, now: SystemTime) {
        let epoch = epoch(now);
        for (service, series) in &mut self.services {
            for hour in series.candidates.values_mut() {
                hour.advance(epoch);
            }
            let mut ranked: Vec<(u64, Dest)> = series
                .candidates
                .iter()
                .map(|(dest, hour)| (hour.total(), *dest))
                .filter(|(bytes, _)| *bytes > 0)
                .collect();
            ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let top: HashSet<Dest> = ranked.iter().take(self.k).map(|(_, d)| *d).collect();
            let ttl = self.ttl;
            let mut expired = Vec::new();
            for (dest, own) in &mut series.own {
                if top.contains(dest) {
                    own.out_since = None;
                    continue;
                }
                let since = *own.out_since.get_or_insert(now);
                if now.duration_since(since).unwrap_or_default() >= ttl {
                    expired.push(*dest);
                }
            }
            for dest in expired {
                if let Some(own) = series.own.remove(&dest) {
                    series.retired.insert(dest, own.counter.get());
                    let _ = self.vec.remove_label_values(&labels(service, &dest).each());
                }
            }
            for (_, dest) in ranked.iter().take(self.k) {
                if series.own.len() >= self.k {
                    break;
                }
                if !series.own.contains_key(dest) {
                    series.open(&self.vec, service, *dest);
                }
            }
        }
    }

    /// Series a service has now, its other series included.
    pub fn series_of(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.own.len() + 1)
    }
}

impl ServiceSeries {
    /// Adds bytes to a destination's hour, making it a candidate (Space-Saving when full).
    fn note(&mut self, dest: Dest, bytes: u64, epoch: u64, capacity: usize) {
        if let Some(hour) = self.candidates.get_mut(&dest) {
            hour.add(epoch, bytes);
            return;
        }
        let mut hour = Hour {
            epoch,
            ..Hour::default()
        };
        if self.candidates.len() >= capacity {
            // The smallest candidate without a series of its own makes way.
            let smallest = self
                .candidates
                .iter_mut()
                .filter(|(d, _)| !self.own.contains_key(*d))
                .map(|(d, h)| {
                    h.advance(epoch);
                    (h.total(), *d)
                })
                .min();
            if let Some((count, victim)) = smallest {
                self.candidates.remove(&victim);
                hour.add(epoch, count);
            }
        }
        hour.add(epoch, bytes);
        self.candidates.insert(dest, hour);
    }

    fn open(&mut self, vec: &IntCounterVec, service: &str, dest: Dest) -> IntCounter {
        let counter = vec.with_label_values(&labels(service, &dest).each());
        if let Some(value) = self.retired.remove(&dest) {
            counter.inc_by(value);
        }
        self.own.insert(
            dest,
            Own {
                counter: counter.clone(),
                out_since: None,
            },
        );
        counter
    }
}

/// A series' label values: service, destination, port, protocol.
struct Labels {
    service: String,
    ip: String,
    port: String,
    protocol: &'static str,
}

impl Labels {
    fn each(&self) -> [&str; 4] {
        [&self.service, &self.ip, &self.port, self.protocol]
    }
}

fn labels(service: &str, dest: &Dest) -> Labels {
    Labels {
        service: service.to_owned(),
        ip: dest.ip.to_string(),
        port: dest.port.to_string(),
        protocol: dest.protocol,
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn vec() -> IntCounterVec {
        IntCounterVec::new(
            Opts::new("egress_bytes_total", "test"),
            &["service", "destination", "port", "protocol"],
        )
        .expect("metric")
    }

    fn dest(last: u8) -> Dest {
        Dest {
            ip: IpAddr::from([198, 51, 100, last]),
            port: 443,
            protocol: "tcp",
        }
    }

    fn value(vec: &IntCounterVec, ip: &str) -> Option<u64> {
        use prometheus::core::Collector as _;
        vec.collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "destination" && l.value() == ip)
            })
            .map(|m| {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "test counters are small integers"
                )]
                let v = m.get_counter().get_value() as u64;
                v
            })
    }

    #[test]
    fn first_k_then_other_with_exact_sum() {
        let v = vec();
        let mut top = TopK::new(v.clone(), 2, Duration::from_secs(900));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 1..=5u8 {
            top.add("mail.service", Some(dest(i)), u64::from(i) * 100, t);
        }
        assert_eq!(top.series_of("mail.service"), 3);
        assert_eq!(value(&v, "198.51.100.1"), Some(100));
        assert_eq!(value(&v, "198.51.100.2"), Some(200));
        assert_eq!(value(&v, "other"), Some(300 + 400 + 500));
    }

    #[test]
    fn a_series_out_of_the_top_k_stays_until_its_ttl_then_resumes_its_value() {
        let v = vec();
        let ttl = Duration::from_secs(900);
        let mut top = TopK::new(v.clone(), 1, ttl);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        top.add("s", Some(dest(1)), 10, t0);
        top.add("s", Some(dest(2)), 5_000, t0);
        top.review(t0);
        assert_eq!(value(&v, "198.51.100.1"), Some(10), "out of the top, kept");
        assert_eq!(value(&v, "198.51.100.2"), None);
        top.add("s", Some(dest(1)), 1, t0 + ttl / 2);
        top.review(t0 + ttl / 2);
        assert_eq!(value(&v, "198.51.100.1"), Some(11), "still within its ttl");
        top.review(t0 + ttl);
        assert_eq!(value(&v, "198.51.100.1"), None, "expired");
        assert_eq!(
            value(&v, "198.51.100.2"),
            Some(0),
            "the top destination's own series"
        );
        assert_eq!(value(&v, "other"), Some(5_000));
        top.add("s", Some(dest(2)), 7, t0 + ttl);
        assert_eq!(value(&v, "198.51.100.2"), Some(7));
        // Much later, .1 is the top one again and comes back where it left off.
        let later = t0 + Duration::from_secs(3 * 3600);
        top.add("s", Some(dest(1)), 9_000, later);
        top.review(later);
        top.review(later + ttl);
        assert_eq!(value(&v, "198.51.100.2"), None);
        assert_eq!(value(&v, "198.51.100.1"), Some(11));
        assert_eq!(top.series_of("s"), 2);
    }

    #[test]
    fn ten_thousand_destinations_are_bounded_candidates_and_k_plus_one_series() {
        let v = vec();
        let mut top = TopK::new(v.clone(), 20, Duration::from_secs(900));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut total = 0;
        for i in 0..10_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let d = Dest {
                ip: IpAddr::from([198, 51, a, b]),
                port: 53,
                protocol: "udp",
            };
            top.add("dns.service", Some(d), 100, t);
            total += 100;
        }
        // One heavy destination among them reaches the top and, once a slot frees, a series.
        top.add("dns.service", Some(dest(250)), 1_000_000, t);
        total += 1_000_000;
        top.review(t);
        assert_eq!(top.series_of("dns.service"), 21);
        let s = &top.services["dns.service"];
        assert!(s.candidates.len() <= 80, "{}", s.candidates.len());
        assert!(s.candidates.contains_key(&dest(250)));
        use prometheus::core::Collector as _;
        let families = v.collect();
        let sum: f64 = families
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value())
            .sum();
        let total = f64::from(u32::try_from(total).expect("small"));
        assert!((sum - total).abs() < 0.5, "{sum} != {total}");
    }
}
