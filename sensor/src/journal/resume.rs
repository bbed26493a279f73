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
    record::{Counts, FlowId, PreviousRun, Record, TotalsRecord},
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
    // Newest first, until one holds an anchor.
    let mut loaded: Vec<Vec<Record>> = Vec::new();
    for (sequence, path) in segments.iter().rev() {
        let records = records_of(*sequence, path)?;
        let anchored = (0..records.len()).any(|i| is_anchor(&records, i));
        loaded.push(records);
        if anchored {
            break;
        }
    }
    Ok(Some(fold(loaded.into_iter().rev().flatten())))
}

/// The intact records of one segment, read on its own (the chain into it is verify's job).
fn records_of(sequence: u64, path: &PathBuf) -> Result<Vec<Record>, JournalError> {
    let bytes = fs::read(path).map_err(JournalError::io(path))?;
    Ok(Reader::from_bytes(path.clone(), sequence, bytes)
        .filter_map(|entry| match entry {
            Entry::Record { record, .. } => Some(record),
            Entry::Damaged(_) => None,
        })
        .collect())
}

/// A resume record, or a complete totals record right after its interval.
fn is_anchor(records: &[Record], i: usize) -> bool {
    match &records[i] {
        Record::Resume(_) => true,
        Record::Totals(t) => t.complete && i > 0 && follows(t, &records[i - 1]),
        _ => false,
    }
}

/// Whether `before` is the interval a totals record was written after.
fn follows(totals: &TotalsRecord, before: &Record) -> bool {
    matches!(before, Record::Interval(i) if i.end_ms == totals.at_ms)
}

/// The last totals after `records`, oldest first.
pub fn fold(records: impl IntoIterator<Item = Record>) -> LastTotals {
    let mut flows: Option<HashMap<FlowId, Counts>> = None;
    // The interval record just read, for the totals record that may follow it.
    let mut interval_end: Option<u64> = None;
    let mut last_at_ms: Option<u64> = None;
    let mut stopped = false;
    for record in records {
        let after_interval = interval_end.take();
        if let Some(at) = record.at_ms() {
            last_at_ms = Some(last_at_ms.map_or(at, |last| last.max(at)));
        }
        stopped = matches!(record, Record::Stop(_));
        match record {
            Record::Resume(resume) => {
                flows = Some(
                    resume
                        .flows
                        .iter()
                        .map(|f| (f.key, f.journaled.unwrap_or(f.kernel)))
                        .collect(),
                );
            }
            Record::Interval(interval) => {
                interval_end = Some(interval.end_ms);
                if let Some(flows) = &mut flows {
                    for row in &interval.flows {
                        if let Some(key) = FlowId::of_row(row) {
                            flows.entry(key).or_default().add(row);
                        }
                    }
                }
            }
            Record::Totals(t) if after_interval == Some(t.at_ms) => {
                if t.complete {
                    flows = Some(t.flows.into_iter().collect());
                } else if let Some(flows) = &mut flows {
                    flows.extend(t.flows);
                }
            }
            _ => {}
        }
    }
    let previous = match (last_at_ms, stopped) {
        (None, _) => PreviousRun::None,
        (Some(at_ms), true) => PreviousRun::Stopped { at_ms },
        (Some(last_at_ms), false) => PreviousRun::Unclean { last_at_ms },
    };
    LastTotals { previous, flows }
}
