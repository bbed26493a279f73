//! Interval records: per flow the bytes sent and received in one interval, per file the bytes
//! read. The single input of detection and of the journal, so plain, owned, serializable data.

use std::net::IpAddr;

use sensor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

use super::class::DestinationClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    /// The other row, whose protocol was not kept.
    Other,
}

impl Protocol {
    pub fn from_kernel(protocol: u8) -> Self {
        match protocol {
            PROTO_TCP => Self::Tcp,
            PROTO_UDP => Self::Udp,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This host opened the connection (or sent the datagram).
    Outbound,
    /// This host accepted the connection.
    Inbound,
    /// The other row.
    Other,
}

impl Direction {
    pub fn from_kernel(direction: u8) -> Self {
        match direction {
            DIRECTION_OUTBOUND => Self::Outbound,
            DIRECTION_INBOUND => Self::Inbound,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Other => "other",
        }
    }
}

/// One flow's traffic in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInterval {
    pub service: String,
    /// 0 on a service's other row.
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub uid: Option<u32>,
    /// `None` on an other row: bytes whose destination was not kept apart.
    pub destination: Option<IpAddr>,
    /// The DNS name of `destination` bound when the row was made (`[dns]`); `None` when no
    /// answer the host received named it.
    #[serde(default)]
    pub destination_name: Option<String>,
    pub class: DestinationClass,
    /// The remote port of an outbound flow, the local port of an inbound one.
    pub port: u16,
    pub protocol: Protocol,
    pub direction: Direction,
    pub bytes_sent: u64,
    pub sends: u64,
    pub bytes_received: u64,
    pub recvs: u64,
}

#[cfg(test)]
impl FlowInterval {
    /// For tests: `comm` (pid `pid`, `/usr/bin/{comm}`, uid 0) in `service` sent `bytes` over
    /// TCP to `to`:443, classed by the built-in private ranges.
    pub(crate) fn sample(service: &str, pid: u32, comm: &str, to: &str, bytes: u64) -> Self {
        let destination: IpAddr = to.parse().expect("a test address");
        Self {
            service: service.into(),
            pid,
            comm: comm.into(),
            exe: format!("/usr/bin/{comm}"),
            uid: Some(0),
            destination: Some(destination),
            destination_name: None,
            class: super::class::Networks::new(&[]).classify(Some(destination)),
            port: 443,
            protocol: Protocol::Tcp,
            direction: Direction::Outbound,
            bytes_sent: bytes,
            sends: 1,
            bytes_received: 0,
            recvs: 0,
        }
    }
}

/// One (process, file)'s reads in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInterval {
    pub service: String,
    /// 0 on a service's other row.
    pub pid: u32,
    pub comm: String,
    /// `None` until the kernel told the path, and on an other row.
    pub path: Option<String>,
    pub class: String,
    /// The file's device as the kernel encodes it (`major << 20 | minor`) and its inode: 0
    /// on an other row. What lets detection follow a file from its writer to its reader.
    pub device: u64,
    pub inode: u64,
    pub bytes_read: u64,
    pub reads: u64,
    /// Bytes written (buffered writes on filesystems with a write tracepoint: ext4, xfs).
    pub bytes_written: u64,
    pub writes: u64,
}

/// A process that moved bytes in an interval, and whom it works with: what lets detection
/// follow a read by one process to a send by another of the same shell or service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub service: String,
    /// Its session id, when read while it ran.
    pub session: Option<u32>,
    /// Its ancestors in the same service and session, parent first.
    pub ancestors: Vec<u32>,
}

/// Everything that moved in `[start_ms, end_ms)` (Unix milliseconds). Flows and files that
/// did not move are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub start_ms: u64,
    pub end_ms: u64,
    pub flows: Vec<FlowInterval>,
    pub files: Vec<FileInterval>,
    /// Each process of `flows` and `files` (other rows aside), by pid.
    pub processes: Vec<ProcessInfo>,
}

/// Unix milliseconds of a time; 0 before 1970.
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
