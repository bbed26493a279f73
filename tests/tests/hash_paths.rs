//! `files.hash_paths` against the real agent: a file read under a class of the test's own is
//! shown in `/api/v1/files` as `hash:<hex>` (the keyed hash of its real path, with the key
//! the agent made), with the class of its real path and its exact bytes; after the agent
//! stops, the path and the file's name are nowhere in the journal's bytes, and the hash is.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use exfil_tests::{Agent, FileRow, POLL, require_root, traffic};
use sensor::flow::path_hash::PathHasher;

const SIZE: u64 = 3_000_017;

fn journal_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the journal directory") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("a journal file"));
        }
    }
    bytes
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn a_hashed_path_is_never_shown_and_keeps_its_class() {
    require_root();
    // On the disk (tmpfs files do not pass the page cache path the sensor sees).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hash-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let secret_dir = dir.join("patients-ward-7");
    std::fs::create_dir_all(&secret_dir).expect("mkdir");
    let file = secret_dir.join("jane-doe-records.csv");
    std::fs::write(&file, vec![b'x'; SIZE as usize]).expect("write the file");
    let real = std::fs::canonicalize(&file).expect("canonical path");
    let real = real.to_str().expect("utf-8").to_owned();
    let inode = std::fs::metadata(&file).expect("stat").ino();
    let key = dir.join("state").join("path-hash.key");
    let mut agent = Agent::start_with(&format!(
        "[files]\nhash_paths = true\nhash_key_file = \"{}\"\n\
         [[files.class]]\nname = \"e2e_hashed\"\npaths = [\"{}\"]\n",
        key.display(),
        secret_dir.display()
    ))
    .expect("agent");
    let meta = std::fs::metadata(&key).expect("the agent made its key");
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    let hash = PathHasher::load_or_create(&key)
        .expect("the key")
        .hash(&real);

    let mut reader = traffic!()
        .send(&["read", &real, "65536", "read"])
        .expect("reader");
    assert_eq!(reader.expect_line::<u64>("read").expect("read"), SIZE);
    let find = || -> Option<FileRow> {
        agent
            .files()
            .expect("/api/v1/files")
            .into_iter()
            .find(|f| f.pid == reader.pid() && f.inode == inode)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && find().is_none_or(|f| f.bytes_read < SIZE || f.path.is_none())
    {
        std::thread::sleep(POLL);
    }
    let row = find().expect("a row for the reader and the file");
    assert_eq!(
        (row.path.as_deref(), row.class.as_str(), row.bytes_read),
        (Some(hash.as_str()), "e2e_hashed", SIZE)
    );
    let (_, api) = agent.get("/api/v1/files").expect("/api/v1/files");
    assert_eq!(count(api.as_bytes(), b"jane-doe"), 0, "{api}");
    assert_eq!(count(api.as_bytes(), b"patients-ward-7"), 0, "{api}");
    // The stop closes the last interval and writes it: the read is in the journal.
    assert!(agent.stop().expect("stopped").success());
    reader.finish().expect("reader exits cleanly");

    let journal = journal_bytes(agent.journal_dir());
    assert!(!journal.is_empty());
    assert_eq!(count(&journal, real.as_bytes()), 0);
    assert_eq!(count(&journal, b"jane-doe-records"), 0);
    // (The class's pattern, `…/patients-ward-7`, is in the start record's copy of the
    // config: the operator's words, not what the host did.)
    assert!(
        count(&journal, hash.as_bytes()) >= 1,
        "the hash is the file's name in the journal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
