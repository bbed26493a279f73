//! The agent's single owner of flows, files, process names and metrics. Plain synchronous
//! code: the poll thread feeds it one message per poll through a bounded channel, the HTTP
//! side sends it queries on the same channel, and it answers from its tables on request.
//! Time comes in with each poll, so tests drive it with a fake clock.

use std::{
    collections::{BTreeSet, HashSet},
    time::{Duration, SystemTime},
};

use sensor_common::{EVENT_EXEC, EVENT_EXIT, EVENT_FORK, ProcessEvent};
use tokio::sync::{mpsc, oneshot};

mod resume;

pub use self::resume::Baseline;

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
    journal::{ConfigRecord, ProcessEventKind, ProcessRecord, Record, TotalsRecord},
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
    /// DNS answers the kernel parsed since the last poll, oldest first.
    pub dns: Vec<crate::dns::DnsAnswer>,
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
    /// A config reload (SIGHUP): the config in force from now on. The answer says whether it
    /// was taken; refused, the old config stays whole.
    Reload(Box<Reload>, oneshot::Sender<Result<(), ConfigError>>),
    /// What the tamper checks found this poll.
    Tamper(Vec<TamperReport>),
}

/// A reloaded config, checked, and its file for the journal's config record.
pub struct Reload {
    pub config: Config,
    pub at: SystemTime,
    /// The file's path, as errors and the journal name it.
    pub source: String,
    /// The file's text, for the journal (replay takes its rules).
    pub text: String,
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
    dns_metrics: crate::dns::DnsMetrics,
    interval: Duration,
    interval_start: Option<SystemTime>,
    detector: Detector,
    /// Where alert changes go (the sinks); nowhere by default.
    notify: Box<dyn FnMut(&AlertEvent) + Send>,
    /// Where journal records go (the journal's writer thread); none by default.
    journal: Option<Box<dyn FnMut(Record) + Send>>,
    /// What the first poll compares the pinned maps' totals with.
    baseline: Baseline,
    /// When the next totals record is a complete one (an anchor a restart reads back to).
    complete_totals_at: Option<SystemTime>,
}

/// How often a totals record lists every key, so that a restart reads at most about this much
/// of the journal back.
const COMPLETE_TOTALS_EVERY: Duration = Duration::from_secs(3600);

impl Aggregator {
    /// `live` names running processes (`/proc`); `processes` names the ones gone, from events.
    pub fn new(
        config: &Config,
        live: Box<dyn ProcessSource + Send>,
        processes: ProcessTable,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        let mut flows = FlowTable::new(config.flow_limits(), config.networks());
        // `dns.enabled = false`: no cache, so no row, record or alert is ever named.
        if config.dns.enabled {
            let cache = crate::dns::NameCache::new(config.dns.grace, config.dns.max_addresses);
            flows.name_destinations(cache);
        }
        Ok(Self {
            flows,
            files: FileTable::new(config.file_limits(), config.file_classes("config")?),
            processes,
            live,
            dns_metrics: crate::dns::DnsMetrics::register(&metrics.registry()),
            metrics,
            interval: config.agent.interval,
            interval_start: None,
            detector: Detector::new(&config.detect, "config")?,
            notify: Box::new(|_| {}),
            journal: None,
            baseline: Baseline::None,
            complete_totals_at: None,
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
        self.flows.keep_totals();
    }

    /// What the first poll compares pinned totals with (`Baseline::read`, before the
    /// journal is opened for writing).
    pub fn resume_from(&mut self, baseline: Baseline) {
        self.baseline = baseline;
    }

    /// Shows file paths as their keyed hash in the records and the API (`files.hash_paths`).
    pub fn hash_paths(&mut self, hasher: crate::flow::path_hash::PathHasher) {
        self.files.hash_paths(hasher);
    }

    /// Takes a reloaded config's detection rules, internal networks and file classes (what
    /// `config::reload::changes` calls applied); the rest of `reload.config` is what is in
    /// force already. Everything that can fail is done before anything changes: an error
    /// leaves the old config whole.
    pub fn reload(&mut self, reload: &Reload) -> Result<(), ConfigError> {
        let config = &reload.config;
        let classes = config.file_classes(&reload.source)?;
        self.detector.reconfigure(&config.detect, &reload.source)?;
        self.files.set_classes(classes);
        self.flows.set_networks(config.networks());
        self.metrics.set_networks(config.networks());
        if let Some(journal) = &mut self.journal {
            journal(Record::Config(ConfigRecord {
                at_ms: unix_ms(reload.at),
                config_source: reload.source.clone(),
                config_toml: reload.text.clone(),
            }));
        }
        Ok(())
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
        let first = self.interval_start.is_none();
        let start = *self.interval_start.get_or_insert(now);
        // Events first: a process that sent and exited since the last poll is named by them.
        let seen = self.processes.apply(now, &input.events);
        // A new program, or a new process on a reused pid: its new rows read it afresh. Not
        // an exit: the name read while it ran is the best there is.
        for event in &input.events {
            if matches!(event.kind, EVENT_EXEC | EVENT_FORK) {
                self.flows.renew(event.tgid);
                self.files.renew(event.tgid);
            }
        }
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
        // Answers before bytes: a lookup and the connection it led to, in one poll, name the
        // connection's row.
        self.flows.learn_names(now, &input.dns);
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
        if first {
            let pinned = input.adopt.then_some(sums);
            let record = resume::resume(&mut self.flows, &self.baseline, now, pinned, &identities);
            self.complete_totals_at = Some(now + COMPLETE_TOTALS_EVERY);
            if let Some(journal) = &mut self.journal {
                journal(Record::Resume(record));
            }
        }
        if input.adopt {
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
        self.dns_metrics.observe(self.flows.name_cache());
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
        // The tick pruned the name cache.
        self.dns_metrics.observe(self.flows.name_cache());
        self.metrics.review(now);
        let events = self.detector.observe(&interval);
        // The interval, the totals its rows do not tell, then the alerts it caused: a replay
        // reads them in that order, and a restart takes totals only right after their interval.
        if self.journal.is_some() {
            let complete = self.complete_totals_at.is_none_or(|at| now >= at);
            if complete {
                self.complete_totals_at = Some(now + COMPLETE_TOTALS_EVERY);
            }
            let flows: Vec<_> = self
                .flows
                .totals(complete)
                .iter()
                .map(|(key, c)| (resume::flow_id(key), resume::counts(c)))
                .collect();
            if let Some(journal) = &mut self.journal {
                journal(Record::Interval(interval.clone()));
                if complete || !flows.is_empty() {
                    journal(Record::Totals(TotalsRecord {
                        at_ms: interval.end_ms,
                        complete,
                        flows,
                    }));
                }
            }
        }
        for event in events {
            self.publish(event);
        }
        self.save_detection(false);
        interval
    }

    /// An alert change, out through every path: `exfil_sensor_alerts_total` and the log when
    /// raised, the sinks, the journal.
    fn publish(&mut self, event: AlertEvent) {
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
                Message::Tamper(reports) => {
                    for report in &reports {
                        self.tamper(report);
                    }
                }
                Message::Query(query, reply) => {
                    // The asker may have given up; nothing to do then.
                    let _ = reply.send(self.answer(&query));
                }
                Message::Reload(reload, reply) => {
                    let _ = reply.send(self.reload(&reload));
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

mod tamper;
pub use tamper::TamperReport;

#[cfg(test)]
mod names_tests;
#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;
