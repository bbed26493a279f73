//! The flow table against a fake kernel and a fake /proc, on a fake clock.
use std::{net::Ipv6Addr, time::Duration};

use proptest::prelude::*;
use sensor_common::{DIRECTION_INBOUND, FAMILY_IPV6, PROTO_TCP};

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
            lineage: crate::flow::identity::Lineage::default(),
        })
    }
}

fn key(tgid: u32, last_octet: u8, port: u16) -> FlowKey {
    test_key(tgid, last_octet, port, PROTO_TCP)
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
    let adopted = t.adopt(at(0), &[(k, sent(5_000))], &[], &FakeProc, &|_| None);
    assert_eq!(adopted[0].journaled, None);
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
fn adopted_totals_beyond_the_journaled_ones_are_the_first_intervals_bytes() {
    let mut t = table(100);
    let (journaled, unknown, recreated) = (key(7, 2, 443), key(7, 3, 443), key(8, 2, 443));
    let baseline = |k: &FlowKey| {
        Some(match k.tgid {
            // The kernel made this key afresh after the journal's totals: all of it is new.
            8 => sent(9_000),
            _ if *k == journaled => sent(3_000),
            _ => FlowCounters::default(),
        })
    };
    let pinned = [
        (journaled, sent(5_000)),
        (unknown, sent(700)),
        (recreated, sent(40)),
    ];
    t.adopt(at(0), &pinned, &[], &FakeProc, &baseline);
    let changes = t.apply(at(0), &pinned, &[], &FakeProc);
    assert_eq!(changes.len(), 3);
    let mut bytes: Vec<(u32, u8, u64)> = t
        .tick(at(10))
        .iter()
        .map(|r| {
            let octet = match r.destination {
                Some(IpAddr::V4(ip)) => ip.octets()[3],
                _ => 0,
            };
            (r.pid, octet, r.bytes_sent)
        })
        .collect();
    bytes.sort_unstable();
    assert_eq!(bytes, vec![(7, 2, 2_000), (7, 3, 700), (8, 2, 40)]);
    let mut totals: Vec<u64> = t
        .records(&Filter::default())
        .iter()
        .map(|r| r.bytes_sent)
        .collect();
    totals.sort_unstable();
    assert_eq!(totals, vec![40, 700, 5_000], "the kernel's totals");
}

#[test]
fn totals_name_the_keys_their_rows_do_not_tell() {
    let mut t = table(1);
    assert!(t.totals(true).is_empty(), "nothing kept before keep_totals");
    t.keep_totals();
    let (a, b) = (key(7, 2, 443), key(9, 2, 443));
    // a has the only row; b finds no room and counts in its service's other row.
    t.apply(at(0), &[(a, sent(100)), (b, sent(5))], &[], &FakeProc);
    assert_eq!(t.totals(false), vec![(b, sent(5))]);
    t.apply(at(1), &[(a, sent(300)), (b, sent(5))], &[], &FakeProc);
    assert_eq!(t.totals(false), vec![], "a's row tells, b did not move");
    // The kernel deletes the keys of an exited process: they count from zero.
    t.forget_processes(&HashSet::from([7]));
    assert_eq!(t.totals(false), vec![(a, FlowCounters::default())]);
    t.apply(at(2), &[(a, sent(40)), (b, sent(8))], &[], &FakeProc);
    let mut complete = t.totals(true);
    complete.sort_by_key(|(k, _)| k.tgid);
    assert_eq!(complete, vec![(a, sent(40)), (b, sent(8))], "every key");
    assert_eq!(t.totals(false), vec![], "a complete list clears the others");
}

#[test]
fn exited_processes_are_forgotten_and_their_new_key_counts_afresh() {
    let mut t = table(100);
    let k = key(7, 2, 443);
    t.apply(at(0), &[(k, sent(100))], &[], &FakeProc);
    t.forget_processes(&HashSet::from([7]));
    assert_eq!((t.keys(), t.len()), (1, 1), "the row stays until idle");
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
