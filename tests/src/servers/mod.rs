//! The real servers the scenario tests attack (issue 11): each started in the foreground by
//! the test with its own config and state under a temporary directory, inside a
//! `system.slice/<name>.service` cgroup so that the agent names it as under systemd.

pub mod dnsmasq;
pub mod dovecot;
pub mod postfix;
pub mod postgres;
pub mod rsyncd;

use std::{net::SocketAddrV4, process::Command, time::Duration};

use anyhow::bail;

use crate::NetNs;

/// Whether a TCP socket listens on `addr`, in `ns` or (`None`) on this host, read from
/// `/proc/net/tcp` (a test connection would be traffic the agent counts).
pub fn listening(ns: Option<&NetNs>, addr: SocketAddrV4) -> anyhow::Result<bool> {
    let tcp = match ns {
        None => std::fs::read_to_string("/proc/net/tcp")?,
        Some(ns) => {
            // /proc/net is the reader's network namespace's.
            let out = postgres::run_bounded(
                Command::new("ip").args(["netns", "exec", &ns.name, "cat", "/proc/net/tcp"]),
                Duration::from_secs(10),
            )?;
            if !out.status.success() {
                bail!(
                    "reading /proc/net/tcp in {}: {}",
                    ns.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    // The kernel prints the address as the u32 it holds in network order, in host-order
    // hex (net/ipv4/tcp_ipv4.c, get_tcp4_sock); the port in host order.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    // `st` 0A is TCP_LISTEN.
    Ok(tcp.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
    }))
}
