//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

use std::{path::Path, process::Command};

use exfil_tests::{agent_bin, require_root};

/// Runs the agent binary with `args`; returns (exit code, stderr).
fn agent(args: &[&str]) -> (i32, String) {
    agent_as(Command::new(agent_bin()), args)
}

fn agent_as(mut cmd: Command, args: &[&str]) -> (i32, String) {
    let out = cmd.args(args).output().expect("the agent binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn temp(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("exfil-bad-{}-{name}", std::process::id()));
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn not_root_is_named() {
    require_root(); // to drop to nobody, we must be root first
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(agent_bin());
    let (code, stderr) = agent_as(cmd, &["run", "--api-socket", "/tmp/exfil-bad-nobody.sock"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "exfil-sensor: exfil-sensor needs root, or the capabilities CAP_BPF, CAP_PERFMON and \
         CAP_NET_ADMIN (running as uid 65534 with effective capabilities 0x0)\n"
    );
}

#[test]
fn port_in_use_is_named() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = agent(&[
        "run",
        "--listen",
        &addr,
        "--api-socket",
        "/tmp/exfil-bad-port.sock",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("exfil-sensor: cannot listen on {addr}: Address already in use (os error 98)\n")
    );
}

#[test]
fn missing_btf_is_named() {
    require_root();
    let config = temp("btf.toml", "[kernel]\nbtf = \"/nonexistent/vmlinux\"\n");
    let (code, stderr) = agent(&[
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--api-socket",
        "/tmp/exfil-bad-btf.sock",
    ]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!(code, 1);
    assert!(
        stderr.ends_with(
            "cannot read BTF from /nonexistent/vmlinux (a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y has it; else set kernel.btf): No such file or directory (os error 2)\n"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !Path::new("/tmp/exfil-bad-btf.sock").exists(),
        "the socket is removed on the way out"
    );
}

#[test]
fn unknown_flag_is_named() {
    let (code, stderr) = agent(&["run", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().next(),
        Some("error: unexpected argument '--bogus' found")
    );
}

#[test]
fn bad_config_key_is_named_with_line_and_column() {
    let config = temp("key.toml", "[agent]\npoll_interval = \"1s\"\npoll = 3\n");
    let (code, stderr) = agent(&["check-config", config.to_str().expect("utf-8")]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "exfil-sensor: config {}: line 3, column 1: unknown field `poll`, expected `poll_interval` or `interval`\n",
            config.display()
        )
    );
}

#[test]
fn default_config_checks_clean() {
    let out = Command::new(agent_bin())
        .args(["config", "default"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let config = temp("default.toml", &String::from_utf8_lossy(&out.stdout));
    let (code, stderr) = agent(&["check-config", config.to_str().expect("utf-8")]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn a_reader_that_stops_early_ends_the_listing_quietly() {
    // `exfil-sensor … | head`: the pipe's reader is gone before the output is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(agent_bin());
    cmd.stdout(writer);
    assert_eq!(agent_as(cmd, &["config", "default"]), (0, String::new()));
}

#[test]
fn a_full_disk_under_stdout_is_named() {
    let mut cmd = Command::new(agent_bin());
    cmd.stdout(std::fs::File::create("/dev/full").expect("/dev/full"));
    assert_eq!(
        agent_as(cmd, &["config", "default"]),
        (
            1,
            "exfil-sensor: writing to stdout: No space left on device (os error 28)\n".into()
        )
    );
}

/// Each misuse of the command line: exit 2 and clap's one line naming the argument (for a
/// missing argument, the line after names it).
#[test]
fn command_line_misuse_is_named() {
    let cases: [(&[&str], &str); 6] = [
        (&["bogus"], "error: unrecognized subcommand 'bogus'"),
        (
            &["check-config"],
            "error: the following required arguments were not provided:\n  <FILE>",
        ),
        (
            &["replay", "/nonexistent", "--from", "yesterday"],
            "error: invalid value 'yesterday' for '--from <FROM>': timestamp format is invalid: \
             an RFC 3339 time is wanted, e.g. 2026-11-23T19:00:00Z",
        ),
        (
            &["report", "/nonexistent", "--to", "2026-13-01T00:00:00Z"],
            "error: invalid value '2026-13-01T00:00:00Z' for '--to <TO>': numeric component is \
             out of range: an RFC 3339 time is wanted, e.g. 2026-11-23T19:00:00Z",
        ),
        (
            &["run", "--listen", "localhost:9967"],
            "error: invalid value 'localhost:9967' for '--listen <LISTEN>': invalid socket \
             address syntax",
        ),
        (
            &["report", "/nonexistent", "--format", "pdf"],
            "error: invalid value 'pdf' for '--format <FORMAT>'\n  [possible values: table, json, \
             csv, svg]",
        ),
    ];
    for (args, first) in cases {
        let (code, stderr) = agent(args);
        let lines = first.lines().count();
        let got: Vec<&str> = stderr.lines().take(lines).collect();
        assert_eq!((code, got.join("\n")), (2, first.to_owned()), "{args:?}");
    }
}

/// `setpriv` to nobody, for what root may read and others may not.
fn as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(agent_bin());
    cmd
}

#[test]
fn an_unreadable_config_is_named() {
    require_root();
    let config = temp("private.toml", "[agent]\n");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (code, stderr) = agent_as(
        as_nobody(),
        &["check-config", config.to_str().expect("utf-8")],
    );
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!(
        (code, stderr),
        (
            1,
            format!(
                "exfil-sensor: cannot read config {}: Permission denied (os error 13)\n",
                config.display()
            )
        )
    );
}

/// A journal written by `import zeek` from the real WRCCDC conn.log (../shared/data, read in
/// place), in a fresh directory.
fn imported_journal(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("exfil-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, stderr) = agent(&[
        "import",
        "zeek",
        ZEEK_FIXTURE,
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    dir
}

const ZEEK_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/zeek/wrccdc-2018-conn.log"
);

fn verify(dir: &Path) -> (i32, String, String) {
    exfil_tests::run_cli(&["journal", "verify", dir.to_str().expect("utf-8")])
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("0000000000000001.journal")
}

#[test]
fn a_corrupt_journal_is_named_by_segment_offset_and_record() {
    let dir = imported_journal("corrupt");
    let (code, intact, stderr) = verify(&dir);
    assert_eq!((code, stderr.as_str()), (0, ""), "{intact}");
    // A file that is not a segment (notes, an editor's backup) is no part of the journal.
    std::fs::write(dir.join("notes.txt"), "not a segment").expect("write");
    assert_eq!(verify(&dir), (0, intact.clone(), String::new()));
    // One flipped byte in the middle of the segment.
    let bytes = std::fs::read(segment(&dir)).expect("read");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(segment(&dir), &flipped).expect("write");
    let seg = segment(&dir).display().to_string();
    // Where each frame starts (the format's 72-byte header, then frames of a 56-byte head
    // holding the payload's length at 4..8, the payload and a 4-byte CRC), so that the
    // expected offsets follow what the import wrote.
    let mut frames = vec![72usize];
    loop {
        let at = *frames.last().expect("one");
        let length = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let next = at + 60 + length as usize;
        if next >= bytes.len() {
            assert_eq!(next, bytes.len(), "frames end with the file");
            break;
        }
        frames.push(next);
    }
    assert!(
        (frames[0]..frames[1]).contains(&(bytes.len() / 2)),
        "the flipped byte lies in record 1: {frames:?}"
    );
    assert_eq!(
        verify(&dir),
        (
            1,
            format!(
                "{seg}: offset 72, record 1: checksum mismatch ({} bytes skipped)\n",
                frames[1] - frames[0]
            ),
            String::new()
        )
    );
    // The segment cut short, as a crash mid-write leaves it.
    std::fs::write(segment(&dir), &bytes[..bytes.len() - 7]).expect("write");
    let last = *frames.last().expect("one");
    assert_eq!(
        verify(&dir),
        (
            1,
            format!(
                "{seg}: offset {last}, record {}: truncated ({} bytes skipped)\n",
                frames.len(),
                bytes.len() - 7 - last
            ),
            String::new()
        )
    );
    // Garbage under a segment's name.
    std::fs::write(segment(&dir), &bytes).expect("write");
    std::fs::write(
        dir.join("0000000000000002.journal"),
        "garbage, not a segment\n",
    )
    .expect("write");
    let garbage = dir.join("0000000000000002.journal").display().to_string();
    assert_eq!(
        verify(&dir),
        (
            1,
            format!(
                "{garbage}: offset 0, record {}: truncated (23 bytes skipped)\n",
                frames.len() + 1
            ),
            String::new()
        )
    );
    std::fs::write(&garbage, "garbage, not a segment\n".repeat(10)).expect("write");
    assert_eq!(
        verify(&dir),
        (
            1,
            format!(
                "{garbage}: offset 0, record {}: bad segment header (72 bytes skipped)\n",
                frames.len() + 1
            ),
            String::new()
        )
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn an_unreadable_journal_directory_is_named() {
    require_root();
    let dir = imported_journal("private");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let dir_str = dir.to_str().expect("utf-8");
    let (code, stderr) = agent_as(as_nobody(), &["journal", "verify", dir_str]);
    let denied = format!("exfil-sensor: journal {dir_str}: Permission denied (os error 13)\n");
    assert_eq!((code, stderr), (1, denied.clone()));
    let (code, stderr) = agent_as(as_nobody(), &["report", dir_str]);
    assert_eq!((code, stderr), (1, denied.clone()));
    let (code, stderr) = agent_as(as_nobody(), &["replay", dir_str]);
    assert_eq!((code, stderr), (1, denied));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The real conn.log with the damage a crash or a bad disk leaves: a line of bytes that are not
/// UTF-8, a line whose time is garbled, and the last line cut short. Each is skipped and named
/// by its line; the other 90 connections import whole.
#[test]
fn a_zeek_log_with_broken_lines_imports_the_rest_and_names_each() {
    let original = std::fs::read(ZEEK_FIXTURE).expect("the fixture");
    let mut lines: Vec<Vec<u8>> = original
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    // Line 50 (a data line): its time garbled.
    lines[49][3] = b'x';
    // After line 30: bytes that are not UTF-8.
    lines.insert(30, b"\xff\xfe\x00garbage".to_vec());
    let mut damaged = lines.join(&b'\n');
    // The last line cut in the middle.
    let last_start = damaged[..damaged.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("lines")
        + 1;
    damaged.truncate(last_start + 40);
    let log = std::env::temp_dir().join(format!("exfil-bad-{}-conn.log", std::process::id()));
    std::fs::write(&log, &damaged).expect("write");
    let out = std::env::temp_dir().join(format!("exfil-bad-{}-zeek-out", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (code, stdout, stderr) = exfil_tests::run_cli(&[
        "import",
        "zeek",
        log.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let log_name = log.display().to_string();
    assert_eq!(
        (code, stderr),
        (
            0,
            "exfil-sensor: LOG: line 31 skipped: not UTF-8\n\
             exfil-sensor: LOG: line 51 skipped: `ts` = \"152x911720.632152\" is not valid\n\
             exfil-sensor: LOG: line 101 skipped: 3 fields where #fields names 21\n"
                .replace("LOG", &log_name)
        ),
    );
    // The whole log holds 6,707 bytes sent and 9,077 received (all from local 10.x hosts);
    // the garbled line had 0 and 0, the cut one 324 and 250.
    assert_eq!(
        stdout,
        format!(
            "{log_name}: 90 connections (3 lines skipped) into 1 interval records in {}: 6383 \
             bytes sent and 8827 received by the local side\n",
            out.display()
        )
    );
    std::fs::remove_file(&log).expect("cleanup");
    std::fs::remove_dir_all(&out).expect("cleanup");
}
