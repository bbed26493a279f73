//! Journal tests: records round-trip, damage is found and located exactly, intact records
//! around damage are recovered, and the writer rotates, retires and repairs its tail.

mod damage;
mod live;
mod records;
mod resume;
mod tampering;
mod writing;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime},
};

use bytesize::ByteSize;

use super::{
    Entry, JournalConfig, Reader, Record, StopRecord, Writer,
    config::FsyncPolicy,
    format::{self, FRAME_OVERHEAD, HEADER_LEN},
};
use crate::flow::{
    class::DestinationClass,
    interval::{Direction, FileInterval, FlowInterval, Interval, ProcessInfo, Protocol},
};

/// A directory of its own, removed when dropped.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "exfil-journal-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_392_000 + secs)
}

/// A journal config for `dir` with room for everything (tests shrink what they test).
pub(super) fn config(dir: &Path) -> JournalConfig {
    JournalConfig {
        enabled: true,
        dir: dir.to_owned(),
        segment_size: ByteSize::gib(1),
        segment_age: Duration::from_secs(86_400),
        retain_size: ByteSize::gib(100),
        retain_age: Duration::from_secs(90 * 86_400),
        fsync: FsyncPolicy::Never,
        redact_paths: false,
    }
}

/// A stop record at `at(secs)`: 67 bytes on disk.
pub(super) fn stop(secs: u64) -> Record {
    Record::Stop(StopRecord {
        at_ms: crate::flow::interval::unix_ms(at(secs)),
    })
}

/// The frame length of `record`.
pub(super) fn frame_len(record: &Record) -> u64 {
    let mut payload = Vec::new();
    record.encode(false, &mut payload).expect("encodes");
    (FRAME_OVERHEAD + payload.len()) as u64
}

/// Writes `records` with a fresh writer at `at(0)`, one per second.
pub(super) fn write(config: &JournalConfig, records: &[Record]) {
    let (mut writer, _) = Writer::open(config, at(0)).expect("open");
    for (i, record) in records.iter().enumerate() {
        writer.append(record, at(i as u64)).expect("append");
    }
}

/// Every entry of the journal in `dir`.
pub(super) fn read(dir: &Path) -> Vec<Entry> {
    Reader::open(dir).expect("reader").collect()
}

/// Only the records.
pub(super) fn records(entries: &[Entry]) -> Vec<Record> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Record { record, .. } => Some(record.clone()),
            Entry::Damaged(_) => None,
        })
        .collect()
}

/// Each segment file and the offsets of its frames, from an intact journal.
pub(super) fn layout(dir: &Path) -> Vec<(PathBuf, Vec<(u64, u64)>)> {
    let mut out: Vec<(PathBuf, Vec<(u64, u64)>)> = format::list_segments(dir)
        .expect("list")
        .into_iter()
        .map(|(_, path)| (path, Vec::new()))
        .collect();
    for entry in read(dir) {
        let Entry::Record { position, .. } = entry else {
            panic!("layout of a damaged journal");
        };
        if let Some(segment) = out.iter_mut().find(|(p, _)| *p == position.segment) {
            segment.1.push((position.offset, position.number));
        }
    }
    out
}

/// An interval as a busy mail server's: `n` flows of 100 services, two processes each, to
/// distinct destinations, with the byte counts of mail (kilobytes to a few megabytes); a
/// file row for every tenth flow, and 200 processes.
pub(super) fn busy_interval(n: usize) -> Interval {
    let flows = (0..n)
        .map(|i| {
            let process = i % 200;
            let service = process % 100;
            FlowInterval {
                service: format!("postfix-{service}@-.service"),
                pid: 40_000 + process as u32,
                comm: if process % 2 == 0 { "smtp" } else { "cleanup" }.into(),
                exe: "/usr/lib/postfix/sbin/smtp".into(),
                uid: Some(107),
                destination: Some(IpAddr::V4(Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8))),
                destination_name: None,
                class: DestinationClass::External,
                port: 25,
                protocol: Protocol::Tcp,
                direction: Direction::Outbound,
                bytes_sent: 2_000 + (i as u64 * 7_919) % 3_000_000,
                sends: 3 + (i as u64 % 40),
                bytes_received: 400 + (i as u64 % 1_000),
                recvs: 2 + (i as u64 % 10),
            }
        })
        .collect();
    let files = (0..n / 10)
        .map(|i| FileInterval {
            service: "dovecot.service".into(),
            pid: 30_000 + i as u32 % 50,
            comm: "imap".into(),
            path: Some(format!(
                "/var/vmail/example.org/user{i}/Maildir/cur/1795392000.M{i}"
            )),
            class: "mail_store".into(),
            device: 8 << 20 | 1,
            inode: 1_000_000 + i as u64,
            bytes_read: 30_000 + i as u64,
            reads: 8,
            bytes_written: 0,
            writes: 0,
        })
        .collect();
    Interval {
        start_ms: 1_795_392_000_000,
        end_ms: 1_795_392_010_000,
        flows,
        files,
        processes: (0..200)
            .map(|p| ProcessInfo {
                pid: 40_000 + p,
                comm: "smtp".into(),
                exe: "/usr/lib/postfix/sbin/smtp".into(),
                service: format!("postfix-{}@-.service", p % 100),
                session: None,
                ancestors: vec![1_000 + p % 100],
            })
            .collect(),
    }
}

#[test]
fn a_stop_record_is_one_version_byte_and_a_varint_in_a_60_byte_frame() {
    let mut payload = Vec::new();
    stop(0).encode(false, &mut payload).expect("encodes");
    // 1,795,392,000,000 ms needs 41 bits: a six-byte varint.
    assert_eq!(payload.len(), 7);
    assert_eq!(payload[0], super::record::ENCODING);
    assert_eq!(frame_len(&stop(0)), 67);
    assert_eq!((HEADER_LEN, FRAME_OVERHEAD), (72, 60));
}
mod names;
