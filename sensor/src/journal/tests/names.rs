//! Destination names in the journal: records without names keep 0.6's bytes, so every 0.6
//! journal reads as before; names trail the records that have them.

use crate::{
    api::{AlertChange, AlertEvent, AlertRecord},
    flow::interval::{FlowInterval, Interval},
    journal::record::{Record, RecordType},
};

fn interval(name: Option<&str>) -> Interval {
    let mut flow = FlowInterval::sample("backup.service", 42, "curl", "198.51.100.2", 7_340_032);
    flow.destination_name = name.map(str::to_owned);
    Interval {
        start_ms: 1_795_392_000_000,
        end_ms: 1_795_392_010_000,
        flows: vec![flow],
        ..Interval::default()
    }
}

fn alert(name: Option<&str>) -> AlertEvent {
    AlertEvent {
        change: AlertChange::Raised,
        alert: AlertRecord {
            id: 3,
            kind: "burst".into(),
            severity: "critical".into(),
            service: "backup.service".into(),
            pid: 42,
            comm: "curl".into(),
            destination: "198.51.100.2".into(),
            port: 443,
            bytes: 7_340_032,
            window_s: 300,
            started_at: "2026-11-23T00:00:00Z".into(),
            raised_at: "2026-11-23T00:00:10Z".into(),
            updated_at: "2026-11-23T00:00:10Z".into(),
            resolved_at: None,
            status: "firing".into(),
            class: None,
            summary: "s".into(),
            description: "d".into(),
            destination_name: name.map(str::to_owned),
        },
    }
}

fn payload(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    record.encode(false, &mut out).expect("encodes");
    out
}

/// The payload of this interval and this alert as 0.6 wrote them: version byte, postcard body.
const INTERVAL_06: &[u8] = &[
    1, 128, 160, 207, 173, 160, 52, 144, 238, 207, 173, 160, 52, 3, 14, 98, 97, 99, 107, 117, 112,
    46, 115, 101, 114, 118, 105, 99, 101, 4, 99, 117, 114, 108, 13, 47, 117, 115, 114, 47, 98, 105,
    110, 47, 99, 117, 114, 108, 1, 0, 42, 1, 2, 1, 0, 1, 0, 1, 0, 198, 51, 100, 2, 2, 187, 3, 0, 0,
    128, 128, 192, 3, 1, 0, 0, 0, 0,
];
const ALERT_06: &[u8] = &[
    1, 0, 3, 5, 98, 117, 114, 115, 116, 8, 99, 114, 105, 116, 105, 99, 97, 108, 14, 98, 97, 99,
    107, 117, 112, 46, 115, 101, 114, 118, 105, 99, 101, 42, 4, 99, 117, 114, 108, 12, 49, 57, 56,
    46, 53, 49, 46, 49, 48, 48, 46, 50, 187, 3, 128, 128, 192, 3, 172, 2, 20, 50, 48, 50, 54, 45,
    49, 49, 45, 50, 51, 84, 48, 48, 58, 48, 48, 58, 48, 48, 90, 20, 50, 48, 50, 54, 45, 49, 49, 45,
    50, 51, 84, 48, 48, 58, 48, 48, 58, 49, 48, 90, 20, 50, 48, 50, 54, 45, 49, 49, 45, 50, 51, 84,
    48, 48, 58, 48, 48, 58, 49, 48, 90, 0, 6, 102, 105, 114, 105, 110, 103, 0, 1, 115, 1, 100,
];

/// 0.6's alert record, as its `AlertRecord` was (no `destination_name`): what says that
/// `ALERT_06` is 0.6's layout and not just this build's.
#[derive(serde::Serialize)]
struct Alert06<'a> {
    change: AlertChange,
    alert: Record06<'a>,
}

#[derive(serde::Serialize)]
struct Record06<'a> {
    id: u64,
    kind: &'a str,
    severity: &'a str,
    service: &'a str,
    pid: u32,
    comm: &'a str,
    destination: &'a str,
    port: u16,
    bytes: u64,
    window_s: u64,
    started_at: &'a str,
    raised_at: &'a str,
    updated_at: &'a str,
    resolved_at: Option<&'a str>,
    status: &'a str,
    class: Option<&'a str>,
    summary: &'a str,
    description: &'a str,
}

#[test]
fn records_without_names_are_the_0_6_bytes_and_0_6_records_read() {
    let unnamed_interval = Record::Interval(interval(None));
    let unnamed_alert = Record::Alert(alert(None));
    let a = alert(None).alert;
    let old = Alert06 {
        change: AlertChange::Raised,
        alert: Record06 {
            id: a.id,
            kind: &a.kind,
            severity: &a.severity,
            service: &a.service,
            pid: a.pid,
            comm: &a.comm,
            destination: &a.destination,
            port: a.port,
            bytes: a.bytes,
            window_s: a.window_s,
            started_at: &a.started_at,
            raised_at: &a.raised_at,
            updated_at: &a.updated_at,
            resolved_at: a.resolved_at.as_deref(),
            status: &a.status,
            class: a.class.as_deref(),
            summary: &a.summary,
            description: &a.description,
        },
    };
    let mut old_bytes = vec![1];
    old_bytes.extend(postcard::to_stdvec(&old).expect("encodes"));
    assert_eq!(old_bytes, ALERT_06);
    assert_eq!(payload(&unnamed_interval), INTERVAL_06);
    assert_eq!(payload(&unnamed_alert), ALERT_06);
    assert_eq!(
        Record::decode(RecordType::Interval as u8, INTERVAL_06),
        Ok(unnamed_interval)
    );
    assert_eq!(
        Record::decode(RecordType::Alert as u8, ALERT_06),
        Ok(unnamed_alert)
    );
}

#[test]
fn names_trail_the_0_6_bytes_and_read_back() {
    let name = "upload.example.test";
    // The trailer: the list of (row, string) indexes; the name went into the string table.
    let named = payload(&Record::Interval(interval(Some(name))));
    assert_eq!(named.last_chunk::<3>(), Some(&[1, 0, 3]));
    assert_eq!(
        Record::decode(RecordType::Interval as u8, &named),
        Ok(Record::Interval(interval(Some(name))))
    );
    // The alert: 0.6's bytes, then `Some` and the name.
    let named = payload(&Record::Alert(alert(Some(name))));
    let mut expected = ALERT_06.to_vec();
    expected.extend_from_slice(&[1, 19]);
    expected.extend_from_slice(name.as_bytes());
    assert_eq!(named, expected);
    assert_eq!(
        Record::decode(RecordType::Alert as u8, &named),
        Ok(Record::Alert(alert(Some(name))))
    );
    // A trailer that points out of the record is damage, not a name.
    let mut bad = payload(&Record::Interval(interval(Some(name))));
    let last = bad.len() - 1;
    bad[last] = 9;
    assert!(Record::decode(RecordType::Interval as u8, &bad).is_err());
}

/// What names cost in the journal: 10,000 flow rows each named (one of 1,000 MX host names,
/// `mxN.example-N.net`, 20 characters on average) against the same rows unnamed.
#[test]
fn names_cost_a_few_bytes_per_row_and_each_name_once() {
    let unnamed = super::busy_interval(10_000);
    let mut named = unnamed.clone();
    for (i, flow) in named.flows.iter_mut().enumerate() {
        flow.destination_name = Some(format!("mx{}.example-{}.net", i % 1_000, i % 1_000));
    }
    let size = |interval: &Interval| payload(&Record::Interval(interval.clone())).len();
    let (unnamed, named) = (size(&unnamed), size(&named));
    eprintln!(
        "10k flow rows: {unnamed} B unnamed, {named} B named ({:.1} B more per row)",
        (named - unnamed) as f64 / 10_000.0
    );
    assert_eq!((unnamed, named), (271_087, 335_270));
}
