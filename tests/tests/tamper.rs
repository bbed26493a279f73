//! Tampering with the agent's kernel side is found within a poll or two, named in one
//! `tamper` alert, and repaired: a detached probe is attached again, a removed map pin is
//! pinned again, and the counts stay exact.
//!
//! Raw tracepoint links cannot be detached (the kernel answers `EOPNOTSUPP` to
//! `bpftool link detach` on them) and removing their pins destroys nothing while the agent
//! holds them; the cgroup links of `cgroup:sendmsg4`/`6` can be detached, so the first case
//! detaches `cgroup:sendmsg4`, which names where unconnected UDP goes.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use exfil_tests::{Agent, NetNs, POLL, require_root, socket_addr, traffic};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Alert {
    kind: String,
    service: String,
    summary: String,
    status: String,
}

fn tamper_alerts(agent: &Agent) -> Vec<Alert> {
    agent
        .alerts::<Alert>()
        .into_iter()
        .filter(|a| a.kind == "tamper")
        .collect()
}

/// Waits a few polls (the check runs every poll) for `done`.
fn within_a_few_polls(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + POLL * 25;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(POLL / 2);
    }
    done()
}

#[test]
fn a_detached_probe_is_named_in_one_alert_and_attached_again() {
    require_root();
    const BYTES: u64 = 20_971_543; // 20 MiB and 23 bytes, about 1.6 s at the slow pace
    let ns = NetNs::outside().expect("namespace");
    ns.add_host("198.51.100.3").expect("second host");
    let agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (mut tcp_sink, tcp_port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload = traffic
        .slow_upload(&socket_addr(ns.peer_ip, tcp_port), BYTES)
        .expect("upload");

    // Mid-upload, someone detaches the agent's UDP destination probe.
    let link = agent.detach_held_link("cgroup_udp4_sendmsg");

    // Found and repaired within one interval (waited for as a few polls).
    assert!(
        within_a_few_polls(|| !tamper_alerts(&agent).is_empty()),
        "no tamper alert"
    );
    assert!(
        within_a_few_polls(|| {
            agent
                .metric("exfil_sensor_tamper_repairs_total{what=\"probe\"}")
                .ok()
                == Some(1)
        }),
        "no repair counted"
    );
    let alerts = tamper_alerts(&agent);
    assert_eq!(alerts.len(), 1, "exactly one tamper alert: {alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.service, "exfil-sensor");
    assert_eq!(alert.status, "firing");
    assert!(
        alert.summary.starts_with(&format!(
            "probe cgroup:sendmsg4 was detached from the kernel (link {link})"
        )),
        "{}",
        alert.summary
    );
    assert!(
        alert.summary.contains("were not counted"),
        "{}",
        alert.summary
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"cgroup:sendmsg4\"}")
            .expect("metric"),
        1
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_alerts_total{kind=\"tamper\"}")
            .expect("metric"),
        1
    );
    let relinked = agent.held_links("cgroup_udp4_sendmsg");
    assert_eq!(relinked.len(), 1, "{relinked:?}");
    assert_ne!(relinked, [link], "a new link");

    // Unconnected UDP sent wholly after the repair has its destinations, exactly.
    let (_udp_sink, udp_port) = traffic.sink(&ns, "udp", "0.0.0.0").expect("udp sink");
    let dests = [ns.peer_ip, "198.51.100.3"];
    let addrs: Vec<String> = dests.iter().map(|ip| socket_addr(ip, udp_port)).collect();
    let mut args = vec!["sendto", "500", "1201"];
    args.extend(addrs.iter().map(String::as_str));
    let mut sender = traffic.send(&args).expect("sendto");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), 1_201_000);
    for dest in dests {
        let flow = agent
            .settled_flow(sender.pid(), dest, udp_port, "udp", 600_500)
            .expect("API")
            .unwrap_or_else(|| panic!("a flow to {dest}"));
        assert_eq!(flow.bytes_sent, 600_500, "to {dest}");
    }

    // The upload across the detach: its probe was never touched, every byte counted.
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        tcp_sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, tcp_port, "tcp", BYTES)
        .expect("API")
        .expect("the upload's flow");
    assert_eq!(flow.bytes_sent, BYTES);
    assert_eq!(tamper_alerts(&agent).len(), 1, "still one tamper alert");
    sender.finish().expect("sender exits cleanly");
    upload.finish().expect("upload exits cleanly");
}

/// The agent's map layout directory under its pin directory.
fn layout_dir(pins: &Path) -> PathBuf {
    std::fs::read_dir(pins)
        .expect("pin directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("layout-"))
        })
        .expect("a layout directory")
}

#[test]
fn a_removed_map_pin_is_pinned_again_and_a_restarted_agent_continues_the_totals() {
    require_root();
    const BYTES: u64 = 20_971_543;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start().expect("agent");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload = traffic
        .slow_upload(&socket_addr(ns.peer_ip, port), BYTES)
        .expect("upload");

    // Mid-upload, the map of the flow totals loses its pin.
    let flows_pin = layout_dir(agent.pin_dir()).join("FLOWS");
    std::fs::remove_file(&flows_pin).expect("rm the FLOWS pin");
    assert!(
        within_a_few_polls(|| !tamper_alerts(&agent).is_empty()),
        "no tamper alert"
    );
    assert!(
        within_a_few_polls(|| flows_pin.exists()),
        "{} not pinned again",
        flows_pin.display()
    );
    let alerts = tamper_alerts(&agent);
    assert_eq!(alerts.len(), 1, "exactly one tamper alert: {alerts:?}");
    assert!(
        alerts[0].summary.starts_with(&format!(
            "the pin of map FLOWS was removed ({})",
            flows_pin.display()
        )),
        "{}",
        alerts[0].summary
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_tamper_repairs_total{what=\"map_pin\"}")
            .expect("metric"),
        1
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"sock:sock_send_length\"}")
            .expect("metric"),
        1,
        "no probe stopped"
    );

    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the upload's flow");
    assert_eq!(flow.bytes_sent, BYTES, "counting went on in the held map");

    // A restarted agent opens the map by its pin: the same totals, exactly.
    agent
        .kill_and_restart(Duration::from_millis(200))
        .expect("restart");
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the upload's flow after the restart");
    assert_eq!(
        flow.bytes_sent, BYTES,
        "the restarted agent continues the totals"
    );
    upload.finish().expect("upload exits cleanly");
}

/// A map pin removed while no agent runs: the programs the last agent left write to the map
/// no pin names any more, so the next agent attaches them anew on the maps the pins give, and
/// what is sent after it started is counted exactly.
#[test]
fn a_map_pin_removed_while_no_agent_runs_loses_no_later_byte() {
    require_root();
    const BYTES: u64 = 7_340_032;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start().expect("agent");
    let flows_pin = layout_dir(agent.pin_dir()).join("FLOWS");
    agent
        .kill_and_restart_after(|| std::fs::remove_file(&flows_pin).expect("rm the FLOWS pin"))
        .expect("restart");
    assert!(flows_pin.exists(), "the new agent pinned a FLOWS map");
    let traffic = traffic!();
    let (mut sink, port) = traffic.sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut upload = traffic
        .send(&[
            "send",
            "tcp",
            &socket_addr(ns.peer_ip, port),
            &BYTES.to_string(),
        ])
        .expect("upload");
    assert_eq!(upload.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(upload.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("the upload's flow");
    assert_eq!(flow.bytes_sent, BYTES);
    upload.finish().expect("upload exits cleanly");
}
