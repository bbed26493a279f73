//! Hostile input to a running agent gets a clear answer and costs no record: odd file names,
//! processes gone before they can be looked up, a probe that cannot attach, requests that are
//! not HTTP or are too large. Each is a row of the README's "Bad input and what it gets".

use std::{
    io::{Read as _, Write as _},
    os::unix::ffi::OsStrExt as _,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, NetNs, POLL, ServiceCgroup, require_root, socket_addr, traffic};
use sensor::journal::{Entry, Reader, Record};

/// A file whose name holds a newline and a byte that is not UTF-8, read whole by `cat`: one
/// row in the files API and in the journal, its name escaped (`\n`, `\xff`) so that every byte
/// is kept and the row stays one line; the name is nowhere in `/metrics`.
#[test]
fn a_file_name_with_a_newline_and_a_non_utf8_byte_is_one_escaped_row() {
    require_root();
    const SIZE: u64 = 70_001;
    let mut agent = Agent::start_with_interval(Duration::from_millis(500), "").expect("agent");
    let dir = std::env::temp_dir().join(format!("exfil-odd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let name = std::ffi::OsStr::from_bytes(b"q3\nexport\xff.csv");
    let path = dir.join(name);
    std::fs::write(&path, vec![b'x'; SIZE as usize]).expect("write the file");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("stat"));
    let status = std::process::Command::new("cat")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cat");
    assert!(status.success());
    let escaped = format!(
        "{}/q3\\nexport\\xff.csv",
        std::fs::canonicalize(&dir).expect("canonical").display()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows: Vec<_> = agent
            .files()
            .expect("API")
            .into_iter()
            .filter(|f| f.inode == inode && f.comm == "cat")
            .collect();
        let done = rows
            .iter()
            .any(|r| r.path.is_some() && r.bytes_read >= SIZE);
        if done || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(POLL);
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].path.as_deref(), Some(escaped.as_str()));
    assert_eq!(rows[0].bytes_read, SIZE);
    let metrics = agent.metrics_text().expect("/metrics");
    assert!(!metrics.contains("export"), "a file name in /metrics");

    agent.stop().expect("stop");
    let journal: Vec<(Option<String>, u64)> = Reader::open(agent.journal_dir())
        .expect("journal")
        .filter_map(|e| match e {
            Entry::Record {
                record: Record::Interval(interval),
                ..
            } => Some(interval.files),
            Entry::Record { .. } => None,
            Entry::Damaged(d) => panic!("damage in the journal: {d:?}"),
        })
        .flatten()
        .filter(|f| f.inode == inode)
        .map(|f| (f.path, f.bytes_read))
        .collect();
    let read: u64 = journal.iter().map(|(_, bytes)| bytes).sum();
    assert_eq!(read, SIZE, "{journal:?}");
    assert!(
        journal.iter().all(|(p, _)| p.as_deref() == Some(&escaped)),
        "{journal:?}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Forty processes that each send 10 datagrams of 1,009 bytes and exit at once, all before
/// the agent's first poll: every byte is counted under its own pid, each named from the
/// kernel's exec event (or `unknown`, never an error), and nothing is logged as an error.
#[test]
fn processes_gone_before_their_lookup_keep_every_byte() {
    require_root();
    const PROCESSES: usize = 40;
    const COUNT: u64 = 10;
    const SIZE: u64 = 1_009;
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start_polling(Duration::from_secs(2), "").expect("agent");
    let cgroup = ServiceCgroup::create("exfil-e2e-vanish.service").expect("cgroup");
    let (_sink, port) = traffic!().sink(&ns, "udp", ns.peer_ip).expect("sink");
    let mut pids = Vec::new();
    for _ in 0..PROCESSES {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
        cmd.args([
            "send",
            "udp",
            &socket_addr(ns.peer_ip, port),
            &COUNT.to_string(),
            &SIZE.to_string(),
        ])
        .env("EXFIL_TRAFFIC_NO_HOLD", "1")
        .stdout(std::process::Stdio::null());
        cgroup.place(&mut cmd).expect("place in the cgroup");
        pids.push(cmd.spawn().expect("sender"));
    }
    let pids: Vec<u32> = pids
        .into_iter()
        .map(|mut child| {
            assert!(child.wait().expect("wait").success());
            child.id()
        })
        .collect();

    let last = *pids.last().expect("pids");
    agent
        .settled_flow(last, ns.peer_ip, port, "udp", COUNT * SIZE)
        .expect("API");
    let flows = agent.flows().expect("API");
    // Named from the exec event where the kernel has the probe (6.18 here), else `unknown`.
    let exec_probe = agent
        .metric("exfil_sensor_probe_attached{probe=\"sched:sched_process_exec\"}")
        .expect("series");
    let expected_comm = if exec_probe == 1 {
        "exfil-traffic"
    } else {
        "unknown"
    };
    let mut total = 0;
    for pid in &pids {
        let mine: Vec<_> = flows.iter().filter(|f| f.pid == *pid).collect();
        assert_eq!(mine.len(), 1, "pid {pid}: {mine:?}");
        let flow = mine[0];
        assert_eq!(flow.bytes_sent, COUNT * SIZE, "{flow:?}");
        assert_eq!(flow.comm, expected_comm, "{flow:?}");
        total += flow.bytes_sent;
    }
    assert_eq!(total, PROCESSES as u64 * COUNT * SIZE);
    assert_eq!(total, 403_600);
    // Probes this kernel lacks are logged at start; nothing else may be.
    let errors: Vec<String> = agent
        .log_errors()
        .into_iter()
        .filter(|l| !l.contains(" skipped probe="))
        .collect();
    assert_eq!(errors, Vec::<String>::new());
}

/// A probe named in `kernel.disable_probes` is skipped as a probe this kernel lacks would be:
/// logged with its reason (at INFO: the admin asked for it), shown as 0 in `exfil_sensor_probe_attached`, and the agent runs on
/// and counts file reads through the other file probes, to the byte.
#[test]
fn a_probe_that_cannot_attach_is_logged_metered_and_the_agent_runs_on() {
    require_root();
    const SIZE: u64 = 123_457;
    // The harness's config ends its own [kernel] table (pin_dir) where `extra` begins.
    let agent =
        Agent::start_with("disable_probes = [\"filemap:mm_filemap_fault\"]\n").expect("agent");
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"filemap:mm_filemap_fault\"}")
            .expect("series"),
        0
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"filemap:mm_filemap_get_pages\"}")
            .expect("series"),
        1
    );
    // Skipped as asked: one line at INFO, no error or warning about it.
    let skipped: Vec<String> = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("filemap:mm_filemap_fault"))
        .map(str::to_owned)
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].contains(" INFO ")
            && skipped[0].ends_with(
                "skipped probe=\"filemap:mm_filemap_fault\" reason=disabled by kernel.disable_probes"
            ),
        "{skipped:?}"
    );

    let path = std::env::temp_dir().join(format!("exfil-probe-{}.bin", std::process::id()));
    std::fs::write(&path, vec![7u8; SIZE as usize]).expect("write");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).expect("stat"));
    let status = std::process::Command::new("cat")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cat");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read: u64 = agent
            .files()
            .expect("API")
            .iter()
            .filter(|f| f.inode == inode && f.comm == "cat")
            .map(|f| f.bytes_read)
            .sum();
        if read >= SIZE || Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(POLL);
    };
    assert_eq!(read, SIZE);
    std::fs::remove_file(&path).expect("cleanup");
}

/// Sends `request` on a fresh connection to `/metrics`' listener; returns the status line.
fn raw_request(agent: &Agent, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(agent.metrics_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer and close before all of an oversized request is written.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A request line that is not HTTP gets 400, headers of 1 MiB get 431, and the agent goes on
/// serving `/metrics`.
#[test]
fn malformed_and_oversized_http_requests_are_refused_and_the_agent_serves_on() {
    require_root();
    let agent = Agent::start().expect("agent");
    assert_eq!(
        raw_request(&agent, b"NOT HTTP AT ALL\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend(b"\r\n\r\n");
    assert_eq!(
        raw_request(&agent, &huge),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let metrics = agent.metrics_text().expect("/metrics after both");
    assert!(
        metrics.contains("exfil_sensor_probe_attached{probe=\"sock:sock_send_length\"} 1"),
        "{metrics}"
    );
}
