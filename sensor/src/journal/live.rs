//! The live agent's journal: a writer thread of its own, fed through a bounded channel, so
//! that a slow or failing disk never holds up counting, metrics or alerts. A record that
//! finds the queue full, or the disk failing, is dropped, counted and logged (at most once
//! a minute); the agent goes on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounter, IntGauge, Registry};

use super::{
    JournalConfig, Writer,
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
                "Records not written: the writer's queue was full, or the disk failed.",
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
        });
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

fn write_loop(config: &JournalConfig, start: StartRecord, rx: &Receiver<Queued>, shared: &Shared) {
    let metrics = &shared.metrics;
    let mut start = Some(start);
    let mut writer: Option<Writer> = None;
    let mut last_open: Option<Instant> = None;
    let mut error_logged: Option<Instant> = None;
    let mut log_error = |what: &str, e: &super::JournalError| {
        metrics.errors.inc();
        if error_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            error_logged = Some(Instant::now());
            tracing::error!(
                errors_total = metrics.errors.get(),
                "journal: {what}: {} (logged once a minute)",
                error_chain(e)
            );
        }
    };
    // Opened now, so that the start record is written at start; while it cannot be, tried
    // again with the first record after each REOPEN.
    let mut next = None;
    loop {
        if writer.is_none() && last_open.is_none_or(|at| at.elapsed() >= REOPEN) {
            last_open = Some(Instant::now());
            match open(config, metrics) {
                Ok(mut opened) => {
                    if let Some(record) = start.take() {
                        match opened.append(&Record::Start(record), SystemTime::now()) {
                            Ok(_) => metrics.records.inc(),
                            Err(e) => {
                                log_error("writing the start record", &e);
                                shared.dropped(1, "writing failed");
                            }
                        }
                    }
                    metrics
                        .bytes
                        .set(i64::try_from(opened.bytes()).unwrap_or(i64::MAX));
                    writer = Some(opened);
                }
                Err(e) => log_error("opening", &e),
            }
        }
        let Some(Queued { record, size }) = next.take() else {
            match rx.recv() {
                Ok(queued) => next = Some(queued),
                Err(_) => break,
            }
            continue;
        };
        shared.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        let Some(w) = writer.as_mut() else {
            shared.dropped(1, "the journal is not open");
            continue;
        };
        match w.append(&record, SystemTime::now()) {
            Ok(appended) => {
                metrics.records.inc();
                if let Some(rotation) = appended.rotated {
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
                    if let Some(e) = rotation.retire_error {
                        log_error("retiring old segments", &e);
                    }
                }
            }
            Err(e) => {
                log_error("writing", &e);
                shared.dropped(1, "writing failed");
            }
        }
        metrics
            .bytes
            .set(i64::try_from(w.bytes()).unwrap_or(i64::MAX));
    }
    if let Some(mut w) = writer {
        if let Err(e) = w.sync() {
            log_error("syncing", &e);
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
