//! Egress is counted exactly, end to end: real kernel, real agent, a host in a namespace.

use exfil_tests::{Agent, NetNs, Proc, require_root, traffic_bin};

/// 7 MiB over TCP to a sink in the namespace: the API shows exactly 7,340,032 bytes for the
/// sending pid, the sink's address and port.
#[test]
fn tcp_upload_is_counted_exactly() -> anyhow::Result<()> {
    require_root();
    const BYTES: u64 = 7_340_032;
    let ns = NetNs::outside()?;
    let agent = Agent::start()?;

    let mut sink = Proc::spawn(
        {
            let mut cmd = ns.command(&traffic_bin!());
            cmd.args(["sink", "tcp", &format!("{}:0", ns.peer_ip)]);
            cmd
        },
        "tcp sink",
    )?;
    let port: u16 = sink.expect_line("port")?;
    let mut sender = Proc::spawn(
        {
            let mut cmd = std::process::Command::new(traffic_bin!());
            cmd.args([
                "send",
                "tcp",
                &format!("{}:{port}", ns.peer_ip),
                &BYTES.to_string(),
            ]);
            cmd
        },
        "tcp sender",
    )?;
    assert_eq!(sender.expect_line::<u64>("sent")?, BYTES);
    assert_eq!(
        sink.expect_line::<u64>("received")?,
        BYTES,
        "the sink got every byte"
    );

    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "tcp", BYTES)?
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, BYTES);
    assert_eq!(flow.comm, "exfil-traffic");
    sender.finish()?;
    sink.finish()?;
    Ok(())
}

/// 500 datagrams of 1,111 bytes on a connected UDP socket: exactly 555,500 bytes.
#[test]
fn connected_udp_is_counted_exactly() -> anyhow::Result<()> {
    require_root();
    const COUNT: u64 = 500;
    const SIZE: u64 = 1_111;
    let ns = NetNs::outside()?;
    let agent = Agent::start()?;

    let mut sink = Proc::spawn(
        {
            let mut cmd = ns.command(&traffic_bin!());
            cmd.args(["sink", "udp", &format!("{}:0", ns.peer_ip)]);
            cmd
        },
        "udp sink",
    )?;
    let port: u16 = sink.expect_line("port")?;
    let mut sender = Proc::spawn(
        {
            let mut cmd = std::process::Command::new(traffic_bin!());
            cmd.args([
                "send",
                "udp",
                &format!("{}:{port}", ns.peer_ip),
                &COUNT.to_string(),
                &SIZE.to_string(),
            ]);
            cmd
        },
        "udp sender",
    )?;
    assert_eq!(sender.expect_line::<u64>("sent")?, COUNT * SIZE);

    let flow = agent
        .settled_flow(sender.pid(), ns.peer_ip, port, "udp", COUNT * SIZE)?
        .expect("a flow for the sender");
    assert_eq!(flow.bytes_sent, 555_500);
    assert_eq!(flow.comm, "exfil-traffic");
    sender.finish()?;
    Ok(())
}

/// The agent's own sockets are never counted: its API answers over a Unix socket, so make it
/// send over TCP instead, by scraping its metrics port many times, and look for its pid.
#[test]
fn the_agent_does_not_count_itself() -> anyhow::Result<()> {
    require_root();
    let agent = Agent::start()?;
    let metrics = agent.metrics_addr()?;
    for _ in 0..20 {
        let body = exfil_tests::http_get_tcp(metrics, "/metrics")?;
        assert!(body.contains("exfil_sensor_probe_attached{probe=\"sock:sock_send_length\"} 1"));
    }
    std::thread::sleep(exfil_tests::POLL * 3);
    let own: Vec<_> = agent
        .flows()?
        .into_iter()
        .filter(|f| f.pid == agent.pid())
        .collect();
    assert_eq!(own, vec![], "the agent counted its own sends");
    Ok(())
}
