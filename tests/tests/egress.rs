//! Egress is counted exactly on every send path, end to end: real kernel, real agent, a host
//! in a namespace. Odd byte counts, so that an off-by-a-header error cannot hide.

use exfil_tests::{Agent, NetNs, require_root, socket_addr, traffic};

/// Uploads `bytes` over TCP by `via` from this host to `connect_ip` (a sink bound to
/// `sink_ip` in the namespace) and checks that the API shows exactly `bytes` for the sender,
/// reported at `reported_ip`.
fn tcp_upload(via: &str, sink_ip: &str, connect_ip: &str, reported_ip: &str, bytes: u64) {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", sink_ip).expect("sink");
    let count = bytes.to_string();
    let mut sender = traffic
        .send(&["send", "tcp", &socket_addr(connect_ip, port), &count, via])
        .expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), bytes);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        bytes,
        "the sink got every byte"
    );
    let flow = agent
        .settled_flow(sender.pid(), reported_ip, port, "tcp", bytes)
        .expect("API")
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, bytes);
    assert_eq!(flow.bytes_received, 0, "the sink sends nothing back");
    assert_eq!(flow.direction, "outbound");
    assert_eq!(flow.comm, "exfil-traffic");
    sender.finish().expect("sender exits cleanly");
}

#[test]
fn tcp_write_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("write", ns_ip, ns_ip, ns_ip, 7_340_032);
}

#[test]
fn tcp_writev_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("writev", ns_ip, ns_ip, ns_ip, 1_100_011);
}

#[test]
fn tcp_sendmsg_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("sendmsg", ns_ip, ns_ip, ns_ip, 1_300_021);
}

/// MPTCP passes `sock_sendmsg` once, on the MPTCP socket (its subflows send below it):
/// counted once, as TCP.
#[test]
fn mptcp_is_counted_once_as_tcp() {
    let ns_ip = "198.51.100.2";
    tcp_upload("mptcp", ns_ip, ns_ip, ns_ip, 1_700_009);
}

#[test]
fn tcp_sendfile_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("sendfile", ns_ip, ns_ip, ns_ip, 3_000_017);
}

#[test]
fn tcp_splice_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("splice", ns_ip, ns_ip, ns_ip, 2_000_003);
}

#[test]
fn tcp_io_uring_send_is_counted_exactly() {
    let ns_ip = "198.51.100.2";
    tcp_upload("uring", ns_ip, ns_ip, ns_ip, 1_500_007);
}

#[test]
fn tcp_over_ipv6_is_counted_exactly() {
    let ns_ip6 = "2001:db8::2";
    tcp_upload("write", ns_ip6, ns_ip6, ns_ip6, 1_234_567);
}

/// An IPv6 socket talking to an IPv4 peer through a v4-mapped address is reported as the
/// IPv4 address it stands for.
#[test]
fn tcp_to_a_v4_mapped_address_is_reported_as_ipv4() {
    let ns_ip = "198.51.100.2";
    tcp_upload("write", ns_ip, "::ffff:198.51.100.2", ns_ip, 765_433);
}

/// Connected UDP: `count` datagrams of `size` bytes by `via`; exactly `count * size`.
fn udp_connected(via: &str, count: u64, size: u64) {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (_sink, port) = traffic.sink(&ns, "udp", ns.peer_ip).expect("sink");
    let mut sender = traffic
        .send(&[
            "send",
            "udp",
            &socket_addr(ns.peer_ip, port),
            &count.to_string(),
            &size.to_string(),
            via,
        ])
        .expect("sender");
    assert_eq!(
        sender.expect_line::<u64>("sent").expect("sent"),
        count * size
    );
    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "udp", count * size)
        .expect("API")
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, count * size);
    assert_eq!(flow.direction, "outbound");
    sender.finish().expect("sender exits cleanly");
}

#[test]
fn connected_udp_is_counted_exactly() {
    udp_connected("send", 500, 1_111); // 555,500 bytes
}

#[test]
fn udp_sendmmsg_is_counted_exactly() {
    udp_connected("sendmmsg", 300, 999); // 299,700 bytes
}

/// The agent's own sockets are never counted: scrape its metrics port over TCP many times
/// (it answers with TCP sends) and look for its pid.
#[test]
fn the_agent_does_not_count_itself() {
    require_root();
    let agent = Agent::start().expect("agent");
    let own = agent.own_flows_after_scrapes(20).expect("scrapes");
    assert_eq!(own, vec![], "the agent counted its own sends");
}

/// Unconnected UDP (`sendto` with an address each time) from one socket to `dests`: each
/// destination gets exactly `count * size` bytes, though the socket itself has no peer.
fn udp_unconnected(sink_bind: &str, dests: &[&str], count: u64, size: u64) {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (_sink, port) = traffic.sink(&ns, "udp", sink_bind).expect("sink");
    let (count_arg, size_arg) = (count.to_string(), size.to_string());
    let addrs: Vec<String> = dests.iter().map(|ip| socket_addr(ip, port)).collect();
    let mut args = vec!["sendto", count_arg.as_str(), size_arg.as_str()];
    args.extend(addrs.iter().map(String::as_str));
    let mut sender = traffic.send(&args).expect("sender");
    let total = count * size * dests.len() as u64;
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), total);
    for dest in dests {
        let flow = agent
            .settled_flow(sender.pid(), dest, port, "udp", count * size)
            .expect("API")
            .unwrap_or_else(|| panic!("a flow to {dest}"));
        assert_eq!(flow.bytes_sent, count * size, "to {dest}");
    }
    let unaddressed: Vec<_> = agent
        .flows()
        .expect("API")
        .into_iter()
        .filter(|f| f.pid == sender.pid() && !dests.contains(&f.destination.as_str()))
        .collect();
    assert_eq!(unaddressed, vec![], "every byte has its destination");
    sender.finish().expect("sender exits cleanly");
}

#[test]
fn unconnected_udp_is_counted_per_destination() {
    // 1,000 datagrams of 1,201 bytes, alternating between two hosts: 600,500 bytes each.
    udp_unconnected("0.0.0.0", &["198.51.100.2", "198.51.100.3"], 500, 1_201);
}

#[test]
fn unconnected_udp_over_ipv6_is_counted() {
    udp_unconnected("::", &["2001:db8::2"], 500, 1_201);
}

/// A client on this host fetches from a server in the namespace: the client's flow is
/// outbound to the server's port, with the request sent and the answer received, exactly.
#[test]
fn outbound_connection_counts_both_ways() {
    require_root();
    const REQUEST: u64 = 4_321;
    const RESPONSE: u64 = 1_048_583;
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let bind = socket_addr(ns.peer_ip, 0);
    let (req, resp) = (REQUEST.to_string(), RESPONSE.to_string());
    let mut server = traffic
        .run_in(&ns, &["serve", &bind, &req, &resp])
        .expect("server");
    let port: u16 = server.expect_line("port").expect("port");
    let target = socket_addr(ns.peer_ip, port);
    let mut client = traffic
        .send(&["fetch", &target, &req, &resp])
        .expect("client");
    assert_eq!(
        client.expect_line::<u64>("received").expect("received"),
        RESPONSE
    );
    let flow = agent
        .settled(client.pid(), ns.peer_ip, port, "tcp", |f| {
            f.bytes_sent >= REQUEST && f.bytes_received >= RESPONSE
        })
        .expect("API")
        .expect("a flow for the client");
    assert_eq!(
        (
            flow.direction.as_str(),
            flow.bytes_sent,
            flow.bytes_received
        ),
        ("outbound", REQUEST, RESPONSE)
    );
    client.finish().expect("client exits cleanly");
}

/// A server on this host answers a client in the namespace: the server's flow is inbound,
/// keyed by its own listening port (never the client's ephemeral one), with the answer sent
/// and the request received, exactly.
#[test]
fn inbound_connection_is_keyed_by_the_local_port() {
    require_root();
    const REQUEST: u64 = 777;
    const RESPONSE: u64 = 2_097_169;
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let bind = socket_addr(ns.host_ip, 0);
    let (req, resp) = (REQUEST.to_string(), RESPONSE.to_string());
    let mut server = traffic
        .send(&["serve", &bind, &req, &resp])
        .expect("server");
    let port: u16 = server.expect_line("port").expect("port");
    let target = socket_addr(ns.host_ip, port);
    let mut client = traffic
        .run_in(&ns, &["fetch", &target, &req, &resp])
        .expect("client");
    assert_eq!(
        client.expect_line::<u64>("received").expect("received"),
        RESPONSE
    );
    assert_eq!(server.expect_line::<String>("served").expect("served"), "");
    let flow = agent
        .settled(server.pid(), ns.peer_ip, port, "tcp", |f| {
            f.bytes_sent >= RESPONSE && f.bytes_received >= REQUEST
        })
        .expect("API")
        .expect("a flow for the server, keyed by its listening port");
    assert_eq!(
        (
            flow.direction.as_str(),
            flow.bytes_sent,
            flow.bytes_received
        ),
        ("inbound", RESPONSE, REQUEST)
    );
    server.finish().expect("server exits cleanly");
}

/// A named file sent by `via` (`sendfile` or `splice`): the socket side counts what was sent
/// and the file side what was read, both exactly, the file under its path.
fn file_to_socket(via: &str, bytes: u64) {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{via}.bin"));
    std::fs::write(&path, vec![0x42u8; usize::try_from(bytes).expect("small")]).expect("payload");
    let meta = std::fs::metadata(&path).expect("stat");
    let device = format!("{}:{}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let target = socket_addr(ns.peer_ip, port);
    let payload = path.to_str().expect("utf-8");
    let mut sender = traffic
        .send_with(
            &["send", "tcp", &target, &bytes.to_string(), via],
            &[("EXFIL_TRAFFIC_PAYLOAD", payload)],
        )
        .expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), bytes);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        bytes
    );
    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "tcp", bytes)
        .expect("API")
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, bytes);
    let file = agent
        .files()
        .expect("API")
        .into_iter()
        .find(|f| f.pid == sender.pid() && f.device == device && f.inode == meta.ino())
        .expect("a file row for the sender");
    assert_eq!(file.bytes_read, bytes);
    let real = std::fs::canonicalize(&path).expect("canonical");
    assert_eq!(file.path.as_deref(), real.to_str());
    sender.finish().expect("sender exits cleanly");
    std::fs::remove_file(&path).expect("cleanup");
}

#[test]
fn sendfile_counts_both_the_socket_and_the_file() {
    file_to_socket("sendfile", 3_000_017);
}

#[test]
fn splice_counts_both_the_socket_and_the_file() {
    file_to_socket("splice", 2_000_003);
}

/// Unix-domain sockets (every daemon's own plumbing) pass the same tracepoint; they are not
/// egress and leave no flow.
#[test]
fn unix_domain_sockets_are_not_counted() {
    require_root();
    let agent = Agent::start().expect("agent");
    let mut sender = traffic!().send(&["unix", "5000011"]).expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), 5_000_011);
    std::thread::sleep(exfil_tests::POLL * 3);
    let flows: Vec<_> = agent
        .flows()
        .expect("API")
        .into_iter()
        .filter(|f| f.pid == sender.pid())
        .collect();
    assert_eq!(flows, vec![]);
    sender.finish().expect("sender exits cleanly");
}

/// A host added to the namespace outside its subnet (an office or backup host in
/// 192.0.2.0/24, declared internal by the config): reached through the veth, counted exactly,
/// classed internal.
#[test]
fn an_added_internal_host_is_counted_exactly_and_classed_internal() {
    require_root();
    const BYTES: u64 = 2_500_009;
    let ns = NetNs::outside().expect("namespace");
    ns.add_host("192.0.2.50").expect("backup host");
    let agent = Agent::start_with("\n[networks]\ninternal = [\"192.0.2.0/24\"]\n").expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", "192.0.2.50").expect("sink");
    let mut sender = traffic
        .send(&[
            "send",
            "tcp",
            &socket_addr("192.0.2.50", port),
            &BYTES.to_string(),
        ])
        .expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(sender.pid(), "192.0.2.50", port, "tcp", BYTES)
        .expect("API")
        .expect("a flow to the backup host");
    assert_eq!((flow.bytes_sent, flow.class.as_str()), (BYTES, "internal"));
    sender.finish().expect("sender exits cleanly");
}
