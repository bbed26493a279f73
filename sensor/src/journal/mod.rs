//! The forensic journal: what the agent counted, the processes it saw, the alerts it raised
//! and the config in force, kept in append-only, checksummed, hash-chained segment files, so
//! that months later a responder can show what left, and `replay` can re-run detection over
//! it.
//!
//! - [`record`]: the records and their encoding (postcard behind a version byte).
//! - [`format`]: segment headers, frames and the BLAKE3 chain; [`scan`] walks one segment's
//!   bytes, frame by frame, resynchronising after damage.
//! - [`writer`]: appends, rotates, retires old segments, truncates a torn tail at open.
//! - [`reader`]: every intact record of a journal, in order, and each damage between them.
//! - [`resume`]: how the previous run ended and the kernel totals the journal accounts for,
//!   what a restarted agent compares the pinned maps with.
//! - [`verify`]: the first damage, or a summary of an intact journal.
//! - [`live`]: the agent's writer thread behind a bounded channel, and its metrics.

mod backlog;
mod compact;
pub mod config;
pub mod format;
pub mod live;
pub mod permissions;
pub mod reader;
pub mod record;
pub mod resume;
mod retention;
mod scan;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use thiserror::Error;

pub use self::{
    config::{FsyncPolicy, JournalConfig},
    reader::{Damage, DamageKind, Entry, Position, Reader},
    record::{
        ConfigRecord, Counts, FlowId, PreviousRun, ProcessEventKind, ProcessRecord, Record,
        ResumeRecord, ResumedFlow, StartRecord, StopRecord, TotalsRecord,
    },
    resume::{LastTotals, last_totals},
    verify::{Summary, Verdict, verify},
    writer::{OpenReport, Writer},
};

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("journal {path}: in use by another process (its lock is held)")]
    Locked { path: PathBuf },
    #[error("journal {path}: no segment files (NNNNNNNNNNNNNNNN.journal)")]
    Empty { path: PathBuf },
    #[error("journal record of {bytes} bytes: larger than a frame holds (1 GiB)")]
    TooLarge { bytes: usize },
    #[error("journal record: {0}")]
    Encode(#[from] record::EncodeError),
}

impl JournalError {
    /// The error of an I/O failure on `path`, for `map_err`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |cause| Self::Io { path, cause }
    }
}
