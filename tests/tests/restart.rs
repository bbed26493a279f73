//! Pinned maps and programs: the kernel counts while no agent runs, and a restarted agent,
//! even after `kill -9`, continues the same totals without a lost byte. With a journal, the
//! bytes beyond its last totals (the interval a killed agent died in, and what was sent
//! while no agent ran) come in the first interval after the restart, as new bytes: the
//! journal sums to the kernel's totals, and detection sees each byte once. Without one, the
//! pinned totals are taken as accounted for.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, NetNs, Proc, ServiceCgroup, require_root, run_cli, socket_addr, traffic};
use sensor::journal::{PreviousRun, Record, ResumeRecord, ResumedFlow};
use serde::Deserialize;

/// Interval records of 1 s.
const INTERVAL: Duration = Duration::from_secs(1);
/// A burst threshold the uploads below cross (50 MiB by default).
const BURST_8_MIB: &str = "[detect]\n[detect.burst]\nbytes = \"8 MiB\"\n";

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct Alert {
    id: u64,
    kind: String,
    service: String,
    destination: String,
    bytes: u64,
    raised_at: String,
}

/// The flow's bytes in the interval records, before and after the first resume record that
/// follows another (the restart), and that resume record.
fn split_at_restart(
    records: &[Record],
    is_flow: impl Fn(u32, Option<IpAddr>, u16) -> bool,
) -> (u64, u64, Option<ResumeRecord>) {
    let (mut before, mut after, mut resumes) = (0, 0, Vec::new());
    for record in records {
        match record {
            Record::Resume(r) => resumes.push(r.clone()),
            Record::Interval(i) => {
                let bytes: u64 = i
                    .flows
                    .iter()
                    .filter(|f| is_flow(f.pid, f.destination, f.port))
                    .map(|f| f.bytes_sent)
                    .sum();
                if resumes.len() < 2 {
                    before += bytes;
                } else {
                    after += bytes;
                }
            }
            _ => {}
        }
    }
    (before, after, resumes.get(1).cloned())
}

/// `exfil-traffic send tcp` from a process in `cgroup`.
fn send_from(cgroup: &ServiceCgroup, to: &str, bytes: u64) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args(["send", "tcp", to, &bytes.to_string(), "write"]);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    Proc::spawn(cmd, "sender").expect("sender")
}

#[test]
fn kill_9_mid_upload_loses_no_byte() {
    require_root();
    const BYTES: u64 = 20_971_543; // 20 MiB and 23 bytes, about 1.6 s at the slow pace
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let target = socket_addr(ns.peer_ip, port);
    let mut sender = traffic
        .send(&["send", "tcp", &target, &BYTES.to_string(), "slow"])
        .expect("sender");
    assert_eq!(
        sender.expect_line::<String>("started").expect("started"),
        ""
    );
    // The first agent has seen part of the upload...
    let seen = agent
        .settled(sender.pid(), ns.peer_ip, port, "tcp", |f| f.bytes_sent > 0)
        .expect("API")
        .expect("a flow while the upload runs");
    assert!(
        seen.bytes_sent < BYTES,
        "killed mid-upload: {}",
        seen.bytes_sent
    );

    // ...then dies without a word, and the upload goes on while no agent runs.
    agent
        .kill_and_restart(Duration::from_millis(400))
        .expect("restart");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );

    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the flow after the restart");
    assert_eq!(
        flow.bytes_sent, BYTES,
        "every byte, before, during and after the restart"
    );

    // The programs outlived the first agent; they must not count the second one either.
    let own = agent.own_flows_after_scrapes(10).expect("scrapes");
    assert_eq!(own, vec![], "the restarted agent counted itself");
    sender.finish().expect("sender exits cleanly");
}

/// The kept programs write process events to the pinned ring buffer, which the restarted
/// agent drains: a process that exits at once after the restart is still named.
#[test]
fn process_events_reach_a_restarted_agent() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_polling(Duration::from_secs(2), "").expect("agent");
    agent
        .kill_and_restart(Duration::from_millis(100))
        .expect("restart");
    let (_sink, port) = traffic!().sink(&ns, "udp", ns.peer_ip).expect("sink");
    let mut sender = std::process::Command::new(env!("CARGO_BIN_EXE_exfil-traffic"))
        .args(["send", "udp", &socket_addr(ns.peer_ip, port), "10", "1013"])
        .env("EXFIL_TRAFFIC_NO_HOLD", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sender");
    let pid = sender.id();
    assert!(sender.wait().expect("wait").success());
    let flow = agent
        .settled_flow(pid, ns.peer_ip, port, "udp", 10_130)
        .expect("API")
        .expect("a flow for the exited sender");
    assert_eq!(flow.bytes_sent, 10_130);
    assert_eq!(
        flow.comm, "exfil-traffic",
        "named from the pinned ring buffer's events"
    );
}

#[test]
fn kill_9_mid_100_mib_upload_the_journal_sums_to_the_total_and_records_the_gap() {
    require_root();
    const BYTES: u64 = 104_857_600 + 29; // 100 MiB and 29 bytes, about 9 s at the slow pace
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut sender = traffic
        .slow_upload(&socket_addr(ns.peer_ip, port), BYTES)
        .expect("sender");
    let (pid, ip) = (sender.pid(), ns.peer_ip.parse::<IpAddr>().expect("an IP"));
    let is_flow = |p: u32, d: Option<IpAddr>, o: u16| p == pid && d == Some(ip) && o == port;
    // Killed once the journal holds part of the upload, inside a later interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while split_at_restart(&agent.journal_records(), is_flow).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "no interval of the upload within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(INTERVAL / 2);
    let before_kill = agent.journal_records();
    agent
        .kill_and_restart(Duration::from_millis(400))
        .expect("restart");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(pid, ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the flow after the restart");
    assert_eq!(flow.bytes_sent, BYTES, "the pinned maps' total");
    sender.finish().expect("sender exits cleanly");
    std::thread::sleep(INTERVAL * 2);
    assert!(agent.stop().expect("stop").success());

    let (code, out, err) = run_cli(&["journal", "verify", &agent.journal_dir().to_string_lossy()]);
    assert_eq!(code, 0, "journal verify: {out}{err}");
    let records = agent.journal_records();
    let (before, after, resume) = split_at_restart(&records, is_flow);
    assert_eq!(before + after, BYTES, "the journal sums to the total");
    assert!(0 < before && before < BYTES, "killed mid-upload: {before}");
    // The restart's resume record: the previous run ended without a stop record, at its
    // last record, and the flow's bytes the kernel counted beyond the journal's totals.
    let resume = resume.expect("the restarted agent's resume record");
    // The first run's records: those before the restarted agent's start record.
    let restarted_at = records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::Start(_)))
        .map(|(i, _)| i)
        .nth(1)
        .expect("two start records");
    let first_run = &records[..restarted_at];
    assert_eq!(
        first_run[..before_kill.len()],
        before_kill[..],
        "read before the kill"
    );
    let last_at_ms = first_run
        .iter()
        .filter_map(Record::at_ms)
        .max()
        .expect("times");
    assert_eq!(resume.previous, PreviousRun::Unclean { last_at_ms });
    let resumed: Vec<&ResumedFlow> = resume
        .flows
        .iter()
        .filter(|f| is_flow(f.key.tgid, f.key.destination, f.key.port))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let journaled = resumed[0].journaled.expect("the journal's totals").sent;
    assert_eq!(
        journaled, before,
        "the last totals are what the intervals hold"
    );
    assert_eq!(
        resumed[0].carried().sent,
        resumed[0].kernel.sent - before,
        "journal + carried = the kernel's total at the restart"
    );
    assert!(resumed[0].carried().sent > 0);
    // The report shows the restart and every byte of the upload.
    let (code, out, err) = run_cli(&[
        "report",
        &agent.journal_dir().to_string_lossy(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "report: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
    let restarts = report["restarts"].as_array().expect("restarts");
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(restarts[0]["previous"], "unclean");
    assert!(restarts[0]["carried_bytes"].as_u64() >= Some(resumed[0].carried().sent));
}

#[test]
fn a_clean_restart_raises_nothing_for_bytes_already_accounted() {
    require_root();
    const BYTES: u64 = (12 << 20) + 3;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, BURST_8_MIB).expect("agent");
    let unit = "exfil-e2e-restart-clean.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload = send_from(&cgroup, &socket_addr(ns.peer_ip, port), BYTES);
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    agent
        .wait_for_alert(Duration::from_secs(20), |a: &Alert| {
            a.kind == "burst" && a.bytes == BYTES
        })
        .expect("a burst of the whole upload");
    let before: Vec<Alert> = agent.alerts();
    assert_eq!(before.len(), 1, "{before:?}");

    assert!(agent.stop().expect("stop").success());
    agent.start_again().expect("start again");
    std::thread::sleep(INTERVAL * 4);
    // The state file brings the alert back as it was; nothing is raised or grown.
    assert_eq!(agent.alerts::<Alert>(), before);
    assert_eq!(
        agent
            .metric("exfil_sensor_alerts_total{kind=\"burst\"}")
            .expect("metric"),
        0
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the flow after the restart");
    assert_eq!(flow.bytes_sent, BYTES);
    upload.finish().expect("sender");
}

#[test]
fn bytes_sent_while_no_agent_runs_are_one_burst_after_the_start() {
    require_root();
    const BYTES: u64 = (10 << 20) + 7;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, BURST_8_MIB).expect("agent");
    let unit = "exfil-e2e-restart-down.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    assert!(agent.stop().expect("stop").success());
    let mut upload = send_from(&cgroup, &socket_addr(ns.peer_ip, port), BYTES);
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );

    agent.start_again().expect("start again");
    let burst = agent
        .wait_for_alert(Duration::from_secs(10), |a: &Alert| a.kind == "burst")
        .expect("a burst for the bytes sent while down");
    assert_eq!(
        (
            burst.service.as_str(),
            burst.destination.as_str(),
            burst.bytes
        ),
        (unit, ns.peer_ip, BYTES)
    );
    std::thread::sleep(INTERVAL * 3);
    let all: Vec<Alert> = agent.alerts();
    assert_eq!(all, vec![burst], "exactly one alert");
    assert_eq!(
        agent
            .metric("exfil_sensor_alerts_total{kind=\"burst\"}")
            .expect("metric"),
        1
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the flow");
    assert_eq!(flow.bytes_sent, BYTES);
    upload.finish().expect("sender");
}

#[test]
fn without_a_journal_pinned_totals_are_carried_over_silently_and_logged() {
    require_root();
    const BYTES: u64 = (12 << 20) + 5;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, BURST_8_MIB).expect("agent");
    let unit = "exfil-e2e-restart-nojournal.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    assert!(agent.stop().expect("stop").success());
    let mut upload = send_from(&cgroup, &socket_addr(ns.peer_ip, port), BYTES);
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    std::fs::remove_dir_all(agent.journal_dir()).expect("remove the journal");

    agent.start_again().expect("start again");
    std::thread::sleep(INTERVAL * 4);
    assert_eq!(
        agent.alerts::<Alert>(),
        vec![],
        "nothing tells old bytes from new"
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the flow");
    assert_eq!(flow.bytes_sent, BYTES);

    // One log line says what was carried over; the new journal's resume record lists it.
    let log = agent.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pinned kernel totals taken over"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let numbers: Vec<u64> = lines[0]
        .split_once("taken over (the journal is new): ")
        .expect("the journal is new")
        .1
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(4)
        .collect();
    let records = agent.journal_records();
    let Some(Record::Resume(resume)) = records.iter().find(|r| matches!(r, Record::Resume(_)))
    else {
        panic!("no resume record in {records:?}");
    };
    assert_eq!(resume.previous, PreviousRun::None);
    assert!(resume.flows.iter().all(|f| f.journaled.is_none()));
    let adopted: u64 = resume.flows.iter().map(|f| f.kernel.sent).sum();
    assert_eq!(numbers, vec![0, 0, adopted, resume.flows.len() as u64]);
    let ip = ns.peer_ip.parse::<IpAddr>().expect("an IP");
    let ours: Vec<u64> = resume
        .flows
        .iter()
        .filter(|f| f.key.tgid == upload.pid() && f.key.destination == Some(ip))
        .map(|f| f.kernel.sent)
        .collect();
    assert_eq!(ours, vec![BYTES], "the upload, carried over in full");
    upload.finish().expect("sender");
}
