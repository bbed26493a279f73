//! The journal against the real agent: an upload in a service, then SIGTERM; the journal
//! verifies, starts with a start record and ends with a stop record, and its interval
//! records add up to exactly the bytes uploaded to that destination.

use std::{process::Command, time::Duration};

use exfil_tests::{Agent, NetNs, ServiceCgroup, agent_bin, require_root, socket_addr, traffic};
use sensor::journal::{Entry, Reader, Record};

/// Intervals of 500 ms: the upload spans several, and the last is the one SIGTERM flushes.
const INTERVAL: Duration = Duration::from_millis(500);

#[test]
fn after_sigterm_the_journal_verifies_and_its_intervals_sum_to_the_upload() {
    require_root();
    const BYTES: u64 = 20_971_543; // 20 MiB and 23 bytes, about 1.6 s at the slow pace
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let unit = "exfil-e2e-journal.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args([
        "send",
        "tcp",
        &socket_addr(ns.peer_ip, port),
        &BYTES.to_string(),
        "slow",
    ]);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut upload = exfil_tests::Proc::spawn(cmd, "sender").expect("sender");
    assert_eq!(
        upload.expect_line::<String>("started").expect("started"),
        ""
    );
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let pid = upload.pid();

    // At once: the bytes of the last moments are only in the interval SIGTERM closes.
    let status = agent.stop().expect("stop");
    assert!(status.success(), "the agent exited with {status}");

    let dir = agent.journal_dir().to_owned();
    let verify = Command::new(agent_bin())
        .args(["journal", "verify"])
        .arg(&dir)
        .output()
        .expect("journal verify");
    let line = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{line}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        line.starts_with(&format!("{}: intact: 1 segment, ", dir.display())),
        "{line}"
    );

    let records: Vec<Record> = Reader::open(&dir)
        .expect("journal")
        .map(|e| match e {
            Entry::Record { record, .. } => record,
            Entry::Damaged(d) => panic!("damage in the journal: {d:?}"),
        })
        .collect();
    assert!(
        matches!(records.first(), Some(Record::Start(_))),
        "{:?}",
        records.first()
    );
    assert!(
        matches!(records.last(), Some(Record::Stop(_))),
        "{:?}",
        records.last()
    );
    let Some(Record::Start(start)) = records.first() else {
        unreachable!("checked above");
    };
    assert_eq!(start.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(
        start
            .config_toml
            .contains(&format!("dir = \"{}\"", dir.display()))
    );
    let intervals: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Interval(i) => Some(i),
            _ => None,
        })
        .collect();
    let sent: Vec<u64> = intervals
        .iter()
        .map(|i| {
            i.flows
                .iter()
                .filter(|f| {
                    f.service == unit
                        && f.destination.map(|d| d.to_string()).as_deref() == Some(ns.peer_ip)
                        && f.port == port
                })
                .map(|f| f.bytes_sent)
                .sum()
        })
        .filter(|bytes| *bytes > 0)
        .collect();
    assert!(sent.len() >= 2, "the upload spans intervals: {sent:?}");
    assert_eq!(sent.iter().sum::<u64>(), BYTES, "per interval: {sent:?}");
    assert!(
        intervals
            .iter()
            .flat_map(|i| &i.flows)
            .any(|f| f.pid == pid && f.comm == "exfil-traffic"),
        "the sender is named"
    );
}
