//! File reads are counted exactly: a 10,000,019-byte file read whole counts 10,000,019 bytes
//! for the reader, whether by small `read`s, `readv`s, `pread`s, one large read, `O_DIRECT`
//! reads, four threads `pread`ing it at once or two taking turns at `read`.
//!
//! Not here yet: `mmap`. A large folio mapped whole by a PMD raises neither
//! `mm_filemap_map_pages` nor `mm_filemap_fault` (traced on 6.18: nothing for the first 2,048
//! pages of a freshly written 10 MB file), so mapped reads of such files are undercounted
//! until the sensor has a hook for that path.

use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, FileRow, POLL, require_root, traffic};

const SIZE: u64 = 10_000_019;

/// A file of `SIZE` bytes on the disk the tests run from (the page cache path; tmpfs files
/// do not pass it), and its `major:minor` and inode as the kernel names them.
fn test_file(name: &str) -> (PathBuf, String, u64) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let block: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let mut data = Vec::with_capacity(SIZE as usize);
    while (data.len() as u64) < SIZE {
        let n = ((SIZE as usize) - data.len()).min(block.len());
        data.extend_from_slice(&block[..n]);
    }
    std::fs::write(&path, &data).expect("write the test file");
    let meta = std::fs::metadata(&path).expect("stat");
    let dev = meta.dev();
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    (path, device, meta.ino())
}

fn read_exactly(via: &str, chunk: &str) {
    require_root();
    let (path, device, inode) = test_file(&format!("read-{via}.bin"));
    let agent = Agent::start().expect("agent");
    let mut reader = traffic!()
        .send(&["read", path.to_str().expect("utf-8"), chunk, via])
        .expect("reader");
    assert_eq!(reader.expect_line::<u64>("read").expect("read"), SIZE);

    let find = || -> Option<FileRow> {
        agent
            .files()
            .expect("API")
            .into_iter()
            .find(|f| f.pid == reader.pid() && f.device == device && f.inode == inode)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && find().is_none_or(|f| f.bytes_read < SIZE) {
        std::thread::sleep(POLL);
    }
    std::thread::sleep(POLL * 2);
    let row = find().expect("a row for the reader and the file");
    assert_eq!(row.bytes_read, SIZE, "{via}: {row:?}");
    assert_eq!(row.comm, "exfil-traffic");
    let real = std::fs::canonicalize(&path).expect("canonical path");
    assert_eq!(
        row.path.as_deref(),
        real.to_str(),
        "the kernel's dentry walk"
    );
    reader.finish().expect("reader exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

#[test]
fn read_in_1000_byte_calls_counts_the_file_size() {
    read_exactly("read", "1000");
}

#[test]
fn readv_counts_the_file_size() {
    read_exactly("readv", "3000");
}

#[test]
fn pread_counts_the_file_size() {
    read_exactly("pread", "1000");
}

#[test]
fn o_direct_reads_count_the_file_size() {
    read_exactly("direct", "1048576");
}

#[test]
fn four_threads_reading_one_file_at_once_count_the_file_size() {
    read_exactly("threads", "4096");
}

#[test]
fn four_threads_reading_one_file_in_unaligned_chunks_count_the_file_size() {
    // 1,000-byte chunks: the threads' reads share pages.
    read_exactly("threads", "1000");
}

#[test]
fn a_read_that_hops_between_two_threads_counts_the_file_size() {
    read_exactly("turns", "1000");
}

#[test]
fn one_large_read_counts_the_file_size() {
    read_exactly("read", "16777216");
}

/// A process that reads a file and exits at once, before the agent first looks, still has
/// the file's path and its byte count reported.
#[test]
fn a_reader_gone_before_the_poll_still_has_its_path() {
    require_root();
    let (path, device, inode) = test_file("read-and-exit.bin");
    let agent = Agent::start_polling(Duration::from_secs(2), "").expect("agent");
    let mut reader = std::process::Command::new(env!("CARGO_BIN_EXE_exfil-traffic"))
        .args(["read", path.to_str().expect("utf-8"), "65536", "read"])
        .env("EXFIL_TRAFFIC_NO_HOLD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("reader");
    let pid = reader.id();
    assert!(reader.wait().expect("wait").success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = agent
            .files()
            .expect("API")
            .into_iter()
            .find(|f| f.pid == pid && f.device == device && f.inode == inode);
        if row.as_ref().is_some_and(|r| r.path.is_some()) || Instant::now() > deadline {
            break row.expect("a row for the exited reader");
        }
        std::thread::sleep(POLL);
    };
    let real = std::fs::canonicalize(&path).expect("canonical path");
    assert_eq!(row.path.as_deref(), real.to_str());
    assert_eq!(row.bytes_read, SIZE);
    assert_eq!(row.comm, "exfil-traffic");
    std::fs::remove_file(&path).expect("cleanup");
}

/// A restarted agent knows no path: a file a process started reading under the previous
/// agent has its path sent again on the process's next read, and its bytes continue.
#[test]
fn a_file_read_across_a_restart_keeps_its_path() {
    require_root();
    let (path, device, inode) = test_file("read-across-restart.bin");
    let mut agent = Agent::start().expect("agent");
    let mut reader = traffic!()
        .send(&["read", path.to_str().expect("utf-8"), "4096", "halves"])
        .expect("reader");
    assert_eq!(reader.expect_line::<u64>("half").expect("half"), SIZE / 2);
    let pid = reader.pid();
    let row = |agent: &Agent| {
        agent
            .files()
            .expect("API")
            .into_iter()
            .find(|f| f.pid == pid && f.device == device && f.inode == inode)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && row(&agent).is_none_or(|r| r.path.is_none()) {
        std::thread::sleep(POLL);
    }
    assert!(
        row(&agent).is_some_and(|r| r.path.is_some()),
        "the first agent saw the file"
    );

    agent
        .kill_and_restart(Duration::from_millis(100))
        .expect("restart");
    reader.resume().expect("resume");
    assert_eq!(reader.expect_line::<u64>("read").expect("read"), SIZE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && row(&agent).is_none_or(|r| r.path.is_none() || r.bytes_read < SIZE)
    {
        std::thread::sleep(POLL);
    }
    let row = row(&agent).expect("a row under the restarted agent");
    let real = std::fs::canonicalize(&path).expect("canonical path");
    assert_eq!(
        row.path.as_deref(),
        real.to_str(),
        "sent again to the new agent"
    );
    assert_eq!(row.bytes_read, SIZE, "both halves, across the restart");
    reader.finish().expect("reader exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

/// A mail store read at once, as `tar` or Dovecot's `imap` read one: 20,000 new 4 KiB files
/// in well under a second, twenty times what one poll's worth of the path ring held before
/// it was drained continuously. Every path arrives, so every file's bytes count under its
/// class, in the rows and in the metrics, and no path is dropped.
#[test]
fn a_burst_of_new_files_keeps_every_path_and_class() {
    require_root();
    const FILES: usize = 20_000;
    const SIZE: usize = 4096;
    const CLASS: &str = "e2e_burst";
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("path-burst-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The path the kernel's dentry walk gives, which the class pattern must match.
    let dir = std::fs::canonicalize(&dir).expect("canonical path");
    // Written before the agent starts: only the reads below are new to it.
    let files: std::collections::HashMap<u64, PathBuf> = (0..FILES)
        .map(|i| {
            let path = dir.join(format!("msg-{i:05}"));
            std::fs::write(&path, [b'm'; SIZE]).expect("write");
            (std::fs::metadata(&path).expect("stat").ino(), path)
        })
        .collect();
    let device = {
        let dev = std::fs::metadata(&dir).expect("stat").dev();
        format!("{}:{}", libc::major(dev), libc::minor(dev))
    };
    let config = format!(
        "[[files.class]]\nname = \"{CLASS}\"\npaths = [\"{}\"]\n",
        dir.display()
    );
    // The default poll: what a deployed agent drains its rings at.
    let agent = Agent::start_polling(Duration::from_secs(1), &config).expect("agent");
    let started = Instant::now();
    let mut read = 0;
    for path in files.values() {
        read += std::fs::read(path).expect("read").len();
    }
    let took = started.elapsed();
    assert_eq!(read, FILES * SIZE);

    let class_bytes = || -> u64 {
        let text = agent.metrics_text().expect("metrics");
        text.lines()
            .filter(|l| l.starts_with("exfil_sensor_file_read_bytes_total{"))
            .filter(|l| l.contains(&format!("class=\"{CLASS}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && class_bytes() < (FILES * SIZE) as u64 {
        std::thread::sleep(POLL);
    }
    // Two more polls: nothing more may come.
    std::thread::sleep(Duration::from_secs(2));
    let pid = std::process::id();
    let rows: Vec<FileRow> = agent
        .files()
        .expect("API")
        .into_iter()
        .filter(|f| f.pid == pid && f.device == device && files.contains_key(&f.inode))
        .collect();
    let drops = agent
        .metric("exfil_sensor_kernel_drops_total{map=\"file_paths\"}")
        .expect("drops");
    let classed = rows.iter().filter(|r| r.class == CLASS).count();
    let bytes = class_bytes();
    eprintln!(
        "{FILES} files read in {took:?}: {classed} rows classed {CLASS}, {bytes} bytes under it, \
         {drops} paths dropped"
    );
    assert_eq!(drops, 0, "paths dropped by the full ring");
    assert_eq!(
        bytes,
        (FILES * SIZE) as u64,
        "bytes under {CLASS} in the metrics"
    );
    assert_eq!(rows.len(), FILES, "a row per file");
    let mut bad: Vec<&FileRow> = rows
        .iter()
        .filter(|r| {
            r.class != CLASS
                || r.bytes_read != SIZE as u64
                || r.path.as_deref() != files[&r.inode].to_str()
        })
        .collect();
    let bad_count = bad.len();
    bad.truncate(3);
    assert!(bad.is_empty(), "{bad_count} rows wrong, such as {bad:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// ext4 gives a deleted file's inode number to the next file created (seen here at once,
/// every time): the new file must have its own path and class, not the one the kernel sent
/// for the deleted file. On a mail server that is every queue file and every expunged
/// message.
#[test]
fn a_file_on_a_reused_inode_has_its_own_path_and_class() {
    require_root();
    const CLASS: &str = "e2e_reused";
    const BYTES: usize = 3_000_017;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("inode-reuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dir = std::fs::canonicalize(&dir).expect("canonical path");
    let config = format!(
        "[[files.class]]\nname = \"{CLASS}\"\npaths = [\"{}/secret-*\"]\n",
        dir.display()
    );
    let agent = Agent::start_with(&config).expect("agent");
    let read = |path: &PathBuf| {
        let mut reader = traffic!()
            .send(&["read", path.to_str().expect("utf-8"), "65536", "read"])
            .expect("reader");
        let n = reader.expect_line::<u64>("read").expect("read");
        (reader, n)
    };
    let row_of = |pid: u32, inode: u64, bytes: u64| -> Option<FileRow> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = agent
                .files()
                .expect("API")
                .into_iter()
                .find(|f| f.pid == pid && f.inode == inode);
            if row
                .as_ref()
                .is_some_and(|r| r.path.is_some() && r.bytes_read >= bytes)
                || Instant::now() > deadline
            {
                return row;
            }
            std::thread::sleep(POLL);
        }
    };
    // A plain file, read while the agent runs so that the kernel sends its path, then deleted
    // and a classed file made in its place; a few tries until ext4 hands the inode back.
    let mut reused = None;
    for attempt in 0..20 {
        let plain = dir.join(format!("plain-{attempt}"));
        std::fs::write(&plain, [b'p'; 4_099]).expect("write");
        let inode = std::fs::metadata(&plain).expect("stat").ino();
        let (reader, n) = read(&plain);
        assert_eq!(n, 4_099);
        let row = row_of(reader.pid(), inode, 4_099).expect("the plain file's row");
        assert_eq!(row.path.as_deref(), plain.to_str());
        reader.finish().expect("reader exits cleanly");
        std::fs::remove_file(&plain).expect("rm");
        let secret = dir.join(format!("secret-{attempt}"));
        std::fs::write(&secret, vec![b's'; BYTES]).expect("write");
        if std::fs::metadata(&secret).expect("stat").ino() == inode {
            reused = Some((secret, inode));
            break;
        }
        std::fs::remove_file(&secret).expect("rm");
    }
    let (secret, inode) = reused.expect("ext4 reused a freed inode within 20 tries");
    let (reader, n) = read(&secret);
    assert_eq!(n, BYTES as u64);
    let row = row_of(reader.pid(), inode, BYTES as u64).expect("the secret file's row");
    assert_eq!(
        (row.path.as_deref(), row.class.as_str(), row.bytes_read),
        (secret.to_str(), CLASS, BYTES as u64),
        "{row:?}"
    );
    reader.finish().expect("reader exits cleanly");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
