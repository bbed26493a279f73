//! The agent's single owner of flows, files, process names and metrics. Plain synchronous
//! code: the poll thread feeds it one message per poll through a bounded channel, the HTTP
//! side sends it queries on the same channel, and it answers from its tables on request.
//! Time comes in with each poll, so tests drive it with a fake clock.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use sensor_common::{EVENT_EXIT, FilePathEvent, ProcessEvent};
use tokio::sync::{mpsc, oneshot};

use crate::{
    api::{AlertRecord, FileRecord, Filter, FlowRecord, ServiceRecord},
    config::{Config, ConfigError},
    flow::{
        FlowTable,
        files::{FileSums, FileTable},
        identity::ProcessSource,
        interval::{Interval, unix_ms},
        paths::Mounts,
        process::{Identities, ProcessTable},
    },
    kernel::KernelSums,
    metrics::Metrics,
};

/// What the poll thread read in one poll.
pub struct PollInput {
    pub now: SystemTime,
    /// Exec, fork and exit events since the last poll, oldest first.
    pub events: Vec<ProcessEvent>,
    /// File paths the kernel walked since the last poll, and the mounts to place them.
    pub paths: Vec<FilePathEvent>,
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
    alerts: Vec<AlertRecord>,
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
            alerts: Vec::new(),
        })
    }

    /// Takes one poll. Returns the interval that ended with it, if one did.
    pub fn poll(&mut self, input: &PollInput) -> Option<Interval> {
        let now = input.now;
        let start = *self.interval_start.get_or_insert(now);
        // Events first: a process that sent and exited since the last poll is named by them.
        self.processes.apply(now, &input.events);
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
        let interval = Interval {
            start_ms: unix_ms(start),
            end_ms: unix_ms(now),
            flows: self.flows.tick(now),
            files: self.files.tick(now),
        };
        self.metrics.observe_tables(&self.flows, &self.files);
        self.metrics.review(now);
        interval
    }

    pub fn answer(&self, query: &Query) -> Answer {
        match query {
            Query::Flows(filter) => Answer::Flows(self.flows.records(filter)),
            Query::Files(filter) => Answer::Files(self.files.records(filter)),
            Query::Alerts(filter) => Answer::Alerts(
                self.alerts
                    .iter()
                    .filter(|a| filter.keeps(&a.service, &a.kind))
                    .take(filter.limit.unwrap_or(usize::MAX))
                    .cloned()
                    .collect(),
            ),
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
    }
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
        DIRECTION_OUTBOUND, EVENT_EXEC, EXEC_FILENAME_LEN, FAMILY_IPV4, FileKey, FileRead,
        FlowCounters, FlowKey, PROTO_UDP,
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
            })
        }
    }

    fn aggregator() -> Aggregator {
        let config = Config::default();
        Aggregator::new(
            &config,
            Box::new(Live),
            ProcessTable::new(None),
            Metrics::new(&config.metrics),
        )
        .expect("default config")
    }

    fn flow(tgid: u32, port: u16) -> FlowKey {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, 7]);
        FlowKey {
            tgid,
            port,
            family: FAMILY_IPV4,
            protocol: PROTO_UDP,
            addr,
            direction: DIRECTION_OUTBOUND,
            _pad: [0; 7],
        }
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
    fn an_exit_names_the_process_and_ends_its_kernel_keys() {
        let mut agg = aggregator();
        let mut exec = ProcessEvent {
            kind: EVENT_EXEC,
            _pad: [0; 3],
            tgid: 31,
            ppid: 0,
            _pad2: 0,
            cgroup_id: 0,
            comm: [0; 16],
            filename: [0; EXEC_FILENAME_LEN],
        };
        exec.comm[..4].copy_from_slice(b"curl");
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
