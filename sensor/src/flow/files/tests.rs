//! The file table's write accounting against a fake kernel and a fake /proc, on a fake clock.
use std::time::Duration;

use sensor_common::{FilePathEvent, PATH_DEPTH, PATH_NAME_LEN};

use super::*;
use crate::flow::class::FileClassRule;

/// pid 7 is tar in backup.service, pid 8 curl in backup.service; others are gone.
struct FakeProc;
impl ProcessSource for FakeProc {
    fn process(&self, pid: u32) -> Option<Process> {
        let comm = match pid {
            7 => "tar",
            8 => "curl",
            _ => return None,
        };
        Some(Process {
            comm: comm.into(),
            exe: format!("/usr/bin/{comm}"),
            uid: Some(0),
            service: "backup.service".into(),
            parents: Vec::new(),
            lineage: Default::default(),
        })
    }
}

/// `/dev/vda` (254:0) as the kernel encodes it.
const DEV: u32 = 254 << 20;

fn key(tgid: u32, ino: u64) -> FileKey {
    FileKey {
        tgid,
        dev: DEV,
        ino,
    }
}

fn wrote(bytes: u64, writes: u64) -> FileWrite {
    FileWrite {
        bytes,
        writes,
        ..FileWrite::default()
    }
}

fn read(bytes: u64, reads: u64) -> FileRead {
    FileRead {
        bytes,
        reads,
        ..FileRead::default()
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn table(max_rows: usize) -> FileTable {
    let limits = Limits {
        max_rows,
        idle_ttl: Duration::from_secs(600),
    };
    let classes = FileClasses::new(&[FileClassRule {
        name: "records".into(),
        paths: vec!["/srv/records".into()],
    }])
    .expect("valid patterns");
    FileTable::new(limits, classes)
}

fn writes(writes: &[(FileKey, FileWrite)]) -> FileSums<'_> {
    FileSums {
        writes,
        ..FileSums::default()
    }
}

fn record(t: &FileTable, pid: u32, inode: u64) -> Option<FileRecord> {
    t.records(&Filter::default())
        .into_iter()
        .find(|r| r.pid == pid && r.inode == inode)
}

#[test]
fn writes_are_exact_running_totals_with_deltas_per_interval() {
    let mut t = table(10);
    let changes = t.apply(at(0), writes(&[(key(7, 42), wrote(65_536, 16))]), &FakeProc);
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.bytes_read, c.bytes_written))
            .collect::<Vec<_>>(),
        vec![(0, 65_536)]
    );
    let first = t.tick(at(1));
    t.apply(
        at(2),
        writes(&[(key(7, 42), wrote(10_000_019, 2_442))]),
        &FakeProc,
    );
    // A poll with no news changes nothing.
    let none = t.apply(
        at(3),
        writes(&[(key(7, 42), wrote(10_000_019, 2_442))]),
        &FakeProc,
    );
    assert!(none.is_empty());
    let second = t.tick(at(4));
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    let (a, b) = (&first[0], &second[0]);
    assert_eq!(
        (a.pid, a.device, a.inode, a.bytes_written, a.writes),
        (7, u64::from(DEV), 42, 65_536, 16)
    );
    assert_eq!(
        (b.bytes_written, b.writes, b.bytes_read, b.reads),
        (10_000_019 - 65_536, 2_442 - 16, 0, 0)
    );
    let row = record(&t, 7, 42).expect("a row for the writer");
    assert_eq!(
        (
            row.bytes_written,
            row.writes,
            row.bytes_read,
            row.device.as_str()
        ),
        (10_000_019, 2_442, 0, "254:0")
    );
    assert!(t.tick(at(5)).is_empty(), "nothing moved since");
}

/// The taint detection follows: tar wrote the archive, curl read it. Two rows, one file.
#[test]
fn a_file_written_by_one_process_and_read_by_another_is_one_device_and_inode() {
    let mut t = table(10);
    let archive = 77;
    t.apply(
        at(0),
        FileSums {
            reads: &[(key(8, archive), read(10_000_019, 3))],
            writes: &[(key(7, archive), wrote(10_000_019, 2_442))],
            ..FileSums::default()
        },
        &FakeProc,
    );
    let interval = t.tick(at(1));
    let tar = interval.iter().find(|f| f.pid == 7).expect("the writer");
    let curl = interval.iter().find(|f| f.pid == 8).expect("the reader");
    assert_eq!((tar.device, tar.inode), (curl.device, curl.inode));
    assert_eq!((tar.bytes_written, tar.bytes_read), (10_000_019, 0));
    assert_eq!((curl.bytes_written, curl.bytes_read), (0, 10_000_019));
    assert_eq!((tar.comm.as_str(), curl.comm.as_str()), ("tar", "curl"));
}

#[test]
fn reads_and_writes_of_one_process_share_its_row() {
    let mut t = table(10);
    let sums = |r: u64, w: u64| {
        (
            vec![(key(7, 5), read(r, 1))],
            vec![(key(7, 5), wrote(w, 1))],
        )
    };
    let (reads, writes) = sums(4_096, 100);
    let changes = t.apply(
        at(0),
        FileSums {
            reads: &reads,
            writes: &writes,
            ..FileSums::default()
        },
        &FakeProc,
    );
    assert_eq!(
        changes
            .iter()
            .map(|c| c.bytes_read + c.bytes_written)
            .sum::<u64>(),
        4_196
    );
    assert_eq!(t.len(), 1, "one row for both");
    let row = record(&t, 7, 5).expect("row");
    assert_eq!((row.bytes_read, row.bytes_written), (4_096, 100));
    let interval = t.tick(at(1));
    assert_eq!(
        (interval[0].bytes_read, interval[0].bytes_written),
        (4_096, 100)
    );
    // Only the read side moves: the writes stay put, exactly.
    let (reads, writes) = sums(8_192, 100);
    t.apply(
        at(2),
        FileSums {
            reads: &reads,
            writes: &writes,
            ..FileSums::default()
        },
        &FakeProc,
    );
    let interval = t.tick(at(3));
    assert_eq!(
        (interval[0].bytes_read, interval[0].bytes_written),
        (4_096, 0)
    );
    // The service's read total counts reads only.
    assert_eq!(t.service_totals()["backup.service"], 8_192);
}

#[test]
fn a_write_only_row_takes_its_path_and_class_when_the_kernel_sends_it() {
    let mut t = table(10);
    t.apply(at(0), writes(&[(key(7, 9), wrote(512, 1))]), &FakeProc);
    assert_eq!(record(&t, 7, 9).expect("row").path, None);
    let mut event = FilePathEvent {
        dev: DEV,
        depth: 4,
        ino: 9,
        names: [[0; PATH_NAME_LEN]; PATH_DEPTH],
    };
    for (slot, name) in event.names.iter_mut().zip(["a.tar", "records", "srv", "/"]) {
        slot[..name.len()].copy_from_slice(name.as_bytes());
    }
    t.learn_paths(
        &[WalkedPath::from_event(&event)],
        &Mounts::parse("1 0 254:0 / / rw - ext4 /dev/vda rw"),
    );
    t.apply(at(1), writes(&[(key(7, 9), wrote(1_024, 2))]), &FakeProc);
    let row = record(&t, 7, 9).expect("row");
    assert_eq!(
        (row.path.as_deref(), row.class.as_str(), row.bytes_written),
        (Some("/srv/records/a.tar"), "records", 1_024)
    );
}

/// A path the full ring dropped comes late, at the file's next read (perhaps by another
/// process): the rows made before it take it at once, without new bytes of their own, so the
/// interval record (what lineage reads) names the class.
#[test]
fn a_late_path_names_the_rows_waiting_for_it() {
    let mut t = table(10);
    let reads = [(key(7, 9), read(4_096, 1))];
    t.apply(
        at(0),
        FileSums {
            reads: &reads,
            ..FileSums::default()
        },
        &FakeProc,
    );
    assert_eq!(record(&t, 7, 9).expect("row").class, OTHER_FILE_CLASS);
    let mut event = FilePathEvent {
        dev: DEV,
        depth: 4,
        ino: 9,
        names: [[0; PATH_NAME_LEN]; PATH_DEPTH],
    };
    for (slot, name) in event.names.iter_mut().zip(["1.eml", "records", "srv", "/"]) {
        slot[..name.len()].copy_from_slice(name.as_bytes());
    }
    t.learn_paths(
        &[WalkedPath::from_event(&event)],
        &Mounts::parse("1 0 254:0 / / rw - ext4 /dev/vda rw"),
    );
    let row = record(&t, 7, 9).expect("row");
    assert_eq!(
        (row.path.as_deref(), row.class.as_str()),
        (Some("/srv/records/1.eml"), "records")
    );
    let interval = t.tick(at(1));
    assert_eq!(
        (interval[0].class.as_str(), interval[0].bytes_read),
        ("records", 4_096)
    );
}

/// A process exits; the poll thread deletes its keys; its pid comes back as another process
/// that writes the same file: counted from zero, nothing lost, nothing twice.
#[test]
fn an_exited_writer_ends_its_key_and_a_reused_pid_counts_from_zero() {
    let mut t = table(10);
    t.apply(at(0), writes(&[(key(7, 3), wrote(1_000, 2))]), &FakeProc);
    t.forget_processes(&HashSet::from([7]));
    t.apply(at(1), writes(&[(key(7, 3), wrote(300, 1))]), &FakeProc);
    let interval = t.tick(at(2));
    assert_eq!((interval[0].bytes_written, interval[0].writes), (1_300, 3));
    // Without the exit, lower totals are a key made again too: its whole count is new.
    t.apply(at(3), writes(&[(key(7, 3), wrote(100, 1))]), &FakeProc);
    assert_eq!(t.tick(at(4))[0].bytes_written, 100);
}

#[test]
fn writes_beyond_the_bound_go_to_the_services_other_row_exactly() {
    let mut t = table(2);
    let all: Vec<(FileKey, FileWrite)> = (1..=5)
        .map(|ino| (key(7, ino), wrote(1_000 * ino, 1)))
        .collect();
    t.apply(at(0), writes(&all), &FakeProc);
    let records = t.records(&Filter::default());
    assert_eq!(records.len(), 3, "two own rows and the other row");
    let other = records
        .iter()
        .find(|r| r.device == "other")
        .expect("other row");
    assert_eq!(other.pid, 0);
    assert_eq!(
        records.iter().map(|r| r.bytes_written).sum::<u64>(),
        15_000,
        "every byte"
    );
    // The keys that went to the other row keep going there.
    let more: Vec<(FileKey, FileWrite)> = (1..=5)
        .map(|ino| (key(7, ino), wrote(1_000 * ino + 1, 2)))
        .collect();
    t.apply(at(1), writes(&more), &FakeProc);
    let interval = t.tick(at(2));
    assert_eq!(interval.len(), 3);
    assert_eq!(
        interval.iter().map(|f| f.bytes_written).sum::<u64>(),
        15_005
    );
    assert_eq!(interval.iter().map(|f| f.writes).sum::<u64>(), 10);
}

#[test]
fn writes_the_kernel_had_no_room_for_count_for_the_process() {
    let mut t = table(10);
    t.apply(
        at(0),
        FileSums {
            writes: &[(key(7, 1), wrote(10, 1))],
            write_overflow: &[(7, 4_096)],
            read_overflow: &[(7, 8)],
            ..FileSums::default()
        },
        &FakeProc,
    );
    let overflow = t
        .records(&Filter::default())
        .into_iter()
        .find(|r| r.pid == 7 && r.device == "other")
        .expect("the process's overflow row");
    assert_eq!((overflow.bytes_written, overflow.bytes_read), (4_096, 8));
}

#[test]
fn adopted_write_totals_are_not_news() {
    let mut t = table(10);
    let pinned = [(key(7, 1), wrote(5_000, 5))];
    t.adopt(at(0), writes(&pinned), &FakeProc);
    let changes = t.apply(at(0), writes(&pinned), &FakeProc);
    assert!(changes.is_empty());
    assert!(t.tick(at(1)).is_empty());
    assert_eq!(record(&t, 7, 1).expect("adopted row").bytes_written, 5_000);
    t.apply(at(2), writes(&[(key(7, 1), wrote(5_500, 6))]), &FakeProc);
    assert_eq!(t.tick(at(3))[0].bytes_written, 500);
}

/// The README's `flows.max_files` sizes the table's row map from this: 136 bytes a row.
#[test]
fn a_row_is_the_size_the_readme_gives() {
    assert_eq!(std::mem::size_of::<(FileKey, Row)>(), 136);
}
