//! File writes are counted exactly, per process and file, on the same (device, inode) as
//! reads: a process that writes a 10,000,019-byte file on ext4 counts 10,000,019 bytes
//! written, and a second process that reads it back counts 10,000,019 bytes read on the same
//! device and inode, which is how detection follows a file from its writer to its readers.
//!
//! ext4 only: the tests' files live on the disk the tests run from, which must be ext4. The
//! xfs program is loaded and attached where the kernel has xfs, but no xfs filesystem is
//! mounted on the test machines, so it is not exercised here.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use exfil_tests::{Agent, FileRow, POLL, Proc, require_root, traffic};

const SIZE: u64 = 10_000_019;
const CHUNK: u64 = 65_536;
/// `EXT4_SUPER_MAGIC` (include/uapi/linux/magic.h).
const EXT4_SUPER_MAGIC: i64 = 0xEF53;

/// A fresh path on the disk the tests run from, which must be ext4: the probes under test
/// are ext4's.
fn test_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let c_dir = std::ffi::CString::new(dir.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to fill.
    assert_eq!(
        unsafe { libc::statfs(c_dir.as_ptr(), &mut fs) },
        0,
        "statfs"
    );
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is an i64 on x86_64 but narrower on other targets"
    )]
    let f_type = i64::from(fs.f_type);
    assert_eq!(
        f_type,
        EXT4_SUPER_MAGIC,
        "{} is not on ext4: the write tests need an ext4 disk",
        dir.display()
    );
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// The file's `major:minor` and inode, as the agent reports them.
fn identity(path: &Path) -> (String, u64) {
    let meta = std::fs::metadata(path).expect("stat");
    let dev = meta.dev();
    (
        format!("{}:{}", libc::major(dev), libc::minor(dev)),
        meta.ino(),
    )
}

/// The row of `pid` and the file once `done` holds for it (or 10 s pass), then two more
/// polls so that a count still moving would show.
fn settled_row(
    agent: &Agent,
    pid: u32,
    (device, inode): &(String, u64),
    done: impl Fn(&FileRow) -> bool,
) -> FileRow {
    let find = || {
        agent
            .files()
            .expect("API")
            .into_iter()
            .find(|f| f.pid == pid && &f.device == device && f.inode == *inode)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && find().is_none_or(|f| !done(&f)) {
        std::thread::sleep(POLL);
    }
    std::thread::sleep(POLL * 2);
    find().unwrap_or_else(|| panic!("no row for pid {pid} and {device} inode {inode}"))
}

fn writer(path: &Path, size: u64, chunk: u64, how: &str) -> Proc {
    let mut writer = traffic!()
        .send(&[
            "write",
            path.to_str().expect("utf-8"),
            &size.to_string(),
            &chunk.to_string(),
            how,
        ])
        .expect("writer");
    assert_eq!(writer.expect_line::<u64>("wrote").expect("wrote"), size);
    writer
}

/// The archive case: one process writes the file, a second reads it back; both rows name
/// the same device and inode, with the exact byte counts.
#[test]
fn a_written_file_counts_its_size_and_its_reader_meets_it_on_the_same_inode() {
    require_root();
    let path = test_path("write-archive.bin");
    let agent = Agent::start().expect("agent");
    let metrics = agent.metrics_text().expect("metrics");
    assert!(
        metrics.contains("exfil_sensor_probe_attached{probe=\"ext4:ext4_da_write_end\"} 1"),
        "the ext4 write probe is attached:\n{metrics}"
    );
    for probe in [
        "ext4:ext4_write_end",
        "ext4:ext4_journalled_write_end",
        "xfs:xfs_file_buffered_write",
    ] {
        assert!(
            metrics.contains(&format!("exfil_sensor_probe_attached{{probe=\"{probe}\"}}")),
            "{probe} is in the compatibility table:\n{metrics}"
        );
    }

    let writer = writer(&path, SIZE, CHUNK, "create");
    let file = identity(&path);
    let row = settled_row(&agent, writer.pid(), &file, |r| r.bytes_written >= SIZE);
    assert_eq!(row.bytes_written, SIZE, "{row:?}");
    assert_eq!(row.bytes_read, 0, "{row:?}");
    assert_eq!(row.comm, "exfil-traffic");
    // `writes` counts ext4's page-cache chunks: each of the 153 write calls is at least one,
    // and a chunk never spans two folios, so at most one more per page of the file (when
    // every folio is a single page). Folio sizes vary, so no count in between is certain.
    let calls = SIZE.div_ceil(CHUNK);
    let pages = SIZE.div_ceil(4096);
    assert!(
        (calls..=calls + pages).contains(&row.writes),
        "{} chunks for {calls} write calls: {row:?}",
        row.writes
    );
    let real = std::fs::canonicalize(&path).expect("canonical path");
    assert_eq!(
        row.path.as_deref(),
        real.to_str(),
        "the path, sent on the first write"
    );

    let mut reader = traffic!()
        .send(&["read", path.to_str().expect("utf-8"), "65536", "read"])
        .expect("reader");
    assert_eq!(reader.expect_line::<u64>("read").expect("read"), SIZE);
    let read = settled_row(&agent, reader.pid(), &file, |r| r.bytes_read >= SIZE);
    assert_eq!(read.bytes_read, SIZE, "{read:?}");
    assert_eq!(read.bytes_written, 0, "{read:?}");
    assert_eq!((&read.device, read.inode), (&row.device, row.inode));

    let service_total = agent
        .metric(&format!(
            "exfil_sensor_file_write_bytes_total{{class=\"{}\",service=\"{}\"}}",
            row.class, row.service
        ))
        .expect("the write metric");
    assert!(service_total >= SIZE, "{service_total} < {SIZE}");
    assert_eq!(
        agent
            .metric("exfil_sensor_kernel_errors_total{program=\"file_write\"}")
            .expect("errors"),
        0
    );
    reader.finish().expect("reader exits cleanly");
    writer.finish().expect("writer exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

/// Rewriting the first page of an existing file counts the 4,096 bytes rewritten, in one
/// chunk (a page-aligned page lies in one folio, so `write_end` runs once).
#[test]
fn a_pwrite_over_an_existing_file_counts_what_it_rewrote() {
    require_root();
    let path = test_path("write-overwrite.bin");
    std::fs::write(&path, vec![7u8; 1 << 20]).expect("the existing file");
    let agent = Agent::start().expect("agent");
    let writer = writer(&path, 4_096, 4_096, "overwrite");
    let row = settled_row(&agent, writer.pid(), &identity(&path), |r| {
        r.bytes_written >= 4_096
    });
    assert_eq!((row.bytes_written, row.writes), (4_096, 1), "{row:?}");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 20);
    writer.finish().expect("writer exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

/// Four threads of one process writing one file at once, from both CPUs: no byte lost.
#[test]
fn threads_writing_one_file_at_once_lose_nothing() {
    require_root();
    let path = test_path("write-threads.bin");
    let agent = Agent::start().expect("agent");
    let writer = writer(&path, SIZE, 4_096, "threads");
    let row = settled_row(&agent, writer.pid(), &identity(&path), |r| {
        r.bytes_written >= SIZE
    });
    assert_eq!(row.bytes_written, SIZE, "{row:?}");
    writer.finish().expect("writer exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

/// A writer that exits before the agent first looks still has its bytes and the file's path.
#[test]
fn a_writer_gone_before_the_poll_still_counts() {
    require_root();
    let path = test_path("write-and-exit.bin");
    let agent = Agent::start_polling(Duration::from_secs(2), "").expect("agent");
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_exfil-traffic"))
        .args([
            "write",
            path.to_str().expect("utf-8"),
            &SIZE.to_string(),
            "65536",
        ])
        .env("EXFIL_TRAFFIC_NO_HOLD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("writer");
    let pid = writer.id();
    assert!(writer.wait().expect("wait").success());
    let row = settled_row(&agent, pid, &identity(&path), |r| {
        r.bytes_written >= SIZE && r.path.is_some()
    });
    assert_eq!(row.bytes_written, SIZE, "{row:?}");
    let real = std::fs::canonicalize(&path).expect("canonical path");
    assert_eq!(row.path.as_deref(), real.to_str());
    std::fs::remove_file(&path).expect("cleanup");
}
