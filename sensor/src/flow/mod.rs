//! Flows: the kernel's per-(process, destination) sums, with the process named.

pub mod files;
pub mod identity;
pub mod paths;
pub mod process;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::SystemTime,
};

use sensor_common::{
    DIRECTION_INBOUND, DIRECTION_OUTBOUND, FAMILY_IPV6, FlowCounters, FlowKey, PROTO_TCP, PROTO_UDP,
};
use serde::Serialize;

use self::identity::{Names, Process, ProcessSource};

/// `FlowKey::family` of a process's overflow row: bytes it sent while the kernel's egress map
/// was full, counted without their destination. The kernel never uses this value.
pub const FAMILY_OVERFLOW: u8 = 0;

/// The remote address of a key, as the IP it is; `None` for an overflow row.
pub fn destination(key: &FlowKey) -> Option<IpAddr> {
    match key.family {
        FAMILY_OVERFLOW => None,
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(key.addr))),
        _ => {
            let [a, b, c, d, ..] = key.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
    }
}

/// How the API and metrics write a destination: the address, or `other` for overflow.
pub fn destination_text(key: &FlowKey) -> String {
    destination(key).map_or_else(|| "other".to_owned(), |ip| ip.to_string())
}

pub fn direction_name(direction: u8) -> &'static str {
    match direction {
        DIRECTION_OUTBOUND => "outbound",
        DIRECTION_INBOUND => "inbound",
        _ => "other",
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "other",
    }
}

struct FlowEntry {
    counters: FlowCounters,
    first_seen: SystemTime,
    last_seen: SystemTime,
    process: Arc<Process>,
}

/// One flow as the API shows it (fields as in shared/CONTRACT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub service: String,
    pub destination: String,
    /// The remote port of an outbound flow, the local port of an inbound one.
    pub port: u16,
    pub protocol: &'static str,
    /// `outbound` (this host connected) or `inbound` (this host accepted).
    pub direction: &'static str,
    /// Exact bytes sent since the maps were created. A row whose destination is `other`
    /// holds what the process sent while the kernel's flow map was full.
    pub bytes_sent: u64,
    pub sends: u64,
    pub bytes_received: u64,
    pub recvs: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// Every flow the kernel has counted, with its process named at first sight.
#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, FlowEntry>,
    names: Names,
}

impl FlowTable {
    /// Takes one poll's running totals: per flow, and per process the bytes that overflowed
    /// the kernel's map. `now` is injected so tests control time.
    pub fn apply(
        &mut self,
        now: SystemTime,
        sums: &[(FlowKey, FlowCounters)],
        overflow: &[(u32, FlowCounters)],
        source: &dyn ProcessSource,
    ) {
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
        for (key, counters) in sums.iter().copied().chain(overflow_rows) {
            let (key, counters) = (&key, &counters);
            if let Some(entry) = self.flows.get_mut(key) {
                if entry.counters != *counters {
                    entry.counters = *counters;
                    entry.last_seen = now;
                }
                continue;
            }
            let process = self.names.get(key.tgid, source);
            self.flows.insert(
                *key,
                FlowEntry {
                    counters: *counters,
                    first_seen: now,
                    last_seen: now,
                    process,
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Each flow's key, process and running totals.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &Process, &FlowCounters)> {
        self.flows
            .iter()
            .map(|(key, entry)| (key, entry.process.as_ref(), &entry.counters))
    }

    /// The API view, largest senders first.
    pub fn records(&self) -> Vec<FlowRecord> {
        let mut records: Vec<FlowRecord> = self
            .flows
            .iter()
            .map(|(key, entry)| FlowRecord {
                pid: key.tgid,
                comm: entry.process.comm.clone(),
                exe: entry.process.exe.clone(),
                service: entry.process.service.clone(),
                destination: destination_text(key),
                port: key.port,
                protocol: protocol_name(key.protocol),
                direction: direction_name(key.direction),
                bytes_sent: entry.counters.sent,
                sends: entry.counters.sends,
                bytes_received: entry.counters.received,
                recvs: entry.counters.recvs,
                first_seen: humantime::format_rfc3339_seconds(entry.first_seen).to_string(),
                last_seen: humantime::format_rfc3339_seconds(entry.last_seen).to_string(),
            })
            .collect();
        records.sort_by(|a, b| b.bytes_sent.cmp(&a.bytes_sent).then(a.pid.cmp(&b.pid)));
        records
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sensor_common::FAMILY_IPV4;

    use super::*;

    struct FakeProc;
    impl ProcessSource for FakeProc {
        fn process(&self, pid: u32) -> Option<Process> {
            (pid == 7).then(|| Process {
                comm: "curl".into(),
                exe: "/usr/bin/curl".into(),
                service: "backup.service".into(),
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
            direction: DIRECTION_INBOUND,
            _pad: [0; 7],
        }
    }

    #[test]
    fn totals_are_the_kernel_totals_and_times_follow_changes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t1 + Duration::from_secs(1);
        let mut table = FlowTable::default();
        let sums = |sent| {
            let counters = FlowCounters {
                sent,
                sends: 3,
                received: 517,
                recvs: 2,
            };
            [(key(7, 2, 443), counters)]
        };
        table.apply(t0, &sums(100), &[], &FakeProc);
        table.apply(t1, &sums(7_340_032), &[], &FakeProc);
        table.apply(t2, &sums(7_340_032), &[], &FakeProc);
        let records = table.records();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (r.bytes_sent, r.sends, r.bytes_received, r.recvs),
            (7_340_032, 3, 517, 2)
        );
        assert_eq!(
            (r.pid, r.port, r.protocol, r.direction),
            (7, 443, "tcp", "inbound")
        );
        assert_eq!(r.destination, "198.51.100.2");
        assert_eq!(r.service, "backup.service");
        assert_eq!(r.first_seen, "2023-11-14T22:13:20Z");
        assert_eq!(r.last_seen, "2023-11-14T22:13:21Z");
    }

    #[test]
    fn a_process_gone_before_first_sight_is_unknown() {
        let mut table = FlowTable::default();
        table.apply(
            SystemTime::UNIX_EPOCH,
            &[(
                key(99, 9, 53),
                FlowCounters {
                    sent: 1,
                    sends: 1,
                    ..FlowCounters::default()
                },
            )],
            &[],
            &FakeProc,
        );
        assert_eq!(table.records()[0].service, "unknown");
    }

    #[test]
    fn ipv6_destinations_print_as_ipv6() {
        let mut k = key(1, 0, 22);
        k.family = FAMILY_IPV6;
        k.addr = "2001:db8::2".parse::<Ipv6Addr>().expect("addr").octets();
        assert_eq!(destination_text(&k), "2001:db8::2");
    }

    #[test]
    fn overflow_is_a_row_of_its_process_to_other() {
        let mut table = FlowTable::default();
        let own = [(
            key(7, 2, 443),
            FlowCounters {
                sent: 64,
                sends: 1,
                ..FlowCounters::default()
            },
        )];
        let overflow = [(
            7,
            FlowCounters {
                sent: 1_936,
                sends: 5,
                ..FlowCounters::default()
            },
        )];
        table.apply(SystemTime::UNIX_EPOCH, &own, &overflow, &FakeProc);
        let records = table.records();
        assert_eq!(records.len(), 2);
        let other = &records[0];
        assert_eq!(
            (
                other.destination.as_str(),
                other.protocol,
                other.port,
                other.bytes_sent,
                other.sends
            ),
            ("other", "other", 0, 1_936, 5)
        );
        assert_eq!(other.service, "backup.service");
        let total: u64 = records.iter().map(|r| r.bytes_sent).sum();
        assert_eq!(total, 2_000);
    }
}
