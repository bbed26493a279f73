//! What an operator reads: per service, per destination, exact, in the JSON API and in
//! `/metrics`, with bounded series however many destinations a service talks to; and the API
//! socket closed to unprivileged users.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::CommandExt as _,
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, Flow, NetNs, Proc, ServiceCgroup, require_root};
use serde::Deserialize;

/// Unconnected UDP from a process started in `cgroup`: `count` datagrams of `size` bytes to
/// each of `addrs`.
fn send_from(cgroup: &ServiceCgroup, count: u64, size: u64, addrs: &[String]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args(["sendto", &count.to_string(), &size.to_string()])
        .args(addrs);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut sender = Proc::spawn(cmd, "sendto").expect("sender");
    let sent: u64 = sender.expect_line("sent").expect("sent");
    assert_eq!(sent, count * size * addrs.len() as u64);
    sender
}

#[derive(Debug, Deserialize)]
struct Service {
    service: String,
    bytes_sent: u64,
    flows: u64,
}

/// Waits (at most 10 s) until `/api/v1/services` shows `service` with `bytes` sent, then two
/// more polls; returns its record.
fn settled_service(agent: &Agent, service: &str, bytes: u64) -> Option<Service> {
    let find = || -> Option<Service> {
        agent
            .get_json::<Vec<Service>>("/api/v1/services")
            .expect("/api/v1/services")
            .into_iter()
            .find(|s| s.service == service)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && find().is_none_or(|s| s.bytes_sent < bytes) {
        std::thread::sleep(exfil_tests::POLL / 2);
    }
    std::thread::sleep(exfil_tests::POLL * 2);
    find()
}

/// `exfil_sensor_egress_bytes_total` series of one service: labels (destination, port,
/// protocol) → value.
fn egress_series(metrics: &str, service: &str) -> BTreeMap<(String, String, String), u64> {
    let label = |line: &str, name: &str| -> String {
        let start = format!("{name}=\"");
        line.split_once(&start)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    metrics
        .lines()
        .filter(|l| l.starts_with("exfil_sensor_egress_bytes_total{"))
        .filter(|l| l.contains(&format!("service=\"{service}\"")))
        .map(|l| {
            let value = l.rsplit(' ').next().and_then(|v| v.parse().ok());
            (
                (
                    label(l, "destination"),
                    label(l, "port"),
                    label(l, "protocol"),
                ),
                value.expect("an integer counter"),
            )
        })
        .collect()
}

#[test]
fn two_services_to_three_destinations_are_exact_in_the_api_and_metrics() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    // An office host in the namespace. This machine's own LAN may be 192.0.2.0/24 too: one
    // address routed into the namespace leaves the rest of it alone.
    ns.route_via_peer("192.0.2.250/32").expect("route");
    let agent = Agent::start_with("[networks]\ninternal = [\"192.0.2.0/24\"]\n").expect("agent");
    let mail = ServiceCgroup::create("exfil-e2e-mail.service").expect("cgroup");
    let records = ServiceCgroup::create("exfil-e2e-records.service").expect("cgroup");
    let destinations = [
        ("198.51.100.2", 7001, "external"),
        ("198.51.100.3", 7002, "external"),
        ("192.0.2.250", 7003, "internal"),
    ];
    let addrs: Vec<String> = destinations
        .iter()
        .map(|(ip, port, _)| format!("{ip}:{port}"))
        .collect();
    let senders = [
        (
            "exfil-e2e-mail.service",
            send_from(&mail, 10, 1_001, &addrs),
            10_010,
        ),
        (
            "exfil-e2e-records.service",
            send_from(&records, 7, 2_003, &addrs),
            14_021,
        ),
    ];

    for (service, sender, each) in &senders {
        let summary = settled_service(&agent, service, 3 * each).expect("service listed");
        assert_eq!((summary.bytes_sent, summary.flows), (3 * each, 3));
        let flows: Vec<Flow> = agent
            .get_json(&format!("/api/v1/flows?service={service}"))
            .expect("flows");
        let mut seen: Vec<(String, u16, String, u64, u32, String)> = flows
            .into_iter()
            .map(|f| {
                (
                    f.destination,
                    f.port,
                    f.class,
                    f.bytes_sent,
                    f.pid,
                    f.protocol,
                )
            })
            .collect();
        seen.sort();
        let mut expected: Vec<(String, u16, String, u64, u32, String)> = destinations
            .iter()
            .map(|(ip, port, class)| {
                (
                    (*ip).to_owned(),
                    *port,
                    (*class).to_owned(),
                    *each,
                    sender.pid(),
                    "udp".to_owned(),
                )
            })
            .collect();
        expected.sort();
        assert_eq!(seen, expected, "{service}");

        let internal: Vec<Flow> = agent
            .get_json(&format!("/api/v1/flows?service={service}&class=internal"))
            .expect("internal flows");
        assert_eq!(internal.len(), 1);
        assert_eq!(
            (internal[0].destination.as_str(), internal[0].bytes_sent),
            ("192.0.2.250", *each)
        );
        let one: Vec<Flow> = agent
            .get_json(&format!("/api/v1/flows?service={service}&limit=1"))
            .expect("limited flows");
        assert_eq!(one.len(), 1);
    }

    let metrics = agent.metrics_text().expect("/metrics");
    for (service, _, each) in &senders {
        let series = egress_series(&metrics, service);
        let other = ("other".to_owned(), "other".to_owned(), "other".to_owned());
        // A service's other series exists from its first byte, so increase() sees its start.
        let expected: BTreeMap<(String, String, String), u64> = destinations
            .iter()
            .map(|(ip, port, _)| {
                (
                    ((*ip).to_owned(), port.to_string(), "udp".to_owned()),
                    *each,
                )
            })
            .chain([(other, 0)])
            .collect();
        assert_eq!(series, expected, "{service} in /metrics");
    }
    assert!(
        !metrics.contains("/tmp") && !metrics.contains("/var/"),
        "no path is ever a label"
    );

    // The exposition passes the real promtool with no lint line.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    {
        use std::io::Write as _;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).expect("write");
    }
    let out = promtool.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}");
    assert_eq!(said.trim(), "", "promtool lint");
}

#[test]
fn ten_thousand_destinations_leave_k_plus_one_series_and_exact_totals() {
    require_root();
    const SIZE: u64 = 101;
    const K: usize = 20;
    let ns = NetNs::outside().expect("namespace");
    // RFC 2544's benchmarking range, routed into the namespace: 10,000 hosts to send to.
    ns.route_via_peer("198.18.0.0/15").expect("route");
    let agent = Agent::start().expect("agent");
    let fanout = ServiceCgroup::create("exfil-e2e-fanout.service").expect("cgroup");
    let addrs: Vec<String> = (0..10_000u32)
        .map(|i| format!("198.18.{}.{}:9999", i / 250, i % 250 + 1))
        .collect();
    let _sender = send_from(&fanout, 1, SIZE, &addrs);
    let total = 10_000 * SIZE;

    let summary = settled_service(&agent, "exfil-e2e-fanout.service", total).expect("listed");
    assert_eq!((summary.bytes_sent, summary.flows), (total, 10_000));
    let series = egress_series(
        &agent.metrics_text().expect("/metrics"),
        "exfil-e2e-fanout.service",
    );
    assert_eq!(series.len(), K + 1, "K own series plus other: {series:?}");
    assert_eq!(
        series.values().sum::<u64>(),
        total,
        "exact across the series"
    );
    let other = &series[&("other".to_owned(), "other".to_owned(), "other".to_owned())];
    assert_eq!(*other, (10_000 - K as u64) * SIZE);
    let own: BTreeSet<&String> = series.keys().map(|(d, _, _)| d).collect();
    assert!(
        own.iter()
            .all(|d| *d == "other" || d.starts_with("198.18."))
    );
}

#[test]
fn an_unprivileged_user_is_refused_on_the_api_socket() {
    require_root();
    let agent = Agent::start().expect("agent");
    let socket = agent.api_socket.to_str().expect("utf-8 path").to_owned();
    let attempt = |uid: Option<u32>| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
        cmd.args(["connect-unix", &socket]);
        if let Some(uid) = uid {
            // nobody:nogroup; std drops the supplementary groups when root sets a uid.
            cmd.uid(uid).gid(uid);
        }
        let out = cmd.output().expect("run the helper");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(attempt(None), "connected", "root may");
    assert_eq!(
        attempt(Some(65_534)),
        "refused Permission denied (os error 13)",
        "nobody may not"
    );
    let mode = std::fs::metadata(&agent.api_socket)
        .expect("socket")
        .permissions();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.mode() & 0o777, 0o660);
}
