//! Alert sinks that fail, end to end: a webhook receiver (a small HTTP server thread)
//! that answers 500 until the test lets it answer 200, and an Alertmanager stand-in whose
//! port is closed until the test opens it. The JSON lines sink gets every alert at once
//! meanwhile; the queue metrics show the backlog; once both come back every alert arrives
//! exactly once (the ids the API lists). With queues of 2, five alerts while down are three
//! drops per network sink, and the two queued are what arrives.
//!
//! Each alert is a `burst` of a service of its own: an upload of exactly the threshold
//! (2 MiB) crosses it only with its last byte, so each alert is raised once and never updated
//! (and `quiet` is 10 minutes: never resolved here), one event per alert per sink.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, NetNs, POLL, Proc, ServiceCgroup, WebhookReceiver, require_root, socket_addr, traffic,
    watch_only,
};
use serde::Deserialize;

const UPLOAD: u64 = 2 << 20;
/// The destination of the test's uploads, and the only one detection watches (other tests
/// on the machine send to 198.51.100.1–30).
const DESTINATION: &str = "198.51.100.213";
const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Deserialize)]
struct Alert {
    id: u64,
    kind: String,
    service: String,
}

/// A loopback address nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn config(
    alerts_file: &Path,
    webhook: SocketAddr,
    alertmanager: SocketAddr,
    queue: usize,
) -> String {
    format!(
        "[detect]\nquiet = \"10m\"\n\
         [detect.burst]\nbytes = \"{UPLOAD} B\"\n\
         [detect.lineage]\nenabled = false\n\
         [detect.new_destination]\nenabled = false\n\
         [detect.baseline]\nenabled = false\n\
         [detect.slow_leak]\nenabled = false\n\
         [detect.budget]\nenabled = false\n\
         {}\
         [alerts]\njson_lines = \"{}\"\n\
         [alerts.webhook]\nurl = \"http://{webhook}/hook\"\nqueue = {queue}\n\
         max_retries = 1000\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n\
         [alerts.alertmanager]\nurl = \"http://{alertmanager}\"\nqueue = {queue}\n\
         resend = \"1h\"\ntimeout = \"2s\"\n",
        watch_only(DESTINATION.parse().expect("an address")),
        alerts_file.display()
    )
}

/// `n` bursts, one per service, one after the other (each seen in the API before the next
/// upload): their ids in raise order.
fn raise_bursts(agent: &Agent, ns: &NetNs, n: usize) -> (Vec<u64>, Vec<ServiceCgroup>) {
    let mut ids = Vec::new();
    let mut cgroups = Vec::new();
    for i in 0..n {
        let unit = format!("exfil-e2e-sinks-{i}.service");
        let cgroup = ServiceCgroup::create(&unit).expect("cgroup");
        let (mut sink, port) = traffic!().sink(ns, "tcp", DESTINATION).expect("sink");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
        cmd.args([
            "send",
            "tcp",
            &socket_addr(DESTINATION, port),
            &UPLOAD.to_string(),
            "write",
        ]);
        cgroup.place(&mut cmd).expect("place in the cgroup");
        let mut sender = Proc::spawn(cmd, "sender").expect("sender");
        assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), UPLOAD);
        assert_eq!(
            sink.expect_line::<u64>("received").expect("received"),
            UPLOAD
        );
        let mut alert = None;
        wait_until(Duration::from_secs(30), || {
            alert = alerts(agent)
                .into_iter()
                .find(|a| a.kind == "burst" && a.service == unit);
            alert.is_some()
        });
        let alert = alert.unwrap_or_else(|| {
            let flows: Vec<_> = agent
                .flows()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f.pid == sender.pid())
                .collect();
            let alerts: Vec<_> = alerts(agent);
            panic!("no burst for {unit}: the sender's flows {flows:?}; alerts {alerts:?}")
        });
        ids.push(alert.id);
        cgroups.push(cgroup);
    }
    (ids, cgroups)
}

/// `/api/v1/alerts`; none while the agent is too busy to answer within the client's 5 s (the
/// machine is shared with load tests): the waits around it are bounded.
fn alerts(agent: &Agent) -> Vec<Alert> {
    agent
        .get_json::<Vec<Alert>>("/api/v1/alerts")
        .unwrap_or_default()
}

fn series(agent: &Agent, name: &str, sink: &str) -> u64 {
    agent
        .metric(&format!("{name}{{sink=\"{sink}\"}}"))
        .expect("metric")
}

/// Waits up to `within` for `done`.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// The ids of the raised events in the JSON lines file.
fn json_lines(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .inspect(|v| assert_eq!(v["change"], "raised", "{v}"))
        .map(|v| v["alert"]["id"].as_u64().expect("an id"))
        .collect()
}

/// Per alert id, how many times the webhook's answered-200 raised events carried it.
fn webhook_ids(receiver: &WebhookReceiver) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for r in receiver.answered(200) {
        assert_eq!(
            (r.path.as_str(), r.event.as_deref()),
            ("/hook", Some("raised"))
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        *ids.entry(v["alert"]["id"].as_u64().expect("id"))
            .or_default() += 1;
    }
    ids
}

/// Per alert id, how many alerts of Alertmanager's answered posts carried it.
fn alertmanager_ids(receiver: &WebhookReceiver) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for r in receiver.answered(200) {
        assert_eq!(r.path, "/api/v2/alerts");
        let alerts: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("JSON");
        for a in alerts {
            let id = a["annotations"]["alert_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("alert_id");
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

fn once_each(ids: &[u64]) -> BTreeMap<u64, usize> {
    ids.iter().map(|id| (*id, 1)).collect()
}

fn alerts_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()))
        .join("alerts.jsonl");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    path
}

#[test]
fn sinks_that_fail_get_every_alert_exactly_once_when_they_come_back() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(DESTINATION).expect("the destination host");
    let webhook =
        WebhookReceiver::start("127.0.0.1:0".parse().expect("addr"), 500).expect("receiver");
    let am_addr = closed_port();
    let file = alerts_file("sinks-down");
    let agent = Agent::start_with_interval(INTERVAL, &config(&file, webhook.addr, am_addr, 1000))
        .expect("agent");
    let (ids, _cgroups) = raise_bursts(&agent, &ns, 3);

    // The file has every alert while the others fail.
    assert!(wait_until(Duration::from_secs(10), || json_lines(&file)
        .len()
        == 3));
    assert_eq!(json_lines(&file), ids);
    assert!(webhook.answered(200).is_empty());
    assert!(
        !webhook.answered(500).is_empty(),
        "the webhook was not tried"
    );
    // The backlog: every alert waits in each network sink's queue.
    let metric = |name: &str, sink: &str| series(&agent, name, sink);
    assert_eq!(metric("exfil_sensor_alert_sink_queue_length", "webhook"), 3);
    assert_eq!(
        metric("exfil_sensor_alert_sink_queue_length", "alertmanager"),
        3
    );
    assert_eq!(
        metric("exfil_sensor_alert_sink_queue_length", "json_lines"),
        0
    );
    assert_eq!(
        metric("exfil_sensor_alert_sink_sent_total", "json_lines"),
        3
    );
    assert!(metric("exfil_sensor_alert_sink_failures_total", "webhook") >= 1);
    assert!(metric("exfil_sensor_alert_sink_failures_total", "alertmanager") >= 1);
    for sink in ["webhook", "alertmanager", "json_lines"] {
        assert_eq!(
            metric("exfil_sensor_alert_sink_dropped_total", sink),
            0,
            "{sink}"
        );
    }

    // Both come back.
    webhook.answer(200);
    let alertmanager = WebhookReceiver::start(am_addr, 200).expect("receiver");
    // Alertmanager's retries back off 1 s, 2 s, 4 s … (up to `resend`): within a minute.
    assert!(
        wait_until(Duration::from_secs(60), || {
            metric("exfil_sensor_alert_sink_queue_length", "webhook") == 0
                && metric("exfil_sensor_alert_sink_queue_length", "alertmanager") == 0
        }),
        "the queues did not drain"
    );
    let mut api = Vec::new();
    wait_until(Duration::from_secs(30), || {
        api = alerts(&agent).iter().map(|a| a.id).collect();
        !api.is_empty()
    });
    assert_eq!(api, ids);
    assert_eq!(webhook_ids(&webhook), once_each(&ids));
    assert_eq!(alertmanager_ids(&alertmanager), once_each(&ids));
    assert_eq!(metric("exfil_sensor_alert_sink_sent_total", "webhook"), 3);
    assert_eq!(
        metric("exfil_sensor_alert_sink_sent_total", "alertmanager"),
        1
    );
    assert_eq!(json_lines(&file), ids, "nothing more in the file");
}

#[test]
fn full_queues_of_two_drop_exactly_three_of_five_alerts() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(DESTINATION).expect("the destination host");
    let webhook =
        WebhookReceiver::start("127.0.0.1:0".parse().expect("addr"), 500).expect("receiver");
    let am_addr = closed_port();
    let file = alerts_file("sinks-full");
    let agent = Agent::start_with_interval(INTERVAL, &config(&file, webhook.addr, am_addr, 2))
        .expect("agent");
    let (ids, _cgroups) = raise_bursts(&agent, &ns, 5);

    assert!(wait_until(Duration::from_secs(10), || json_lines(&file)
        .len()
        == 5));
    assert_eq!(json_lines(&file), ids);
    let metric = |name: &str, sink: &str| series(&agent, name, sink);
    for sink in ["webhook", "alertmanager"] {
        assert_eq!(
            metric("exfil_sensor_alert_sink_dropped_total", sink),
            3,
            "{sink}"
        );
        assert_eq!(
            metric("exfil_sensor_alert_sink_queue_length", sink),
            2,
            "{sink}"
        );
    }
    assert_eq!(
        metric("exfil_sensor_alert_sink_dropped_total", "json_lines"),
        0
    );

    webhook.answer(200);
    let alertmanager = WebhookReceiver::start(am_addr, 200).expect("receiver");
    assert!(
        wait_until(Duration::from_secs(60), || {
            metric("exfil_sensor_alert_sink_queue_length", "webhook") == 0
                && metric("exfil_sensor_alert_sink_queue_length", "alertmanager") == 0
        }),
        "the queues did not drain"
    );
    // The two queued first are what arrives, once each; the drops stay counted.
    assert_eq!(webhook_ids(&webhook), once_each(&ids[..2]));
    assert_eq!(alertmanager_ids(&alertmanager), once_each(&ids[..2]));
    for sink in ["webhook", "alertmanager"] {
        assert_eq!(
            metric("exfil_sensor_alert_sink_dropped_total", sink),
            3,
            "{sink}"
        );
    }
}
