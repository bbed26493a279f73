//! Harness for the end-to-end tests: a network namespace standing in for "the outside", the
//! real agent, helper processes with known byte counts, and a client for the API socket.
//!
//! Everything that is started or created is owned by a guard whose `Drop` stops or removes
//! it, so a failing assertion leaves no namespace, process or socket behind.

mod agent;
mod alertmanager;
mod host;
mod http;
mod links;
pub mod maildir;
mod prometheus;
mod receiver;
mod relay;
mod resident;
pub mod servers;
mod traffic;

pub use agent::{Agent, FileRow, Flow, POLL, agent_bin, run_cli};
pub use alertmanager::{Alertmanager, shipped_alertmanager_config};
pub use host::{NetNs, ServiceCgroup, require_root};
pub use http::{http_get_tcp, http_get_unix, http_post_tcp};
pub use prometheus::{Prometheus, Sample};
pub use receiver::{Received, WebhookReceiver};
pub use relay::{CountingRelay, Relayed};
pub use resident::Resident;
pub use servers::postgres;
pub use traffic::{Proc, Traffic, socket_addr};

/// A `[[detect.profile]]` for every service that allows every destination but `watched`:
/// detection then sees only traffic to `watched`. The machine runs other tests' traffic at
/// the same time, and the agent counts the whole host's: with a low threshold it would
/// raise their alerts too. The allowlist is the complement of `watched` (32 IPv4 networks,
/// one per bit where an address first differs from it) and all of IPv6.
pub fn watch_only(watched: std::net::Ipv4Addr) -> String {
    let ip = u32::from(watched);
    let mut nets: Vec<String> = (0..32u32)
        .map(|i| {
            let len = i + 1;
            let mask = u32::MAX << (32 - len);
            let net = (ip ^ (1 << (31 - i))) & mask;
            format!("\"{}/{len}\"", std::net::Ipv4Addr::from(net))
        })
        .collect();
    nets.push("\"::/0\"".to_owned());
    format!(
        "[[detect.profile]]\nname = \"not-the-test\"\nallow = [{}]\n",
        nets.join(", ")
    )
}
