//! The importer on the real fixture (../shared/data) and on logs written here in Zeek's exact
//! format, broken ones included.
use std::{io::Write as _, net::IpAddr, path::PathBuf};

use super::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/zeek/wrccdc-2018-conn.log")
}

/// A log file of `text` in a fresh temporary directory.
fn log(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exfil-zeek-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("conn.log");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write log");
    path
}

const HEADER: &str = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n\
#unset_field\t-\n#path\tconn\n#open\t2026-11-20-09-00-00\n\
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\t\
orig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\t\
orig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n\
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\t\
bool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\n";

/// One TSV data line from [ts, orig_h, resp_h, resp_p, duration, orig_bytes, resp_bytes,
/// local_orig, local_resp]; the other fields as Zeek would write them.
fn line([ts, orig, resp, port, duration, ob, rb, lo, lr]: [&str; 9]) -> String {
    format!(
        "{ts}\tCabc123\t{orig}\t40000\t{resp}\t{port}\ttcp\t-\t{duration}\t{ob}\t{rb}\tSF\t{lo}\t{lr}\t0\tShADadFf\t10\t1000\t10\t1000\t-\n"
    )
}

fn networks() -> Networks {
    Networks::new(&[])
}

fn totals(intervals: &[Interval]) -> (u64, u64) {
    intervals
        .iter()
        .flat_map(|i| &i.flows)
        .fold((0, 0), |(s, r), f| (s + f.bytes_sent, r + f.bytes_received))
}

#[test]
fn the_real_fixture_reads_whole_and_keeps_every_byte() {
    let log = read(&fixture()).expect("the WRCCDC conn.log reads");
    assert_eq!((log.conns.len(), log.skipped.len()), (92, 0));
    let sums = log
        .conns
        .iter()
        .fold((0, 0), |(o, r), c| (o + c.orig_bytes, r + c.resp_bytes));
    assert_eq!(sums, (6_707, 9_077));
    let intervals = intervals(&log.conns, &networks(), 10_000);
    // 1521911720.6 to 1521911724.9 (plus sub-second durations): one 10 s interval.
    assert_eq!(intervals.len(), 1);
    assert_eq!(
        (intervals[0].start_ms, intervals[0].end_ms),
        (1_521_911_720_000, 1_521_911_730_000)
    );
    assert_eq!(totals(&intervals), (6_707, 9_077));
    // 26 connections of 10.164.94.120 moved bytes, to 7 (address, port)s; the others were
    // rejected or unanswered (no bytes, no rows). All 10/8 on both sides: the originator is
    // the local side.
    let rows: std::collections::BTreeSet<(&str, Option<IpAddr>, u16)> = intervals[0]
        .flows
        .iter()
        .map(|f| (f.service.as_str(), f.destination, f.port))
        .collect();
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|r| r.0 == "zeek:10.164.94.120"), "{rows:?}");
    assert!(
        intervals[0]
            .flows
            .iter()
            .all(|f| f.direction == Direction::Outbound && f.class == DestinationClass::Internal)
    );
}

#[test]
fn a_long_upload_is_spread_over_its_intervals_exactly() {
    // 60 MiB from 10.1.2.3 to 198.51.100.9:443 over 25 s starting 7.5 s into an interval.
    let text = format!(
        "{HEADER}{}",
        line([
            "1700000007.500000",
            "10.1.2.3",
            "198.51.100.9",
            "443",
            "25.000000",
            "62914560",
            "4096",
            "-",
            "-"
        ])
    );
    let log = read(&log("spread", &text)).expect("reads");
    let intervals = intervals(&log.conns, &networks(), 10_000);
    let per: Vec<(u64, u64, u64)> = intervals
        .iter()
        .map(|i| (i.start_ms, i.flows[0].bytes_sent, i.flows[0].bytes_received))
        .collect();
    // 2.5 s, 10 s, 10 s and 2.5 s of 25 s: 1/10, 4/10, 4/10, 1/10.
    assert_eq!(
        per,
        [
            (1_700_000_000_000, 6_291_456, 409),
            (1_700_000_010_000, 25_165_824, 1_639),
            (1_700_000_020_000, 25_165_824, 1_638),
            (1_700_000_030_000, 6_291_456, 410),
        ]
    );
    assert_eq!(totals(&intervals), (62_914_560, 4_096));
    let flow = &intervals[1].flows[0];
    assert_eq!(
        (
            flow.service.as_str(),
            flow.destination,
            flow.port,
            flow.class,
            flow.direction
        ),
        (
            "zeek:10.1.2.3",
            Some("198.51.100.9".parse::<IpAddr>().expect("ip")),
            443,
            DestinationClass::External,
            Direction::Outbound
        )
    );
}

#[test]
fn a_download_from_a_local_server_counts_what_the_server_sent() {
    // An outside client fetches 30 MiB from the local IMAP server: Zeek marks the responder
    // local, so the server (responder) sent resp_bytes to the outside address.
    let text = format!(
        "{HEADER}{}",
        line([
            "1700000001.000000",
            "198.51.100.7",
            "203.0.113.25",
            "993",
            "2.0",
            "5120",
            "31457280",
            "F",
            "T"
        ])
    );
    let log = read(&log("inbound", &text)).expect("reads");
    let intervals = intervals(&log.conns, &networks(), 10_000);
    let flow = &intervals[0].flows[0];
    assert_eq!(
        (
            flow.service.as_str(),
            flow.destination,
            flow.port,
            flow.direction,
            flow.bytes_sent,
            flow.bytes_received
        ),
        (
            "zeek:203.0.113.25",
            Some("198.51.100.7".parse::<IpAddr>().expect("ip")),
            993,
            Direction::Inbound,
            31_457_280,
            5_120
        )
    );
}

#[test]
fn broken_lines_are_skipped_and_named_by_line_number() {
    let good = line([
        "1700000001.0",
        "10.0.0.1",
        "198.51.100.2",
        "443",
        "1.0",
        "100",
        "10",
        "-",
        "-",
    ]);
    let text = format!(
        "{HEADER}{good}{}{}{}not\ta\tzeek\tline\n{good}{}",
        line([
            "1700000002.0",
            "10.0.0.999",
            "198.51.100.2",
            "443",
            "1.0",
            "100",
            "10",
            "-",
            "-"
        ]),
        line([
            "yesterday",
            "10.0.0.1",
            "198.51.100.2",
            "443",
            "1.0",
            "100",
            "10",
            "-",
            "-"
        ]),
        line([
            "1700000003.0",
            "10.0.0.1",
            "198.51.100.2",
            "443",
            "1.0",
            "-1",
            "10",
            "-",
            "-"
        ]),
        line([
            "1700000004.0",
            "10.0.0.1",
            "198.51.100.2",
            "443",
            "-",
            "-",
            "-",
            "maybe",
            "-"
        ]),
    );
    let log = read(&log("broken", &text)).expect("reads");
    assert_eq!(log.conns.len(), 2);
    let skipped: Vec<(u64, &str)> = log
        .skipped
        .iter()
        .map(|s| (s.line, s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            (10, "`id.orig_h` = \"10.0.0.999\" is not valid"),
            (11, "`ts` = \"yesterday\" is not valid"),
            (12, "`orig_bytes` = \"-1\" is not valid"),
            (13, "4 fields where #fields names 21"),
            (15, "`local_orig` = \"maybe\" is not T or F"),
        ]
    );
}

#[test]
fn a_header_without_a_required_field_is_an_error_naming_its_line() {
    let text = "#separator \\x09\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_p\n";
    let err = read(&log("header", text)).expect_err("no id.resp_h");
    assert!(
        err.to_string()
            .ends_with("conn.log: line 2: #fields has no `id.resp_h`"),
        "{err}"
    );
    let err = read(&log("empty", "")).expect_err("empty");
    assert!(err.to_string().contains("not a Zeek conn.log"), "{err}");
}

#[test]
fn the_json_form_reads_like_the_tsv_form() {
    let text = "{\"ts\":1700000007.5,\"uid\":\"C1\",\"id.orig_h\":\"10.1.2.3\",\"id.orig_p\":40000,\
\"id.resp_h\":\"198.51.100.9\",\"id.resp_p\":443,\"proto\":\"tcp\",\"duration\":25.0,\
\"orig_bytes\":62914560,\"resp_bytes\":4096,\"conn_state\":\"SF\"}\n\
{\"ts\":\"2023-11-14T22:13:30.000000Z\",\"uid\":\"C2\",\"id.orig_h\":\"10.1.2.3\",\"id.orig_p\":40001,\
\"id.resp_h\":\"198.51.100.9\",\"id.resp_p\":443,\"proto\":\"tcp\",\"conn_state\":\"S0\"}\n\
{\"ts\":1700000009.0,\"id.orig_h\":\"10.1.2.3\"}\n";
    let log = read(&log("json", text)).expect("reads");
    assert_eq!(log.conns.len(), 2);
    assert_eq!(
        (
            log.conns[0].ts,
            log.conns[0].orig_bytes,
            log.conns[1].ts,
            log.conns[1].orig_bytes
        ),
        (1_700_000_007.5, 62_914_560, 1_700_000_010.0, 0)
    );
    assert_eq!(
        log.skipped,
        [Skipped {
            line: 3,
            reason: "`id.orig_p` is missing or not a port".into()
        }]
    );
    let intervals = intervals(&log.conns, &networks(), 10_000);
    assert_eq!(totals(&intervals), (62_914_560, 4_096));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the bytes, reading returns (conns and skipped lines) or a header error:
        /// never a panic.
        #[test]
        fn any_input_reads_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            let _ = parse(&input[..], Path::new("fuzz.log"));
            let _ = parse(&bytes[..], Path::new("fuzz.log"));
        }

        /// Spreading keeps every byte: the intervals sum to the logged counts of each side.
        #[test]
        fn spreading_keeps_every_byte(
            conns in proptest::collection::vec(
                (0u64..10_000_000, 0u64..600_000, 0u64..u64::from(u32::MAX), 0u64..u64::from(u32::MAX)),
                1..40,
            ),
            interval_s in 1u64..120,
        ) {
            let conns: Vec<Conn> = conns
                .into_iter()
                .map(|(ts_ms, duration_ms, orig, resp)| Conn {
                    ts: 1_700_000_000.0 + ts_ms as f64 / 1000.0,
                    duration: duration_ms as f64 / 1000.0,
                    orig_h: "10.0.0.1".parse().expect("ip"),
                    orig_p: 40_000,
                    resp_h: "198.51.100.2".parse().expect("ip"),
                    resp_p: 443,
                    protocol: Protocol::Tcp,
                    orig_bytes: orig,
                    resp_bytes: resp,
                    local_orig: None,
                    local_resp: None,
                })
                .collect();
            let expected = conns
                .iter()
                .fold((0, 0), |(s, r), c| (s + c.orig_bytes, r + c.resp_bytes));
            let intervals = intervals(&conns, &networks(), interval_s * 1000);
            prop_assert_eq!(totals(&intervals), expected);
            for pair in intervals.windows(2) {
                prop_assert!(pair[0].end_ms <= pair[1].start_ms);
            }
        }
    }
}

#[test]
fn times_beyond_any_real_log_are_skipped_not_wrapped() {
    let text = format!(
        "{HEADER}{}{}",
        line([
            "17955108017955108.125",
            "10.0.0.1",
            "198.51.100.2",
            "443",
            "1.0",
            "100",
            "10",
            "-",
            "-"
        ]),
        line([
            "1700000001.0",
            "10.0.0.1",
            "198.51.100.2",
            "443",
            "99999999999",
            "100",
            "10",
            "-",
            "-"
        ]),
    );
    let log = read(&log("bounds", &text)).expect("reads");
    let skipped: Vec<(u64, &str)> = log
        .skipped
        .iter()
        .map(|s| (s.line, s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            (9, "`ts` = 17955108017955108 is after the year 9999"),
            (10, "`duration` = 99999999999 is over a year"),
        ]
    );
}
