//! The Zeek importer on any bytes: a conn.log as read from disk (header directives, TSV or
//! JSON lines, broken lines skipped) and its spreading into interval records must never
//! panic, and the records must keep every byte the parsed connections carry (in either
//! direction: which side is local decides which count is "sent").

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::{flow::class::Networks, import::zeek};

fuzz_target!(|data: &[u8]| {
    let Ok(log) = zeek::parse(data, std::path::Path::new("fuzz.log")) else {
        return;
    };
    let conns: Vec<_> = log
        .conns
        .into_iter()
        .filter(|c| c.orig_bytes < 1 << 48 && c.resp_bytes < 1 << 48)
        .collect();
    // Bounded work: a connection that lasts a year is spread over 3M intervals.
    if conns.iter().any(|c| c.duration > 86_400.0) {
        return;
    }
    let expected: u64 = conns.iter().map(|c| c.orig_bytes + c.resp_bytes).sum();
    let intervals = zeek::intervals(&conns, &Networks::new(&[]), 10_000);
    let got: u64 = intervals
        .iter()
        .flat_map(|i| &i.flows)
        .map(|f| f.bytes_sent + f.bytes_received)
        .sum();
    assert_eq!(got, expected);
});
