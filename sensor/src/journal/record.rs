//! Journal records and their encoding: one [`ENCODING`] byte, then the record's body in
//! postcard (serde, varint integers). The frame's type byte says which record it is.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::compact;
use crate::{
    api::AlertEvent,
    flow::interval::{Direction, FlowInterval, Interval, Protocol},
};

/// The version of the payload encoding, the first byte of every payload. A reader refuses a
/// payload of another version (a `Decode` damage) rather than misread it.
pub const ENCODING: u8 = 1;

/// The agent started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    pub at_ms: u64,
    pub agent_version: String,
    pub hostname: String,
    /// The config file's path, or `(embedded default)`.
    pub config_source: String,
    /// The config's TOML text as loaded (command-line overrides of listen addresses aside).
    pub config_toml: String,
    /// The detection state file's JSON text the agent restored, `None` when it started
    /// afresh: replay starts from the same learning state.
    pub detect_state: Option<String>,
}

/// The config was reloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub at_ms: u64,
    pub config_source: String,
    pub config_toml: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessEventKind {
    Exec,
    Exit,
}

/// A process exec'd or exited, as the kernel's events told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub at_ms: u64,
    pub pid: u32,
    /// 0 when its fork was not seen (it started before the agent).
    pub ppid: u32,
    pub event: ProcessEventKind,
    pub comm: String,
    /// The file it exec'd; empty when not known (an exit of a process exec'd before the
    /// agent started).
    pub exe: String,
    pub service: String,
}

/// A kernel flow key (`FlowKey`), in the terms of an interval's flow row (pid, destination,
/// port, protocol, direction): what the pinned maps' totals are compared with across a
/// restart, and what a row's bytes add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowId {
    pub tgid: u32,
    /// `None` for a process's overflow key (no destination kept).
    pub destination: Option<std::net::IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub direction: Direction,
}

impl FlowId {
    /// The key of an interval's flow row; `None` for a service's other row (pid 0), whose
    /// bytes come from keys the totals records name.
    pub fn of_row(row: &FlowInterval) -> Option<Self> {
        (row.pid != 0).then_some(Self {
            tgid: row.pid,
            destination: row.destination,
            port: row.port,
            protocol: row.protocol,
            direction: row.direction,
        })
    }
}

/// Running totals of one kernel key (`FlowCounters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub sent: u64,
    pub sends: u64,
    pub received: u64,
    pub recvs: u64,
}

/// Written right after an interval record (the one that ends at `at_ms`), when needed: the
/// kernel running totals of the keys whose bytes that interval does not add up to by its
/// rows (keys whose bytes went to a service's other row, and keys of exited processes,
/// deleted from the kernel: zeros unless counted afresh), or of every key (`complete`, about
/// once an hour: an anchor a restart reads back to). A totals record not right after its
/// interval counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalsRecord {
    /// The interval's end, Unix ms.
    pub at_ms: u64,
    pub complete: bool,
    pub flows: Vec<(FlowId, Counts)>,
}

/// How the run before a start ended, as its journal tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreviousRun {
    /// No earlier record: a new journal (or none was kept).
    None,
    /// With its stop record, at this time (Unix ms).
    Stopped { at_ms: u64 },
    /// Without a stop record (killed, crashed, power lost); its last record was at this
    /// time (Unix ms).
    Unclean { last_at_ms: u64 },
}

/// One kernel key the agent found at its first poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedFlow {
    pub key: FlowId,
    /// The kernel's running totals at the first poll.
    pub kernel: Counts,
    /// What of them the journal already accounted for (its last totals for the key, zeros
    /// for a key it never saw): the rest is carried into the first interval as new bytes.
    /// `None` when the journal holds no totals to compare with (none, disabled, or older
    /// than totals records): all of `kernel` is taken as accounted, never alerted on.
    pub journaled: Option<Counts>,
}

impl ResumedFlow {
    /// Bytes (and calls) the kernel counted beyond the journal's last totals.
    pub fn carried(&self) -> Counts {
        match self.journaled {
            Some(journaled) => self.kernel.since(&journaled),
            None => Counts::default(),
        }
    }
}

impl Counts {
    /// Adds an interval row's bytes and calls.
    pub fn add(&mut self, row: &FlowInterval) {
        self.sent = self.sent.saturating_add(row.bytes_sent);
        self.sends = self.sends.saturating_add(row.sends);
        self.received = self.received.saturating_add(row.bytes_received);
        self.recvs = self.recvs.saturating_add(row.recvs);
    }

    /// What `self` adds to `before`; all of `self` when a total went down (the kernel made
    /// the key afresh).
    pub fn since(&self, before: &Self) -> Self {
        if self.sent < before.sent
            || self.sends < before.sends
            || self.received < before.received
            || self.recvs < before.recvs
        {
            return *self;
        }
        Self {
            sent: self.sent - before.sent,
            sends: self.sends - before.sends,
            received: self.received - before.received,
            recvs: self.recvs - before.recvs,
        }
    }
}

/// The first poll of a run: the kernel's totals found and the journal's baseline for them.
/// With the interval and totals records after it, what a later restart compares the pinned maps with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub at_ms: u64,
    pub previous: PreviousRun,
    /// Every key the kernel held at the first poll (none when its maps were new).
    pub flows: Vec<ResumedFlow>,
}

/// The agent stopped cleanly (SIGTERM, SIGINT), after its last interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "records go one at a time through a queue of at most a few thousand; boxing \
              the alert would cost an allocation and a pattern for nothing"
)]
pub enum Record {
    Start(StartRecord),
    /// A reload.
    Config(ConfigRecord),
    /// One per agent interval: what every flow and (process, file) moved in it.
    Interval(Interval),
    Process(ProcessRecord),
    /// Every raise, update and resolve the live agent emitted.
    Alert(AlertEvent),
    Stop(StopRecord),
    /// After an interval, when its rows do not tell every key's totals.
    Totals(TotalsRecord),
    /// At the first poll of each run.
    Resume(ResumeRecord),
}

/// The frame's type byte of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    Start = 1,
    Config = 2,
    Interval = 3,
    Process = 4,
    Alert = 5,
    Stop = 6,
    Totals = 7,
    Resume = 8,
}

impl RecordType {
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Start,
            2 => Self::Config,
            3 => Self::Interval,
            4 => Self::Process,
            5 => Self::Alert,
            6 => Self::Stop,
            7 => Self::Totals,
            8 => Self::Resume,
            _ => return None,
        })
    }
}

#[derive(Debug, Error)]
#[error("encoding a {kind:?} record: {cause}")]
pub struct EncodeError {
    kind: RecordType,
    cause: postcard::Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("unknown record type {0}")]
    Type(u8),
    #[error("empty payload")]
    Empty,
    #[error("payload encoding version {0} (this build reads {ENCODING})")]
    Version(u8),
    #[error("{kind:?} record: {message}")]
    Body { kind: RecordType, message: String },
}

impl Record {
    pub fn record_type(&self) -> RecordType {
        match self {
            Self::Start(_) => RecordType::Start,
            Self::Config(_) => RecordType::Config,
            Self::Interval(_) => RecordType::Interval,
            Self::Process(_) => RecordType::Process,
            Self::Alert(_) => RecordType::Alert,
            Self::Stop(_) => RecordType::Stop,
            Self::Totals(_) => RecordType::Totals,
            Self::Resume(_) => RecordType::Resume,
        }
    }

    /// When it was written, Unix ms (an interval's end). Alerts carry their times as text,
    /// in the alert; they have none here.
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Self::Start(r) => Some(r.at_ms),
            Self::Config(r) => Some(r.at_ms),
            Self::Interval(r) => Some(r.end_ms),
            Self::Process(r) => Some(r.at_ms),
            Self::Stop(r) => Some(r.at_ms),
            Self::Totals(r) => Some(r.at_ms),
            Self::Resume(r) => Some(r.at_ms),
            Self::Alert(_) => None,
        }
    }

    /// Appends the payload (version byte, body) to `out`. With `redact_paths`, file paths
    /// (only in an interval's files) are written as unknown.
    pub fn encode(&self, redact_paths: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(ENCODING);
        let taken = std::mem::take(out);
        let result = match self {
            Self::Start(r) => postcard::to_extend(r, taken),
            Self::Config(r) => postcard::to_extend(r, taken),
            Self::Interval(r) => {
                let (compact, names) = compact::encode(r, redact_paths);
                postcard::to_extend(&compact, taken).and_then(|bytes| {
                    if names.is_empty() {
                        Ok(bytes)
                    } else {
                        postcard::to_extend(&names, bytes)
                    }
                })
            }
            Self::Process(r) => postcard::to_extend(r, taken),
            Self::Alert(r) => postcard::to_extend(r, taken).map(|mut bytes| {
                // No name: the 0.6 layout, without the trailing `destination_name` (postcard
                // writes `None` as one 0 byte, the last of the record; wire format spec,
                // "Option").
                if r.alert.destination_name.is_none() {
                    bytes.pop();
                }
                bytes
            }),
            Self::Stop(r) => postcard::to_extend(r, taken),
            Self::Totals(r) => postcard::to_extend(r, taken),
            Self::Resume(r) => postcard::to_extend(r, taken),
        };
        match result {
            Ok(bytes) => {
                *out = bytes;
                Ok(())
            }
            Err(cause) => Err(EncodeError {
                kind: self.record_type(),
                cause,
            }),
        }
    }

    /// The record of a frame's type byte and payload.
    pub fn decode(type_byte: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        let kind = RecordType::from_byte(type_byte).ok_or(DecodeError::Type(type_byte))?;
        let (&version, body) = payload.split_first().ok_or(DecodeError::Empty)?;
        if version != ENCODING {
            return Err(DecodeError::Version(version));
        }
        let body_error = |message: String| DecodeError::Body { kind, message };
        Ok(match kind {
            RecordType::Start => Self::Start(whole(body).map_err(body_error)?),
            RecordType::Config => Self::Config(whole(body).map_err(body_error)?),
            RecordType::Interval => {
                let (c, rest): (compact::Compact<&str>, _) =
                    postcard::take_from_bytes(body).map_err(|e| body_error(e.to_string()))?;
                // Flow names trail the compact record when there are any (0.7 on).
                let names = if rest.is_empty() {
                    compact::FlowNames::new()
                } else {
                    whole(rest).map_err(body_error)?
                };
                Self::Interval(compact::decode(&c, &names).map_err(body_error)?)
            }
            RecordType::Process => Self::Process(whole(body).map_err(body_error)?),
            RecordType::Alert => Self::Alert(alert(body).map_err(body_error)?),
            RecordType::Stop => Self::Stop(whole(body).map_err(body_error)?),
            RecordType::Totals => Self::Totals(whole(body).map_err(body_error)?),
            RecordType::Resume => Self::Resume(whole(body).map_err(body_error)?),
        })
    }
}

/// An alert record: with its trailing `destination_name` (0.7 on, when it has one), or
/// without it (0.6, and 0.7 when it has none): the same bytes and a `None` (one 0 byte).
fn alert(body: &[u8]) -> Result<AlertEvent, String> {
    whole(body).or_else(|e| {
        let mut unnamed = Vec::with_capacity(body.len() + 1);
        unnamed.extend_from_slice(body);
        unnamed.push(0);
        match whole::<AlertEvent>(&unnamed) {
            Ok(event) if event.alert.destination_name.is_none() => Ok(event),
            _ => Err(e),
        }
    })
}

/// Decodes a value that must use every byte: trailing bytes mean a misread.
fn whole<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}
