//! The agent's single owner of flows, files, process names and metrics. Plain synchronous
//! code: the poll thread feeds it one message per poll through a bounded channel, the HTTP
//! side sends it queries on the same channel, and it answers from its tables on request.
//! Time comes in with each poll, so tests drive it with a fake clock.

use std::{
    collections::{BTreeSet, HashSet},
    time::{Duration, SystemTime},
};

use sensor_common::{EVENT_EXIT, ProcessEvent};
use tokio::sync::{mpsc, oneshot};

use crate::{
    api::{AlertChange, AlertEvent, AlertRecord, FileRecord, Filter, FlowRecord, ServiceRecord},
    config::{Config, ConfigError},
    detect::Detector,
    flow::{
        FlowTable,
        files::{FileSums, FileTable},
        identity::ProcessSource,
        interval::{FileInterval, FlowInterval, Interval, ProcessInfo, unix_ms},
        paths::{Mounts, WalkedPath},
        process::{Identities, ProcessTable},
    },
    journal::{ProcessEventKind, ProcessRecord, Record},
    kernel::KernelSums,
    metrics::Metrics,
};

/// What the poll thread read in one poll.
pub struct PollInput {
    pub now: SystemTime,
    /// Exec, fork and exit events since the last poll, oldest first.
    pub events: Vec<ProcessEvent>,
    /// File paths the kernel walked since the last poll, and the mounts to place them.
    pub paths: Vec<WalkedPath>,
    pub mounts: Option<Mounts>,
    pub sums: KernelSums,
    /// How long reading the kernel took.
    pub took: Duration,
    /// The first poll of maps an earlier agent left pinned: their totals were counted
    /// before this agent started, so they are not this interval's bytes.
    pub adopt: bool,
}

/// Questions the API asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Flows(Filter),
    Files(Filter),
    Alerts(Filter),
    /// Per service totals, with at most this many destinations each.
    Services(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Flows(Vec<FlowRecord>),
    Files(Vec<FileRecord>),
    Alerts(Vec<AlertRecord>),
    Services(Vec<ServiceRecord>),
}

pub enum Message {
    Poll(Box<PollInput>),
    Query(Query, oneshot::Sender<Answer>),
}

/// How many messages may wait for the aggregator: a few polls and queries. A slow
/// aggregator slows the poll thread rather than growing memory.
pub const QUEUE: usize = 8;

pub fn channel() -> (mpsc::Sender<Message>, mpsc::Receiver<Message>) {
    mpsc::channel(QUEUE)
}

pub struct Aggregator {
    flows: FlowTable,
    files: FileTable,
    processes: ProcessTable,
    live: Box<dyn ProcessSource + Send>,
    metrics: Metrics,
    interval: Duration,
    interval_start: Option<SystemTime>,
    detector: Detector,
    /// Where alert changes go (the sinks); nowhere by default.
    notify: Box<dyn FnMut(&AlertEvent) + Send>,
    /// Where journal records go (the journal's writer thread); none by default.
    journal: Option<Box<dyn FnMut(Record) + Send>>,
}

impl Aggregator {
    /// `live` names running processes (`/proc`); `processes` names the ones gone, from events.
    pub fn new(
        config: &Config,
        live: Box<dyn ProcessSource + Send>,
        processes: ProcessTable,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            flows: FlowTable::new(config.flow_limits(), config.networks()),
            files: FileTable::new(config.file_limits(), config.file_classes("config")?),
            processes,
            live,
            metrics,
            interval: config.agent.interval,
            interval_start: None,
            detector: Detector::new(&config.detect, "config")?,
            notify: Box::new(|_| {}),
            journal: None,
        })
    }

    /// Reads the detection state file (the log line says what happened).
    pub fn restore_detection(&mut self) {
        match self.detector.restore() {
            Ok(Some(note)) => tracing::warn!("{note}"),
            Ok(None) => {}
            Err(e) => tracing::error!("{e}; detection starts afresh"),
        }
    }

    /// The detection state file's text as restored, for the journal's start record.
    pub fn restored_detection_state(&self) -> Option<String> {
        self.detector.restored_state().map(str::to_owned)
    }

    /// Sends every journal record to `journal`: each interval after detection, then the
    /// alert changes it caused, and each process exec and exit. It must not block.
    pub fn on_record(&mut self, journal: impl FnMut(Record) + Send + 'static) {
        self.journal = Some(Box::new(journal));
    }

    /// Sends every alert change to `notify` (the sinks). It must not block.
    pub fn on_alert(&mut self, notify: impl FnMut(&AlertEvent) + Send + 'static) {
        self.notify = Box::new(notify);
    }

    /// Writes the detection state now (at shutdown) or when it changed in a way worth
    /// keeping. A failure is logged, never fatal: detection goes on in memory.
    fn save_detection(&mut self, now: bool) {
        if !(now || self.detector.dirty()) {
            return;
        }
        if let Err(e) = self.detector.save() {
            tracing::error!("{e}");
        }
    }

    /// Takes one poll. Returns the interval that ended with it, if one did.
    pub fn poll(&mut self, input: &PollInput) -> Option<Interval> {
        let now = input.now;
        let start = *self.interval_start.get_or_insert(now);
        // Events first: a process that sent and exited since the last poll is named by them.
        let seen = self.processes.apply(now, &input.events);
        if let Some(journal) = &mut self.journal {
            // The events carry no time of their own: the poll's (at most one poll late).
            let at_ms = unix_ms(now);
            for p in seen {
                journal(Record::Process(ProcessRecord {
                    at_ms,
                    pid: p.pid,
                    ppid: p.ppid,
                    event: if p.exit {
                        ProcessEventKind::Exit
                    } else {
                        ProcessEventKind::Exec
                    },
                    comm: p.comm,
                    exe: p.exe,
                    service: p.service,
                }));
            }
        }
        if let Some(mounts) = &input.mounts {
            self.files.learn_paths(&input.paths, mounts);
        }
        let identities = Identities {
            live: self.live.as_ref(),
            events: &self.processes,
        };
        let sums = &input.sums;
        let file_sums = FileSums {
            reads: &sums.file_reads,
            read_overflow: &sums.file_overflow,
            writes: &sums.file_writes,
            write_overflow: &sums.file_write_overflow,
        };
        if input.adopt {
            self.flows
                .adopt(now, &sums.flows, &sums.flow_overflow, &identities);
            self.files.adopt(now, file_sums, &identities);
        }
        let flow_changes = self
            .flows
            .apply(now, &sums.flows, &sums.flow_overflow, &identities);
        let file_changes = self.files.apply(now, file_sums, &identities);
        self.metrics
            .observe_poll(now, &flow_changes, &file_changes, sums, input.took);
        // Exited processes cannot count again: the poll thread deletes their kernel keys
        // after this poll, and the tables stop following them.
        let exited = exited(&input.events);
        if !exited.is_empty() {
            self.flows.forget_processes(&exited);
            self.files.forget_processes(&exited);
        }
        self.metrics.observe_tables(&self.flows, &self.files);
        if now.duration_since(start).unwrap_or_default() >= self.interval {
            return Some(self.end_interval(now));
        }
        None
    }

    /// Ends the current interval now (every interval, and once more at shutdown).
    pub fn end_interval(&mut self, now: SystemTime) -> Interval {
        let start = self.interval_start.replace(now).unwrap_or(now);
        let flows = self.flows.tick(now);
        let files = self.files.tick(now);
        let processes = self.processes_of(&flows, &files);
        let interval = Interval {
            start_ms: unix_ms(start),
            end_ms: unix_ms(now),
            flows,
            files,
            processes,
        };
        self.metrics.observe_tables(&self.flows, &self.files);
        self.metrics.review(now);
        let events = self.detector.observe(&interval);
        // The interval first, then the alerts it caused: a replay reads them in that order.
        if let Some(journal) = &mut self.journal {
            journal(Record::Interval(interval.clone()));
        }
        for event in events {
            if event.change == AlertChange::Raised {
                self.metrics.alert_raised(&event.alert.kind);
                tracing::warn!(
                    kind = event.alert.kind,
                    service = event.alert.service,
                    destination = event.alert.destination,
                    bytes = event.alert.bytes,
                    "{}",
                    event.alert.summary
                );
            }
            (self.notify)(&event);
            if let Some(journal) = &mut self.journal {
                journal(Record::Alert(event));
            }
        }
        self.save_detection(false);
        interval
    }

    /// Who each process of an interval's rows is, by pid.
    fn processes_of(&self, flows: &[FlowInterval], files: &[FileInterval]) -> Vec<ProcessInfo> {
        let pids: BTreeSet<u32> = flows
            .iter()
            .map(|f| f.pid)
            .chain(files.iter().map(|f| f.pid))
            .filter(|pid| *pid != 0)
            .collect();
        pids.into_iter()
            .filter_map(|pid| {
                let p = self
                    .flows
                    .process(pid)
                    .or_else(|| self.files.process(pid))?;
                Some(ProcessInfo {
                    pid,
                    comm: p.comm.clone(),
                    exe: p.exe.clone(),
                    service: p.service.clone(),
                    session: p.lineage.session,
                    ancestors: p.lineage.ancestors.clone(),
                })
            })
            .collect()
    }

    pub fn answer(&self, query: &Query) -> Answer {
        match query {
            Query::Flows(filter) => Answer::Flows(self.flows.records(filter)),
            Query::Files(filter) => Answer::Files(self.files.records(filter)),
            Query::Alerts(filter) => Answer::Alerts(self.detector.alerts(filter)),
            Query::Services(per_service) => {
                let mut services = self.flows.services(*per_service);
                let read = self.files.service_totals();
                for record in &mut services {
                    record.bytes_read = read.get(&record.service).copied().unwrap_or(0);
                }
                // Services that only read.
                for (service, bytes) in read {
                    if !self.flows.service_totals().contains_key(service) {
                        services.push(ServiceRecord {
                            service: service.clone(),
                            bytes_sent: 0,
                            bytes_received: 0,
                            bytes_read: *bytes,
                            flows: 0,
                            destinations: Vec::new(),
                        });
                    }
                }
                Answer::Services(services)
            }
        }
    }

    /// Serves messages until every sender is gone, then closes the last interval.
    pub fn run(
        mut self,
        mut inbox: mpsc::Receiver<Message>,
        mut on_interval: impl FnMut(&Interval),
    ) {
        let mut last = None;
        while let Some(message) = inbox.blocking_recv() {
            match message {
                Message::Poll(input) => {
                    last = Some(input.now);
                    if let Some(interval) = self.poll(&input) {
                        on_interval(&interval);
                    }
                }
                Message::Query(query, reply) => {
                    // The asker may have given up; nothing to do then.
                    let _ = reply.send(self.answer(&query));
                }
            }
        }
        if let Some(now) = last {
            on_interval(&self.end_interval(now));
        }
        self.save_detection(true);
    }
}

/// Splits the process events drained after the maps were read into those the poll takes now
/// and those that wait for the next poll: each exit (a process's keys are deleted after the
/// poll, which only a read that followed its exit allows), and whatever of its pid comes
/// after it (so that each pid's events keep their order).
///
/// Why drain again after the read: a process forked before the first drain that execs,
/// sends and exits before the read, and is reaped before the poll looks it up in /proc (a
/// short-lived program a service manager or a cron daemon starts: fork, move into the unit's
/// cgroup, exec) would otherwise be named by its fork alone, with its parent's cgroup, and
/// its bytes counted to its parent's service. Its exec now comes with its bytes.
pub fn split_late(late: Vec<ProcessEvent>) -> (Vec<ProcessEvent>, Vec<ProcessEvent>) {
    let mut exited = HashSet::new();
    let (mut now, mut next) = (Vec::new(), Vec::new());
    for event in late {
        if event.kind == EVENT_EXIT || exited.contains(&event.tgid) {
            exited.insert(event.tgid);
            next.push(event);
        } else {
            now.push(event);
        }
    }
    (now, next)
}

/// Processes whose exit is among the events.
pub fn exited(events: &[ProcessEvent]) -> HashSet<u32> {
    events
        .iter()
        .filter(|e| e.kind == EVENT_EXIT)
        .map(|e| e.tgid)
        .collect()
}

#[cfg(test)]
mod tests {
    use sensor_common::{
        EVENT_EXEC, EVENT_FORK, FileKey, FileRead, FlowCounters, FlowKey, PROTO_UDP,
    };

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
}
