//! A full kernel map loses no byte: with the flow map sized 64, a process that sends to
//! 2,000 destinations still adds up exactly, its overflow in a `destination: "other"` row, and
//! the drop counter says how many sends found no room.

use std::time::{Duration, Instant};

use exfil_tests::{Agent, NetNs, POLL, require_root, socket_addr, traffic};

#[test]
fn a_full_map_keeps_every_byte_and_counts_the_drops() {
    require_root();
    const DESTINATIONS: u16 = 2_000;
    const SIZE: u64 = 333;
    const MAP_ENTRIES: u64 = 64;
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start_with(&format!("flow_map_entries = {MAP_ENTRIES}\n")).expect("agent");
    let drops_before = agent
        .metric("exfil_sensor_kernel_drops_total{map=\"flows\"}")
        .expect("drops");

    // One datagram to each of 2,000 ports: 2,000 distinct (address, port) keys.
    let addrs: Vec<String> = (0..DESTINATIONS)
        .map(|i| socket_addr(ns.peer_ip, 20_000 + i))
        .collect();
    let mut args = vec!["sendto", "1", "333"];
    args.extend(addrs.iter().map(String::as_str));
    let mut sender = traffic!().send(&args).expect("sender");
    let total = u64::from(DESTINATIONS) * SIZE;
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), total);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mine = loop {
        let mine: Vec<_> = agent
            .flows()
            .expect("API")
            .into_iter()
            .filter(|f| f.pid == sender.pid())
            .collect();
        if mine.iter().map(|f| f.bytes_sent).sum::<u64>() >= total || Instant::now() > deadline {
            break mine;
        }
        std::thread::sleep(POLL);
    };
    let (other, own): (Vec<_>, Vec<_>) = mine.iter().partition(|f| f.destination == "other");
    assert_eq!(
        mine.iter().map(|f| f.bytes_sent).sum::<u64>(),
        total,
        "every byte counted"
    );
    assert!(
        own.iter().all(|f| f.bytes_sent == SIZE && f.sends == 1),
        "{own:?}"
    );
    assert_eq!(other.len(), 1, "one overflow row: {other:?}");
    let overflowed = other[0].sends;
    assert_eq!(own.len() as u64 + overflowed, u64::from(DESTINATIONS));
    assert!(
        own.len() as u64 <= MAP_ENTRIES,
        "{} keys in a {MAP_ENTRIES}-entry map",
        own.len()
    );
    assert_eq!(other[0].bytes_sent, overflowed * SIZE);

    let drops = agent
        .metric("exfil_sensor_kernel_drops_total{map=\"flows\"}")
        .expect("drops")
        - drops_before;
    // Every overflowed send of ours was a refused insert; other processes can only add.
    assert!(
        drops >= overflowed,
        "{drops} drops for {overflowed} overflowed sends"
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_kernel_drops_total{map=\"flow_overflow\"}")
            .expect("overflow drops"),
        0
    );
    assert_eq!(
        agent
            .metric("exfil_sensor_egress_unattributed_bytes_total")
            .expect("unattributed"),
        0
    );
    sender.finish().expect("sender exits cleanly");
}

/// With the file map at one entry, its per-process overflow map holds 1,024 processes: more
/// processes than that reading files at once find both full, and each refusal counts in
/// `{map="file_overflow"}` (their bytes are lost; before, nothing said so).
#[test]
fn a_full_file_overflow_map_counts_its_refusals() {
    require_root();
    const OVERFLOW_ENTRIES: u64 = 1024;
    const PROCESSES: u64 = 1300;
    let agent = Agent::start_with("file_map_entries = 1\n").expect("agent");
    let metric = "exfil_sensor_kernel_drops_total{map=\"file_overflow\"}";
    let before = agent.metric(metric).expect("file_overflow drops");
    // Each `sleep` reads pages of its binary and libraries as it starts, and stays: a key of
    // its own in the overflow map while it lives.
    let mut sleepers: Vec<std::process::Child> = Vec::new();
    for _ in 0..PROCESSES {
        match std::process::Command::new("sleep").arg("60").spawn() {
            Ok(child) => sleepers.push(child),
            Err(e) => {
                stop(&mut sleepers);
                panic!("spawning sleep: {e}");
            }
        }
    }
    // The programs count at the read; the agent shows it at its next poll.
    std::thread::sleep(POLL * 3);
    let drops = agent.metric(metric).expect("file_overflow drops") - before;
    stop(&mut sleepers);
    // One entry in the file map, 1,024 in the overflow map, whoever took them: at least every
    // sleeper beyond those was refused once; other processes can only add.
    assert!(
        drops >= PROCESSES - OVERFLOW_ENTRIES - 1,
        "{drops} refusals for {PROCESSES} processes and {OVERFLOW_ENTRIES} overflow entries"
    );
}

fn stop(children: &mut Vec<std::process::Child>) {
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}
