//! Config reload (SIGHUP) against the real agent: a bad file is refused whole (its line and
//! column logged, counted, the agent still running and detecting with the old burst
//! threshold, its bytes counted exactly); a good file lowering the threshold takes effect at
//! once.
//!
//! Thresholds: 48 MiB at start; the bad file says 8 MiB, the good one 28 MiB. The first
//! upload, 24 MiB from one service, lies between the bad file's and the old threshold: no
//! alert proves the old one in force. The second, 30 MiB from another service, lies between
//! the good file's and the old threshold: one burst proves the new one in force (the first
//! service's 24 MiB, still in its 300 s window, stays under 28 MiB).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, NetNs, POLL, Proc, ServiceCgroup, require_root, socket_addr, traffic, watch_only,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Alert {
    kind: String,
    service: String,
    destination: String,
    bytes: u64,
}

const INTERVAL: Duration = Duration::from_secs(2);
/// The uploads' destination, and the only one detection watches: other tests on the machine
/// send to 198.51.100.1–30, and the agent counts the whole host.
const DESTINATION: &str = "198.51.100.213";

fn upload(ns: &NetNs, unit: &str, bytes: u64) -> (ServiceCgroup, Proc, Proc) {
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(ns, "tcp", DESTINATION).expect("sink");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args([
        "send",
        "tcp",
        &socket_addr(DESTINATION, port),
        &bytes.to_string(),
        "write",
    ]);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut sender = Proc::spawn(cmd, "sender").expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), bytes);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        bytes
    );
    (cgroup, sender, sink)
}

/// Waits (bounded) until the agent counted `bytes` sent by `pid`, then two intervals more
/// (detection has seen them); returns what it counted.
fn counted(agent: &Agent, pid: u32, bytes: u64) -> u64 {
    let sent = || -> u64 {
        agent
            .flows()
            .expect("flows")
            .iter()
            .filter(|f| f.pid == pid)
            .map(|f| f.bytes_sent)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while sent() < bytes && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    std::thread::sleep(INTERVAL * 2 + POLL);
    sent()
}

#[test]
fn a_bad_file_is_refused_whole_and_a_good_one_takes_effect() {
    require_root();
    const FIRST: u64 = 24 << 20;
    const SECOND: u64 = 30 << 20;
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(DESTINATION).expect("the destination host");
    let mut agent = Agent::start_with_interval(
        INTERVAL,
        &format!(
            "[detect]\nquiet = \"10m\"\n[detect.burst]\nbytes = \"48 MiB\"\n{}",
            watch_only(DESTINATION.parse().expect("an address"))
        ),
    )
    .expect("agent");
    let path = agent.config_path().to_owned();
    let good = std::fs::read_to_string(&path).expect("config");
    assert!(good.contains("bytes = \"48 MiB\"\n"), "{good}");

    // A bad file: a lower threshold and an unknown key after it.
    let bad = good.replace(
        "bytes = \"48 MiB\"\n",
        "bytes = \"8 MiB\"\nthreshold_typo = 1\n",
    );
    let line = bad
        .lines()
        .position(|l| l.starts_with("threshold_typo"))
        .expect("the bad line")
        + 1;
    std::fs::write(&path, &bad).expect("write the bad config");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    let logged = agent
        .wait_for_log(Duration::from_secs(10), "config reload refused")
        .expect("the reload's error line");
    let expected = format!(
        "config {}: line {line}, column 1: unknown field `threshold_typo`",
        path.display()
    );
    assert!(logged.contains(&expected), "{logged}\nwanted: {expected}");
    assert_eq!(
        agent
            .metric("exfil_sensor_config_reload_errors_total")
            .expect("metric"),
        1
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_config_last_reload_success")
            .expect("metric"),
        0
    );
    assert!(agent.running(), "the agent exited on a bad reload");

    // Still counting, still on 48 MiB: 24 MiB raises nothing.
    let (_a, first, _sink_a) = upload(&ns, "exfil-e2e-reload-a.service", FIRST);
    assert_eq!(counted(&agent, first.pid(), FIRST), FIRST);
    assert_eq!(
        agent
            .alerts::<Alert>()
            .iter()
            .filter(|a| a.kind == "burst")
            .count(),
        0,
        "24 MiB raised a burst: the bad file's 8 MiB is in force"
    );

    // A good file lowering the threshold to 28 MiB.
    std::fs::write(
        &path,
        good.replace("bytes = \"48 MiB\"\n", "bytes = \"28 MiB\"\n"),
    )
    .expect("write the good config");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    let logged = agent
        .wait_for_log(Duration::from_secs(10), "reloaded: applied")
        .expect("the reload's line");
    assert!(
        logged.contains(&format!(
            "config {} reloaded: applied: detect.burst; changed but in force only after a \
             restart: none",
            path.display()
        )),
        "{logged}"
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_config_last_reload_success")
            .expect("metric"),
        1
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_config_reload_errors_total")
            .expect("metric"),
        1
    );

    let unit = "exfil-e2e-reload-b.service";
    let (_b, second, _sink_b) = upload(&ns, unit, SECOND);
    assert_eq!(counted(&agent, second.pid(), SECOND), SECOND);
    let burst = agent
        .wait_for_alert(Duration::from_secs(10), |a: &Alert| {
            a.kind == "burst" && a.bytes >= SECOND
        })
        .expect("a burst after the good reload");
    let bursts: Vec<(String, String, u64)> = agent
        .alerts::<Alert>()
        .into_iter()
        .filter(|a| a.kind == "burst")
        .map(|a| (a.service, a.destination, a.bytes))
        .collect();
    assert_eq!(
        bursts,
        vec![(unit.to_owned(), DESTINATION.to_owned(), SECOND)],
        "{burst:?}"
    );
    assert!(agent.running());
}

#[test]
fn a_hangup_with_the_file_unchanged_changes_nothing() {
    require_root();
    let mut agent = Agent::start().expect("agent");
    agent.signal(libc::SIGHUP).expect("SIGHUP");
    let logged = agent
        .wait_for_log(Duration::from_secs(10), "reloaded")
        .expect("the reload's line");
    assert!(
        logged.contains(&format!(
            "config {} reloaded: no change",
            agent.config_path().display()
        )),
        "{logged}"
    );
    assert!(agent.running());
    assert_eq!(
        agent
            .metric("exfil_sensor_config_last_reload_success")
            .expect("metric"),
        1
    );
}
