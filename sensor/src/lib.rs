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
pub mod dns;
#[cfg(test)]
mod docs;
pub mod flow;
pub mod forensics;
pub mod health;
pub mod http;
pub mod import;
pub mod journal;
pub mod kernel;
pub mod listing;
pub mod metrics;
pub mod replay;
pub mod report;
pub mod sinks;
pub mod table;
pub mod top;

/// An error and its causes on one line (`error: cause: cause`): the libraries the agent uses
/// keep the useful part in the source (aya the errno, hyper-util the refused connection).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
