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
//! Newcomers are admitted once per poll, in a batch: the largest of the poll's newcomers
//! replace the smallest candidates, so a poll over 100k destinations costs a selection and
//! two small sorts per service, not a scan of the candidates per destination.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use prometheus::{IntCounter, IntCounterVec};

use crate::flow::interval::Protocol;

/// A destination as a series tells it apart: address, port label, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Ten-minute buckets of the last hour.
const BUCKETS: usize = 6;
const BUCKET_SECS: u64 = 600;

#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    bytes: [u64; BUCKETS],
    /// The bucket number (Unix seconds / 600) last written.
    epoch: u64,
    /// The sum of `bytes`, kept as they change.
    total: u64,
}

impl Hour {
    fn advance(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        let stale = (epoch - self.epoch).min(BUCKETS as u64);
        for step in 1..=stale {
            let slot = &mut self.bytes[bucket(self.epoch + step)];
            self.total = self.total.saturating_sub(*slot);
            *slot = 0;
        }
        self.epoch = epoch;
    }

    fn add(&mut self, epoch: u64, bytes: u64) {
        self.advance(epoch);
        let slot = &mut self.bytes[bucket(epoch)];
        *slot = slot.saturating_add(bytes);
        self.total = self.total.saturating_add(bytes);
    }
}

fn bucket(epoch: u64) -> usize {
    usize::try_from(epoch % BUCKETS as u64).unwrap_or(0)
}

/// A destination being ranked. Kept in a `Vec` so that finding the smallest is a scan of
/// contiguous memory, the one cost every newcomer to a full set pays.
struct Candidate {
    dest: Dest,
    hour: Hour,
    /// It has a series of its own (so it is never the one to make way).
    own: bool,
}

struct Own {
    counter: IntCounter,
    /// When it was last seen outside the top K; `None` while inside.
    out_since: Option<SystemTime>,
}

struct ServiceSeries {
    own: HashMap<Dest, Own>,
    other: IntCounter,
    candidates: Vec<Candidate>,
    /// Where each candidate is in `candidates`.
    index: HashMap<Dest, usize>,
    /// Values of labels that lost their series, to resume from if they come back.
    retired: HashMap<Dest, u64>,
    /// This poll's bytes of destinations that are not candidates, for `admit`.
    pending: Vec<(u64, Dest)>,
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
                    candidates: Vec::new(),
                    index: HashMap::new(),
                    retired: HashMap::new(),
                    pending: Vec::new(),
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

    /// Ends a poll: each service's newcomers compete for candidate places.
    pub fn admit(&mut self, now: SystemTime) {
        let epoch = epoch(now);
        for series in self.services.values_mut() {
            series.admit(epoch);
        }
    }

    /// Re-ranks every service: series out of the top K for `ttl` give their slot to the
    /// best-ranked destinations without one. Call it every interval.
    pub fn review(&mut self, now: SystemTime) {
        let epoch = epoch(now);
        for (service, series) in &mut self.services {
            for candidate in &mut series.candidates {
                candidate.hour.advance(epoch);
            }
            let mut ranked: Vec<(u64, Dest)> = series
                .candidates
                .iter()
                .map(|c| (c.hour.total, c.dest))
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
                    series.mark_own(&dest, false);
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
    #[cfg(test)]
    fn series_of(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.own.len() + 1)
    }
}

impl ServiceSeries {
    /// Adds bytes to a destination's hour: a candidate's at once, a newcomer's while there
    /// is room, else the newcomer waits for `admit` at the end of the poll.
    fn note(&mut self, dest: Dest, bytes: u64, epoch: u64, capacity: usize) {
        if let Some(&i) = self.index.get(&dest) {
            self.candidates[i].hour.add(epoch, bytes);
        } else if self.candidates.len() < capacity {
            let mut hour = Hour {
                epoch,
                ..Hour::default()
            };
            hour.add(epoch, bytes);
            self.index.insert(dest, self.candidates.len());
            let own = self.own.contains_key(&dest);
            self.candidates.push(Candidate { dest, hour, own });
        } else {
            self.pending.push((bytes, dest));
        }
    }

    /// Space-Saving in a batch: the poll's largest newcomers replace the smallest candidates
    /// without a series, each inheriting the count it replaces. Totals compared are at most
    /// one interval stale (`review` advances them all).
    fn admit(&mut self, epoch: u64) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut smallest: Vec<(u64, usize)> = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.own)
            .map(|(i, c)| (c.hour.total, i))
            .collect();
        let places = smallest.len().min(pending.len());
        if places > 0 {
            if places < pending.len() {
                pending.select_nth_unstable_by(places - 1, |a, b| b.0.cmp(&a.0));
                pending.truncate(places);
            }
            pending.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
            smallest.sort_unstable();
            for ((bytes, dest), (count, i)) in pending.drain(..).zip(smallest) {
                let mut hour = Hour {
                    epoch,
                    ..Hour::default()
                };
                hour.add(epoch, count.saturating_add(bytes));
                self.index.remove(&self.candidates[i].dest);
                self.index.insert(dest, i);
                let own = self.own.contains_key(&dest);
                self.candidates[i] = Candidate { dest, hour, own };
            }
        }
        // Keep the allocation for the next poll.
        pending.clear();
        self.pending = pending;
    }

    fn mark_own(&mut self, dest: &Dest, own: bool) {
        if let Some(&i) = self.index.get(dest) {
            self.candidates[i].own = own;
        }
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
        self.mark_own(&dest, true);
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
        protocol: dest.protocol.as_str(),
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
            protocol: Protocol::Tcp,
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
                protocol: Protocol::Udp,
            };
            top.add("dns.service", Some(d), 100, t);
            total += 100;
        }
        top.admit(t);
        // One heavy destination among them is admitted as a candidate and ranks first.
        top.add("dns.service", Some(dest(250)), 1_000_000, t);
        total += 1_000_000;
        top.admit(t);
        top.review(t);
        assert_eq!(top.series_of("dns.service"), 21);
        let s = &top.services["dns.service"];
        assert!(s.candidates.len() <= 80, "{}", s.candidates.len());
        assert_eq!(s.index.len(), s.candidates.len());
        assert!(s.index.contains_key(&dest(250)));
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
