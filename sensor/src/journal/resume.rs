//! What a restarted agent needs from the journal before it writes: how the previous run
//! ended, and the kernel totals per flow key that the journal's interval records account for
//! (its last totals). Bytes the pinned maps hold beyond them were never journaled nor seen by
//! detection: counted while no agent ran, or in the interval the previous agent died in.
//!
//! Read from the newest segment back to the newest anchor (a resume record, or a complete
//! totals record right after its interval), then forward from there: a few segments at most,
//! since a complete totals record is written about once an hour. From the anchor on, each
//! interval record's rows add their bytes to their keys' totals, and each totals record
//! right after its interval sets the keys it names. An interval is one record, so the totals
//! advance by exactly what the journal holds: a kill, a torn write or a dropped record leaves
//! the bytes it did not hold beyond them.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use super::{
    JournalError, format,
    reader::{Entry, Reader},
    record::{Counts, FlowId, PreviousRun, Record},
};

/// The journal's view of the run before this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTotals {
    pub previous: PreviousRun,
    /// The kernel totals per key the journal accounts for; a key not in it was never counted
    /// in a journaled interval since the anchor (zeros). `None` when no anchor was found (a
    /// journal of a build before totals records): nothing to compare the pinned maps with.
    pub flows: Option<HashMap<FlowId, Counts>>,
}

/// The last totals of the journal in `dir`; `None` when it has no segment (a new journal).
/// Damage is skipped like any reader does (a torn last record is what `kill -9` leaves).
pub fn last_totals(dir: &Path) -> Result<Option<LastTotals>, JournalError> {
    let segments = match format::list_segments(dir) {
        Ok(segments) => segments,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io(dir)(e)),
    };
    if segments.is_empty() {
        return Ok(None);
    }
    // Newest first, until one holds an anchor, or its intervals end more than LOOK_BACK_MS
    // before the newest: a run writes an anchor at its first poll and about once an hour,
    // so older segments only hold one for a journal of a build before totals records (read
    // from the newest segment then: no totals, only how the previous run ended).
    let mut first = segments.len() - 1;
    let mut newest_end: Option<u64> = None;
    for (index, (sequence, path)) in segments.iter().enumerate().rev() {
        let (anchored, ends) = scan_for_anchor(*sequence, path)?;
        if anchored {
            first = index;
            break;
        }
        if let Some((oldest, newest)) = ends {
            let newest = *newest_end.get_or_insert(newest);
            if oldest.saturating_add(LOOK_BACK_MS) < newest {
                break;
            }
        }
    }
    let mut folded = Fold::default();
    for (sequence, path) in &segments[first..] {
        for record in records_of(*sequence, path)? {
            folded.feed(record);
        }
    }
    Ok(Some(folded.finish()))
}

/// How far back from its newest interval a journal's newest anchor is looked for: the
/// complete totals record comes every hour of a run.
const LOOK_BACK_MS: u64 = 2 * 3_600_000;

/// The intact records of one segment, read on its own (the chain into it is verify's job),
/// one at a time.
fn records_of(
    sequence: u64,
    path: &PathBuf,
) -> Result<impl Iterator<Item = Record> + use<>, JournalError> {
    let bytes = fs::read(path).map_err(JournalError::io(path))?;
    Ok(
        Reader::from_bytes(path.clone(), sequence, bytes).filter_map(|entry| match entry {
            Entry::Record { record, .. } => Some(record),
            Entry::Damaged(_) => None,
        }),
    )
}

/// Whether a segment holds an anchor (a resume record, or a complete totals record right
/// after its interval), and the ends of its oldest and newest intervals.
fn scan_for_anchor(
    sequence: u64,
    path: &PathBuf,
) -> Result<(bool, Option<(u64, u64)>), JournalError> {
    let mut anchored = false;
    let mut ends: Option<(u64, u64)> = None;
    let mut interval_end = None;
    for record in records_of(sequence, path)? {
        let after_interval = interval_end.take();
        match &record {
            Record::Resume(_) => anchored = true,
            Record::Totals(t) if t.complete && after_interval == Some(t.at_ms) => anchored = true,
            Record::Interval(i) => {
                interval_end = Some(i.end_ms);
                ends = Some(ends.map_or((i.end_ms, i.end_ms), |(oldest, newest)| {
                    (oldest.min(i.end_ms), newest.max(i.end_ms))
                }));
            }
            _ => {}
        }
    }
    Ok((anchored, ends))
}

/// The last totals after `records`, oldest first.
pub fn fold(records: impl IntoIterator<Item = Record>) -> LastTotals {
    let mut folded = Fold::default();
    for record in records {
        folded.feed(record);
    }
    folded.finish()
}

/// The last totals, record by record.
#[derive(Default)]
struct Fold {
    flows: Option<HashMap<FlowId, Counts>>,
    /// The interval record just read, for the totals record that may follow it.
    interval_end: Option<u64>,
    last_at_ms: Option<u64>,
    stopped: bool,
}

impl Fold {
    fn feed(&mut self, record: Record) {
        let after_interval = self.interval_end.take();
        if let Some(at) = record.at_ms() {
            self.last_at_ms = Some(self.last_at_ms.map_or(at, |last| last.max(at)));
        }
        self.stopped = matches!(record, Record::Stop(_));
        match record {
            Record::Resume(resume) => {
                self.flows = Some(
                    resume
                        .flows
                        .iter()
                        .map(|f| (f.key, f.journaled.unwrap_or(f.kernel)))
                        .collect(),
                );
            }
            Record::Interval(interval) => {
                self.interval_end = Some(interval.end_ms);
                if let Some(flows) = &mut self.flows {
                    for row in &interval.flows {
                        if let Some(key) = FlowId::of_row(row) {
                            flows.entry(key).or_default().add(row);
                        }
                    }
                }
            }
            Record::Totals(t) if after_interval == Some(t.at_ms) => {
                if t.complete {
                    self.flows = Some(t.flows.into_iter().collect());
                } else if let Some(flows) = &mut self.flows {
                    flows.extend(t.flows);
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> LastTotals {
        let previous = match (self.last_at_ms, self.stopped) {
            (None, _) => PreviousRun::None,
            (Some(at_ms), true) => PreviousRun::Stopped { at_ms },
            (Some(last_at_ms), false) => PreviousRun::Unclean { last_at_ms },
        };
        LastTotals {
            previous,
            flows: self.flows,
        }
    }
}
