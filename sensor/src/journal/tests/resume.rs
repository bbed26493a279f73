//! A restarted agent's view of the journal on disk: the last totals from the newest anchor
//! on, through intervals' rows and totals records; a torn tail; an old journal without any.

use std::{collections::HashMap, fs::OpenOptions};

use super::{TempDir, config, stop, write};
use crate::{
    flow::{
        class::DestinationClass,
        interval::{Direction, FlowInterval, Interval, Protocol, unix_ms},
    },
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
        protocol: Protocol::Tcp,
        direction: Direction::Outbound,
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

/// An interval ending at `secs` in which each (pid, bytes) row sent that much; pid 0 is a
/// service's other row.
fn interval(secs: u64, rows: &[(u32, u64)]) -> Record {
    Record::Interval(Interval {
        start_ms: ms(secs - 10),
        end_ms: ms(secs),
        flows: rows
            .iter()
            .map(|(pid, bytes)| FlowInterval {
                pid: *pid,
                destination: (*pid != 0).then_some(key(*pid).destination).flatten(),
                destination_name: None,
                class: DestinationClass::External,
                port: if *pid == 0 { 0 } else { 443 },
                protocol: if *pid == 0 {
                    Protocol::Other
                } else {
                    Protocol::Tcp
                },
                direction: if *pid == 0 {
                    Direction::Other
                } else {
                    Direction::Outbound
                },
                sends: 0,
                ..FlowInterval::sample("backup.service", *pid, "rsync", "198.51.100.2", *bytes)
            })
            .collect(),
        ..Interval::default()
    })
}

/// The totals record written after the interval that ends at `secs`.
fn after(secs: u64, complete: bool, flows: &[(u32, u64)]) -> Record {
    Record::Totals(TotalsRecord {
        at_ms: ms(secs),
        complete,
        flows: flows.iter().map(|(t, b)| (key(*t), sent(*b))).collect(),
    })
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
fn the_last_totals_are_the_resume_records_plus_each_intervals_rows_and_totals() {
    let dir = TempDir::new("resume-totals");
    let records = vec![
        resume(0, &[(1, 500, None), (2, 70, Some(60))]),
        // Key 2's 10 carried bytes and 20 more; key 3 new; key 4's bytes in the other row.
        interval(10, &[(2, 30), (3, 5), (0, 44)]),
        after(10, false, &[(4, 44)]),
        interval(20, &[(1, 300)]),
        // Key 3's process exited: its key was deleted from the kernel.
        after(20, false, &[(3, 0)]),
        stop(21),
    ];
    write(&config(&dir.0), &records);
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Stopped { at_ms: ms(21) },
            flows: totals(&[(1, 800), (2, 90), (3, 0), (4, 44)]),
        })
    );
}

#[test]
fn a_kill_inside_a_write_or_before_the_totals_leaves_what_the_journal_holds() {
    let dir = TempDir::new("resume-torn");
    let records = vec![
        resume(0, &[]),
        interval(10, &[(1, 100), (0, 9)]),
        // The totals record that should have named the key whose 9 bytes went to the other
        // row was lost (a kill between the two): that key stays unknown, and a restart
        // carries its bytes again.
        interval(20, &[(1, 150)]),
        // A totals record not right after its interval counts for nothing.
        after(10, false, &[(1, 7)]),
    ];
    write(&config(&dir.0), &records);
    // And half of a frame after it.
    let segment = crate::journal::format::list_segments(&dir.0).expect("list")[0]
        .1
        .clone();
    let mut frame = Vec::new();
    crate::journal::format::write_frame(&mut frame, 3, 9, &[0; 32], &[1, 2, 3]);
    let file = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    std::io::Write::write_all(&mut &file, &frame[..30]).expect("append");
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Unclean { last_at_ms: ms(20) },
            flows: totals(&[(1, 250)]),
        })
    );
}

#[test]
fn a_complete_totals_record_replaces_what_came_before_and_old_journals_have_none() {
    let dir = TempDir::new("resume-anchor");
    let journal = config(&dir.0);
    // An old journal: intervals without totals.
    write(
        &journal,
        &[interval(10, &[(1, 5)]), interval(20, &[(1, 5)])],
    );
    assert_eq!(
        last_totals(&dir.0).expect("reads"),
        Some(LastTotals {
            previous: PreviousRun::Unclean { last_at_ms: ms(20) },
            flows: None,
        })
    );
    // A complete totals record is an anchor: what came before it no longer counts.
    write(
        &journal,
        &[
            resume(0, &[(1, 5, None)]),
            interval(10, &[(2, 7)]),
            interval(20, &[(4, 40)]),
            after(20, true, &[(4, 40)]),
            interval(30, &[(5, 50), (4, 1)]),
        ],
    );
    assert_eq!(
        last_totals(&dir.0).expect("reads").and_then(|t| t.flows),
        totals(&[(4, 41), (5, 50)])
    );
}

#[test]
fn the_newest_anchor_is_looked_for_two_hours_of_intervals_back() {
    let dir = TempDir::new("resume-look-back");
    let mut journal = config(&dir.0);
    journal.segment_size = bytesize::ByteSize::b(400); // a record or two a segment
    // An anchor, then 90 minutes of intervals in later segments: found.
    let mut records = vec![resume(0, &[(1, 5, None)])];
    records.extend((1..=9).map(|i| interval(i * 600, &[(1, 1)])));
    write(&journal, &records);
    let segments = crate::journal::format::list_segments(&dir.0).expect("list");
    assert!(segments.len() >= 5, "{} segments", segments.len());
    assert_eq!(
        last_totals(&dir.0).expect("reads").and_then(|t| t.flows),
        totals(&[(1, 14)])
    );
    // Three hours more without one (what a build before totals records writes): the
    // older segments are not read, and there are no totals to compare with.
    let later: Vec<Record> = (10..=28).map(|i| interval(i * 600, &[(1, 1)])).collect();
    write(&journal, &later);
    assert_eq!(
        last_totals(&dir.0).expect("reads").and_then(|t| t.flows),
        None
    );
}
