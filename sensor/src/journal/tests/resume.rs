//! A restarted agent's view of the journal on disk: the last totals over several segments
//! (read back only to the newest anchor), a torn tail, an old journal without totals.

use std::{collections::HashMap, fs::OpenOptions};

use super::{TempDir, config, stop, write};
use crate::{
    flow::interval::{Interval, unix_ms},
    journal::{
        Counts, FlowId, LastTotals, PreviousRun, Record, ResumeRecord, ResumedFlow, TotalsRecord,
        last_totals,
    },
};

fn key(tgid: u32) -> FlowId {
    FlowId {
        tgid,
        destination: Some("198.51.100.2".parse().expect("an IP")),
        port: 443,
        protocol: sensor_common::PROTO_TCP,
        direction: sensor_common::DIRECTION_OUTBOUND,
    }
}

fn sent(bytes: u64) -> Counts {
    Counts {
        sent: bytes,
        ..Counts::default()
    }
}

fn ms(secs: u64) -> u64 {
    unix_ms(super::at(secs))
}

fn resume(secs: u64, flows: &[(u32, u64, Option<u64>)]) -> Record {
    Record::Resume(ResumeRecord {
        at_ms: ms(secs),
        previous: PreviousRun::None,
        flows: flows
            .iter()
            .map(|(tgid, kernel, journaled)| ResumedFlow {
                key: key(*tgid),
                kernel: sent(*kernel),
                journaled: journaled.map(sent),
            })
            .collect(),
    })
}

/// A totals record and its interval, ending at `secs`.
fn interval(secs: u64, complete: bool, flows: &[(u32, u64)]) -> [Record; 2] {
    [
        Record::Totals(TotalsRecord {
            at_ms: ms(secs),
            complete,
            flows: flows.iter().map(|(t, b)| (key(*t), sent(*b))).collect(),
        }),
        Record::Interval(Interval {
            start_ms: ms(secs - 10),
            end_ms: ms(secs),
            ..Interval::default()
        }),
    ]
}

fn totals(flows: &[(u32, u64)]) -> Option<HashMap<FlowId, Counts>> {
    Some(flows.iter().map(|(t, b)| (key(*t), sent(*b))).collect())
}

#[test]
fn a_new_journal_has_no_last_totals() {
    let dir = TempDir::new("resume-new");
    assert_eq!(last_totals(&dir.0).expect("reads"), None);
}

#[test]
fn the_last_totals_follow_the_resume_record_and_each_paired_totals_record() {
    let dir = TempDir::new("resume-totals");
    let mut records = vec![resume(0, &[(1, 500, None), (2, 70, Some(60))])];
    records.extend(interval(10, false, &[(2, 90), (3, 5)]));
    records.extend(interval(20, false, &[(1, 800)]));
    records.push(stop(21));
    write(&config(&dir.0), &records);
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Stopped { at_ms: ms(21) },
            flows: totals(&[(1, 800), (2, 90), (3, 5)]),
        })
    );
}

#[test]
fn a_kill_between_totals_and_interval_or_inside_a_write_leaves_the_totals_before() {
    let dir = TempDir::new("resume-torn");
    let mut records = vec![resume(0, &[])];
    records.extend(interval(10, false, &[(1, 100)]));
    let [totals_20, _] = interval(20, false, &[(1, 250)]);
    records.push(totals_20);
    write(&config(&dir.0), &records);
    // And half of a frame after it.
    let segment = crate::journal::format::list_segments(&dir.0).expect("list")[0]
        .1
        .clone();
    let len = std::fs::metadata(&segment).expect("stat").len();
    let mut frame = Vec::new();
    crate::journal::format::write_frame(&mut frame, 3, 9, &[0; 32], &[1, 2, 3]);
    let file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    std::io::Write::write_all(&mut &file, &frame[..30]).expect("append");
    assert!(std::fs::metadata(&segment).expect("stat").len() > len);
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Unclean { last_at_ms: ms(20) },
            flows: totals(&[(1, 100)]),
        })
    );
}

#[test]
fn a_complete_totals_record_replaces_what_came_before_and_old_journals_have_none() {
    let dir = TempDir::new("resume-anchor");
    let mut journal = config(&dir.0);
    journal.segment_size = bytesize::ByteSize::mib(1);
    // An old journal: intervals without totals.
    let old = vec![
        Record::Interval(Interval {
            start_ms: ms(0),
            end_ms: ms(10),
            ..Interval::default()
        });
        3
    ];
    write(&journal, &old);
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Unclean { last_at_ms: ms(10) },
            flows: None,
        })
    );
    // A complete totals record is an anchor: what came before it no longer counts.
    let mut records = vec![resume(0, &[(1, 5, None)])];
    records.extend(interval(10, false, &[(2, 7)]));
    records.extend(interval(20, true, &[(4, 40)]));
    records.extend(interval(30, false, &[(5, 50)]));
    write(&journal, &records);
    assert_eq!(
        last_totals(&dir.0).expect("reads").and_then(|t| t.flows),
        totals(&[(4, 40), (5, 50)])
    );
}
