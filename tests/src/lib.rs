//! Harness for the end-to-end tests: a network namespace standing in for "the outside", the
//! real agent, helper processes with known byte counts, and a client for the API socket.
//!
//! Everything that is started or created is owned by a guard whose `Drop` stops or removes
//! it, so a failing assertion leaves no namespace, process or socket behind.

mod agent;
mod host;
mod http;
pub mod maildir;
mod prometheus;
mod relay;
pub mod servers;
mod traffic;

pub use agent::{Agent, FileRow, Flow, POLL, agent_bin, run_cli};
pub use host::{NetNs, ServiceCgroup, require_root};
pub use http::{http_get_tcp, http_get_unix};
pub use prometheus::{Prometheus, Sample};
pub use relay::{CountingRelay, Relayed};
pub use servers::postgres;
pub use traffic::{Proc, Traffic, socket_addr};
