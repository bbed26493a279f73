//! Records round-trip through encoding and through a journal on disk; what an interval
//! costs on disk.

use std::net::IpAddr;

use proptest::prelude::*;

use super::{TempDir, busy_interval, config, read, records, write};
use crate::journal::format::FRAME_OVERHEAD;
use crate::{
    api::{AlertChange, AlertEvent, AlertRecord},
    flow::{
        class::DestinationClass,
        interval::{Direction, FileInterval, FlowInterval, Interval, ProcessInfo, Protocol},
    },
    journal::{
        Counts, Entry, FlowId, PreviousRun, ProcessEventKind, ProcessRecord, Record, ResumeRecord,
        ResumedFlow, StartRecord, TotalsRecord,
        record::{ConfigRecord, DecodeError, StopRecord},
    },
};

fn name() -> impl Strategy<Value = String> {
    // A small pool, so that the string table is exercised, and any text now and then.
    prop_oneof![
        4 => prop::sample::select(vec!["", "smtp", "postfix@-.service", "/usr/bin/curl", "é✓"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn flow() -> impl Strategy<Value = FlowInterval> {
    (
        (name(), any::<u32>(), name(), name(), any::<Option<u32>>()),
        (any::<Option<IpAddr>>(), prop::option::of(name())),
        prop::sample::select(vec![
            DestinationClass::Loopback,
            DestinationClass::Internal,
            DestinationClass::External,
            DestinationClass::Other,
        ]),
        any::<u16>(),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Other]),
        prop::sample::select(vec![
            Direction::Outbound,
            Direction::Inbound,
            Direction::Other,
        ]),
        any::<[u64; 4]>(),
    )
        .prop_map(
            |(
                (service, pid, comm, exe, uid),
                (destination, destination_name),
                class,
                port,
                protocol,
                direction,
                n,
            )| {
                FlowInterval {
                    service,
                    pid,
                    comm,
                    exe,
                    uid,
                    destination,
                    destination_name,
                    class,
                    port,
                    protocol,
                    direction,
                    bytes_sent: n[0],
                    sends: n[1],
                    bytes_received: n[2],
                    recvs: n[3],
                }
            },
        )
}

fn file() -> impl Strategy<Value = FileInterval> {
    (
        (
            name(),
            any::<u32>(),
            name(),
            any::<Option<String>>(),
            name(),
        ),
        any::<[u64; 6]>(),
    )
        .prop_map(|((service, pid, comm, path, class), n)| FileInterval {
            service,
            pid,
            comm,
            path,
            class,
            device: n[0],
            inode: n[1],
            bytes_read: n[2],
            reads: n[3],
            bytes_written: n[4],
            writes: n[5],
        })
}

fn process() -> impl Strategy<Value = ProcessInfo> {
    (
        any::<u32>(),
        name(),
        name(),
        name(),
        any::<Option<u32>>(),
        prop::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(
            |(pid, comm, exe, service, session, ancestors)| ProcessInfo {
                pid,
                comm,
                exe,
                service,
                session,
                ancestors,
            },
        )
}

fn interval() -> impl Strategy<Value = Interval> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(flow(), 0..20),
        prop::collection::vec(file(), 0..6),
        prop::collection::vec(process(), 0..6),
    )
        .prop_map(|(start_ms, end_ms, flows, files, processes)| Interval {
            start_ms,
            end_ms,
            flows,
            files,
            processes,
        })
}

fn alert() -> impl Strategy<Value = AlertEvent> {
    (
        prop::sample::select(vec![
            AlertChange::Raised,
            AlertChange::Updated,
            AlertChange::Resolved,
        ]),
        (
            any::<u64>(),
            name(),
            name(),
            any::<u32>(),
            name(),
            any::<u16>(),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<String>>(),
            name(),
            prop::option::of(name()),
        ),
    )
        .prop_map(
            |(
                change,
                (id, kind, service, pid, destination, port),
                (bytes, window_s, resolved_at, text, destination_name),
            )| {
                AlertEvent {
                    change,
                    alert: AlertRecord {
                        id,
                        kind,
                        severity: "critical".into(),
                        service,
                        pid,
                        comm: "curl".into(),
                        destination,
                        port,
                        bytes,
                        window_s,
                        started_at: "2026-11-23T19:39:39Z".into(),
                        raised_at: "2026-11-23T19:39:40Z".into(),
                        updated_at: "2026-11-23T19:39:50Z".into(),
                        resolved_at,
                        status: "firing".into(),
                        class: None,
                        summary: text.clone(),
                        description: text,
                        destination_name,
                    },
                }
            },
        )
}

pub(super) fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => (any::<u64>(), name(), name(), any::<Option<String>>()).prop_map(
            |(at_ms, hostname, config_toml, detect_state)| Record::Start(StartRecord {
                at_ms,
                agent_version: "0.3.0".into(),
                hostname,
                config_source: "(embedded default)".into(),
                config_toml,
                detect_state,
            })
        ),
        1 => (any::<u64>(), name()).prop_map(|(at_ms, config_toml)| Record::Config(ConfigRecord {
            at_ms,
            config_source: "/etc/exfil-sensor/config.toml".into(),
            config_toml,
        })),
        3 => interval().prop_map(Record::Interval),
        1 => (any::<u64>(), any::<u32>(), any::<u32>(), any::<bool>(), name(), name(), name())
            .prop_map(|(at_ms, pid, ppid, exec, comm, exe, service)| {
                Record::Process(ProcessRecord {
                    at_ms,
                    pid,
                    ppid,
                    event: if exec {
                        ProcessEventKind::Exec
                    } else {
                        ProcessEventKind::Exit
                    },
                    comm,
                    exe,
                    service,
                })
            }),
        1 => alert().prop_map(Record::Alert),
        1 => any::<u64>().prop_map(|at_ms| Record::Stop(StopRecord { at_ms })),
        1 => (any::<u64>(), any::<bool>(), prop::collection::vec((flow_id(), counts()), 0..4))
            .prop_map(|(at_ms, complete, flows)| Record::Totals(TotalsRecord {
                at_ms,
                complete,
                flows,
            })),
        1 => (
            any::<u64>(),
            any::<(u8, u64)>(),
            prop::collection::vec((flow_id(), counts(), any::<Option<[u64; 4]>>()), 0..4),
        )
            .prop_map(|(at_ms, (previous, previous_ms), flows)| Record::Resume(ResumeRecord {
                at_ms,
                previous: match previous % 3 {
                    0 => PreviousRun::None,
                    1 => PreviousRun::Stopped { at_ms: previous_ms },
                    _ => PreviousRun::Unclean {
                        last_at_ms: previous_ms,
                    },
                },
                flows: flows
                    .into_iter()
                    .map(|(key, kernel, journaled)| ResumedFlow {
                        key,
                        kernel,
                        journaled: journaled.map(|[sent, sends, received, recvs]| Counts {
                            sent,
                            sends,
                            received,
                            recvs,
                        }),
                    })
                    .collect(),
            })),
    ]
}

fn flow_id() -> impl Strategy<Value = FlowId> {
    (
        any::<u32>(),
        any::<Option<IpAddr>>(),
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(tgid, destination, port, protocol, direction)| FlowId {
            tgid,
            destination,
            port,
            protocol: Protocol::from_kernel(protocol),
            direction: Direction::from_kernel(direction),
        })
}

fn counts() -> impl Strategy<Value = Counts> {
    any::<[u64; 4]>().prop_map(|[sent, sends, received, recvs]| Counts {
        sent,
        sends,
        received,
        recvs,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_record_round_trips_through_its_encoding(record in record()) {
        let mut payload = Vec::new();
        record.encode(false, &mut payload).expect("encodes");
        let decoded = Record::decode(record.record_type() as u8, &payload).expect("decodes");
        prop_assert_eq!(decoded, record);
    }

    #[test]
    fn any_sequence_of_records_round_trips_through_a_journal(
        records_in in prop::collection::vec(record(), 0..24),
        segment_kib in 1u64..64,
    ) {
        let dir = TempDir::new("roundtrip");
        let mut config = config(&dir.0);
        // Small segments: sequences cross segment boundaries. (Config validation keeps real
        // ones at 1 MiB or more; the writer takes any size.)
        config.segment_size = bytesize::ByteSize::kib(segment_kib);
        write(&config, &records_in);
        let entries = read(&dir.0);
        let numbers: Vec<u64> = entries
            .iter()
            .map(|e| match e {
                Entry::Record { position, .. } => position.number,
                Entry::Damaged(d) => panic!("damage in an intact journal: {d:?}"),
            })
            .collect();
        prop_assert_eq!(numbers, (1..=records_in.len() as u64).collect::<Vec<_>>());
        prop_assert_eq!(records(&entries), records_in);
    }
}

#[test]
fn redacted_paths_are_not_written() {
    let mut interval = busy_interval(10);
    let mut payload = Vec::new();
    Record::Interval(interval.clone())
        .encode(true, &mut payload)
        .expect("encodes");
    let Ok(Record::Interval(read)) = Record::decode(3, &payload) else {
        panic!("an interval");
    };
    assert!(!String::from_utf8_lossy(&payload).contains("/var/vmail"));
    for file in &mut interval.files {
        file.path = None;
    }
    assert_eq!(read, interval);
}

#[test]
fn payloads_of_another_version_type_or_length_are_refused() {
    let mut payload = Vec::new();
    Record::Stop(StopRecord { at_ms: 5 })
        .encode(false, &mut payload)
        .expect("encodes");
    assert_eq!(payload, vec![1, 5]);
    assert_eq!(Record::decode(9, &payload), Err(DecodeError::Type(9)));
    assert_eq!(Record::decode(6, &[2, 5]), Err(DecodeError::Version(2)));
    assert_eq!(Record::decode(6, &[]), Err(DecodeError::Empty));
    assert_eq!(
        Record::decode(6, &[1, 5, 0]),
        Err(DecodeError::Body {
            kind: crate::journal::record::RecordType::Stop,
            message: "1 bytes after the record".into()
        })
    );
}

/// The payload bytes of `record`.
fn encoded(record: Record) -> usize {
    let mut payload = Vec::new();
    record.encode(false, &mut payload).expect("encodes");
    payload.len()
}

/// What an interval of 10,000 flows costs, naive postcard against the journal's compact
/// form, and a busy mail server's day. The numbers are in the README's Journal section.
#[test]
fn an_interval_of_10k_flows_is_compact() {
    let interval = busy_interval(10_000);
    let flows_only = Interval {
        files: Vec::new(),
        processes: Vec::new(),
        ..interval.clone()
    };
    let naive = postcard::to_stdvec(&flows_only).expect("encodes").len();
    let flows = encoded(Record::Interval(flows_only));
    let whole = encoded(Record::Interval(interval));
    // A mail server's 10 s interval: 1,000 flows, 100 file rows, 200 processes; and an
    // exec and an exit record for each of 2 processes started a second.
    let busy = encoded(Record::Interval(busy_interval(1_000))) + FRAME_OVERHEAD;
    let process = encoded(Record::Process(ProcessRecord {
        at_ms: 1_795_392_000_000,
        pid: 412_345,
        ppid: 1_234,
        event: ProcessEventKind::Exec,
        comm: "smtp".into(),
        exe: "/usr/lib/postfix/sbin/smtp".into(),
        service: "postfix@-.service".into(),
    })) + FRAME_OVERHEAD;
    let day = busy * 8_640 + process * 4 * 86_400;
    eprintln!(
        "10k flows: naive {naive} B, compact {flows} B ({:.1} B per flow row); with 1,000 \
         file rows and 200 processes {whole} B. Mail server: interval frame {busy} B, process \
         frame {process} B, {:.0} MB a day, {:.1} GB in 90 days",
        flows as f64 / 10_000.0,
        day as f64 / 1e6,
        day as f64 * 90.0 / 1e9,
    );
    assert_eq!(
        (naive, flows, whole, busy, process),
        (776_939, 190_273, 271_087, 32_105, 123)
    );
}
