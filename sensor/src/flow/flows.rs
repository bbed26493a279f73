//! The flow table: the kernel's running totals per (process, destination, port, protocol,
//! direction), turned into rows with the process named, per-interval deltas, and exact
//! per-service totals, in bounded memory.
//!
//! Bounds: at most `max_rows` rows. A full table makes room by evicting its least recently
//! active *idle* rows (nothing counted this interval, so nothing unreported is lost); when no
//! row is idle, new flows' bytes go to their service's `other` row. Either way every byte is
//! in exactly one row's interval and in its service's total.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sensor_common::{FlowCounters, FlowKey};

use super::{
    class::{DestinationClass, Networks},
    counters, destination,
    identity::{Names, Process, ProcessSource},
    interval::FlowInterval,
};
use crate::{
    api::{DestinationRecord, Filter, FlowRecord, ServiceRecord},
    dns::NameCache,
};

/// `FlowKey::family` of a process's overflow row: bytes it sent while the kernel's egress map
/// was full, counted without their destination. The kernel never uses this value.
pub const FAMILY_OVERFLOW: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: usize,
    /// A row with no bytes for this long is dropped (its bytes were reported long ago).
    pub idle_ttl: Duration,
}

/// One row: a kernel key's traffic, or a service's other row.
struct Row {
    process: Arc<Process>,
    /// What the row accounts for: the kernel's running totals for a kernel key's row, the
    /// bytes routed to it for an other row.
    totals: FlowCounters,
    /// Counted since the last interval record.
    interval: FlowCounters,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// The DNS name its destination had when the row was made (or, made unnamed, when it
    /// first counted with one): kept, so that a later answer naming the address otherwise
    /// does not rename what was seen.
    name: Option<Arc<str>>,
}

/// A kernel key the table follows: its last running totals, and where its bytes go.
struct Tracked {
    last: FlowCounters,
    /// Its bytes go to the service's other row (it found no room), for as long as the
    /// kernel keeps the key, so no byte is counted in two rows.
    to_other: bool,
    /// Its own row, unless it went to other or its row was evicted or expired.
    row: Option<Row>,
}

/// Maps keyed by what the kernel reports: fast, randomly seeded hashing.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One row's change in one poll, for the metrics.
pub struct FlowChange {
    pub process: Arc<Process>,
    /// `None` for bytes that went to an other row.
    pub key: Option<FlowKey>,
    pub delta: FlowCounters,
}

/// Why rows left the table, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Idle rows made room for new flows in a full table.
    pub full: u64,
    /// Rows with no bytes for `idle_ttl`.
    pub idle: u64,
}

pub struct FlowTable {
    limits: Limits,
    networks: Networks,
    /// Every kernel key followed, with its row: one lookup per key per poll.
    keys: FastMap<FlowKey, Tracked>,
    /// How many of `keys` have a row.
    rows: usize,
    /// Per service: bytes of flows that found no room.
    other: HashMap<String, Row>,
    /// Per service: every byte counted since start (deltas, so never more than once).
    services: HashMap<String, FlowCounters>,
    names: Names,
    pub evictions: Evictions,
    /// With a journal: the keys whose bytes since the last [`FlowTable::totals`] an
    /// interval's rows do not add up to (their bytes went to an other row, or the kernel
    /// deleted the key).
    unrowed: Option<HashSet<FlowKey, foldhash::fast::RandomState>>,
    /// The DNS answers' names of addresses (`[dns]`); `None`: rows are not named.
    dns: Option<NameCache>,
}

/// A kernel key found at the first poll of pinned maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub key: FlowKey,
    /// Its running totals then.
    pub kernel: FlowCounters,
    /// What of them was already accounted for; `None`: all of them (nothing to compare with).
    pub journaled: Option<FlowCounters>,
}

impl FlowTable {
    /// Which destinations are internal from now on (a config reload): rows and records made
    /// from now on are classed by them.
    pub fn set_networks(&mut self, networks: Networks) {
        self.networks = networks;
    }

    pub fn new(limits: Limits, networks: Networks) -> Self {
        Self {
            limits,
            networks,
            keys: FastMap::default(),
            rows: 0,
            other: HashMap::new(),
            services: HashMap::new(),
            names: Names::default(),
            evictions: Evictions::default(),
            unrowed: None,
            dns: None,
        }
    }

    /// Names rows by the DNS answers [`FlowTable::learn_names`] is given, kept in `cache`.
    pub fn name_destinations(&mut self, cache: NameCache) {
        self.dns = Some(cache);
    }

    /// Takes the DNS answers received by `now` (nothing unless rows are named).
    pub fn learn_names(&mut self, now: SystemTime, answers: &[crate::dns::DnsAnswer]) {
        if let Some(cache) = &mut self.dns {
            cache.learn(now, answers);
        }
    }

    /// The name cache, when rows are named.
    pub fn name_cache(&self) -> Option<&NameCache> {
        self.dns.as_ref()
    }

    /// Keeps what [`FlowTable::totals`] needs (the journal's totals records).
    pub fn keep_totals(&mut self) {
        self.unrowed.get_or_insert_with(HashSet::default);
    }

    /// The running totals accounted for so far: every key's (`complete`), or those of the
    /// keys whose bytes since the last call are not all in their own rows (for the others,
    /// the rows tell). Empty unless [`FlowTable::keep_totals`] was called.
    pub fn totals(&mut self, complete: bool) -> Vec<(FlowKey, FlowCounters)> {
        let Some(unrowed) = &mut self.unrowed else {
            return Vec::new();
        };
        let keys = &self.keys;
        let last = |key: &FlowKey| keys.get(key).map_or_else(FlowCounters::default, |t| t.last);
        if complete {
            unrowed.clear();
            return keys
                .iter()
                .filter(|(_, t)| !counters::is_zero(&t.last))
                .map(|(key, t)| (*key, t.last))
                .collect();
        }
        unrowed.drain().map(|key| (key, last(&key))).collect()
    }

    /// Takes one poll's running totals (per flow, and per process the bytes that overflowed
    /// the kernel's map) and returns what changed. `now` is injected so tests control time.
    pub fn apply(
        &mut self,
        now: SystemTime,
        sums: &[(FlowKey, FlowCounters)],
        overflow: &[(u32, FlowCounters)],
        source: &dyn ProcessSource,
    ) -> Vec<FlowChange> {
        let mut changes = Vec::new();
        for (key, totals) in with_overflow_rows(sums, overflow) {
            let tracked = self.keys.entry(key).or_insert(Tracked {
                last: FlowCounters::default(),
                to_other: false,
                row: None,
            });
            let delta = counters::since(&totals, &tracked.last);
            if counters::is_zero(&delta) {
                continue;
            }
            tracked.last = totals;
            // The common case: a flow with its row, one lookup.
            if let Some(row) = &mut tracked.row {
                row.totals = totals;
                row.add(&delta, now);
                if row.name.is_none() {
                    row.name = name_of(self.dns.as_ref(), now, &key);
                }
                let process = Arc::clone(&row.process);
                self.count(process, Some(key), delta, &mut changes);
                continue;
            }
            let to_other = tracked.to_other;
            let process = self.names.get(key.tgid, source);
            let own = !to_other && (self.rows < self.limits.max_rows || self.make_room());
            match self.keys.get_mut(&key) {
                Some(tracked) if own => {
                    let mut row = Row::new(&process, now);
                    row.name = name_of(self.dns.as_ref(), now, &key);
                    row.totals = totals;
                    row.add(&delta, now);
                    tracked.row = Some(row);
                    self.rows += 1;
                }
                Some(tracked) => {
                    tracked.to_other = true;
                    if let Some(unrowed) = &mut self.unrowed {
                        unrowed.insert(key);
                    }
                    let service = &process.service;
                    if !self.other.contains_key(service) {
                        let row = Row::new(&Arc::new(Process::other(service)), now);
                        self.other.insert(service.clone(), row);
                    }
                    if let Some(row) = self.other.get_mut(service) {
                        row.add_with_totals(&delta, now);
                    }
                }
                None => continue,
            }
            self.count(process, own.then_some(key), delta, &mut changes);
        }
        changes
    }

    /// Adds a delta to its service's total and to the poll's changes.
    fn count(
        &mut self,
        process: Arc<Process>,
        key: Option<FlowKey>,
        delta: FlowCounters,
        changes: &mut Vec<FlowChange>,
    ) {
        // get_mut first: the service's name is copied once, not on every delta.
        match self.services.get_mut(&process.service) {
            Some(total) => counters::add(total, &delta),
            None => {
                self.services.insert(process.service.clone(), delta);
            }
        }
        changes.push(FlowChange {
            process,
            key,
            delta,
        });
    }

    /// Evicts the least recently active idle rows (nothing counted this interval, so nothing
    /// unreported is lost), an eighth of the table per call so the scan is paid rarely.
    /// False when no row is idle.
    fn make_room(&mut self) -> bool {
        let idle: Vec<(SystemTime, FlowKey)> = self
            .keys
            .iter()
            .filter_map(|(key, t)| {
                let row = t.row.as_ref()?;
                counters::is_zero(&row.interval).then_some((row.last_seen, *key))
            })
            .collect();
        let evicted = oldest(idle, self.limits.max_rows / 8);
        for key in &evicted {
            if let Some(tracked) = self.keys.get_mut(key) {
                tracked.row = None;
            }
        }
        self.rows -= evicted.len();
        self.evictions.full += evicted.len() as u64;
        !evicted.is_empty()
    }

    /// The first poll of maps an earlier agent left pinned: their totals become the rows'
    /// totals, and what `journaled` says was accounted for already (by the journal's last
    /// totals) is not news; the rest comes with this poll's `apply`, as new bytes. A key
    /// `journaled` knows nothing of (`None`) is taken as accounted for in full.
    pub fn adopt(
        &mut self,
        now: SystemTime,
        sums: &[(FlowKey, FlowCounters)],
        overflow: &[(u32, FlowCounters)],
        source: &dyn ProcessSource,
        journaled: &dyn Fn(&FlowKey) -> Option<FlowCounters>,
    ) -> Vec<Adopted> {
        let mut adopted = Vec::new();
        for (key, totals) in with_overflow_rows(sums, overflow) {
            let accounted = journaled(&key);
            let row = (self.rows < self.limits.max_rows).then(|| {
                let mut row = Row::new(&self.names.get(key.tgid, source), now);
                row.name = name_of(self.dns.as_ref(), now, &key);
                row.totals = accounted.unwrap_or(totals);
                row
            });
            self.rows += usize::from(row.is_some());
            self.keys.insert(
                key,
                Tracked {
                    last: accounted.unwrap_or(totals),
                    to_other: false,
                    row,
                },
            );
            adopted.push(Adopted {
                key,
                kernel: totals,
                journaled: accounted,
            });
        }
        adopted
    }

    /// Ends an interval: each row's bytes since the last call, then drops rows idle for the
    /// TTL (and forgets keys of exited processes that no longer have a row).
    pub fn tick(&mut self, now: SystemTime) -> Vec<FlowInterval> {
        let networks = &self.networks;
        let mut records: Vec<FlowInterval> = self
            .keys
            .iter_mut()
            .filter_map(|(key, t)| Some((Some(key), t.row.as_mut()?)))
            .chain(self.other.values_mut().map(|row| (None, row)))
            .filter(|(_, row)| !counters::is_zero(&row.interval))
            .map(|(key, row)| {
                let record = interval_record(key, row, networks);
                row.interval = FlowCounters::default();
                record
            })
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.bytes_sent));
        let ttl = self.limits.idle_ttl;
        let idle = |row: &Row| now.duration_since(row.last_seen).unwrap_or_default() >= ttl;
        let mut expired = 0;
        self.keys.retain(|_, t| {
            if t.row.as_ref().is_some_and(idle) {
                t.row = None;
                expired += 1;
            }
            // A key whose process exited (`last` reset) and whose row is gone: done.
            t.row.is_some() || !counters::is_zero(&t.last)
        });
        self.rows -= expired;
        let before = self.other.len();
        self.other.retain(|_, row| !idle(row));
        self.evictions.idle += (expired + before - self.other.len()) as u64;
        self.names.prune();
        if let Some(cache) = &mut self.dns {
            cache.prune(now);
        }
        records
    }

    /// The keys of processes that exited are deleted from the kernel's map after this poll:
    /// they count from zero should the kernel make them again (a reused pid). Their rows stay
    /// until idle.
    pub fn forget_processes(&mut self, exited: &HashSet<u32>) {
        self.keys.retain(|key, t| {
            if !exited.contains(&key.tgid) {
                return true;
            }
            t.last = FlowCounters::default();
            if let Some(unrowed) = &mut self.unrowed {
                unrowed.insert(*key);
            }
            t.to_other = false;
            t.row.is_some()
        });
    }

    /// The process exec'd or its pid was forked anew: its new rows read it afresh
    /// (`Names::renew`).
    pub fn renew(&mut self, pid: u32) {
        self.names.renew(pid);
    }

    /// The process a row of this pid names.
    pub fn process(&self, pid: u32) -> Option<&Arc<Process>> {
        self.names.peek(pid)
    }

    /// Rows held (own and other).
    pub fn len(&self) -> usize {
        self.rows + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kernel keys being followed.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Each row with its kernel key (`None` for an other row).
    fn all_rows(&self) -> impl Iterator<Item = (Option<&FlowKey>, &Row)> {
        self.keys
            .iter()
            .filter_map(|(key, t)| Some((Some(key), t.row.as_ref()?)))
            .chain(self.other.values().map(|row| (None, row)))
    }

    /// Every byte counted per service since start, sent and received.
    pub fn service_totals(&self) -> &HashMap<String, FlowCounters> {
        &self.services
    }

    /// The API view: largest senders first, filtered.
    pub fn records(&self, filter: &Filter) -> Vec<FlowRecord> {
        let networks = &self.networks;
        let mut rows: Vec<(Option<&FlowKey>, &Row, DestinationClass)> = self
            .all_rows()
            .map(|(key, row)| (key, row, networks.classify(key.and_then(destination))))
            .filter(|(_, row, class)| filter.keeps(&row.process.service, class.as_str()))
            .collect();
        largest_first(&mut rows, filter.limit, |(key, row, _)| {
            (row.totals.sent, key.map(|k| k.tgid))
        });
        rows.into_iter()
            .map(|(key, row, class)| flow_record(key, row, class))
            .collect()
    }

    /// Per service: exact totals, row count and its largest destinations (`per_service`).
    pub fn services(&self, per_service: usize) -> Vec<ServiceRecord> {
        /// Per address: its bytes, and the name of its row that sent the most.
        type Destinations<'a> =
            HashMap<Option<IpAddr>, (FlowCounters, Option<(u64, &'a Arc<str>)>)>;
        let mut by_service: HashMap<&str, (u64, Destinations<'_>)> = HashMap::new();
        for (key, row) in self.all_rows() {
            let dest = key.and_then(destination);
            let (count, dests) = by_service.entry(&row.process.service).or_default();
            *count += 1;
            let (totals, name) = dests.entry(dest).or_default();
            counters::add(totals, &row.totals);
            if let Some(row_name) = &row.name {
                let this = (row.totals.sent, row_name);
                // Ties by name, so that the answer does not follow the table's hash order.
                if name.is_none_or(|(sent, n)| {
                    (sent, std::cmp::Reverse(n)) < (this.0, std::cmp::Reverse(this.1))
                }) {
                    *name = Some(this);
                }
            }
        }
        let mut records: Vec<ServiceRecord> = self
            .services
            .iter()
            .map(|(service, totals)| {
                let (flows, dests) = by_service.remove(service.as_str()).unwrap_or_default();
                let mut destinations: Vec<DestinationRecord> = dests
                    .into_iter()
                    .map(|(dest, (c, name))| DestinationRecord {
                        destination: dest.map_or_else(|| "other".to_owned(), |ip| ip.to_string()),
                        destination_name: name.map(|(_, n)| n.to_string()),
                        class: self.networks.classify(dest).as_str().to_owned(),
                        bytes_sent: c.sent,
                        bytes_received: c.received,
                    })
                    .collect();
                destinations.sort_by(|a, b| {
                    b.bytes_sent
                        .cmp(&a.bytes_sent)
                        .then_with(|| a.destination.cmp(&b.destination))
                });
                destinations.truncate(per_service);
                ServiceRecord {
                    service: service.clone(),
                    bytes_sent: totals.sent,
                    bytes_received: totals.received,
                    bytes_read: 0,
                    flows,
                    destinations,
                }
            })
            .collect();
        records.sort_by(|a, b| {
            b.bytes_sent
                .cmp(&a.bytes_sent)
                .then_with(|| a.service.cmp(&b.service))
        });
        records
    }
}

impl Row {
    fn new(process: &Arc<Process>, now: SystemTime) -> Self {
        Self {
            process: Arc::clone(process),
            totals: FlowCounters::default(),
            interval: FlowCounters::default(),
            first_seen: now,
            last_seen: now,
            name: None,
        }
    }

    fn add(&mut self, delta: &FlowCounters, now: SystemTime) {
        counters::add(&mut self.interval, delta);
        self.last_seen = now;
    }

    fn add_with_totals(&mut self, delta: &FlowCounters, now: SystemTime) {
        counters::add(&mut self.totals, delta);
        self.add(delta, now);
    }
}

/// For tests: the key of `tgid` sending over `protocol` to 198.51.100.`last_octet`:`port`.
#[cfg(test)]
pub(crate) fn test_key(tgid: u32, last_octet: u8, port: u16, protocol: u8) -> FlowKey {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&[198, 51, 100, last_octet]);
    FlowKey {
        tgid,
        port,
        family: sensor_common::FAMILY_IPV4,
        protocol,
        addr,
        direction: sensor_common::DIRECTION_OUTBOUND,
        _pad: [0; 7],
    }
}

/// The kernel's flows, then each process's overflow as a row with no destination.
fn with_overflow_rows<'a>(
    sums: &'a [(FlowKey, FlowCounters)],
    overflow: &'a [(u32, FlowCounters)],
) -> impl Iterator<Item = (FlowKey, FlowCounters)> + 'a {
    let overflow_rows = overflow.iter().map(|(tgid, counters)| {
        let key = FlowKey {
            tgid: *tgid,
            port: 0,
            family: FAMILY_OVERFLOW,
            protocol: 0,
            addr: [0; 16],
            direction: 0,
            _pad: [0; 7],
        };
        (key, *counters)
    });
    sums.iter().copied().chain(overflow_rows)
}

/// Keeps the `limit` rows with the most bytes and sorts them so, ties by pid (other rows,
/// with none, first); `size` gives a row's (bytes, pid).
pub(super) fn largest_first<T>(
    rows: &mut Vec<T>,
    limit: Option<usize>,
    size: impl Fn(&T) -> (u64, Option<u32>),
) {
    let order = |a: &T, b: &T| {
        let ((a_bytes, a_pid), (b_bytes, b_pid)) = (size(a), size(b));
        b_bytes.cmp(&a_bytes).then(a_pid.cmp(&b_pid))
    };
    let limit = limit.unwrap_or(usize::MAX);
    if limit < rows.len() {
        rows.select_nth_unstable_by(limit, order);
        rows.truncate(limit);
    }
    rows.sort_by(order);
}

/// The keys of the `batch` (at least one) least recently active of `idle`.
pub(super) fn oldest<K: Ord + Copy>(mut idle: Vec<(SystemTime, K)>, batch: usize) -> Vec<K> {
    let batch = batch.clamp(1, idle.len().max(1)).min(idle.len());
    if batch == 0 {
        return Vec::new();
    }
    if batch < idle.len() {
        idle.select_nth_unstable(batch - 1);
    }
    idle[..batch].iter().map(|(_, key)| *key).collect()
}

mod records;
use records::{flow_record, interval_record, name_of};

#[cfg(test)]
mod tests;
