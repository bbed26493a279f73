//! The live agent's side: the aggregator hands over process events, each interval and then
//! its alerts, in that order; the writer thread writes them between a start and a stop
//! record, and counts what it could not write without holding anyone up.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prometheus::Registry;
use sensor_common::{EVENT_EXEC, EVENT_EXIT, FlowCounters, PROTO_TCP, ProcessEvent};

use super::{TempDir, at, busy_interval, config, read, records};
use crate::{
    agent::{Aggregator, PollInput},
    api::AlertChange,
    config::Config,
    flow::{
        identity::{Process, ProcessSource},
        interval::{Direction, Protocol},
        process::ProcessTable,
    },
    journal::{
        Counts, FlowId, PreviousRun, ProcessEventKind, ProcessRecord, Record, ResumeRecord,
        StartRecord, TotalsRecord,
        live::{JournalMetrics, JournalThread},
    },
    kernel::KernelSums,
    metrics::Metrics,
};

struct NoneAlive;
impl ProcessSource for NoneAlive {
    fn process(&self, _: u32) -> Option<Process> {
        None
    }
}

fn event(kind: u8) -> ProcessEvent {
    crate::flow::process::test_event(kind, 31, 0, "curl", "/usr/bin/curl")
}

fn poll(secs: u64, sent: u64, events: Vec<ProcessEvent>) -> PollInput {
    let key = crate::flow::flows::test_key(31, 7, 443, PROTO_TCP);
    PollInput {
        now: at(secs),
        events,
        paths: Vec::new(),
        mounts: None,
        sums: KernelSums {
            flows: vec![(
                key,
                FlowCounters {
                    sent,
                    sends: 1,
                    ..FlowCounters::default()
                },
            )],
            ..KernelSums::default()
        },
        took: Duration::ZERO,
        adopt: false,
        dns: Vec::new(),
    }
}

#[test]
fn the_aggregator_hands_over_processes_then_each_interval_then_its_alerts() {
    let mut config = Config::default();
    config.detect.state_file = None;
    let mut aggregator = Aggregator::new(
        &config,
        Box::new(NoneAlive),
        ProcessTable::new(None),
        Metrics::new(&config.metrics, config.networks()),
    )
    .expect("default config");
    let journal = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&journal);
    aggregator.on_record(move |record| sink.lock().expect("lock").push(record));
    aggregator.poll(&poll(0, 0, vec![event(EVENT_EXEC)]));
    aggregator.poll(&poll(5, 30 << 20, Vec::new()));
    let interval = aggregator
        .poll(&poll(10, 60 << 20, vec![event(EVENT_EXIT)]))
        .expect("an interval");
    let written = journal.lock().expect("lock").clone();
    let process = |event, at_ms| {
        Record::Process(ProcessRecord {
            at_ms,
            pid: 31,
            ppid: 0,
            event,
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            service: "curl".into(),
        })
    };
    assert_eq!(written.len(), 6, "{written:?}");
    let curl = FlowId {
        tgid: 31,
        destination: Some("198.51.100.7".parse().expect("an IP")),
        port: 443,
        protocol: Protocol::Tcp,
        direction: Direction::Outbound,
    };
    assert_eq!(
        written[..5],
        [
            process(ProcessEventKind::Exec, 1_795_392_000_000),
            // The first poll: the maps were new, nothing to take over.
            Record::Resume(ResumeRecord {
                at_ms: 1_795_392_000_000,
                previous: PreviousRun::None,
                flows: Vec::new(),
            }),
            process(ProcessEventKind::Exit, 1_795_392_010_000),
            Record::Interval(interval),
            // What the interval's rows do not tell: curl exited, its key is deleted from the
            // kernel, so a reused pid's key counts from zero.
            Record::Totals(TotalsRecord {
                at_ms: 1_795_392_010_000,
                complete: false,
                flows: vec![(curl, Counts::default())],
            }),
        ]
    );
    let Record::Alert(alert) = &written[5] else {
        panic!("an alert last: {:?}", written[5]);
    };
    assert_eq!(
        (alert.change, alert.alert.kind.as_str(), alert.alert.bytes),
        (AlertChange::Raised, "burst", 60 << 20)
    );
}

fn start() -> StartRecord {
    StartRecord {
        at_ms: 1,
        agent_version: "0.3.0".into(),
        hostname: "mx1".into(),
        config_source: "(embedded default)".into(),
        config_toml: crate::config::DEFAULT_TOML.into(),
        detect_state: Some("{\"version\":1}".into()),
    }
}

fn metric(registry: &Registry, name: &str) -> String {
    Metrics::render(registry)
        .lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_writer_thread_writes_start_records_and_stop_and_counts_them() {
    let dir = TempDir::new("live");
    let registry = Registry::new();
    let thread = JournalThread::start(config(&dir.0), start(), JournalMetrics::register(&registry))
        .expect("thread");
    let interval = busy_interval(100);
    thread.sender().send(Record::Interval(interval.clone()));
    thread.stop(at(20));
    let read = records(&read(&dir.0));
    assert_eq!(read.len(), 3);
    assert_eq!(read[0], Record::Start(start()));
    assert_eq!(read[1], Record::Interval(interval));
    assert!(matches!(read[2], Record::Stop(_)));
    let on_disk: u64 = std::fs::read_dir(&dir.0)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "journal"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(
        [
            "exfil_sensor_journal_records_total",
            "exfil_sensor_journal_errors_total",
            "exfil_sensor_journal_dropped_records_total",
            "exfil_sensor_journal_bytes",
        ]
        .map(|name| metric(&registry, name)),
        [
            "exfil_sensor_journal_records_total 3".to_owned(),
            "exfil_sensor_journal_errors_total 0".to_owned(),
            "exfil_sensor_journal_dropped_records_total 0".to_owned(),
            format!("exfil_sensor_journal_bytes {on_disk}"),
        ]
    );
}

#[test]
fn a_journal_that_cannot_be_opened_is_counted_and_holds_nobody_up() {
    let dir = TempDir::new("live");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let file = dir.0.join("not-a-dir");
    std::fs::write(&file, b"").expect("write");
    let registry = Registry::new();
    let thread = JournalThread::start(
        config(&file.join("journal")),
        start(),
        JournalMetrics::register(&registry),
    )
    .expect("thread");
    let mut health = thread.health();
    let started = std::time::Instant::now();
    for s in 0..3 {
        thread.sender().send(super::stop(s));
    }
    // The failure is announced once, naming the directory and the errno.
    let failure = loop {
        if let Some(failure) = health.new_failure() {
            break failure;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no failure announced"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(failure.dir, file.join("journal"));
    assert!(failure.error.ends_with("(ENOTDIR)"), "{}", failure.error);
    assert_eq!(health.new_failure(), None, "once per failing period");
    assert_eq!(
        metric(&registry, "exfil_sensor_journal_writable"),
        "exfil_sensor_journal_writable 0"
    );
    thread.stop(SystemTime::now());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        [
            metric(&registry, "exfil_sensor_journal_errors_total"),
            metric(&registry, "exfil_sensor_journal_dropped_records_total"),
        ],
        [
            "exfil_sensor_journal_errors_total 1".to_owned(),
            "exfil_sensor_journal_dropped_records_total 5".to_owned(),
        ],
        "one failed open; the start record, three records and the stop waited in memory and \
         were lost when the agent stopped"
    );
}
