//! exfil-sensor: counts the bytes each process reads from files and sends to each remote
//! destination, in kernel maps, and serves them to Prometheus and to incident responders.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; the library exists so that
//! the benchmarks in `benches/` reach the same code the agent runs.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod flow;
pub mod http;
pub mod kernel;
pub mod listing;
pub mod metrics;
pub mod sinks;
pub mod table;
pub mod top;
