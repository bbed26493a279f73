//! Processes are named even when they are gone before the agent looks: an intruder's upload
//! tool that sends and exits between two polls still has its name, program and service.

use std::time::Duration;

use exfil_tests::{Agent, NetNs, ServiceCgroup, require_root, socket_addr, traffic};

#[test]
fn a_process_that_exits_at_once_is_still_named() {
    require_root();
    const COUNT: u64 = 100;
    const SIZE: u64 = 1_009;
    let ns = NetNs::outside().expect("namespace");
    // A slow poll, so that the sender has exited long before the agent first looks.
    let agent = Agent::start_polling(Duration::from_secs(2), "").expect("agent");
    let cgroup = ServiceCgroup::create("exfil-e2e-drip.service").expect("cgroup");
    let (_sink, port) = traffic!().sink(&ns, "udp", ns.peer_ip).expect("sink");

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args([
        "send",
        "udp",
        &socket_addr(ns.peer_ip, port),
        &COUNT.to_string(),
        &SIZE.to_string(),
    ])
    .env("EXFIL_TRAFFIC_NO_HOLD", "1")
    .stdout(std::process::Stdio::null());
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut sender = cmd.spawn().expect("sender");
    let pid = sender.id();
    assert!(sender.wait().expect("wait").success());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the sender is gone"
    );

    let flow = agent
        .settled_flow(pid, ns.peer_ip, port, "udp", COUNT * SIZE)
        .expect("API")
        .expect("a flow for the exited sender");
    assert_eq!(flow.bytes_sent, COUNT * SIZE);
    assert_eq!(flow.comm, "exfil-traffic");
    assert_eq!(flow.exe, env!("CARGO_BIN_EXE_exfil-traffic"));
    assert_eq!(flow.service, "exfil-e2e-drip.service");
}
