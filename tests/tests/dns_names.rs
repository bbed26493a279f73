//! Destination names against the real kernel (issue 13): a DNS server of the outside world
//! (dnsmasq in the test namespace) answers `upload.example.test` with 198.51.100.2; a process
//! resolves the name through the C library and uploads 20 MiB there. The flow and the burst
//! alert on it name `upload.example.test`; a process that sends to an address nobody
//! resolved has no name.

use std::{path::PathBuf, time::Duration};

use exfil_tests::{
    Agent, NetNs, Proc, ServiceCgroup, require_root, servers::dnsmasq::Dnsmasq, socket_addr,
    traffic,
};
use serde::Deserialize;

const INTERVAL: Duration = Duration::from_secs(2);
const NAME: &str = "upload.example.test";
/// The outside world's DNS server.
const RESOLVER: &str = "198.51.100.53";

#[derive(Debug, Deserialize)]
struct Alert {
    kind: String,
    destination: String,
    destination_name: Option<String>,
    pid: u32,
    bytes: u64,
}

fn traffic_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exfil-traffic"))
}

#[test]
fn an_upload_to_a_resolved_name_is_named_in_flows_and_alerts() {
    require_root();
    const SIZE: u64 = 20 << 20;
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(RESOLVER).expect("resolver host");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dns-names-{}", std::process::id()));
    let dns = Dnsmasq::start(&ns, RESOLVER, &[(NAME, ns.peer_ip)], &dir).expect("dnsmasq");
    let agent = Agent::start_with_interval(INTERVAL, "[detect.burst]\nbytes = \"10 MiB\"\n")
        .expect("agent");
    let unit = "exfil-e2e-dns.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");

    // Resolved by the uploader itself, through getaddrinfo and the namespace's dnsmasq.
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut cmd = dns.client(&traffic_bin());
    cmd.args(["send", "tcp", &format!("{NAME}:{port}"), &SIZE.to_string()]);
    cgroup.place(&mut cmd).expect("place");
    let mut upload = Proc::spawn(cmd, "the uploader").expect("uploader");
    assert_eq!(
        upload.expect_line::<String>("resolved").expect("resolved"),
        ns.peer_ip
    );
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), SIZE);
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), SIZE);

    // Another process sends to the namespace's other address, which nobody resolved.
    let (mut other_sink, other_port) = traffic!().sink(&ns, "tcp", ns.peer_ip_2).expect("sink");
    let mut unnamed = traffic!()
        .send(&[
            "send",
            "tcp",
            &socket_addr(ns.peer_ip_2, other_port),
            "70000",
        ])
        .expect("unnamed sender");
    assert_eq!(unnamed.expect_line::<u64>("sent").expect("sent"), 70_000);
    assert_eq!(
        other_sink.expect_line::<u64>("received").expect("received"),
        70_000
    );

    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", SIZE)
        .expect("flows API")
        .expect("the upload's flow");
    assert_eq!(
        (
            flow.bytes_sent,
            flow.service.as_str(),
            flow.destination_name.as_deref()
        ),
        (SIZE, unit, Some(NAME))
    );
    let other = agent
        .settled_flow(unnamed.pid(), ns.peer_ip_2, other_port, "tcp", 70_000)
        .expect("flows API")
        .expect("the unnamed flow");
    assert_eq!((other.bytes_sent, other.destination_name), (70_000, None));

    let burst = agent
        .wait_for_alert(Duration::from_secs(20), |a: &Alert| {
            a.kind == "burst" && a.bytes >= SIZE
        })
        .expect("a burst on the upload");
    assert_eq!(
        (
            burst.destination.as_str(),
            burst.destination_name.as_deref(),
            burst.pid,
            burst.bytes
        ),
        (ns.peer_ip, Some(NAME), upload.pid(), SIZE)
    );
    upload.finish().expect("uploader");
    unnamed.finish().expect("unnamed");
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}
