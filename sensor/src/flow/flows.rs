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
    interval::{Direction, FlowInterval, Protocol},
};
use crate::api::{DestinationRecord, Filter, FlowRecord, ServiceRecord};

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
}

/// The last running totals read for a kernel key, and whether its bytes go to the other row.
struct Seen {
    totals: FlowCounters,
    to_other: bool,
}

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
    seen: HashMap<FlowKey, Seen>,
    rows: HashMap<FlowKey, Row>,
    /// Per service: bytes of flows that found no room.
    other: HashMap<String, Row>,
    /// Per service: every byte counted since start (deltas, so never more than once).
    services: HashMap<String, FlowCounters>,
    names: Names,
    pub evictions: Evictions,
}

impl FlowTable {
    pub fn new(limits: Limits, networks: Networks) -> Self {
        Self {
            limits,
            networks,
            seen: HashMap::new(),
            rows: HashMap::new(),
            other: HashMap::new(),
            services: HashMap::new(),
            names: Names::default(),
            evictions: Evictions::default(),
        }
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
            let seen = self.seen.entry(key).or_insert(Seen {
                totals: FlowCounters::default(),
                to_other: false,
            });
            let delta = counters::since(&totals, &seen.totals);
            if counters::is_zero(&delta) {
                continue;
            }
            seen.totals = totals;
            let process = self.names.get(key.tgid, source);
            let own = !seen.to_other
                && (self.rows.contains_key(&key)
                    || self.rows.len() < self.limits.max_rows
                    || make_room(
                        &mut self.rows,
                        &mut self.evictions,
                        self.limits.max_rows,
                        |row| counters::is_zero(&row.interval).then_some(row.last_seen),
                    ));
            if own {
                let row = self
                    .rows
                    .entry(key)
                    .or_insert_with(|| Row::new(&process, now));
                row.totals = totals;
                row.add(&delta, now);
            } else {
                seen.to_other = true;
                self.other
                    .entry(process.service.clone())
                    .or_insert_with(|| Row::new(&Arc::new(Process::other(&process.service)), now))
                    .add_with_totals(&delta, now);
            }
            counters::add(
                self.services.entry(process.service.clone()).or_default(),
                &delta,
            );
            changes.push(FlowChange {
                process,
                key: own.then_some(key),
                delta,
            });
        }
        changes
    }

    /// The first poll of maps an earlier agent left pinned: their totals become the rows'
    /// totals, but not news — they were counted (and reported) before this agent started.
    pub fn adopt(
        &mut self,
        now: SystemTime,
        sums: &[(FlowKey, FlowCounters)],
        overflow: &[(u32, FlowCounters)],
        source: &dyn ProcessSource,
    ) {
        for (key, totals) in with_overflow_rows(sums, overflow) {
            self.seen.insert(
                key,
                Seen {
                    totals,
                    to_other: false,
                },
            );
            if self.rows.len() < self.limits.max_rows {
                let process = self.names.get(key.tgid, source);
                let mut row = Row::new(&process, now);
                row.totals = totals;
                self.rows.insert(key, row);
            }
        }
    }

    /// Ends an interval: each row's bytes since the last call, then drops rows idle for the
    /// TTL.
    pub fn tick(&mut self, now: SystemTime) -> Vec<FlowInterval> {
        let networks = &self.networks;
        let mut records: Vec<FlowInterval> = self
            .rows
            .iter_mut()
            .map(|(key, row)| (Some(key), row))
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
        let before = self.rows.len() + self.other.len();
        self.rows.retain(|_, row| !idle(row));
        self.other.retain(|_, row| !idle(row));
        let dropped = before - self.rows.len() - self.other.len();
        self.evictions.idle += dropped as u64;
        self.names.prune();
        records
    }

    /// Forgets the kernel keys of processes that exited (the agent deletes them from the
    /// kernel's map after this poll): they cannot count again. Their rows stay until idle.
    pub fn forget_processes(&mut self, exited: &HashSet<u32>) -> Vec<FlowKey> {
        let mut gone = Vec::new();
        self.seen.retain(|key, _| {
            let dead = exited.contains(&key.tgid);
            if dead {
                gone.push(*key);
            }
            !dead
        });
        gone
    }

    /// Rows held (own and other).
    pub fn len(&self) -> usize {
        self.rows.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kernel keys being followed.
    pub fn keys(&self) -> usize {
        self.seen.len()
    }

    /// Every byte counted per service since start, sent and received.
    pub fn service_totals(&self) -> &HashMap<String, FlowCounters> {
        &self.services
    }

    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// The API view: largest senders first, filtered.
    pub fn records(&self, filter: &Filter) -> Vec<FlowRecord> {
        let networks = &self.networks;
        let mut rows: Vec<(Option<&FlowKey>, &Row, DestinationClass)> = self
            .rows
            .iter()
            .map(|(key, row)| (Some(key), row))
            .chain(self.other.values().map(|row| (None, row)))
            .map(|(key, row)| (key, row, networks.classify(key.and_then(destination))))
            .filter(|(_, row, class)| filter.keeps(&row.process.service, class.as_str()))
            .collect();
        let order = |a: &(Option<&FlowKey>, &Row, DestinationClass),
                     b: &(Option<&FlowKey>, &Row, DestinationClass)| {
            b.1.totals
                .sent
                .cmp(&a.1.totals.sent)
                .then_with(|| a.0.map(|k| k.tgid).cmp(&b.0.map(|k| k.tgid)))
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit < rows.len() {
            rows.select_nth_unstable_by(limit, order);
            rows.truncate(limit);
        }
        rows.sort_by(order);
        rows.into_iter()
            .map(|(key, row, class)| flow_record(key, row, class))
            .collect()
    }

    /// Per service: exact totals, row count and its largest destinations (`per_service`).
    pub fn services(&self, per_service: usize) -> Vec<ServiceRecord> {
        let mut by_service: HashMap<&str, (u64, HashMap<Option<IpAddr>, FlowCounters>)> =
            HashMap::new();
        let rows = self
            .rows
            .iter()
            .map(|(key, row)| (destination(key), row))
            .chain(self.other.values().map(|row| (None, row)));
        for (dest, row) in rows {
            let (count, dests) = by_service.entry(&row.process.service).or_default();
            *count += 1;
            counters::add(dests.entry(dest).or_default(), &row.totals);
        }
        let mut records: Vec<ServiceRecord> = self
            .services
            .iter()
            .map(|(service, totals)| {
                let (flows, dests) = by_service.remove(service.as_str()).unwrap_or_default();
                let mut destinations: Vec<DestinationRecord> = dests
                    .into_iter()
                    .map(|(dest, c)| DestinationRecord {
                        destination: dest.map_or_else(|| "other".to_owned(), |ip| ip.to_string()),
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

/// Evicts the least recently active idle rows (`idle_since` is `Some(last_seen)` for a row
/// with nothing counted this interval), an eighth of the table per call so the scan is paid
/// rarely. False when no row is idle.
pub(super) fn make_room<K: Copy + Eq + std::hash::Hash + Ord, R>(
    rows: &mut HashMap<K, R>,
    evictions: &mut Evictions,
    max: usize,
    idle_since: impl Fn(&R) -> Option<SystemTime>,
) -> bool {
    let mut idle: Vec<(SystemTime, K)> = rows
        .iter()
        .filter_map(|(key, row)| Some((idle_since(row)?, *key)))
        .collect();
    if idle.is_empty() {
        return false;
    }
    let batch = (max / 8).clamp(1, idle.len());
    if batch < idle.len() {
        idle.select_nth_unstable(batch - 1);
    }
    for (_, key) in &idle[..batch] {
        rows.remove(key);
    }
    evictions.full += batch as u64;
    true
}

fn interval_record(key: Option<&FlowKey>, row: &Row, networks: &Networks) -> FlowInterval {
    let p = &row.process;
    let dest = key.and_then(destination);
    FlowInterval {
        service: p.service.clone(),
        pid: key.map_or(0, |k| k.tgid),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        uid: p.uid,
        destination: dest,
        class: networks.classify(dest),
        port: key.map_or(0, |k| k.port),
        protocol: key.map_or(Protocol::Other, |k| Protocol::from_kernel(k.protocol)),
        direction: key.map_or(Direction::Other, |k| Direction::from_kernel(k.direction)),
        bytes_sent: row.interval.sent,
        sends: row.interval.sends,
        bytes_received: row.interval.received,
        recvs: row.interval.recvs,
    }
}

fn flow_record(key: Option<&FlowKey>, row: &Row, class: DestinationClass) -> FlowRecord {
    let p = &row.process;
    FlowRecord {
        pid: key.map_or(0, |k| k.tgid),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        uid: p.uid,
        service: p.service.clone(),
        destination: key
            .and_then(destination)
            .map_or_else(|| "other".to_owned(), |ip| ip.to_string()),
        class: class.as_str().to_owned(),
        port: key.map_or(0, |k| k.port),
        protocol: key
            .map_or(Protocol::Other, |k| Protocol::from_kernel(k.protocol))
            .as_str()
            .to_owned(),
        direction: key
            .map_or(Direction::Other, |k| Direction::from_kernel(k.direction))
            .as_str()
            .to_owned(),
        bytes_sent: row.totals.sent,
        sends: row.totals.sends,
        bytes_received: row.totals.received,
        recvs: row.totals.recvs,
        first_seen: humantime::format_rfc3339_seconds(row.first_seen).to_string(),
        last_seen: humantime::format_rfc3339_seconds(row.last_seen).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv6Addr, time::Duration};

    use proptest::prelude::*;
    use sensor_common::{
        DIRECTION_INBOUND, DIRECTION_OUTBOUND, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP,
    };

    use super::*;

    /// pid 7 is curl in backup.service, pid 8 postfix's smtp; others are gone.
    struct FakeProc;
    impl ProcessSource for FakeProc {
        fn process(&self, pid: u32) -> Option<Process> {
            let (comm, service) = match pid {
                7 => ("curl", "backup.service"),
                8 => ("smtp", "postfix@-.service"),
                _ => return None,
            };
            Some(Process {
                comm: comm.into(),
                exe: format!("/usr/bin/{comm}"),
                uid: Some(0),
                service: service.into(),
                parents: Vec::new(),
            })
        }
    }

    fn key(tgid: u32, last_octet: u8, port: u16) -> FlowKey {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, last_octet]);
        FlowKey {
            tgid,
            port,
            family: FAMILY_IPV4,
            protocol: PROTO_TCP,
            addr,
            direction: DIRECTION_OUTBOUND,
            _pad: [0; 7],
        }
    }

    fn sent(bytes: u64) -> FlowCounters {
        FlowCounters {
            sent: bytes,
            sends: 1,
            ..FlowCounters::default()
        }
    }

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn table(max_rows: usize) -> FlowTable {
        let limits = Limits {
            max_rows,
            idle_ttl: Duration::from_secs(600),
        };
        FlowTable::new(
            limits,
            Networks::new(&["192.0.2.0/24".parse().expect("net")]),
        )
    }

    #[test]
    fn totals_are_the_kernel_totals_and_times_follow_changes() {
        let mut t = table(100);
        let mut k = key(7, 2, 443);
        k.direction = DIRECTION_INBOUND;
        let sums = |sent| {
            let counters = FlowCounters {
                sent,
                sends: 3,
                received: 517,
                recvs: 2,
            };
            [(k, counters)]
        };
        t.apply(at(0), &sums(100), &[], &FakeProc);
        t.apply(at(1), &sums(7_340_032), &[], &FakeProc);
        let unchanged = t.apply(at(2), &sums(7_340_032), &[], &FakeProc);
        assert!(unchanged.is_empty(), "no change, no delta");
        let records = t.records(&Filter::default());
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (r.bytes_sent, r.sends, r.bytes_received, r.recvs),
            (7_340_032, 3, 517, 2)
        );
        assert_eq!(
            (r.pid, r.port, r.protocol.as_str(), r.direction.as_str()),
            (7, 443, "tcp", "inbound")
        );
        assert_eq!(
            (r.destination.as_str(), r.class.as_str(), r.service.as_str()),
            ("198.51.100.2", "external", "backup.service")
        );
        assert_eq!(r.first_seen, "2023-11-14T22:13:20Z");
        assert_eq!(r.last_seen, "2023-11-14T22:13:21Z");
    }

    #[test]
    fn a_process_gone_before_first_sight_is_unknown() {
        let mut t = table(100);
        t.apply(at(0), &[(key(99, 9, 53), sent(1))], &[], &FakeProc);
        let r = &t.records(&Filter::default())[0];
        assert_eq!(
            (r.service.as_str(), r.comm.as_str()),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn ipv6_destinations_print_as_ipv6() {
        let mut k = key(1, 0, 22);
        k.family = FAMILY_IPV6;
        k.addr = "2001:db8::2".parse::<Ipv6Addr>().expect("addr").octets();
        assert_eq!(destination(&k), Some("2001:db8::2".parse().expect("ip")));
    }

    #[test]
    fn kernel_overflow_is_a_row_of_its_process_to_other() {
        let mut t = table(100);
        let own = [(key(7, 2, 443), sent(64))];
        let overflow = [(7, sent(1_936))];
        t.apply(at(0), &own, &overflow, &FakeProc);
        let records = t.records(&Filter::default());
        assert_eq!(records.len(), 2);
        let other = &records[0];
        assert_eq!(
            (
                other.destination.as_str(),
                other.class.as_str(),
                other.protocol.as_str(),
                other.port,
                other.bytes_sent,
                other.pid
            ),
            ("other", "other", "other", 0, 1_936, 7)
        );
        assert_eq!(other.service, "backup.service");
        assert_eq!(t.service_totals()["backup.service"].sent, 2_000);
    }

    #[test]
    fn intervals_carry_each_rows_bytes_once_and_long_flows_every_interval() {
        let mut t = table(100);
        let k = key(7, 2, 443);
        t.apply(at(0), &[(k, sent(1_000))], &[], &FakeProc);
        t.apply(at(5), &[(k, sent(3_000))], &[], &FakeProc);
        let first = t.tick(at(10));
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].bytes_sent, first[0].pid, first[0].class),
            (3_000, 7, DestinationClass::External)
        );
        assert!(t.tick(at(20)).is_empty(), "nothing moved");
        t.apply(at(25), &[(k, sent(3_500))], &[], &FakeProc);
        let third = t.tick(at(30));
        assert_eq!(
            third[0].bytes_sent, 500,
            "the same connection, next interval"
        );
    }

    #[test]
    fn a_full_table_evicts_idle_rows_else_sends_new_flows_to_other() {
        let mut t = table(2);
        t.apply(
            at(0),
            &[(key(7, 1, 443), sent(10)), (key(7, 2, 443), sent(20))],
            &[],
            &FakeProc,
        );
        // Both rows moved this interval: no room, the third flow goes to other.
        t.apply(at(1), &[(key(7, 3, 443), sent(30))], &[], &FakeProc);
        assert_eq!(t.len(), 3, "two rows and backup.service's other row");
        let other: Vec<FlowRecord> = t
            .records(&Filter::default())
            .into_iter()
            .filter(|r| r.destination == "other")
            .collect();
        assert_eq!((other[0].bytes_sent, other[0].pid), (30, 0));
        // It stays in other while the kernel follows it, so totals never count twice.
        t.apply(at(2), &[(key(7, 3, 443), sent(45))], &[], &FakeProc);
        let interval = t.tick(at(10));
        let total: u64 = interval.iter().map(|r| r.bytes_sent).sum();
        assert_eq!(total, 10 + 20 + 45);
        // Now the first two are idle; a new flow evicts the least recently active one.
        t.apply(at(11), &[(key(7, 2, 443), sent(21))], &[], &FakeProc);
        t.apply(at(12), &[(key(8, 4, 25), sent(4_000))], &[], &FakeProc);
        let records = t.records(&Filter::default());
        let destinations: Vec<&str> = records.iter().map(|r| r.destination.as_str()).collect();
        assert_eq!(destinations, ["198.51.100.4", "other", "198.51.100.2"]);
        assert_eq!(t.evictions, Evictions { full: 1, idle: 0 });
        assert_eq!(t.service_totals()["backup.service"].sent, 10 + 21 + 45);
        assert_eq!(t.service_totals()["postfix@-.service"].sent, 4_000);
    }

    #[test]
    fn idle_rows_expire_after_the_ttl_and_come_back_with_kernel_totals() {
        let mut t = table(100);
        let k = key(7, 2, 443);
        t.apply(at(0), &[(k, sent(100))], &[], &FakeProc);
        t.tick(at(10));
        t.tick(at(599));
        assert_eq!(t.len(), 1);
        t.tick(at(600));
        assert_eq!((t.len(), t.evictions.idle), (0, 1));
        t.apply(at(700), &[(k, sent(150))], &[], &FakeProc);
        let r = &t.records(&Filter::default())[0];
        assert_eq!(r.bytes_sent, 150, "the kernel's running total");
        assert_eq!(t.tick(at(710))[0].bytes_sent, 50, "only the new bytes");
    }

    #[test]
    fn adopted_totals_are_shown_but_not_counted_again() {
        let mut t = table(100);
        let k = key(7, 2, 443);
        t.adopt(at(0), &[(k, sent(5_000))], &[], &FakeProc);
        assert!(
            t.apply(at(0), &[(k, sent(5_000))], &[], &FakeProc)
                .is_empty()
        );
        t.apply(at(1), &[(k, sent(5_100))], &[], &FakeProc);
        assert_eq!(t.records(&Filter::default())[0].bytes_sent, 5_100);
        assert_eq!(t.tick(at(10))[0].bytes_sent, 100);
        assert_eq!(t.service_totals()["backup.service"].sent, 100);
    }

    #[test]
    fn exited_processes_are_forgotten_and_their_new_key_counts_afresh() {
        let mut t = table(100);
        let k = key(7, 2, 443);
        t.apply(at(0), &[(k, sent(100))], &[], &FakeProc);
        let gone = t.forget_processes(&HashSet::from([7]));
        assert_eq!((gone, t.keys()), (vec![k], 0));
        // The kernel key was deleted; a pid reused later starts from zero.
        t.apply(at(1), &[(k, sent(40))], &[], &FakeProc);
        assert_eq!(t.service_totals()["backup.service"].sent, 140);
    }

    #[test]
    fn records_filter_by_service_and_class_and_limit_largest_first() {
        let mut t = table(100);
        let mut internal = key(8, 0, 25);
        internal.addr[..4].copy_from_slice(&[192, 0, 2, 9]);
        t.apply(
            at(0),
            &[
                (key(7, 1, 443), sent(10)),
                (key(7, 2, 443), sent(30)),
                (key(8, 3, 25), sent(20)),
                (internal, sent(99)),
            ],
            &[],
            &FakeProc,
        );
        let pick = |service: Option<&str>, class: Option<&str>, limit| {
            let filter = Filter {
                service: service.map(str::to_owned),
                class: class.map(str::to_owned),
                limit,
            };
            t.records(&filter)
                .into_iter()
                .map(|r| r.bytes_sent)
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(None, None, None), [99, 30, 20, 10]);
        assert_eq!(pick(None, None, Some(2)), [99, 30]);
        assert_eq!(pick(Some("backup.service"), None, None), [30, 10]);
        assert_eq!(pick(None, Some("external"), Some(2)), [30, 20]);
        assert_eq!(
            pick(Some("postfix@-.service"), Some("internal"), None),
            [99]
        );
        assert_eq!(pick(Some("nobody"), None, None), Vec::<u64>::new());
        let services = t.services(1);
        assert_eq!(services[0].service, "postfix@-.service");
        assert_eq!((services[0].bytes_sent, services[0].flows), (119, 2));
        assert_eq!(services[0].destinations[0].destination, "192.0.2.9");
        assert_eq!(services[0].destinations[0].class, "internal");
        assert_eq!(services[0].destinations.len(), 1);
    }

    proptest! {
        /// Whatever the kernel reports, poll after poll, with a table too small for it: per
        /// service, the exact total equals the sum of interval records, and equals what the
        /// kernel counted.
        #[test]
        fn totals_equal_the_sum_of_interval_records(
            polls in proptest::collection::vec(
                proptest::collection::vec((7u32..=9, 1u8..=6, 0u64..5_000), 0..8),
                1..20,
            ),
            max_rows in 1usize..5,
            forget_at in proptest::option::of(0usize..20),
        ) {
            let mut t = table(max_rows);
            let mut kernel: HashMap<FlowKey, FlowCounters> = HashMap::new();
            let mut counted: HashMap<String, u64> = HashMap::new();
            let mut recorded: HashMap<String, u64> = HashMap::new();
            for (i, poll) in polls.iter().enumerate() {
                for (tgid, octet, bytes) in poll {
                    let c = kernel.entry(key(*tgid, *octet, 443)).or_default();
                    c.sent += bytes;
                    c.sends += 1;
                    let service = FakeProc.process(*tgid).map_or_else(|| "unknown".to_owned(), |p| p.service);
                    *counted.entry(service).or_default() += bytes;
                }
                let sums: Vec<(FlowKey, FlowCounters)> = kernel.iter().map(|(k, c)| (*k, *c)).collect();
                let now = at(i as u64 * 4);
                t.apply(now, &sums, &[], &FakeProc);
                if forget_at == Some(i) {
                    // pid 8 exits: its keys leave the kernel map and the table.
                    t.forget_processes(&HashSet::from([8]));
                    kernel.retain(|k, _| k.tgid != 8);
                }
                if i % 3 == 2 {
                    for r in t.tick(now) {
                        *recorded.entry(r.service).or_default() += r.bytes_sent;
                    }
                }
            }
            for r in t.tick(at(1_000)) {
                *recorded.entry(r.service).or_default() += r.bytes_sent;
            }
            counted.retain(|_, v| *v > 0);
            recorded.retain(|_, v| *v > 0);
            let totals: HashMap<String, u64> = t
                .service_totals()
                .iter()
                .map(|(s, c)| (s.clone(), c.sent))
                .filter(|(_, v)| *v > 0)
                .collect();
            prop_assert_eq!(&recorded, &counted);
            prop_assert_eq!(&totals, &counted);
        }
    }
}
