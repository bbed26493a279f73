//! The aggregator fed made-up polls: flows, identities, intervals and alerts.
use sensor_common::{EVENT_EXEC, EVENT_FORK, FileKey, FileRead, FlowCounters, FlowKey, PROTO_UDP};

use super::*;
use crate::flow::identity::Process;

/// pid 20 is `imap` in dovecot.service; nobody else is alive.
struct Live;
impl ProcessSource for Live {
    fn process(&self, pid: u32) -> Option<Process> {
        (pid == 20).then(|| Process {
            comm: "imap".into(),
            exe: "/usr/lib/dovecot/imap".into(),
            uid: Some(8),
            service: "dovecot.service".into(),
            parents: vec!["dovecot".into()],
            lineage: crate::flow::identity::Lineage {
                session: Some(20),
                ancestors: vec![7],
            },
        })
    }
}

fn aggregator() -> Aggregator {
    let mut config = Config::default();
    config.detect.state_file = None;
    Aggregator::new(
        &config,
        Box::new(Live),
        ProcessTable::new(None),
        Metrics::new(&config.metrics, config.networks()),
    )
    .expect("default config")
}

fn flow(tgid: u32, port: u16) -> FlowKey {
    crate::flow::flows::test_key(tgid, 7, port, PROTO_UDP)
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn poll(secs: u64, sent: u64, events: Vec<ProcessEvent>) -> PollInput {
    let sums = KernelSums {
        flows: vec![(
            flow(20, 53),
            FlowCounters {
                sent,
                sends: 1,
                ..FlowCounters::default()
            },
        )],
        file_reads: vec![(
            FileKey {
                tgid: 20,
                dev: 1,
                ino: 2,
            },
            FileRead {
                bytes: sent * 2,
                reads: 1,
                ..FileRead::default()
            },
        )],
        ..KernelSums::default()
    };
    PollInput {
        now: at(secs),
        events,
        paths: Vec::new(),
        mounts: None,
        sums,
        took: Duration::from_millis(1),
        adopt: false,
        dns: Vec::new(),
    }
}

#[test]
fn intervals_end_on_the_clock_and_answers_come_from_the_tables() {
    let mut agg = aggregator();
    assert_eq!(agg.poll(&poll(0, 100, Vec::new())), None);
    assert_eq!(agg.poll(&poll(5, 300, Vec::new())), None);
    let interval = agg.poll(&poll(10, 700, Vec::new())).expect("10 s passed");
    assert_eq!(
        (interval.start_ms, interval.end_ms),
        (1_700_000_000_000, 1_700_000_010_000)
    );
    assert_eq!(interval.flows.len(), 1);
    let f = &interval.flows[0];
    assert_eq!(
        (f.service.as_str(), f.comm.as_str(), f.uid, f.bytes_sent),
        ("dovecot.service", "imap", Some(8), 700)
    );
    assert_eq!(interval.files[0].bytes_read, 1_400);
    assert_eq!(
        interval.processes,
        vec![ProcessInfo {
            pid: 20,
            comm: "imap".into(),
            exe: "/usr/lib/dovecot/imap".into(),
            service: "dovecot.service".into(),
            session: Some(20),
            ancestors: vec![7],
        }],
        "one entry for the process of both rows"
    );
    assert_eq!(agg.poll(&poll(11, 750, Vec::new())), None);
    let last = agg.end_interval(at(12));
    assert_eq!(last.flows[0].bytes_sent, 50, "what moved since");

    let Answer::Services(services) = agg.answer(&Query::Services(5)) else {
        panic!("asked for services");
    };
    assert_eq!(
        (
            services[0].service.as_str(),
            services[0].bytes_sent,
            services[0].bytes_read
        ),
        ("dovecot.service", 750, 1_500)
    );
    let Answer::Flows(flows) = agg.answer(&Query::Flows(Filter {
        class: Some("external".into()),
        ..Filter::default()
    })) else {
        panic!("asked for flows");
    };
    assert_eq!(
        (
            flows[0].protocol.as_str(),
            flows[0].port,
            flows[0].bytes_sent
        ),
        ("udp", 53, 750)
    );
    assert_eq!(
        agg.answer(&Query::Alerts(Filter::default())),
        Answer::Alerts(Vec::new())
    );
}

#[test]
fn an_interval_over_the_burst_threshold_raises_one_alert_counted_and_served() {
    let mut agg = aggregator();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    agg.on_alert(move |e| {
        if let Ok(mut events) = sink.lock() {
            events.push((e.change, e.alert.bytes));
        }
    });
    agg.poll(&poll(0, 0, Vec::new()));
    agg.poll(&poll(5, 30 << 20, Vec::new()));
    agg.poll(&poll(10, 60 << 20, Vec::new()))
        .expect("an interval");
    let Answer::Alerts(alerts) = agg.answer(&Query::Alerts(Filter::default())) else {
        panic!("asked for alerts");
    };
    assert_eq!(
        alerts
            .iter()
            .map(|a| (
                a.kind.as_str(),
                a.service.as_str(),
                a.destination.as_str(),
                a.bytes
            ))
            .collect::<Vec<_>>(),
        vec![("burst", "dovecot.service", "198.51.100.7", 60 << 20)]
    );
    assert_eq!(
        *seen.lock().expect("events"),
        vec![(AlertChange::Raised, 60 << 20)]
    );
    let text = Metrics::render(&agg.metrics.registry());
    assert!(
        text.contains("exfil_sensor_alerts_total{kind=\"burst\"} 1\n"),
        "{text}"
    );
}

/// A poll drains the events again after the read: forks and execs are taken at once,
/// exits (and what follows one of the same pid) wait for the next poll.
#[test]
fn events_after_the_read_wait_only_for_exits() {
    let event = |kind, pid| crate::flow::process::test_event(kind, pid, 1, "sh", "");
    let late = vec![
        event(EVENT_FORK, 40),
        event(EVENT_EXEC, 31),
        event(EVENT_EXIT, 31),
        event(EVENT_EXEC, 40),
        // pid 31 again, reused: after its exit, as it came.
        event(EVENT_FORK, 31),
        event(EVENT_EXIT, 50),
    ];
    let (now, next) = split_late(late);
    let kinds = |events: &[ProcessEvent]| -> Vec<(u8, u32)> {
        events.iter().map(|e| (e.kind, e.tgid)).collect()
    };
    assert_eq!(
        kinds(&now),
        [(EVENT_FORK, 40), (EVENT_EXEC, 31), (EVENT_EXEC, 40)]
    );
    assert_eq!(
        kinds(&next),
        [(EVENT_EXIT, 31), (EVENT_FORK, 31), (EVENT_EXIT, 50)]
    );
}

#[test]
fn an_exit_names_the_process_and_ends_its_kernel_keys() {
    let mut agg = aggregator();
    let exec = crate::flow::process::test_event(EVENT_EXEC, 31, 0, "curl", "");
    let mut exit = exec;
    exit.kind = EVENT_EXIT;
    let mut input = poll(0, 10, vec![exec, exit]);
    input.sums.flows.push((
        flow(31, 443),
        FlowCounters {
            sent: 4_242,
            sends: 2,
            ..FlowCounters::default()
        },
    ));
    assert_eq!(exited(&input.events), HashSet::from([31]));
    agg.poll(&input);
    let interval = agg.end_interval(at(1));
    let curl = interval
        .flows
        .iter()
        .find(|f| f.pid == 31)
        .expect("curl's flow");
    assert_eq!(
        (curl.comm.as_str(), curl.service.as_str(), curl.bytes_sent),
        ("curl", "curl", 4_242)
    );
    // The poll thread deleted the key: a later poll without it changes nothing.
    input.sums.flows.pop();
    input.events.clear();
    input.now = at(2);
    agg.poll(&input);
    assert!(agg.end_interval(at(3)).flows.is_empty());
}

/// One file's read totals for `tgid`, as the kernel's map gives them.
fn file_read(tgid: u32, ino: u64, bytes: u64) -> (FileKey, FileRead) {
    (
        FileKey { tgid, dev: 1, ino },
        FileRead {
            bytes,
            reads: 1,
            ..FileRead::default()
        },
    )
}

#[test]
fn a_child_seen_between_fork_and_exec_is_named_by_its_exec_for_what_it_does_after() {
    // A service manager's child (or a test runner's): forked from `runner`, it faults in a
    // page of its parent's binary before it execs `tar`, and a poll falls in between.
    let event = |kind, pid, ppid, comm| crate::flow::process::test_event(kind, pid, ppid, comm, "");
    let read = |ino, bytes| file_read(31, ino, bytes);
    let mut agg = aggregator();
    let mut first = poll(
        0,
        10,
        vec![
            event(EVENT_EXEC, 30, 1, "runner"),
            event(EVENT_FORK, 31, 30, "runner"),
        ],
    );
    first.sums.file_reads.push(read(9, 4_096));
    agg.poll(&first);
    let mut second = poll(1, 10, vec![event(EVENT_EXEC, 31, 30, "tar")]);
    second.sums.file_reads.push(read(9, 4_096));
    second.sums.file_reads.push(read(10, 1_000_003));
    agg.poll(&second);
    let interval = agg.end_interval(at(2));
    let mut named: Vec<(u64, &str, u64)> = interval
        .files
        .iter()
        .filter(|f| f.pid == 31)
        .map(|f| (f.inode, f.comm.as_str(), f.bytes_read))
        .collect();
    named.sort();
    // The page it faulted in stays its parent's program's; what it read after the exec is tar's.
    assert_eq!(named, [(9, "runner", 4_096), (10, "tar", 1_000_003)]);
}

#[test]
fn a_reused_pid_is_named_by_its_new_process_and_an_exit_keeps_the_name() {
    let event = |kind, pid, ppid, comm| crate::flow::process::test_event(kind, pid, ppid, comm, "");
    let read = |ino, bytes| file_read(31, ino, bytes);
    let mut agg = aggregator();
    // pid 31 runs `old`, reads, and exits; a late row of it after the exit keeps `old`.
    let mut first = poll(0, 10, vec![event(EVENT_EXEC, 31, 1, "old")]);
    first.sums.file_reads.push(read(9, 4_096));
    agg.poll(&first);
    let mut exit = event(EVENT_EXEC, 31, 1, "old");
    exit.kind = EVENT_EXIT;
    let mut second = poll(1, 10, vec![exit]);
    second.sums.file_reads.push(read(9, 4_096));
    second.sums.file_reads.push(read(10, 2_048));
    agg.poll(&second);
    // The pid is taken by a new process, a fork of `sh` that does not exec: its rows name it.
    let mut third = poll(
        2,
        10,
        vec![
            event(EVENT_EXEC, 40, 1, "sh"),
            event(EVENT_FORK, 31, 40, "sh"),
        ],
    );
    third.sums.file_reads.push(read(11, 1_000_003));
    agg.poll(&third);
    let interval = agg.end_interval(at(3));
    let mut named: Vec<(u64, &str, u64)> = interval
        .files
        .iter()
        .filter(|f| f.pid == 31)
        .map(|f| (f.inode, f.comm.as_str(), f.bytes_read))
        .collect();
    named.sort();
    assert_eq!(
        named,
        [(9, "old", 4_096), (10, "old", 2_048), (11, "sh", 1_000_003)]
    );
}
