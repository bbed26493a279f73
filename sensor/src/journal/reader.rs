//! Reading a journal: every intact record, oldest first, and each damage found between them.
//! Reading goes on after damage: a damaged frame is skipped (by its length when its head
//! checks out, else up to the next sync marker that does), and the records after it come
//! back as usual.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

pub use super::scan::DamageKind;
use super::{
    JournalError,
    format::{self, HEADER_LEN, Header},
    record::Record,
    scan::{Context, Scan, Step},
};

/// Where a record is. `number` is its number in the whole journal, from 1 for the first
/// record ever written (kept across segments and retention: a segment's header says the
/// number of its first record), the same number `journal verify` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub segment: PathBuf,
    /// Byte offset of the record's frame in the segment file.
    pub offset: u64,
    pub number: u64,
}

/// Bytes of a segment that did not read as records, or an intact record out of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Damage {
    pub segment: PathBuf,
    /// Byte offset where the damage starts (a frame's start; 0 for the segment header).
    pub offset: u64,
    /// The number of the record there: for a broken chain the intact frame's own; otherwise
    /// the number the next record should have had (the damaged one's, unless records went
    /// missing with it).
    pub number: u64,
    pub kind: DamageKind,
    /// Bytes from `offset` not read as records: the whole frame for an undecodable record,
    /// 0 for a broken chain (the frame is intact, and its record comes next).
    pub skipped_bytes: u64,
}

/// `SEGMENT: offset N, record N: checksum mismatch (B bytes skipped)`: the line `journal
/// verify` prints, and what `replay` and `report` say of what they skipped.
impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: offset {}, record {}: {}",
            self.segment.display(),
            self.offset,
            self.number,
            self.kind.describe()
        )?;
        match self.skipped_bytes {
            0 => Ok(()),
            n => write!(f, " ({n} bytes skipped)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "entries are read one at a time; damage is rare"
)]
pub enum Entry {
    Record { position: Position, record: Record },
    Damaged(Damage),
}

pub struct Reader {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<Segment>,
    context: Context,
    count: usize,
}

struct Segment {
    path: PathBuf,
    bytes: Vec<u8>,
    scan: Scan,
}

impl Reader {
    /// Every segment of `dir`, oldest first.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::from_segments(
            dir,
            format::list_segments(dir).map_err(JournalError::io(dir))?,
        )
    }

    /// Only the segments that may hold records from `from_ms` (Unix ms) on: the segment
    /// created last at or before it, and every later one. Cheap (one header read per
    /// segment); the caller still filters records by time. The chain into the first segment
    /// read is not checked, and Start records of skipped segments are not seen.
    pub fn open_from(dir: &Path, from_ms: u64) -> Result<Self, JournalError> {
        let mut segments = format::list_segments(dir).map_err(JournalError::io(dir))?;
        let created = |path: &Path| -> Option<u64> {
            let mut bytes = [0u8; HEADER_LEN];
            fs::File::open(path).ok()?.read_exact(&mut bytes).ok()?;
            Header::parse(&bytes).ok().map(|h| h.created_ms)
        };
        let first = segments
            .iter()
            .rposition(|(_, path)| created(path).is_some_and(|ms| ms <= from_ms))
            .unwrap_or(0);
        segments.drain(..first);
        Self::from_segments(dir, segments)
    }

    fn from_segments(dir: &Path, segments: Vec<(u64, PathBuf)>) -> Result<Self, JournalError> {
        if segments.is_empty() {
            return Err(JournalError::Empty {
                path: dir.to_owned(),
            });
        }
        Ok(Self {
            count: segments.len(),
            segments: segments.into_iter(),
            current: None,
            context: Context::UNKNOWN,
        })
    }

    /// One segment's bytes, as if read from `segment` (named for positions; sequence
    /// `sequence`), with nothing known of the segments before it: reads without a file
    /// (the fuzz target's way in).
    pub fn from_bytes(segment: PathBuf, sequence: u64, bytes: Vec<u8>) -> Self {
        Self {
            segments: Vec::new().into_iter(),
            current: Some(Segment {
                path: segment,
                bytes,
                scan: Scan::new(sequence, Context::UNKNOWN),
            }),
            context: Context::UNKNOWN,
            count: 1,
        }
    }

    /// How many segment files it reads.
    pub fn segments(&self) -> usize {
        self.count
    }

    fn load_next(&mut self) -> Option<Result<(), Damage>> {
        let (sequence, path) = self.segments.next()?;
        match fs::read(&path) {
            Ok(bytes) => {
                self.current = Some(Segment {
                    path,
                    bytes,
                    scan: Scan::new(sequence, self.context),
                });
                Some(Ok(()))
            }
            Err(_) => {
                let skipped = fs::metadata(&path).map_or(0, |m| m.len());
                let damage = Damage {
                    segment: path,
                    offset: 0,
                    number: self.context.next_number,
                    kind: DamageKind::Unreadable,
                    skipped_bytes: skipped,
                };
                self.context.state = None;
                Some(Err(damage))
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        loop {
            let Some(segment) = &mut self.current else {
                match self.load_next()? {
                    Ok(()) => continue,
                    Err(damage) => return Some(Entry::Damaged(damage)),
                }
            };
            let step = segment.scan.step(&segment.bytes);
            let damage = |offset: usize, number, kind, skipped: usize| {
                Entry::Damaged(Damage {
                    segment: segment.path.clone(),
                    offset: offset as u64,
                    number,
                    kind,
                    skipped_bytes: skipped as u64,
                })
            };
            match step {
                None => {
                    self.context = segment.scan.context();
                    self.current = None;
                }
                Some(Step::Header(_)) => {}
                Some(Step::Damage {
                    offset,
                    number,
                    kind,
                    skipped,
                }) => return Some(damage(offset, number, kind, skipped)),
                Some(Step::Frame {
                    offset,
                    head,
                    payload,
                }) => {
                    return Some(match Record::decode(head.record_type, payload) {
                        Ok(record) => Entry::Record {
                            position: Position {
                                segment: segment.path.clone(),
                                offset: offset as u64,
                                number: head.number,
                            },
                            record,
                        },
                        Err(_) => damage(offset, head.number, DamageKind::Decode, head.frame_len()),
                    });
                }
            }
        }
    }
}
