//! The live agent's journal: a writer thread of its own, fed through a bounded channel, so
//! that a slow or failing disk never holds up counting, metrics or alerts. A record the disk
//! does not take (full, failing, the journal not open) waits in a bounded backlog in memory
//! and is written, in order, once writing works again; the writer tries again every
//! [`RETRY`]. A record that finds the queue or the backlog full is dropped, counted and
//! logged (at most once a minute); the agent goes on. The poll thread's tamper check reads
//! [`JournalHealth`] and raises one alert when writing starts failing.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounter, IntGauge, Registry};

use super::{
    JournalConfig, JournalError, Writer,
    backlog::Backlog,
    record::{Record, StartRecord, StopRecord},
};
use crate::{error_chain, flow::interval::unix_ms};

/// Records that may wait for the writer ...
const QUEUE: usize = 4_096;
/// ... and about how many bytes of them: a disk that stalls for hours must not grow the
/// agent by the intervals waiting for it.
const QUEUE_BYTES: usize = 64 << 20;
/// A journal that could not be opened is tried again this often.
const REOPEN: Duration = Duration::from_secs(60);
/// Records the disk did not take wait in memory, up to about this many bytes; beyond, the
/// newest are dropped.
pub const BACKLOG_BYTES: usize = 32 << 20;
/// While records wait, writing them is tried again this often (and with each new record).
const RETRY: Duration = Duration::from_secs(1);
/// At most one log line per this long for drops, and one for write errors.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// `exfil_sensor_journal_*` (shared/CONTRACT.md): registered whether or not the journal is
/// enabled, so that alerting rules on them see zeros.
#[derive(Clone)]
pub struct JournalMetrics {
    bytes: IntGauge,
    records: IntCounter,
    errors: IntCounter,
    dropped: IntCounter,
    writable: IntGauge,
    backlog: IntGauge,
}

impl JournalMetrics {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            c
        };
        Self {
            bytes: gauge(
                "exfil_sensor_journal_bytes",
                "Bytes of journal segments on disk.",
            ),
            records: counter(
                "exfil_sensor_journal_records_total",
                "Records written to the journal.",
            ),
            errors: counter(
                "exfil_sensor_journal_errors_total",
                "Journal opens, writes, syncs and segment deletions that failed.",
            ),
            dropped: counter(
                "exfil_sensor_journal_dropped_records_total",
                "Records never written: the writer's queue, or the backlog of records the disk did not take, was full.",
            ),
            writable: gauge(
                "exfil_sensor_journal_writable",
                "1 while the journal takes records, 0 while writing or opening it fails (records wait in memory).",
            ),
            backlog: gauge(
                "exfil_sensor_journal_backlog_records",
                "Records waiting in memory for the journal to take them again.",
            ),
        }
    }
}

/// Hands records to the writer thread; cheap to clone, never blocks while the agent runs.
#[derive(Clone)]
pub struct JournalSender {
    tx: SyncSender<Queued>,
    shared: Arc<Shared>,
}

struct Shared {
    metrics: JournalMetrics,
    /// Set at shutdown: from then on a send waits for room, so the last interval and the
    /// stop record are not dropped.
    closing: AtomicBool,
    queued_bytes: AtomicUsize,
    /// Unix seconds of the last "dropped" log line.
    drop_logged: AtomicU64,
    /// How many times writing started failing, and the last failure.
    failures: AtomicU64,
    failure: Mutex<Option<JournalFailure>>,
}

/// Why the journal stopped taking records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalFailure {
    pub dir: PathBuf,
    /// The error, with its errno's name: `… No space left on device (os error 28) (ENOSPC)`.
    pub error: String,
}

/// Whether the journal takes records, for the poll thread's tamper check.
pub struct JournalHealth {
    shared: Arc<Shared>,
    seen: u64,
}

impl JournalHealth {
    /// The failure, when writing started failing since the last call: once per failing
    /// period, never once per interval.
    pub fn new_failure(&mut self) -> Option<JournalFailure> {
        let failures = self.shared.failures.load(Ordering::Acquire);
        if failures == self.seen {
            return None;
        }
        self.seen = failures;
        self.shared
            .failure
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |f| f.clone())
    }
}

struct Queued {
    record: Record,
    size: usize,
}

/// The writer thread; [`JournalThread::stop`] writes the stop record and waits for it.
pub struct JournalThread {
    sender: JournalSender,
    handle: JoinHandle<()>,
}

impl JournalSender {
    pub fn send(&self, record: Record) {
        let size = approximate_size(&record);
        let shared = &self.shared;
        let queued = Queued { record, size };
        if shared.closing.load(Ordering::Acquire) {
            shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
            if self.tx.send(queued).is_err() {
                shared.dropped(1, "the journal writer has stopped");
            }
            return;
        }
        if shared.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > QUEUE_BYTES {
            shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            shared.dropped(1, "the journal writer's queue is full");
            return;
        }
        match self.tx.try_send(queued) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                shared.dropped(1, "the journal writer's queue is full");
            }
            Err(TrySendError::Disconnected(_)) => {
                shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                shared.dropped(1, "the journal writer has stopped");
            }
        }
    }
}

impl Shared {
    /// Writing failed: the first failure of a period is announced to the tamper check.
    fn failing(&self, dir: &std::path::Path, e: &JournalError) {
        if self.metrics.writable.get() == 0 && self.failures.load(Ordering::Acquire) > 0 {
            return;
        }
        self.metrics.writable.set(0);
        let failure = JournalFailure {
            dir: dir.to_owned(),
            error: describe(e),
        };
        match self.failure.lock() {
            Ok(mut f) => *f = Some(failure),
            Err(p) => *p.into_inner() = Some(failure),
        }
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    fn dropped(&self, records: u64, why: &str) {
        self.metrics.dropped.inc_by(records);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.drop_logged.load(Ordering::Relaxed);
        if now >= last + LOG_EVERY.as_secs()
            && self
                .drop_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(
                dropped_total = self.metrics.dropped.get(),
                "journal record dropped: {why} (logged once a minute; \
                 exfil_sensor_journal_dropped_records_total counts them)"
            );
        }
    }
}

impl JournalThread {
    /// Starts the writer thread; it opens the journal and writes `start` first. A journal
    /// that cannot be opened is logged and tried again every minute; records meanwhile are
    /// dropped.
    pub fn start(
        config: JournalConfig,
        start: StartRecord,
        metrics: JournalMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            metrics,
            closing: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            drop_logged: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        shared.metrics.writable.set(1);
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(&config, start, &rx, &thread_shared))?;
        Ok(Self {
            sender: JournalSender { tx, shared },
            handle,
        })
    }

    pub fn sender(&self) -> JournalSender {
        self.sender.clone()
    }

    /// Whether the journal takes records, for the tamper check.
    pub fn health(&self) -> JournalHealth {
        JournalHealth {
            shared: Arc::clone(&self.sender.shared),
            seen: 0,
        }
    }

    /// From now on sends wait for room rather than drop: the agent is stopping, and its
    /// last interval must reach the journal.
    pub fn closing(&self) {
        self.sender.shared.closing.store(true, Ordering::Release);
    }

    /// Writes the stop record after everything queued, and waits for the writer to sync
    /// and end. Every other sender must be gone by then.
    pub fn stop(self, now: SystemTime) {
        self.closing();
        self.sender.send(Record::Stop(StopRecord {
            at_ms: unix_ms(now),
        }));
        drop(self.sender);
        if self.handle.join().is_err() {
            tracing::error!("the journal writer thread panicked");
        }
    }
}

/// Bytes a record holds in memory, roughly: what the queue's byte bound counts.
fn approximate_size(record: &Record) -> usize {
    const ROW: usize = 192;
    match record {
        Record::Interval(i) => 64 + ROW * (i.flows.len() + i.files.len() + i.processes.len()),
        Record::Start(s) => {
            256 + s.config_toml.len() + s.detect_state.as_ref().map_or(0, String::len)
        }
        Record::Config(c) => 256 + c.config_toml.len(),
        Record::Totals(t) => 64 + 64 * t.flows.len(),
        Record::Resume(r) => 64 + 96 * r.flows.len(),
        _ => 512,
    }
}

/// The error and, for an I/O error, its errno's name (what an admin greps for).
fn describe(e: &JournalError) -> String {
    let text = error_chain(e);
    let JournalError::Io { cause, .. } = e else {
        return text;
    };
    let name = match cause.raw_os_error() {
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EDQUOT) => "EDQUOT",
        Some(libc::EIO) => "EIO",
        Some(libc::EROFS) => "EROFS",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ENOTDIR) => "ENOTDIR",
        _ => return text,
    };
    format!("{text} ({name})")
}

/// The writer thread's state besides the channel.
struct Loop<'a> {
    config: &'a JournalConfig,
    shared: &'a Shared,
    writer: Option<Writer>,
    last_open: Option<Instant>,
    error_logged: Option<Instant>,
    backlog: Backlog,
    /// Records dropped since writing last failed (the backlog was full).
    dropped_while_failing: u64,
}

impl Loop<'_> {
    fn log_error(&mut self, what: &str, e: &JournalError) {
        let metrics = &self.shared.metrics;
        metrics.errors.inc();
        if self.error_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.error_logged = Some(Instant::now());
            tracing::error!(
                errors_total = metrics.errors.get(),
                "journal: {what}: {} (logged once a minute)",
                error_chain(e)
            );
        }
    }

    /// Opens the journal if it is not open and it is time to try.
    fn open_if_due(&mut self) {
        if self.writer.is_some() || self.last_open.is_some_and(|at| at.elapsed() < REOPEN) {
            return;
        }
        self.last_open = Some(Instant::now());
        match open(self.config, &self.shared.metrics) {
            Ok(opened) => {
                self.shared
                    .metrics
                    .bytes
                    .set(i64::try_from(opened.bytes()).unwrap_or(i64::MAX));
                self.writer = Some(opened);
            }
            Err(e) => {
                self.log_error("opening", &e);
                self.shared.failing(&self.config.dir, &e);
            }
        }
    }

    /// Takes a record into the backlog (it is written from there, in order).
    fn take(&mut self, record: Record, size: usize) {
        if !self.backlog.push(record, size) {
            self.dropped_while_failing += 1;
            self.shared.dropped(
                1,
                "the journal is not taking records and the records waiting in memory \
                 reached their bound",
            );
        }
    }

    /// Writes what waits, oldest first, until the disk refuses one.
    fn flush(&mut self) {
        let Some(writer) = self.writer.as_mut() else {
            self.shared
                .metrics
                .backlog
                .set(i64::try_from(self.backlog.len()).unwrap_or(i64::MAX));
            return;
        };
        let metrics = &self.shared.metrics;
        let mut failure = None;
        let mut dropped = 0;
        let had_backlog = self.backlog.len();
        let flushed = self
            .backlog
            .flush(|record| match writer.append(record, SystemTime::now()) {
                Ok(appended) => {
                    metrics.records.inc();
                    log_rotation(appended.rotated.as_ref());
                    if let Some(rotation) = appended.rotated
                        && let Some(e) = rotation.retire_error
                    {
                        failure = Some(("retiring old segments", e, false));
                    }
                    if let Some(e) = appended.sync_error {
                        failure = Some(("syncing", e, false));
                    }
                    true
                }
                // A record the journal can never take (too large, unencodable) must not hold
                // up the ones after it: dropped and counted.
                Err(e @ (JournalError::TooLarge { .. } | JournalError::Encode(_))) => {
                    failure = Some(("writing a record that cannot be written", e, false));
                    dropped += 1;
                    true
                }
                Err(e) => {
                    failure = Some(("writing", e, true));
                    false
                }
            });
        metrics
            .bytes
            .set(i64::try_from(writer.bytes()).unwrap_or(i64::MAX));
        if dropped > 0 {
            self.shared.dropped(dropped, "the record cannot be written");
        }
        metrics
            .backlog
            .set(i64::try_from(self.backlog.len()).unwrap_or(i64::MAX));
        if let Some((what, e, stops)) = failure {
            self.log_error(what, &e);
            if stops {
                self.shared.failing(&self.config.dir, &e);
                return;
            }
        }
        if !flushed.stopped && metrics.writable.get() == 0 {
            metrics.writable.set(1);
            tracing::info!(
                dir = %self.config.dir.display(),
                written_from_memory = flushed.written.min(had_backlog),
                dropped = self.dropped_while_failing,
                "journal: writing again"
            );
            self.dropped_while_failing = 0;
        }
    }
}

fn log_rotation(rotation: Option<&super::writer::Rotation>) {
    let Some(rotation) = rotation else {
        return;
    };
    tracing::info!(
        closed = %rotation.closed.display(),
        chain_hash = rotation.closed_hash,
        opened = %rotation.opened.display(),
        retired = rotation.retired.len(),
        "journal segment closed"
    );
    for path in &rotation.retired {
        tracing::info!(segment = %path.display(), "journal segment retired");
    }
}

fn write_loop(config: &JournalConfig, start: StartRecord, rx: &Receiver<Queued>, shared: &Shared) {
    let mut state = Loop {
        config,
        shared,
        writer: None,
        last_open: None,
        error_logged: None,
        backlog: Backlog::new(BACKLOG_BYTES),
        dropped_while_failing: 0,
    };
    // The start record goes first, whenever the journal opens.
    let start = Record::Start(start);
    let size = approximate_size(&start);
    state.take(start, size);
    loop {
        state.open_if_due();
        state.flush();
        // While records wait, wake up to try again even if no record comes.
        let received = if state.backlog.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY)
        };
        match received {
            Ok(Queued { record, size }) => {
                shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                state.take(record, size);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Every sender is gone (the agent is stopping): one last try, then what is left is lost.
    state.open_if_due();
    state.flush();
    let lost = state.backlog.clear();
    if lost > 0 {
        shared.dropped(
            lost as u64,
            "the agent stopped while the journal was not taking records",
        );
        tracing::error!(
            records = lost,
            dir = %config.dir.display(),
            "journal: records still waiting in memory when the agent stopped were lost"
        );
    }
    shared.metrics.backlog.set(0);
    if let Some(mut w) = state.writer.take() {
        if let Err(e) = w.sync() {
            state.log_error("syncing", &e);
        }
        let (number, hash) = w.head();
        tracing::info!(
            dir = %w.dir().display(),
            last_record = number,
            chain_hash = hash,
            "journal closed"
        );
    }
}

/// Opens the journal, saying in the log what it found.
fn open(config: &JournalConfig, metrics: &JournalMetrics) -> Result<Writer, super::JournalError> {
    let (writer, report) = Writer::open(config, SystemTime::now())?;
    if let Some(e) = &report.retire_error {
        metrics.errors.inc();
        tracing::error!("journal: retiring old segments: {}", error_chain(e));
    }
    if let Some(torn) = &report.torn {
        tracing::warn!(
            segment = %torn.segment.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            kind = torn.kind.describe(),
            "journal: a torn last record (the agent stopped inside a write) was cut off"
        );
    }
    tracing::info!(
        dir = %config.dir.display(),
        segments = report.segments,
        last_record = report.last_number,
        retired = report.retired.len(),
        "journal open"
    );
    Ok(writer)
}
