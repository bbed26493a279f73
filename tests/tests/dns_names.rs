//! Destination names against the real kernel (issue 13): a DNS server of the outside world
//! (dnsmasq in the test namespace) answers `upload.example.test` with 198.51.100.2; a process
//! resolves the name through the C library and uploads 20 MiB there. The flow and the burst
//! alert on it name `upload.example.test`; a process that sends to an address nobody
//! resolved has no name. Two names for one address: each process's flow is named by the
//! answer its own query got (the kernel knows whose socket an answer reached), even when
//! another process's answer for the same address came later; and so is a process that asked
//! a local caching resolver (dnsmasq on 127.0.0.153, as systemd-resolved on 127.0.0.53), by the
//! answer the resolver relayed to it over loopback.

use std::{path::PathBuf, process::Command, time::Duration};

use exfil_tests::{
    Agent, NetNs, Proc, ServiceCgroup, require_root, servers::dnsmasq::Dnsmasq, socket_addr,
    traffic,
};
use serde::Deserialize;

const INTERVAL: Duration = Duration::from_secs(2);
const NAME: &str = "upload.example.test";
/// The outside world's DNS server.
const RESOLVER: &str = "198.51.100.53";
/// A second name for the same address.
const MIRROR: &str = "mirror.example.test";

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

/// The namespace with its DNS server answering `NAME` and `MIRROR` with the peer's address.
fn outside_world_with_dns() -> (NetNs, Dnsmasq, PathBuf) {
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(RESOLVER).expect("resolver host");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dns-names-{}", std::process::id()));
    let dns = Dnsmasq::start(
        &ns,
        RESOLVER,
        &[(NAME, ns.peer_ip), (MIRROR, ns.peer_ip)],
        &dir,
    )
    .expect("dnsmasq");
    (ns, dns, dir)
}

/// `exfil-traffic send tcp NAME:PORT BYTES`, resolving through `dns`, in `cgroup`.
fn upload(dns: &Dnsmasq, cgroup: &ServiceCgroup, name: &str, port: u16, bytes: u64) -> Command {
    let mut cmd = dns.client(&traffic_bin());
    cmd.args(["send", "tcp", &format!("{name}:{port}"), &bytes.to_string()]);
    cgroup.place(&mut cmd).expect("place");
    cmd
}

#[test]
fn an_upload_to_a_resolved_name_is_named_in_flows_and_alerts() {
    require_root();
    const SIZE: u64 = 20 << 20;
    let (ns, dns, dir) = outside_world_with_dns();
    let agent = Agent::start_with_interval(INTERVAL, "[detect.burst]\nbytes = \"10 MiB\"\n")
        .expect("agent");
    let unit = "exfil-e2e-dns.service";
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");

    // Resolved by the uploader itself, through getaddrinfo and the namespace's dnsmasq.
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload =
        Proc::spawn(upload(&dns, &cgroup, NAME, port, SIZE), "the uploader").expect("uploader");
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

#[test]
fn each_process_is_named_by_its_own_answer() {
    require_root();
    const FIRST: u64 = 3_000_017;
    const SECOND: u64 = 1_000_003;
    let (ns, dns, dir) = outside_world_with_dns();
    let agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let cgroup = ServiceCgroup::create("exfil-e2e-dns-two.service").expect("cgroup");
    let (mut first_sink, first_port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let (mut second_sink, second_port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");

    // The first process looks its name up, then waits ...
    let mut cmd = upload(&dns, &cgroup, NAME, first_port, FIRST);
    cmd.env("EXFIL_TRAFFIC_WAIT_AFTER_RESOLVING", "1");
    let mut first = Proc::spawn(cmd, "the first uploader").expect("first");
    assert_eq!(
        first.expect_line::<String>("resolved").expect("resolved"),
        ns.peer_ip
    );
    // ... while another resolves the other name of the same address and sends ...
    let cmd = upload(&dns, &cgroup, MIRROR, second_port, SECOND);
    let mut second = Proc::spawn(cmd, "the second uploader").expect("second");
    assert_eq!(
        second.expect_line::<String>("resolved").expect("resolved"),
        ns.peer_ip
    );
    assert_eq!(second.expect_line::<u64>("sent").expect("sent"), SECOND);
    assert_eq!(
        second_sink
            .expect_line::<u64>("received")
            .expect("received"),
        SECOND
    );
    let flow = agent
        .settled_flow(second.pid(), ns.peer_ip, second_port, "tcp", SECOND)
        .expect("flows API")
        .expect("the second flow");
    assert_eq!(
        (flow.bytes_sent, flow.destination_name.as_deref()),
        (SECOND, Some(MIRROR))
    );
    // ... and only then the first sends: the most recent answer for the address is the
    // second's, but the first's flow is named by the answer it got itself.
    first.resume().expect("resume");
    assert_eq!(first.expect_line::<u64>("sent").expect("sent"), FIRST);
    assert_eq!(
        first_sink.expect_line::<u64>("received").expect("received"),
        FIRST
    );
    let flow = agent
        .settled_flow(first.pid(), ns.peer_ip, first_port, "tcp", FIRST)
        .expect("flows API")
        .expect("the first flow");
    assert_eq!(
        (flow.bytes_sent, flow.destination_name.as_deref()),
        (FIRST, Some(NAME))
    );
    first.finish().expect("first");
    second.finish().expect("second");
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_answer_relayed_by_a_local_caching_resolver_names_the_process_that_asked() {
    require_root();
    const SENT: u64 = 2_000_029;
    const OTHER: u64 = 1_000_003;
    let (ns, upstream, dir) = outside_world_with_dns();
    let resolver_unit = ServiceCgroup::create("exfil-e2e-resolved.service").expect("cgroup");
    let local = Dnsmasq::forwarder("127.0.0.153", &upstream, &resolver_unit, &dir)
        .expect("the local caching resolver");
    let agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let cgroup = ServiceCgroup::create("exfil-e2e-dns-local.service").expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let (mut other_sink, other_port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");

    // The application asks the local resolver, which asks upstream and relays the answer
    // over loopback; then it waits ...
    let mut cmd = local.client(&traffic_bin());
    cmd.args(["send", "tcp", &format!("{NAME}:{port}"), &SENT.to_string()])
        .env("EXFIL_TRAFFIC_WAIT_AFTER_RESOLVING", "1");
    cgroup.place(&mut cmd).expect("place");
    let mut app = Proc::spawn(cmd, "the application").expect("application");
    assert_eq!(
        app.expect_line::<String>("resolved").expect("resolved"),
        ns.peer_ip
    );
    // ... while another process gets the address's other name straight from upstream and
    // sends: the most recent answer for the address is now that one ...
    let mut other = Proc::spawn(
        upload(&upstream, &cgroup, MIRROR, other_port, OTHER),
        "the other uploader",
    )
    .expect("other");
    assert_eq!(
        other.expect_line::<String>("resolved").expect("resolved"),
        ns.peer_ip
    );
    assert_eq!(other.expect_line::<u64>("sent").expect("sent"), OTHER);
    assert_eq!(
        other_sink.expect_line::<u64>("received").expect("received"),
        OTHER
    );
    let flow = agent
        .settled_flow(other.pid(), ns.peer_ip, other_port, "tcp", OTHER)
        .expect("flows API")
        .expect("the other flow");
    assert_eq!(flow.destination_name.as_deref(), Some(MIRROR));
    // ... so the application's flow is named `NAME` only if the relayed answer was taken
    // as its own (the resolver's upstream answer names the resolver, not it).
    app.resume().expect("resume");
    assert_eq!(app.expect_line::<u64>("sent").expect("sent"), SENT);
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), SENT);
    let flow = agent
        .settled_flow(app.pid(), ns.peer_ip, port, "tcp", SENT)
        .expect("flows API")
        .expect("the application's flow");
    assert_eq!(
        (flow.bytes_sent, flow.destination_name.as_deref()),
        (SENT, Some(NAME))
    );
    app.finish().expect("application");
    other.finish().expect("other");
    drop(local);
    drop(upstream);
    let _ = std::fs::remove_dir_all(&dir);
}
