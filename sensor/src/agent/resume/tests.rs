//! Restarts through the journal's records: an agent killed mid-interval, one stopped
//! cleanly, and one with no journal, each followed by an agent on the same pinned totals.

use std::sync::{Arc, Mutex};

use sensor_common::{FlowCounters, FlowKey, PROTO_TCP};

use super::*;
use crate::{
    agent::{Aggregator, PollInput},
    config::Config,
    flow::{identity::Process, process::ProcessTable},
    journal::{Record, resume::fold},
    kernel::KernelSums,
    metrics::Metrics,
};

struct Nobody;
impl ProcessSource for Nobody {
    fn process(&self, _: u32) -> Option<Process> {
        None
    }
}

/// An aggregator with 10 s intervals whose journal records land in the returned list.
fn aggregator(baseline: Baseline, burst: &str) -> (Aggregator, Arc<Mutex<Vec<Record>>>) {
    let mut config = Config::default();
    config.detect.state_file = None;
    config.detect.burst.bytes = burst.parse().expect("a size");
    let mut agg = Aggregator::new(
        &config,
        Box::new(Nobody),
        ProcessTable::new(None),
        Metrics::new(&config.metrics, config.networks()),
    )
    .expect("default config");
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&records);
    agg.on_record(move |r| sink.lock().expect("not poisoned").push(r));
    agg.resume_from(baseline);
    (agg, records)
}

fn upload() -> FlowKey {
    crate::flow::flows::test_key(31, 2, 443, PROTO_TCP)
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs)
}

fn poll(secs: u64, sent: u64, adopt: bool) -> PollInput {
    PollInput {
        now: at(secs),
        events: Vec::new(),
        paths: Vec::new(),
        mounts: None,
        sums: KernelSums {
            flows: vec![(
                upload(),
                FlowCounters {
                    sent,
                    sends: sent / 1_000,
                    ..FlowCounters::default()
                },
            )],
            ..KernelSums::default()
        },
        took: std::time::Duration::ZERO,
        adopt,
        dns: Vec::new(),
    }
}

/// The upload's bytes in the interval records, and the raised alerts' bytes.
fn journaled(records: &[Record]) -> (u64, Vec<u64>) {
    let mut bytes = 0;
    let mut raised = Vec::new();
    for record in records {
        match record {
            Record::Interval(i) => bytes += i.flows.iter().map(|f| f.bytes_sent).sum::<u64>(),
            Record::Alert(e)
                if e.change == crate::api::AlertChange::Raised && e.alert.kind == "burst" =>
            {
                raised.push(e.alert.bytes);
            }
            _ => {}
        }
    }
    (bytes, raised)
}

fn taken(records: &Arc<Mutex<Vec<Record>>>) -> Vec<Record> {
    std::mem::take(&mut *records.lock().expect("not poisoned"))
}

#[test]
fn a_killed_runs_unjournaled_bytes_and_those_sent_while_down_come_in_the_first_interval() {
    let (mut first, records) = aggregator(Baseline::Journal(None), "1 GiB");
    first.poll(&poll(0, 1_000, false));
    first.poll(&poll(10, 40_000, false)); // interval 1: 40,000 bytes journaled
    first.poll(&poll(15, 55_000, false)); // in flight when killed
    let before = taken(&records);
    assert_eq!(journaled(&before).0, 40_000);
    let last = fold(before.clone());
    assert_eq!(
        last.previous,
        PreviousRun::Unclean {
            last_at_ms: 1_700_000_010_000
        }
    );

    // Killed at 15 s; the kernel counted on to 90,000 while no agent ran.
    let (mut second, records) = aggregator(Baseline::Journal(Some(last)), "1 GiB");
    second.poll(&poll(30, 90_000, true));
    let interval = second.end_interval(at(40));
    assert_eq!(
        interval.flows[0].bytes_sent, 50_000,
        "90,000 less the 40,000 journaled"
    );
    let after = taken(&records);
    let Some(Record::Resume(resume)) = after.first() else {
        panic!("a resume record first: {after:?}");
    };
    assert_eq!(resume.flows.len(), 1);
    assert_eq!(resume.flows[0].carried().sent, 50_000);
    assert_eq!(resume.flows[0].kernel.sent, 90_000);
    assert_eq!(
        journaled(&before).0 + journaled(&after).0,
        90_000,
        "the journal sums to the kernel's total"
    );
    // A third start after this one finds the totals the second journaled.
    let mut all = before;
    all.extend(after);
    let again = fold(all);
    assert_eq!(
        again.flows.expect("totals")[&flow_id(&upload())].sent,
        90_000
    );
}

#[test]
fn a_clean_stop_leaves_nothing_to_carry_and_bytes_sent_while_down_raise_one_burst() {
    let (mut first, records) = aggregator(Baseline::Journal(None), "10 KiB");
    first.poll(&poll(0, 30_000, false));
    first.poll(&poll(10, 30_000, false));
    first.end_interval(at(12)); // the stop's last interval
    let before = taken(&records);
    let (bytes, raised) = journaled(&before);
    assert_eq!(
        (bytes, raised),
        (30_000, vec![30_000]),
        "one burst before the stop"
    );

    // Restarted with nothing sent meanwhile: no bytes, no alert.
    let last = fold(before.clone());
    let (mut quiet, records) = aggregator(Baseline::Journal(Some(last.clone())), "10 KiB");
    quiet.poll(&poll(20, 30_000, true));
    quiet.end_interval(at(30));
    assert_eq!(journaled(&taken(&records)), (0, vec![]));

    // Restarted after 12,345 bytes were sent while no agent ran: one burst of exactly them.
    let (mut late, records) = aggregator(Baseline::Journal(Some(last)), "10 KiB");
    late.poll(&poll(20, 42_345, true));
    late.end_interval(at(30));
    assert_eq!(journaled(&taken(&records)), (12_345, vec![12_345]));
}

#[test]
fn without_a_journal_pinned_totals_are_adopted_and_never_alerted() {
    for baseline in [
        Baseline::None,
        Baseline::Journal(None),
        // A journal of a build before totals records.
        Baseline::Journal(Some(fold(Vec::new()))),
    ] {
        let (mut agg, records) = aggregator(baseline.clone(), "10 KiB");
        agg.poll(&poll(0, 500_000, true));
        agg.poll(&poll(5, 500_100, false));
        agg.end_interval(at(10));
        let records = taken(&records);
        assert_eq!(journaled(&records), (100, vec![]), "{baseline:?}");
        let Some(Record::Resume(resume)) = records.first() else {
            panic!("a resume record first");
        };
        assert_eq!(resume.flows[0].journaled, None);
        assert_eq!(resume.flows[0].kernel.sent, 500_000);
    }
}

#[test]
fn the_totals_advance_by_the_intervals_the_journal_holds() {
    let (mut first, records) = aggregator(Baseline::Journal(None), "1 GiB");
    first.poll(&poll(0, 1_000, false));
    first.poll(&poll(10, 2_000, false));
    first.poll(&poll(20, 7_000, false));
    let mut written = taken(&records);
    assert_eq!(
        fold(written.clone()).flows.expect("totals")[&flow_id(&upload())].sent,
        7_000
    );
    // Killed before the second interval reached the disk.
    while !matches!(written.pop(), Some(Record::Interval(_))) {}
    let last = fold(written);
    assert_eq!(last.flows.expect("totals")[&flow_id(&upload())].sent, 2_000);
}
