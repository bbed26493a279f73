//! Appending to a journal: one writer per directory (a lock file says so), records chained
//! onto the last intact one, segments rotated by size and age and retired by total size and
//! age. At open, a torn tail (the agent died inside a write) is cut off and reported.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    JournalError,
    config::{FsyncPolicy, JournalConfig},
    format::{self, FRAME_OVERHEAD, HEADER_LEN, Hash, Header, MAX_PAYLOAD},
    record::{Record, RecordType},
    retention::{self, SegmentInfo},
    scan::{Context, DamageKind, Scan, Step, Steps},
};
use crate::flow::interval::unix_ms;

/// The lock file in the journal directory; a second writer's open fails while it is held.
const LOCK: &str = "lock";

pub struct Writer {
    dir: PathBuf,
    segment_size: u64,
    segment_age_ms: u64,
    retain_size: u64,
    retain_age_ms: u64,
    fsync: FsyncPolicy,
    redact_paths: bool,
    _lock: File,
    file: File,
    /// Oldest first; the last is the one written to.
    segments: Vec<SegmentInfo>,
    state: Hash,
    next_number: u64,
    payload: Vec<u8>,
    frame: Vec<u8>,
    /// A failed write could not be undone: the next record starts a new segment.
    broken: bool,
}

/// What open found and did.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Segment files after open.
    pub segments: usize,
    /// The number of the last record already there (0 for a new journal).
    pub last_number: u64,
    /// A torn tail cut off.
    pub torn: Option<Torn>,
    /// A new segment begun (a new journal, or the last segment's header was damaged).
    pub created: Option<PathBuf>,
    pub retired: Vec<PathBuf>,
    /// A segment due for retirement that could not be deleted (tried again at the next
    /// rotation); the journal is open all the same.
    pub retire_error: Option<JournalError>,
}

/// Bytes after the last intact record of the newest segment, removed at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// `Truncation` for a frame cut short, `Checksum` for one whose bytes never all landed.
    pub kind: DamageKind,
}

/// What one append did.
#[derive(Debug)]
pub struct Appended {
    pub number: u64,
    /// Bytes written (the frame).
    pub bytes: u64,
    pub rotated: Option<Rotation>,
    /// The record was written, but syncing it to disk failed: it is in the journal (the
    /// chain goes on from it), only perhaps not durable yet. Never an `Err`, which would have
    /// the caller write it again.
    pub sync_error: Option<JournalError>,
}

/// A segment closed and the next begun before the record.
#[derive(Debug)]
pub struct Rotation {
    pub closed: PathBuf,
    /// The closed segment's final chain hash, hex: log it, and the journal up to here can be
    /// checked against a copy kept elsewhere.
    pub closed_hash: String,
    pub opened: PathBuf,
    pub retired: Vec<PathBuf>,
    /// Segments due for retirement that could not be deleted (they are tried again at the
    /// next rotation).
    pub retire_error: Option<JournalError>,
}

impl Writer {
    pub fn open(
        config: &JournalConfig,
        now: SystemTime,
    ) -> Result<(Self, OpenReport), JournalError> {
        let dir = config.dir.clone();
        let io = JournalError::io;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let lock = lock(&dir)?;
        let mut report = OpenReport::default();
        let mut listed = format::list_segments(&dir).map_err(io(&dir))?;
        // The newest segment, scanned: the chain continues from its last intact record.
        let mut tail = None;
        while let Some((sequence, path)) = listed.last().cloned() {
            let bytes = fs::read(&path).map_err(io(&path))?;
            let scanned = scan(sequence, &bytes);
            if bytes.len() < HEADER_LEN {
                // Created, then the agent died before its header was written: nothing in it.
                fs::remove_file(&path).map_err(io(&path))?;
                report.torn = Some(Torn {
                    segment: path,
                    offset: 0,
                    bytes: bytes.len() as u64,
                    kind: DamageKind::Truncation,
                });
                listed.pop();
                continue;
            }
            if let Some(kind) = scanned.tail {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(scanned.intact_end as u64)?;
                        f.sync_all()
                    })
                    .map_err(io(&path))?;
                report.torn = Some(Torn {
                    segment: path.clone(),
                    offset: scanned.intact_end as u64,
                    bytes: (bytes.len() - scanned.intact_end) as u64,
                    kind,
                });
            }
            tail = Some((sequence, path, scanned));
            break;
        }
        let mut segments = listed
            .iter()
            .map(|(sequence, path)| info(*sequence, path))
            .collect::<Result<Vec<_>, _>>()?;
        let context = match &tail {
            Some((_, _, scanned)) if scanned.context.state.is_some() => scanned.context,
            // A newest segment whose header is damaged and holds no intact record: the chain
            // goes on from the one before it.
            Some(_) => chain_end(&listed[..listed.len() - 1])?,
            None => Context::UNKNOWN,
        };
        report.last_number = context.next_number - 1;
        let append_to = match &tail {
            Some((_, _, scanned)) if scanned.header.is_some() => segments.pop(),
            _ => None,
        };
        let fsync = config.fsync;
        let (file, current, state) = match append_to {
            Some(current) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&current.path)
                    .map_err(io(&current.path))?;
                (file, current, context.state.unwrap_or_default())
            }
            None => {
                let header = Header {
                    sequence: tail.as_ref().map_or(1, |(sequence, _, _)| sequence + 1),
                    created_ms: unix_ms(now),
                    first_number: context.next_number,
                    previous: context.state.unwrap_or_default(),
                };
                let (file, info) = create_segment(&dir, &header, fsync)?;
                report.created = Some(info.path.clone());
                (file, info, header.chain_start())
            }
        };
        segments.push(current);
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut writer = Self {
            dir,
            segment_size: config.segment_size.as_u64(),
            segment_age_ms: ms(config.segment_age),
            retain_size: config.retain_size.as_u64(),
            retain_age_ms: ms(config.retain_age),
            fsync,
            redact_paths: config.redact_paths,
            _lock: lock,
            file,
            segments,
            state,
            next_number: context.next_number,
            payload: Vec::new(),
            frame: Vec::new(),
            broken: false,
        };
        (report.retired, report.retire_error) = writer.retire(unix_ms(now));
        report.segments = writer.segments.len();
        Ok((writer, report))
    }

    /// Appends one record (rotating first when the segment is full or old). With the
    /// `interval` fsync policy, start, interval and stop records are synced to disk.
    pub fn append(&mut self, record: &Record, now: SystemTime) -> Result<Appended, JournalError> {
        self.payload.clear();
        record.encode(self.redact_paths, &mut self.payload)?;
        if self.payload.len() > MAX_PAYLOAD as usize {
            return Err(JournalError::TooLarge {
                bytes: self.payload.len(),
            });
        }
        let frame_len = (FRAME_OVERHEAD + self.payload.len()) as u64;
        let now_ms = unix_ms(now);
        let current = self.current();
        let holds_records = current.size > HEADER_LEN as u64;
        let full = current.size.saturating_add(frame_len) > self.segment_size;
        let old = now_ms.saturating_sub(current.created_ms) >= self.segment_age_ms;
        let rotated = if self.broken || (holds_records && (full || old)) {
            Some(self.rotate(now_ms)?)
        } else {
            None
        };
        let number = self.next_number;
        let record_type = record.record_type() as u8;
        let hash = format::chain(&self.state, number, record_type, &self.payload);
        self.frame.clear();
        format::write_frame(&mut self.frame, record_type, number, &hash, &self.payload);
        let path = self.current().path.clone();
        if let Err(cause) = self.file.write_all(&self.frame) {
            // Undo a partial write, so that the next record does not follow torn bytes.
            let size = self.current().size;
            if self.file.set_len(size).is_err() {
                self.broken = true;
            }
            return Err(JournalError::Io { path, cause });
        }
        self.state = hash;
        self.next_number += 1;
        if let Some(current) = self.segments.last_mut() {
            current.size += frame_len;
        }
        let durable = matches!(
            record.record_type(),
            RecordType::Start | RecordType::Interval | RecordType::Stop
        );
        let sync_error = if durable && self.fsync == FsyncPolicy::Interval {
            self.sync().err()
        } else {
            None
        };
        Ok(Appended {
            number,
            bytes: frame_len,
            rotated,
            sync_error,
        })
    }

    /// Flushes what was written to disk.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let path = &self.current().path;
        self.file.sync_data().map_err(JournalError::io(path))
    }

    /// Bytes of all segments on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// The number of the last record written and the chain hash after it (hex).
    pub fn head(&self) -> (u64, String) {
        (self.next_number - 1, hex(&self.state))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current(&self) -> &SegmentInfo {
        // open always leaves one segment, and retirement never removes the newest.
        &self.segments[self.segments.len() - 1]
    }

    fn rotate(&mut self, now_ms: u64) -> Result<Rotation, JournalError> {
        let closed = self.current().path.clone();
        if self.fsync == FsyncPolicy::Interval {
            // A failure here is the disk's: the new segment would fail the same way.
            self.sync()?;
        }
        let header = Header {
            sequence: self.current().sequence + 1,
            created_ms: now_ms,
            first_number: self.next_number,
            previous: self.state,
        };
        let (file, info) = create_segment(&self.dir, &header, self.fsync)?;
        let closed_hash = hex(&self.state);
        let opened = info.path.clone();
        self.file = file;
        self.segments.push(info);
        self.state = header.chain_start();
        self.broken = false;
        let (retired, retire_error) = self.retire(now_ms);
        Ok(Rotation {
            closed,
            closed_hash,
            opened,
            retired,
            retire_error,
        })
    }

    /// Deletes the oldest segments retention says to, stopping at the first that cannot be.
    fn retire(&mut self, now_ms: u64) -> (Vec<PathBuf>, Option<JournalError>) {
        let count =
            retention::to_retire(&self.segments, self.retain_size, self.retain_age_ms, now_ms);
        let mut retired = Vec::new();
        for _ in 0..count {
            let path = self.segments[0].path.clone();
            if let Err(cause) = fs::remove_file(&path) {
                return (retired, Some(JournalError::Io { path, cause }));
            }
            self.segments.remove(0);
            retired.push(path);
        }
        (retired, None)
    }
}

/// What a writer needs from a scan of the newest segment.
struct Scanned {
    header: Option<Header>,
    /// Where the last intact record (or the header) ends.
    intact_end: usize,
    /// Damage after `intact_end` with no intact record after it: a torn write.
    tail: Option<DamageKind>,
    /// The chain after the last intact record (state `None` when there is none).
    context: Context,
}

fn scan(sequence: u64, bytes: &[u8]) -> Scanned {
    let mut steps = Steps {
        buf: bytes,
        scan: Scan::new(sequence, Context::UNKNOWN),
    };
    let mut scanned = Scanned {
        header: None,
        intact_end: HEADER_LEN.min(bytes.len()),
        tail: None,
        context: Context::UNKNOWN,
    };
    while let Some(step) = steps.next() {
        match step {
            Step::Header(header) => {
                scanned.header = Some(header);
                scanned.context = steps.scan.context();
            }
            Step::Frame { offset, head, .. } => {
                scanned.intact_end = offset + head.frame_len();
                scanned.tail = None;
                scanned.context = steps.scan.context();
            }
            Step::Damage {
                offset,
                kind,
                skipped,
                ..
            } => {
                if offset >= HEADER_LEN && skipped > 0 && scanned.tail.is_none() {
                    scanned.tail = Some(kind);
                }
            }
        }
    }
    scanned
}

/// The chain after the last intact record of the newest of `segments` that has one.
fn chain_end(segments: &[(u64, PathBuf)]) -> Result<Context, JournalError> {
    for (sequence, path) in segments.iter().rev() {
        let bytes = fs::read(path).map_err(JournalError::io(path))?;
        let scanned = scan(*sequence, &bytes);
        if scanned.context.state.is_some() {
            return Ok(scanned.context);
        }
    }
    Ok(Context::UNKNOWN)
}

fn info(sequence: u64, path: &Path) -> Result<SegmentInfo, JournalError> {
    let io = JournalError::io(path);
    let meta = fs::metadata(path).map_err(io)?;
    let mut header = [0u8; HEADER_LEN];
    let created_ms = File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .ok()
        .and_then(|()| Header::parse(&header).ok())
        .map(|h| h.created_ms)
        .or_else(|| meta.modified().ok().map(unix_ms))
        .unwrap_or(0);
    Ok(SegmentInfo {
        sequence,
        path: path.to_owned(),
        created_ms,
        size: meta.len(),
    })
}

fn create_segment(
    dir: &Path,
    header: &Header,
    fsync: FsyncPolicy,
) -> Result<(File, SegmentInfo), JournalError> {
    let path = dir.join(format::segment_name(header.sequence));
    let io = JournalError::io;
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    // A segment left without its header (a full disk) is removed: every later try to begin
    // it would find its name taken.
    let written = file.write_all(&header.to_bytes()).and_then(|()| {
        if fsync == FsyncPolicy::Interval {
            // The new file's name too: a segment that vanishes after a crash breaks the chain.
            file.sync_all()?;
            File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    });
    if let Err(cause) = written {
        let _ = fs::remove_file(&path);
        return Err(JournalError::Io { path, cause });
    }
    Ok((
        file,
        SegmentInfo {
            sequence: header.sequence,
            path,
            created_ms: header.created_ms,
            size: HEADER_LEN as u64,
        },
    ))
}

fn lock(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(JournalError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            path: dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(cause)) => Err(JournalError::Io { path, cause }),
    }
}

pub(crate) fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
