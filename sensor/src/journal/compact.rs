//! The journal's form of an [`Interval`]: each distinct string (service, comm, exe, file
//! class) once per record in a table, and each flow's process (service, pid, comm, exe, uid)
//! once in a table of senders, so that a flow row is its numbers and two small indexes.
//! postcard writes integers as varints, so the indexes and most counters are one to three
//! bytes. Converted back to the same `Interval` on read (a property test says so).
//!
//! Flow rows' DNS names (0.7) follow the compact record as a trailing list of (flow row,
//! string) indexes, written only when a row has a name: an interval without names is
//! byte for byte what 0.6 wrote, and a 0.6 record (no trailing bytes) reads as one without
//! names. Names are in the string table, so a name many rows share is written once.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::flow::{
    class::DestinationClass,
    interval::{Direction, FileInterval, FlowInterval, Interval, ProcessInfo, Protocol},
};

/// `S` is `&str`: borrowed from the interval when writing, from the payload when reading.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Compact<S> {
    start_ms: u64,
    end_ms: u64,
    strings: Vec<S>,
    senders: Vec<Sender>,
    flows: Vec<Flow>,
    files: Vec<File<S>>,
    processes: Vec<Process>,
}

/// Each named flow row's index in `flows` and its name's in `strings`, in row order.
pub(super) type FlowNames = Vec<(u32, u32)>;

/// Who sent: the process fields every flow row of one process repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Sender {
    service: u32,
    pid: u32,
    comm: u32,
    exe: u32,
    uid: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    sender: u32,
    destination: Option<IpAddr>,
    class: DestinationClass,
    port: u16,
    protocol: Protocol,
    direction: Direction,
    bytes_sent: u64,
    sends: u64,
    bytes_received: u64,
    recvs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct File<S> {
    service: u32,
    pid: u32,
    comm: u32,
    /// Paths are mostly distinct: inline, not in the table.
    path: Option<S>,
    class: u32,
    device: u64,
    inode: u64,
    bytes_read: u64,
    reads: u64,
    bytes_written: u64,
    writes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Process {
    pid: u32,
    comm: u32,
    exe: u32,
    service: u32,
    session: Option<u32>,
    ancestors: Vec<u32>,
}

/// Strings seen so far, by first appearance.
#[derive(Default)]
struct Table<'a> {
    strings: Vec<&'a str>,
    index: HashMap<&'a str, u32>,
}

impl<'a> Table<'a> {
    fn of(&mut self, s: &'a str) -> u32 {
        *self.index.entry(s).or_insert_with(|| {
            self.strings.push(s);
            // Fewer distinct strings than rows, and rows are bounded by flows.max_flows
            // (10,000,000 at most): always fits.
            u32::try_from(self.strings.len() - 1).unwrap_or(u32::MAX)
        })
    }
}

pub(super) fn encode(interval: &Interval, redact_paths: bool) -> (Compact<&str>, FlowNames) {
    let mut table = Table::default();
    let mut names = FlowNames::new();
    let mut senders: Vec<Sender> = Vec::new();
    let mut sender_index: HashMap<Sender, u32> = HashMap::new();
    let flows = interval
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let sender = Sender {
                service: table.of(&f.service),
                pid: f.pid,
                comm: table.of(&f.comm),
                exe: table.of(&f.exe),
                uid: f.uid,
            };
            if let Some(name) = &f.destination_name {
                // As many rows as `flows`, bounded like the table's indexes.
                names.push((u32::try_from(i).unwrap_or(u32::MAX), table.of(name)));
            }
            let sender = *sender_index.entry(sender).or_insert_with(|| {
                senders.push(sender);
                u32::try_from(senders.len() - 1).unwrap_or(u32::MAX)
            });
            Flow {
                sender,
                destination: f.destination,
                class: f.class,
                port: f.port,
                protocol: f.protocol,
                direction: f.direction,
                bytes_sent: f.bytes_sent,
                sends: f.sends,
                bytes_received: f.bytes_received,
                recvs: f.recvs,
            }
        })
        .collect();
    let files = interval
        .files
        .iter()
        .map(|f| File {
            service: table.of(&f.service),
            pid: f.pid,
            comm: table.of(&f.comm),
            path: if redact_paths {
                None
            } else {
                f.path.as_deref()
            },
            class: table.of(&f.class),
            device: f.device,
            inode: f.inode,
            bytes_read: f.bytes_read,
            reads: f.reads,
            bytes_written: f.bytes_written,
            writes: f.writes,
        })
        .collect();
    let processes = interval
        .processes
        .iter()
        .map(|p| Process {
            pid: p.pid,
            comm: table.of(&p.comm),
            exe: table.of(&p.exe),
            service: table.of(&p.service),
            session: p.session,
            ancestors: p.ancestors.clone(),
        })
        .collect();
    let compact = Compact {
        start_ms: interval.start_ms,
        end_ms: interval.end_ms,
        strings: table.strings,
        senders,
        flows,
        files,
        processes,
    };
    (compact, names)
}

/// The interval a compact record and its flow names hold; an index out of its table is an
/// error (a record that decodes is not necessarily one this code wrote).
pub(super) fn decode(c: &Compact<&str>, names: &FlowNames) -> Result<Interval, String> {
    let string = |i: u32| -> Result<String, String> {
        usize::try_from(i)
            .ok()
            .and_then(|i| c.strings.get(i))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| format!("string {i} of a table of {}", c.strings.len()))
    };
    let mut flows = Vec::with_capacity(c.flows.len());
    for f in &c.flows {
        let s = usize::try_from(f.sender)
            .ok()
            .and_then(|i| c.senders.get(i))
            .ok_or_else(|| format!("sender {} of a table of {}", f.sender, c.senders.len()))?;
        flows.push(FlowInterval {
            service: string(s.service)?,
            pid: s.pid,
            comm: string(s.comm)?,
            exe: string(s.exe)?,
            uid: s.uid,
            destination: f.destination,
            destination_name: None,
            class: f.class,
            port: f.port,
            protocol: f.protocol,
            direction: f.direction,
            bytes_sent: f.bytes_sent,
            sends: f.sends,
            bytes_received: f.bytes_received,
            recvs: f.recvs,
        });
    }
    for (row, name) in names {
        let flow = usize::try_from(*row)
            .ok()
            .and_then(|i| flows.get_mut(i))
            .ok_or_else(|| format!("named flow {row} of {}", c.flows.len()))?;
        flow.destination_name = Some(string(*name)?);
    }
    let mut files = Vec::with_capacity(c.files.len());
    for f in &c.files {
        files.push(FileInterval {
            service: string(f.service)?,
            pid: f.pid,
            comm: string(f.comm)?,
            path: f.path.map(str::to_owned),
            class: string(f.class)?,
            device: f.device,
            inode: f.inode,
            bytes_read: f.bytes_read,
            reads: f.reads,
            bytes_written: f.bytes_written,
            writes: f.writes,
        });
    }
    let mut processes = Vec::with_capacity(c.processes.len());
    for p in &c.processes {
        processes.push(ProcessInfo {
            pid: p.pid,
            comm: string(p.comm)?,
            exe: string(p.exe)?,
            service: string(p.service)?,
            session: p.session,
            ancestors: p.ancestors.clone(),
        });
    }
    Ok(Interval {
        start_ms: c.start_ms,
        end_ms: c.end_ms,
        flows,
        files,
        processes,
    })
}
