//! Destination names: the DNS answers this host received, so that a flow to 198.51.100.2
//! reads "upload.example.test, resolved by that same process". The kernel's ingress program
//! parses each answer (`kernel::dns`) and the poll hands them over as [`DnsAnswer`]s; the
//! agent keeps them in a bounded cache and names flows, alerts and journal records from it.

pub mod cache;
pub mod config;
pub mod metrics;
pub mod suffix;

use std::net::IpAddr;

pub use self::{cache::NameCache, config::DnsConfig, metrics::DnsMetrics};

/// One DNS response as the kernel parsed it: the question and its A/AAAA answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The process whose socket the answer arrived on, when the kernel knew it (the pid
    /// that sent the query); `None` for an answer to a socket it did not see send.
    pub pid: Option<u32>,
    /// The question name: lower case, dotted, no trailing dot (`upload.example.test`).
    pub name: String,
    /// Each A or AAAA record's address and its TTL in seconds, in answer order (records
    /// reached through a CNAME chain included: they answer the same question).
    pub addrs: Vec<(IpAddr, u32)>,
}
