//! A journal whose disk fills up: counting, metrics and alerts go on, the journal says it is
//! failing (a gauge and one `tamper` alert naming the directory and ENOSPC), the records of
//! the full period wait in memory, and once space returns they are written, in order: the
//! journal verifies and its intervals sum to exactly the bytes sent.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, NetNs, POLL, Proc, ServiceCgroup, agent_bin, require_root, socket_addr, traffic,
};
use sensor::journal::{Entry, Reader, Record};
use serde::Deserialize;

const INTERVAL: Duration = Duration::from_millis(500);

/// A small tmpfs, unmounted on drop (lazily, should something still hold it).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exfil-e2e-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs: {status}");
        Self { dir }
    }

    /// Writes a filler file until the disk refuses: ENOSPC.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xA5u8; 1 << 20];
        // A 64 MiB disk is full long before this bound.
        for _ in 0..1_024 {
            if let Err(e) = file.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return path;
            }
        }
        panic!("the disk never filled");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[derive(Debug, Deserialize)]
struct Alert {
    kind: String,
    service: String,
    summary: String,
}

fn tamper_alerts(agent: &Agent) -> Vec<Alert> {
    agent
        .alerts::<Alert>()
        .into_iter()
        .filter(|a| a.kind == "tamper")
        .collect()
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(POLL / 2);
    }
    done()
}

/// The value of the `exfil_sensor_egress_bytes_total` series of `service` to `destination`.
fn egress(agent: &Agent, service: &str, destination: &str) -> Option<u64> {
    let text = agent.metrics_text().ok()?;
    text.lines()
        .filter(|l| l.starts_with("exfil_sensor_egress_bytes_total{"))
        .filter(|l| l.contains(&format!("service=\"{service}\"")))
        .filter(|l| l.contains(&format!("destination=\"{destination}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn journal_records(dir: &Path) -> Vec<Record> {
    Reader::open(dir)
        .expect("journal")
        .map(|e| match e {
            Entry::Record { record, .. } => record,
            Entry::Damaged(d) => panic!("damage in the journal: {d:?}"),
        })
        .collect()
}

#[test]
fn a_full_journal_disk_loses_no_count_and_no_record() {
    require_root();
    const BYTES: u64 = 1_048_583; // 1 MiB and 7 bytes
    let unit = "exfil-e2e-journal-full.service";
    // Declared before the agent: dropped (unmounted) after it stopped. Once the filler is
    // gone, room for minutes of the journal of a busy shared machine (other tests' floods of
    // destinations are interval rows too), and the file rows (every file the machine's
    // builds read, with paths) are bounded: 256 KiB held less than one such interval record.
    let disk = SmallDisk::mount("64m");
    let journal = disk.dir.join("journal");
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(
        INTERVAL,
        &format!(
            "[flows]\nmax_files = 64\n[journal]\ndir = \"{}\"\n",
            journal.display()
        ),
    )
    .expect("agent");
    assert_eq!(agent.journal_dir(), journal);
    assert!(
        wait_until(POLL * 25, || {
            std::fs::read_dir(&journal).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "journal"))
            })
        }),
        "the journal never opened"
    );
    let filler = disk.fill();

    // Traffic while the disk is full.
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args([
        "send",
        "tcp",
        &socket_addr(ns.peer_ip, port),
        &BYTES.to_string(),
    ]);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut upload = Proc::spawn(cmd, "sender").expect("sender");
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );

    // Counting, metrics and alerts go on.
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the upload's flow");
    assert_eq!(flow.bytes_sent, BYTES);
    assert!(
        wait_until(POLL * 25, || egress(&agent, unit, ns.peer_ip)
            == Some(BYTES)),
        "the egress series: {:?}",
        egress(&agent, unit, ns.peer_ip)
    );
    assert!(
        wait_until(POLL * 25, || agent
            .metric("exfil_sensor_journal_writable")
            .ok()
            == Some(0)),
        "the journal still says writable"
    );
    assert!(
        wait_until(POLL * 25, || !tamper_alerts(&agent).is_empty()),
        "no alert about the journal"
    );
    // Several more intervals while it is still full: still one alert.
    std::thread::sleep(INTERVAL * 4);
    let alerts = tamper_alerts(&agent);
    assert_eq!(
        alerts.len(),
        1,
        "one alert, not one per interval: {alerts:?}"
    );
    assert_eq!(alerts[0].service, "exfil-sensor");
    let named = format!("the journal {} stopped taking records: ", journal.display());
    assert!(
        alerts[0].summary.starts_with(&named),
        "{}",
        alerts[0].summary
    );
    assert!(
        alerts[0].summary.ends_with("(ENOSPC)"),
        "{}",
        alerts[0].summary
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_alerts_total{kind=\"tamper\"}")
            .expect("metric"),
        1
    );
    assert!(
        agent
            .metric("exfil_sensor_journal_backlog_records")
            .expect("metric")
            > 0,
        "records wait in memory"
    );

    // Space returns: writing resumes by itself, the backlog first.
    std::fs::remove_file(&filler).expect("rm filler");
    assert!(
        wait_until(POLL * 25, || {
            agent.metric("exfil_sensor_journal_writable").ok() == Some(1)
                && agent.metric("exfil_sensor_journal_backlog_records").ok() == Some(0)
        }),
        "writing did not resume"
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_journal_dropped_records_total")
            .expect("metric"),
        0,
        "no record lost"
    );
    let status = agent.stop().expect("stop");
    assert!(status.success(), "the agent exited with {status}");

    let verify = Command::new(agent_bin())
        .args(["journal", "verify"])
        .arg(&journal)
        .output()
        .expect("journal verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let records = journal_records(&journal);
    assert!(matches!(records.first(), Some(Record::Start(_))));
    assert!(matches!(records.last(), Some(Record::Stop(_))));
    let sent: u64 = records
        .iter()
        .filter_map(|r| match r {
            Record::Interval(i) => Some(i),
            _ => None,
        })
        .flat_map(|i| &i.flows)
        .filter(|f| {
            f.service == unit
                && f.destination.map(|d| d.to_string()).as_deref() == Some(ns.peer_ip)
                && f.port == port
        })
        .map(|f| f.bytes_sent)
        .sum();
    assert_eq!(sent, BYTES, "the journal's intervals hold every byte");
    let journalled_alerts = records
        .iter()
        .filter(|r| matches!(r, Record::Alert(e) if e.alert.kind == "tamper"))
        .count();
    assert_eq!(journalled_alerts, 1, "the alert is in the journal too");
    upload.finish().expect("sender exits cleanly");
}
