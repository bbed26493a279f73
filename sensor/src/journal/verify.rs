//! `exfil-sensor journal verify DIR`: reads every record, checks every checksum and the whole
//! chain, and names the first damage, or sums up an intact journal in one line.

use std::path::Path;

use crate::detect::rfc3339;

use super::{
    JournalError,
    reader::{Damage, Entry, Reader},
};

/// An intact journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub segments: usize,
    pub records: u64,
    /// The first and last record numbers; the first is above 1 when retention retired the
    /// oldest segments.
    pub numbers: Option<(u64, u64)>,
    /// The earliest and latest record times (Unix ms).
    pub span_ms: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact(Summary),
    /// The first damage, in journal order.
    Damaged(Damage),
}

/// Reads the whole journal in `dir`.
pub fn verify(dir: &Path) -> Result<Verdict, JournalError> {
    let reader = Reader::open(dir)?;
    let mut summary = Summary {
        segments: reader.segments(),
        records: 0,
        numbers: None,
        span_ms: None,
    };
    for entry in reader {
        match entry {
            Entry::Damaged(damage) => return Ok(Verdict::Damaged(damage)),
            Entry::Record { position, record } => {
                summary.records += 1;
                let first = summary.numbers.map_or(position.number, |(first, _)| first);
                summary.numbers = Some((first, position.number));
                if let Some(at) = record.at_ms() {
                    summary.span_ms = Some(match summary.span_ms {
                        Some((from, to)) => (from.min(at), to.max(at)),
                        None => (at, at),
                    });
                }
            }
        }
    }
    Ok(Verdict::Intact(summary))
}

impl Verdict {
    /// The one line `journal verify` prints.
    pub fn line(&self, dir: &Path) -> String {
        match self {
            Self::Intact(s) => {
                let numbers = match s.numbers {
                    Some((1, last)) => format!(" (1 to {last})"),
                    Some((first, last)) => {
                        format!(" ({first} to {last}; older segments retired)")
                    }
                    None => String::new(),
                };
                let span = match s.span_ms {
                    Some((from, to)) => format!(", {} to {}", rfc3339(from), rfc3339(to)),
                    None => String::new(),
                };
                format!(
                    "{}: intact: {}, {}{numbers}{span}",
                    dir.display(),
                    count(s.segments as u64, "segment"),
                    count(s.records, "record")
                )
            }
            Self::Damaged(d) => d.to_string(),
        }
    }
}

/// `1 segment`, `3 segments`.
fn count(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}
