//! Journal records and their encoding: one [`ENCODING`] byte, then the record's body in
//! postcard (serde, varint integers). The frame's type byte says which record it is.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::compact;
use crate::{api::AlertEvent, flow::interval::Interval};

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
            Self::Interval(r) => postcard::to_extend(&compact::encode(r, redact_paths), taken),
            Self::Process(r) => postcard::to_extend(r, taken),
            Self::Alert(r) => postcard::to_extend(r, taken),
            Self::Stop(r) => postcard::to_extend(r, taken),
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
                let c: compact::Compact<&str> = whole(body).map_err(body_error)?;
                Self::Interval(compact::decode(&c).map_err(body_error)?)
            }
            RecordType::Process => Self::Process(whole(body).map_err(body_error)?),
            RecordType::Alert => Self::Alert(whole(body).map_err(body_error)?),
            RecordType::Stop => Self::Stop(whole(body).map_err(body_error)?),
        })
    }
}

/// Decodes a value that must use every byte: trailing bytes mean a misread.
fn whole<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}
