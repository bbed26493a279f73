//! File reads: the kernel's per-(process, file) byte counts, with the process named.

use std::{collections::HashMap, sync::Arc};

use sensor_common::{FileKey, FilePathEvent, FileRead};
use serde::Serialize;

use super::{
    identity::{Names, Process, ProcessSource},
    paths::{Mounts, path_of},
};

/// One (process, file) as `/api/v1/files` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub service: String,
    /// `major:minor` of the file's device; `other` on the row of reads the kernel's map had
    /// no room for.
    pub device: String,
    pub inode: u64,
    /// The file's path, once resolved; `null` until then.
    pub path: Option<String>,
    /// Bytes read: each page of a sequential run once, the last page clipped to the size.
    pub bytes_read: u64,
    pub reads: u64,
}

struct FileEntry {
    read: FileRead,
    process: Arc<Process>,
}

#[derive(Default)]
pub struct FileTable {
    files: HashMap<FileKey, FileEntry>,
    overflow: HashMap<u32, (u64, Arc<Process>)>,
    names: Names,
    /// (device, inode) → path, as the kernel's walks told.
    paths: HashMap<(u32, u64), String>,
}

impl FileTable {
    /// Takes one poll's running totals.
    pub fn apply(
        &mut self,
        reads: &[(FileKey, FileRead)],
        overflow: &[(u32, u64)],
        source: &dyn ProcessSource,
    ) {
        for (key, read) in reads {
            let process = self.names.get(key.tgid, source);
            self.files
                .entry(*key)
                .and_modify(|e| e.read = *read)
                .or_insert(FileEntry {
                    read: *read,
                    process,
                });
        }
        for (tgid, bytes) in overflow {
            let process = self.names.get(*tgid, source);
            self.overflow.insert(*tgid, (*bytes, process));
        }
    }

    /// Takes the paths the kernel sent since the last poll.
    pub fn learn_paths(&mut self, events: &[FilePathEvent], mounts: &Mounts) {
        for event in events {
            self.paths
                .insert((event.dev, event.ino), path_of(event, mounts));
        }
    }

    /// The API view, largest readers first.
    pub fn records(&self) -> Vec<FileRecord> {
        let row = |pid: u32, p: &Process, device: String, inode, bytes_read, reads| FileRecord {
            pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            service: p.service.clone(),
            device,
            inode,
            path: None,
            bytes_read,
            reads,
        };
        let path = |key: &FileKey| self.paths.get(&(key.dev, key.ino)).cloned();
        let mut records: Vec<FileRecord> = self
            .files
            .iter()
            .map(|(key, e)| {
                let device = format!("{}:{}", key.dev >> 20, key.dev & 0xf_ffff);
                let (bytes, reads) = (e.read.bytes, e.read.reads);
                let mut record = row(key.tgid, &e.process, device, key.ino, bytes, reads);
                record.path = path(key);
                record
            })
            .chain(
                self.overflow
                    .iter()
                    .map(|(pid, (bytes, p))| row(*pid, p, "other".into(), 0, *bytes, 0)),
            )
            .collect();
        records.sort_by(|a, b| b.bytes_read.cmp(&a.bytes_read).then(a.pid.cmp(&b.pid)));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reader;
    impl ProcessSource for Reader {
        fn process(&self, _pid: u32) -> Option<Process> {
            Some(Process {
                comm: "tar".into(),
                exe: "/usr/bin/tar".into(),
                service: "session-3.scope".into(),
            })
        }
    }

    #[test]
    fn rows_carry_device_inode_and_the_kernel_totals() {
        let mut table = FileTable::default();
        let key = FileKey {
            tgid: 42,
            dev: (254 << 20) | 3,
            ino: 131_075,
        };
        let read = |bytes| FileRead {
            run_start: 0,
            next: 2_442,
            bytes,
            reads: 10_001,
            path_generation: 1,
            _pad: 0,
        };
        table.apply(&[(key, read(4_096))], &[], &Reader);
        table.apply(&[(key, read(10_000_019))], &[(42, 777)], &Reader);
        let records = table.records();
        assert_eq!(records.len(), 2);
        let file = &records[0];
        assert_eq!(
            (
                file.device.as_str(),
                file.inode,
                file.bytes_read,
                file.reads
            ),
            ("254:3", 131_075, 10_000_019, 10_001)
        );
        assert_eq!(file.service, "session-3.scope");
        assert_eq!(
            (records[1].device.as_str(), records[1].bytes_read),
            ("other", 777)
        );
    }
}
