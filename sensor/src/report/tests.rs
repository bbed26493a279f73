//! The report over interval records made here: exact sums per bucket, the top cut, filters,
//! alerts in their last state, and a chart that is valid SVG with one line per top destination.
use super::*;
use crate::{api::AlertChange, flow::interval::FlowInterval};

const T0: u64 = 1_763_942_400_000; // 2025-11-24T00:00:00Z
const MIB: u64 = 1 << 20;

fn flow(service: &str, destination: &str, bytes: u64) -> FlowInterval {
    FlowInterval::sample(service, 42, "curl", destination, bytes)
}

/// A 10 s interval starting `at_ms` after T0.
fn interval(at_ms: u64, flows: Vec<FlowInterval>) -> Interval {
    Interval {
        start_ms: T0 + at_ms,
        end_ms: T0 + at_ms + 10_000,
        flows,
        ..Interval::default()
    }
}

fn alert(id: u64, change: AlertChange, bytes: u64, raised_ms: u64) -> AlertEvent {
    AlertEvent {
        change,
        alert: AlertRecord {
            id,
            kind: "burst".into(),
            severity: "critical".into(),
            service: "dovecot.service".into(),
            pid: 42,
            comm: "imap".into(),
            destination: "198.51.100.7".into(),
            port: 993,
            bytes,
            window_s: 300,
            started_at: rfc3339(raised_ms - 60_000),
            raised_at: rfc3339(raised_ms),
            updated_at: rfc3339(raised_ms + 10_000),
            resolved_at: None,
            status: "firing".into(),
            class: None,
            summary: format!("dovecot.service sent {bytes} bytes to 198.51.100.7"),
            description: String::new(),
            destination_name: None,
        },
    }
}

/// Two hours: dovecot sends 60 MiB then 10 MiB to 198.51.100.7; postfix sends 1 MiB to each
/// of 12 MX hosts in the second hour; loopback and internal bytes beside them.
fn two_hours() -> Vec<Interval> {
    let mut second: Vec<FlowInterval> = (1..=12)
        .map(|i| flow("postfix.service", &format!("203.0.113.{i}"), MIB))
        .collect();
    second.push(flow("dovecot.service", "198.51.100.7", 10 * MIB));
    vec![
        interval(
            0,
            vec![
                flow("dovecot.service", "198.51.100.7", 40 * MIB),
                flow("dovecot.service", "127.0.0.1", 500 * MIB),
                flow("backup.service", "10.0.0.9", 900 * MIB),
            ],
        ),
        interval(
            1_800_000,
            vec![flow("dovecot.service", "198.51.100.7", 20 * MIB)],
        ),
        interval(3_600_000, second),
    ]
}

fn build(options: Options, intervals: &[Interval], alerts: &[AlertEvent]) -> Report {
    let mut builder = Builder::new(options);
    builder.host("mail1");
    for i in intervals {
        builder.interval(i);
    }
    for a in alerts {
        builder.alert(a);
    }
    builder.finish()
}

fn points(report: &Report, service: &str, destination: &str) -> Vec<(String, u64)> {
    report
        .series
        .iter()
        .find(|s| s.service == service && s.destination == destination)
        .map(|s| {
            s.points
                .iter()
                .map(|p| (p.start.clone(), p.bytes))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn external_bytes_per_hour_per_service_and_destination_exactly() {
    let report = build(Options::default(), &two_hours(), &[]);
    assert_eq!(report.bucket, Bucket::Hour);
    assert_eq!(report.external_bytes, 82 * MIB);
    assert_eq!(
        (report.from.as_deref(), report.to.as_deref()),
        (Some("2025-11-24T00:00:00Z"), Some("2025-11-24T01:00:10Z"))
    );
    assert_eq!(
        points(&report, "dovecot.service", "198.51.100.7"),
        [
            ("2025-11-24T00:00:00Z".to_owned(), 60 * MIB),
            ("2025-11-24T01:00:00Z".to_owned(), 10 * MIB)
        ]
    );
    // The top 10: dovecot's destination, then nine MX hosts (1 MiB each, by address); the
    // other three MX hosts are postfix's `other`.
    let top: Vec<(&str, u64)> = report
        .destinations
        .iter()
        .map(|d| (d.destination.as_str(), d.bytes))
        .collect();
    assert_eq!(top.len(), 10);
    assert_eq!(top[0], ("198.51.100.7", 70 * MIB));
    assert_eq!(top[1], ("203.0.113.1", MIB));
    assert_eq!(top[9], ("203.0.113.6", MIB)); // text order: .1, .10, .11, .12, .2, …
    assert_eq!(
        points(&report, "postfix.service", OTHER),
        [("2025-11-24T01:00:00Z".to_owned(), 3 * MIB)]
    );
    assert_eq!(
        report.series.last().map(|s| s.destination.as_str()),
        Some(OTHER)
    );
    assert_eq!(
        report.destinations[0].services,
        ["dovecot.service".to_owned()]
    );
    assert_eq!(
        (
            report.destinations[0].first_seen.as_str(),
            report.destinations[0].last_seen.as_str()
        ),
        ("2025-11-24T00:00:00Z", "2025-11-24T01:00:10Z")
    );
}

#[test]
fn service_and_time_filters_narrow_the_report() {
    let only = build(
        Options {
            service: Some("dovecot.service".into()),
            from_ms: Some(T0 + 1_000_000),
            ..Options::default()
        },
        &two_hours(),
        &[],
    );
    // The first interval ended before `from`: 20 MiB + 10 MiB remain.
    assert_eq!(only.external_bytes, 30 * MIB);
    assert_eq!(only.destinations.len(), 1);
    assert!(only.series.iter().all(|s| s.service == "dovecot.service"));
}

#[test]
fn long_spans_are_per_day_and_sums_roll_up() {
    let intervals = vec![
        interval(0, vec![flow("dovecot.service", "198.51.100.7", 3 * MIB)]),
        interval(
            7_200_000,
            vec![flow("dovecot.service", "198.51.100.7", 4 * MIB)],
        ),
        interval(
            4 * 86_400_000,
            vec![flow("dovecot.service", "198.51.100.7", 5 * MIB)],
        ),
    ];
    let report = build(Options::default(), &intervals, &[]);
    assert_eq!(report.bucket, Bucket::Day);
    assert_eq!(
        points(&report, "dovecot.service", "198.51.100.7"),
        [
            ("2025-11-24T00:00:00Z".to_owned(), 7 * MIB),
            ("2025-11-28T00:00:00Z".to_owned(), 5 * MIB)
        ]
    );
}

#[test]
fn alerts_are_kept_in_their_last_state() {
    let raised = alert(7, AlertChange::Raised, 52 * MIB, T0 + 300_000);
    let mut grown = alert(7, AlertChange::Updated, 70 * MIB, T0 + 300_000);
    grown.alert.updated_at = rfc3339(T0 + 3_610_000);
    let report = build(Options::default(), &two_hours(), &[raised, grown]);
    assert_eq!(report.alerts.len(), 1);
    assert_eq!(
        (report.alerts[0].alert.id, report.alerts[0].alert.bytes),
        (7, 70 * MIB)
    );
    let text = table(&report);
    assert!(text.contains("\nAlerts\nRAISED_AT"), "{text}");
    assert!(text.contains(&(70 * MIB).to_string()), "{text}");
}

#[test]
fn csv_has_one_row_per_bucket_service_and_destination() {
    let report = build(Options::default(), &two_hours(), &[]);
    let text = csv(&report).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("time,host,service,destination,bytes"));
    let rows: Vec<&str> = lines.collect();
    // dovecot: 2 hours; nine MX hosts in the top; postfix's other.
    assert_eq!(rows.len(), 2 + 9 + 1);
    assert_eq!(
        rows[0],
        "2025-11-24T00:00:00Z,mail1,dovecot.service,198.51.100.7,62914560"
    );
    assert_eq!(
        rows[11],
        "2025-11-24T01:00:00Z,mail1,postfix.service,other,3145728"
    );
}

#[test]
fn the_chart_is_valid_svg_with_one_line_per_top_destination_and_the_alerts_marked() {
    let raised = alert(7, AlertChange::Raised, 52 * MIB, T0 + 300_000);
    let report = build(
        Options {
            top: 4,
            ..Options::default()
        },
        &two_hours(),
        &[raised],
    );
    let text = svg(&report).expect("svg");
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    // Series are drawn 2 px wide in their palette colour; legend swatches and alert marks 1 px.
    let series: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .map(|n| n.attribute("stroke").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(series.len(), 4, "{series:?}");
    let distinct: std::collections::BTreeSet<&String> = series.iter().collect();
    assert_eq!(distinct.len(), 4);
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for d in &report.destinations {
        assert!(texts.contains(&d.destination.as_str()), "legend: {texts:?}");
    }
    assert!(
        texts.contains(&"burst 198.51.100.7"),
        "alert mark: {texts:?}"
    );
}

/// Journals of two hosts: the top destinations are the fleet's, naming both hosts; each
/// host's series stay apart; alerts with the same id from two agents are two alerts.
#[test]
fn journals_of_several_hosts_merge_by_host() {
    let mut builder = Builder::new(Options::default());
    builder.host("mail1");
    for i in two_hours() {
        builder.interval(&i);
    }
    builder.alert(&alert(1, AlertChange::Raised, 60 * MIB, T0 + 1_800_000));
    builder.host("db1");
    builder.interval(&interval(
        600_000,
        vec![
            flow("postgresql.service", "198.51.100.7", 75 * MIB),
            flow("postgresql.service", "192.168.1.5", 5 * MIB),
        ],
    ));
    let mut db_alert = alert(1, AlertChange::Raised, 70 * MIB, T0 + 610_000);
    db_alert.alert.service = "postgresql.service".into();
    builder.alert(&db_alert);
    let report = builder.finish();

    assert_eq!(report.hosts, ["db1", "mail1"]);
    assert_eq!(report.external_bytes, 82 * MIB + 75 * MIB);
    let top = &report.destinations[0];
    assert_eq!(
        (
            top.destination.as_str(),
            top.bytes,
            &top.hosts,
            &top.services
        ),
        (
            "198.51.100.7",
            145 * MIB,
            &vec!["db1".to_owned(), "mail1".to_owned()],
            &vec![
                "postgresql.service".to_owned(),
                "dovecot.service".to_owned()
            ]
        )
    );
    let series: Vec<(&str, &str, u64)> = report
        .series
        .iter()
        .filter(|s| s.destination == "198.51.100.7")
        .map(|s| (s.host.as_str(), s.service.as_str(), s.bytes))
        .collect();
    assert_eq!(
        series,
        [
            ("db1", "postgresql.service", 75 * MIB),
            ("mail1", "dovecot.service", 70 * MIB)
        ]
    );
    let alerts: Vec<(&str, u64, u64)> = report
        .alerts
        .iter()
        .map(|a| (a.host.as_str(), a.alert.id, a.alert.bytes))
        .collect();
    assert_eq!(alerts, [("db1", 1, 70 * MIB), ("mail1", 1, 60 * MIB)]);

    let text = table(&report);
    assert!(text.contains(" by 2 hosts (db1, mail1): "), "{text}");
    assert!(text.contains("HOSTS"), "{text}");
    assert!(text.contains("\nAlerts on db1\n"), "{text}");
    assert!(text.contains("\nAlerts on mail1\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&json(&report)).expect("json");
    assert_eq!(json["alerts"][0]["host"], "db1");
    assert_eq!(
        json["alerts"][0]["id"], 1,
        "the alert's own fields beside its host"
    );
}

#[test]
fn restarts_that_took_over_pinned_totals_or_followed_an_unclean_end_are_listed() {
    use crate::flow::interval::{Direction, Protocol};
    use crate::journal::{FlowId, ResumedFlow};
    let key = |tgid| FlowId {
        tgid,
        destination: None,
        port: 0,
        protocol: Protocol::Other,
        direction: Direction::Other,
    };
    let sent = |sent| Counts {
        sent,
        ..Counts::default()
    };
    let mut builder = Builder::new(Options::default());
    builder.host("mx1");
    // A first start on new maps after nothing: not a restart worth listing.
    builder.resume(&ResumeRecord {
        at_ms: T0,
        previous: PreviousRun::None,
        flows: Vec::new(),
    });
    builder.resume(&ResumeRecord {
        at_ms: T0 + 60_000,
        previous: PreviousRun::Unclean {
            last_at_ms: T0 + 40_000,
        },
        flows: vec![
            ResumedFlow {
                key: key(1),
                kernel: sent(5_000),
                journaled: Some(sent(3_000)),
            },
            ResumedFlow {
                key: key(2),
                kernel: sent(700),
                journaled: Some(sent(700)),
            },
            ResumedFlow {
                key: key(3),
                kernel: sent(90),
                journaled: None,
            },
        ],
    });
    let report = builder.finish();
    assert_eq!(
        report.restarts,
        vec![Restart {
            host: "mx1".into(),
            at: rfc3339(T0 + 60_000),
            previous: "unclean".into(),
            previous_end: Some(rfc3339(T0 + 40_000)),
            carried_bytes: 2_000,
            carried_flows: 1,
            adopted_bytes: 90,
            adopted_flows: 1,
        }]
    );
    let table = table(&report);
    assert!(
        table.contains("unclean") && table.contains("2000"),
        "{table}"
    );
}

/// Names beside destinations: each address's names, most bytes first; the NAMES column only
/// once a name is known (a 0.6 journal's report is as it was).
#[test]
fn destinations_show_the_names_their_rows_had() {
    let named = |destination, bytes, name: &str| FlowInterval {
        destination_name: Some(name.to_owned()),
        ..flow("dovecot.service", destination, bytes)
    };
    let intervals = [
        interval(
            0,
            vec![
                named("198.51.100.7", 20 * MIB, "cdn.example.org"),
                named("198.51.100.7", 40 * MIB, "files.example-storage.net"),
                flow("postfix.service", "203.0.113.1", MIB),
            ],
        ),
        interval(10_000, vec![flow("dovecot.service", "198.51.100.7", MIB)]),
    ];
    let report = build(Options::default(), &intervals, &[]);
    assert_eq!(
        report
            .destinations
            .iter()
            .map(|d| (d.destination.as_str(), d.names.clone(), d.bytes))
            .collect::<Vec<_>>(),
        vec![
            (
                "198.51.100.7",
                vec![
                    "files.example-storage.net".to_owned(),
                    "cdn.example.org".to_owned()
                ],
                61 * MIB
            ),
            ("203.0.113.1", Vec::new(), MIB),
        ]
    );
    let text = table(&report);
    let top: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Top destinations")
        .skip(1)
        .take(3)
        .collect();
    assert_eq!(
        top,
        vec![
            "DESTINATION   NAMES                                         BYTES  SERVICES         FIRST_SEEN            LAST_SEEN",
            "198.51.100.7  files.example-storage.net,cdn.example.org  63963136  dovecot.service  2025-11-24T00:00:00Z  2025-11-24T00:00:20Z",
            "203.0.113.1   -                                           1048576  postfix.service  2025-11-24T00:00:00Z  2025-11-24T00:00:10Z",
        ],
        "{text}"
    );
    let text = json(&report);
    assert!(
        text.contains("\"names\": [\n        \"files.example-storage.net\",\n        \"cdn.example.org\"\n      ],"),
        "{text}"
    );
    // Unnamed: no column, no field.
    let report = build(Options::default(), &two_hours(), &[]);
    assert!(
        table(&report).contains("\nDESTINATION      BYTES  SERVICES"),
        "{}",
        table(&report)
    );
    assert!(!json(&report).contains("names"));
}
