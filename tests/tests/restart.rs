//! Pinned maps and programs: the kernel counts while no agent runs, and a restarted agent,
//! even after `kill -9`, continues the same totals without a lost byte.

use std::time::Duration;

use exfil_tests::{Agent, NetNs, require_root, socket_addr, traffic};

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
