//! The systemd unit's capability set is enough: the agent run as an unprivileged user
//! (nobody) with exactly the unit's `AmbientCapabilities` (read from the unit file, so the
//! two cannot drift), through `setpriv` since PID 1 here is not systemd, attaches every probe
//! it attaches as root and counts an upload to the byte, with the exe of a process of
//! another user resolved.

use std::{collections::BTreeMap, path::PathBuf};

use exfil_tests::{Agent, NetNs, require_root, socket_addr, traffic};

const NOBODY: u32 = 65_534;

/// `AmbientCapabilities=` of deploy/systemd/exfil-sensor.service, as setpriv names them.
fn unit_capabilities() -> Vec<String> {
    let unit =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/exfil-sensor.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("an AmbientCapabilities line");
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ names").to_lowercase())
        .collect()
}

/// `exfil_sensor_probe_attached{probe}` of `agent`'s /metrics: probe → 0 or 1.
fn probes_attached(agent: &Agent) -> BTreeMap<String, u8> {
    let metrics = agent.metrics_text().expect("/metrics");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("exfil_sensor_probe_attached{probe=\""))
        .map(|l| {
            let (probe, value) = l.split_once("\"} ").expect("one label, then the value");
            (probe.to_owned(), value.parse().expect("0 or 1"))
        })
        .collect()
}

#[test]
fn the_units_capabilities_attach_every_probe_and_count_exactly() {
    require_root();
    let caps = unit_capabilities();
    assert_eq!(
        caps,
        [
            "bpf",
            "perfmon",
            "net_admin",
            "dac_read_search",
            "sys_ptrace"
        ]
    );
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    // What this kernel lets the agent attach, as root.
    let as_root = probes_attached(&Agent::start().expect("the agent runs as root"));
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start_as(NOBODY, &caps, "").expect("the agent runs as nobody");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("65534"),
        "running as nobody: {uid_line}"
    );

    // One series per probe of the agent's table, and each attached (1) or not (0) as it is
    // for root on this kernel: the same probes, the same count.
    let as_nobody = probes_attached(&agent);
    let mut table = sensor::kernel::probe_names();
    table.sort_unstable();
    assert_eq!(as_nobody.keys().collect::<Vec<_>>(), table);
    assert_eq!(as_nobody, as_root, "as nobody, then as root");

    const BYTES: u64 = 7_340_032;
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let mut sender = traffic!()
        .send(&[
            "send",
            "tcp",
            &socket_addr(ns.peer_ip, port),
            &BYTES.to_string(),
        ])
        .expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        BYTES
    );
    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "tcp", BYTES)
        .expect("API")
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, BYTES);
    // The sender runs as root: its /proc/PID/exe needs CAP_SYS_PTRACE to resolve.
    assert!(flow.exe.ends_with("/exfil-traffic"), "{}", flow.exe);
}
