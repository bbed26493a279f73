//! Each rule on synthetic interval streams: fires exactly at the interval that crosses its
//! threshold, not one earlier; benign shapes stay silent.

use std::net::IpAddr;

use super::*;
use crate::{
    api::AlertChange,
    flow::interval::{Direction, FileInterval, Protocol},
};

const MIB: u64 = 1 << 20;
/// Monday 2026-11-23 00:00:00 UTC, in ms.
const MONDAY: u64 = 1_795_392_000_000;
const HOUR: u64 = 3_600_000;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn class_of(ip: IpAddr) -> DestinationClass {
    crate::flow::class::Networks::new(&[]).classify(Some(ip))
}

fn send(service: &str, pid: u32, comm: &str, to: &str, bytes: u64) -> FlowInterval {
    let destination = ip(to);
    FlowInterval {
        service: service.into(),
        pid,
        comm: comm.into(),
        exe: format!("/usr/bin/{comm}"),
        uid: Some(0),
        destination: Some(destination),
        class: class_of(destination),
        port: 443,
        protocol: Protocol::Tcp,
        direction: Direction::Outbound,
        bytes_sent: bytes,
        sends: 1,
        bytes_received: 0,
        recvs: 0,
    }
}

fn read(
    service: &str,
    pid: u32,
    comm: &str,
    class: &str,
    file: (u64, u64),
    bytes: u64,
) -> FileInterval {
    FileInterval {
        service: service.into(),
        pid,
        comm: comm.into(),
        path: Some(format!("/data/{}", file.1)),
        class: class.into(),
        device: file.0,
        inode: file.1,
        bytes_read: bytes,
        reads: 1,
        bytes_written: 0,
        writes: 0,
    }
}

fn write(service: &str, pid: u32, comm: &str, file: (u64, u64), bytes: u64) -> FileInterval {
    FileInterval {
        bytes_read: 0,
        reads: 0,
        bytes_written: bytes,
        writes: 1,
        class: "other".into(),
        ..read(service, pid, comm, "other", file, 0)
    }
}

fn process(
    pid: u32,
    comm: &str,
    service: &str,
    session: Option<u32>,
    ancestors: &[u32],
) -> ProcessInfo {
    ProcessInfo {
        pid,
        comm: comm.into(),
        exe: format!("/usr/bin/{comm}"),
        service: service.into(),
        session,
        ancestors: ancestors.to_vec(),
    }
}

/// Feeds intervals of `length` ms from `start`, one after the other.
struct Feed {
    detector: Detector,
    at: u64,
    length: u64,
    events: Vec<AlertEvent>,
}

impl Feed {
    fn new(config: DetectConfig, start: u64, length: u64) -> Self {
        Self {
            detector: Detector::new(&config, "test").expect("config"),
            at: start,
            length,
            events: Vec::new(),
        }
    }

    fn with_defaults() -> Self {
        let config = DetectConfig {
            state_file: None,
            ..DetectConfig::default()
        };
        Self::new(config, MONDAY, 10_000)
    }

    /// One interval; returns its events.
    fn step(
        &mut self,
        flows: Vec<FlowInterval>,
        files: Vec<FileInterval>,
        processes: Vec<ProcessInfo>,
    ) -> Vec<AlertEvent> {
        let interval = Interval {
            start_ms: self.at,
            end_ms: self.at + self.length,
            flows,
            files,
            processes,
        };
        self.at += self.length;
        let events = self.detector.observe(&interval);
        self.events.extend(events.clone());
        events
    }

    fn flows(&mut self, flows: Vec<FlowInterval>) -> Vec<AlertEvent> {
        self.step(flows, Vec::new(), Vec::new())
    }

    fn idle(&mut self, intervals: usize) -> Vec<AlertEvent> {
        (0..intervals)
            .flat_map(|_| self.flows(Vec::new()))
            .collect()
    }

    fn raised(&self) -> Vec<&AlertRecord> {
        self.events
            .iter()
            .filter(|e| e.change == AlertChange::Raised)
            .map(|e| &e.alert)
            .collect()
    }
}

fn raised(events: &[AlertEvent]) -> Vec<&AlertRecord> {
    events
        .iter()
        .filter(|e| e.change == AlertChange::Raised)
        .map(|e| &e.alert)
        .collect()
}

#[test]
fn burst_fires_at_the_interval_that_crosses_50_mib_and_grows_then_resolves() {
    let mut feed = Feed::with_defaults();
    let upload = || vec![send("backup.service", 42, "curl", "198.51.100.7", 6 * MIB)];
    for i in 0..8 {
        assert_eq!(
            feed.flows(upload()),
            Vec::new(),
            "interval {i}: 48 MiB at most"
        );
    }
    let events = feed.flows(upload());
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    let a = alerts[0];
    assert_eq!(
        (
            a.kind.as_str(),
            a.service.as_str(),
            a.destination.as_str(),
            a.bytes,
            a.pid,
            a.comm.as_str(),
            a.port
        ),
        (
            "burst",
            "backup.service",
            "198.51.100.7",
            54 * MIB,
            42,
            "curl",
            443
        )
    );
    assert_eq!(
        (
            a.started_at.as_str(),
            a.raised_at.as_str(),
            a.severity.as_str(),
            a.window_s,
            a.status.as_str()
        ),
        (
            "2026-11-23T00:00:00Z",
            "2026-11-23T00:01:30Z",
            "critical",
            300,
            "firing"
        )
    );
    let events = feed.flows(upload());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].change, events[0].alert.bytes, events[0].alert.id),
        (AlertChange::Updated, 60 * MIB, a.id),
        "the same alert grows; no second one"
    );
    // Quiet for 10 minutes (60 intervals): resolved once, at the 60th.
    let quiet = feed.idle(59);
    assert!(quiet.is_empty(), "{quiet:?}");
    let events = feed.idle(1);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].change,
            events[0].alert.status.as_str(),
            events[0].alert.resolved_at.as_deref()
        ),
        (
            AlertChange::Resolved,
            "resolved",
            Some("2026-11-23T00:11:40Z")
        )
    );
    assert_eq!(feed.raised().len(), 1);
    // A new upload after that is a new episode.
    let again: Vec<_> = (0..9).flat_map(|_| feed.flows(upload())).collect();
    assert_eq!(raised(&again).len(), 1);
    assert_eq!(raised(&again)[0].id, a.id + 1);
}

#[test]
fn spraying_below_the_per_destination_threshold_fires_at_200_mib_in_an_hour() {
    let mut feed = Feed::with_defaults();
    // 1.6 MiB per 10 s, to one of 8 destinations in turn: 48 MiB per 5 minutes at most to all
    // of them together, so never 50 MiB to one; 200 MiB after 125 intervals.
    let step = 1_677_722; // ceil(1.6 MiB)
    for i in 0..124u32 {
        let to = format!("198.51.100.{}", 10 + i % 8);
        let events = feed.flows(vec![send("app.service", 7, "app", &to, step)]);
        assert!(events.is_empty(), "interval {i}: {events:?}");
    }
    let events = feed.flows(vec![send("app.service", 7, "app", "198.51.100.10", step)]);
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert_eq!(
        (alerts[0].kind.as_str(), alerts[0].bytes, alerts[0].window_s),
        ("burst", 125 * step, 3_600)
    );
    assert!(
        alerts[0].summary.contains("8 external destinations"),
        "{}",
        alerts[0].summary
    );
}

#[test]
fn benign_shapes_stay_silent() {
    let mut config = DetectConfig {
        state_file: None,
        ..DetectConfig::default()
    };
    config.new_destination.learning = std::time::Duration::from_secs(60);
    let mut feed = Feed::new(config, MONDAY, 10_000);
    feed.idle(7); // learning is over
    for i in 0..360u32 {
        let mut flows = Vec::new();
        // Postfix delivering to 300 MX hosts, 1.5 MiB each over the hour (new to it).
        if i < 300 {
            let mx = format!("203.0.113.{}", i % 250);
            flows.push(send("postfix@-.service", 900 + i, "smtp", &mx, 3 * MIB / 2));
        }
        // A dovecot client syncing 30 MiB to an office address.
        if i < 30 {
            flows.push(send("dovecot.service", 20, "imap", "192.168.1.20", MIB));
        }
        // A nightly 5 GiB backup over 10 minutes to one internal host.
        if (100..160).contains(&i) {
            flows.push(send(
                "backup.service",
                30,
                "rsync",
                "10.0.0.5",
                5 * 1024 * MIB / 60,
            ));
        }
        // Package updates: 500 MiB downloaded, a few KiB of requests.
        if i < 50 {
            let mut apt = send("apt-daily.service", 40, "http", "198.51.100.80", 4_096);
            apt.bytes_received = 10 * MIB;
            flows.push(apt);
        }
        // Prometheus scraping the agent over loopback.
        flows.push(send(
            "prometheus.service",
            50,
            "prometheus",
            "127.0.0.1",
            300_000,
        ));
        let events = feed.flows(flows);
        assert!(events.is_empty(), "interval {i}: {events:?}");
    }
}

#[test]
fn lineage_a_shell_reads_the_mail_store_and_its_curl_sends_it_out() {
    let mut feed = Feed::with_defaults();
    let shell = "session-3.scope";
    let procs = || {
        vec![
            process(100, "tar", shell, Some(50), &[50]),
            process(101, "curl", shell, Some(50), &[50]),
        ]
    };
    // tar reads 40 MiB of mail: threshold min(10 MiB, max(20 MiB, 1 MiB)) = 10 MiB.
    let events = feed.step(
        Vec::new(),
        vec![read(shell, 100, "tar", "mail_store", (1, 500), 40 * MIB)],
        procs(),
    );
    assert!(events.is_empty());
    let events = feed.step(
        vec![send(shell, 101, "curl", "198.51.100.8", 9 * MIB)],
        Vec::new(),
        procs(),
    );
    assert!(events.is_empty(), "9 MiB is below 10: {events:?}");
    let events = feed.step(
        vec![send(shell, 101, "curl", "198.51.100.8", MIB)],
        Vec::new(),
        procs(),
    );
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    let a = alerts[0];
    assert_eq!(
        (
            a.kind.as_str(),
            a.service.as_str(),
            a.destination.as_str(),
            a.bytes,
            a.class.as_deref(),
            a.comm.as_str()
        ),
        (
            "lineage",
            shell,
            "198.51.100.8",
            10 * MIB,
            Some("mail_store"),
            "curl"
        )
    );
    assert!(a.description.contains("tar"), "{}", a.description);
}

#[test]
fn lineage_is_half_of_a_small_read_but_never_for_a_profile_that_reads_for_its_work() {
    let mut feed = Feed::with_defaults();
    let procs = vec![process(7, "python3", "x.service", Some(7), &[])];
    feed.step(
        Vec::new(),
        vec![read("x.service", 7, "python3", "records", (1, 9), 4 * MIB)],
        procs.clone(),
    );
    let events = feed.step(
        vec![send("x.service", 7, "python3", "198.51.100.9", 2 * MIB - 1)],
        Vec::new(),
        procs.clone(),
    );
    assert!(events.is_empty());
    let events = feed.step(
        vec![send("x.service", 7, "python3", "198.51.100.9", 1)],
        Vec::new(),
        procs,
    );
    assert_eq!(raised(&events).len(), 1, "half of 4 MiB");

    // dovecot reads mail and serves it to an external client: its job.
    let procs = vec![process(20, "imap", "dovecot.service", Some(1), &[10])];
    feed.step(
        Vec::new(),
        vec![read(
            "dovecot.service",
            20,
            "imap",
            "mail_store",
            (1, 10),
            40 * MIB,
        )],
        procs.clone(),
    );
    let events = feed.step(
        vec![send(
            "dovecot.service",
            20,
            "imap",
            "198.51.100.20",
            30 * MIB,
        )],
        Vec::new(),
        procs,
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn lineage_for_secrets_is_a_send_as_large_as_the_file() {
    let mut feed = Feed::with_defaults();
    let procs = vec![process(9, "cat", "y.service", None, &[])];
    feed.step(
        Vec::new(),
        vec![read("y.service", 9, "cat", "secrets", (1, 3), 3_000)],
        procs.clone(),
    );
    let events = feed.step(
        vec![send("y.service", 9, "cat", "198.51.100.3", 2_999)],
        Vec::new(),
        procs.clone(),
    );
    assert!(events.is_empty());
    let events = feed.step(
        vec![send("y.service", 9, "cat", "198.51.100.3", 1)],
        Vec::new(),
        procs,
    );
    let alerts = raised(&events);
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.kind.as_str(), a.bytes, a.class.as_deref()))
            .collect::<Vec<_>>(),
        vec![("lineage", 3_000, Some("secrets"))]
    );
}

#[test]
fn lineage_follows_an_archive_from_its_writer_to_an_unrelated_uploader() {
    let mut feed = Feed::with_defaults();
    let archive = (2049, 777);
    let tar = vec![process(200, "tar", "a.service", Some(200), &[])];
    let events = feed.step(
        Vec::new(),
        vec![
            read("a.service", 200, "tar", "records", (2049, 1), 20 * MIB),
            write("a.service", 200, "tar", archive, 5 * MIB),
        ],
        tar,
    );
    assert!(events.is_empty());
    // Another service, another session: only the file links them.
    let up = vec![process(300, "python3", "b.service", Some(300), &[])];
    feed.step(
        Vec::new(),
        vec![read("b.service", 300, "python3", "other", archive, 5 * MIB)],
        up.clone(),
    );
    // Threshold: min(10 MiB, max(half of the 5 MiB archive, 1 MiB)) = 2.5 MiB.
    let events = feed.step(
        vec![send(
            "b.service",
            300,
            "python3",
            "198.51.100.9",
            5 * MIB / 2 - 1,
        )],
        Vec::new(),
        up.clone(),
    );
    assert!(events.is_empty());
    let events = feed.step(
        vec![send("b.service", 300, "python3", "198.51.100.9", 1)],
        Vec::new(),
        up,
    );
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert_eq!(
        (
            alerts[0].service.as_str(),
            alerts[0].class.as_deref(),
            alerts[0].bytes
        ),
        ("b.service", Some("records"), 5 * MIB / 2)
    );
    assert!(
        alerts[0].description.contains("/data/777"),
        "{}",
        alerts[0].description
    );

    // The same shapes without the write: nothing.
    let mut feed = Feed::with_defaults();
    feed.step(
        Vec::new(),
        vec![read(
            "a.service",
            200,
            "tar",
            "records",
            (2049, 1),
            20 * MIB,
        )],
        vec![process(200, "tar", "a.service", Some(200), &[])],
    );
    let up = vec![process(300, "python3", "b.service", Some(300), &[])];
    feed.step(
        Vec::new(),
        vec![read("b.service", 300, "python3", "other", archive, 5 * MIB)],
        up.clone(),
    );
    let events = feed.step(
        vec![send("b.service", 300, "python3", "198.51.100.9", 20 * MIB)],
        Vec::new(),
        up,
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn new_destination_after_learning_at_one_mib() {
    let mut feed = Feed::new(
        DetectConfig {
            state_file: None,
            ..DetectConfig::default()
        },
        MONDAY,
        HOUR,
    );
    feed.flows(vec![send(
        "app.service",
        5,
        "app",
        "198.51.100.1",
        10 * MIB,
    )]);
    // A week of hours, quiet but for the known destination.
    for _ in 0..(7 * 24 - 1) {
        assert!(
            feed.flows(vec![send("app.service", 5, "app", "198.51.100.1", 1_000)])
                .is_empty()
        );
    }
    assert!(
        feed.flows(vec![send("app.service", 5, "app", "198.51.100.2", MIB - 1)])
            .is_empty()
    );
    let events = feed.flows(vec![send("app.service", 5, "app", "198.51.100.2", 1)]);
    let alerts = raised(&events);
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.kind.as_str(), a.destination.as_str(), a.bytes))
            .collect::<Vec<_>>(),
        vec![("new_destination", "198.51.100.2", MIB)]
    );
    let events = feed.flows(vec![send("app.service", 5, "app", "198.51.100.1", 5 * MIB)]);
    assert!(raised(&events).is_empty(), "known: {events:?}");
}

/// `days` days of hourly intervals of `per_hour(day, hour)` bytes from app.service.
fn hourly(
    feed: &mut Feed,
    days: u64,
    per_hour: impl Fn(u64, u64) -> u64,
) -> Vec<(u64, u64, AlertEvent)> {
    let mut out = Vec::new();
    for day in 0..days {
        for hour in 0..24 {
            let bytes = per_hour(day, hour);
            let flows = if bytes > 0 {
                vec![send("app.service", 5, "app", "198.51.100.1", bytes)]
            } else {
                Vec::new()
            };
            for e in feed.flows(flows) {
                out.push((day, hour, e));
            }
        }
    }
    out
}

#[test]
fn baseline_needs_four_days_and_fires_above_median_plus_four_sigma_and_the_floor() {
    let config = DetectConfig {
        state_file: None,
        ..DetectConfig::default()
    };
    let mut feed = Feed::new(config, MONDAY, HOUR);
    // 2–3 MiB an hour; a 30 MiB hour on day 3 (only 3 days of samples) is not yet an alert.
    let usual = |day: u64, hour: u64| 2 * MIB + (day * 7 + hour) % 3 * (MIB / 2);
    let events = hourly(&mut feed, 3, usual);
    assert!(events.is_empty());
    let events = hourly(
        &mut feed,
        1,
        |_, h| if h == 10 { 30 * MIB } else { usual(3, h) },
    );
    assert!(events.is_empty(), "three days of samples: {events:?}");
    // Day 5 (four days of samples): 19 MiB is below the floor, 21 MiB is not.
    let events = hourly(&mut feed, 1, |_, h| match h {
        9 => 19 * MIB,
        10 => 21 * MIB,
        _ => usual(4, h),
    });
    let alerts: Vec<_> = events
        .iter()
        .filter(|(_, _, e)| e.change == AlertChange::Raised)
        .map(|(_, h, e)| {
            (
                *h,
                e.alert.kind.as_str(),
                e.alert.bytes,
                e.alert.destination.as_str(),
            )
        })
        .collect();
    assert_eq!(alerts, vec![(10, "baseline", 21 * MIB, "198.51.100.1")]);
}

#[test]
fn slow_leak_of_20_mib_a_day_fires_on_its_second_day_and_not_before() {
    let config = DetectConfig {
        state_file: None,
        ..DetectConfig::default()
    };
    let mut feed = Feed::new(config, MONDAY, HOUR);
    // A quiet service: 1 MiB a day for 6 days; then 20 MiB more a day, spread over the hours.
    let quiet = |_: u64, hour: u64| if hour == 12 { MIB } else { 0 };
    assert!(hourly(&mut feed, 6, quiet).is_empty());
    let drip = |_: u64, hour: u64| quiet(0, hour) + 20 * MIB / 24;
    let events = hourly(&mut feed, 3, drip);
    let alerts: Vec<_> = events
        .iter()
        .filter(|(_, _, e)| e.change == AlertChange::Raised)
        .map(|(d, h, e)| (*d, *h, e.alert.kind.as_str()))
        .collect();
    // Day 1: S = 21 − 1 − 2 = 18 MiB < h σ = 20 MiB. Day 2: S passes 20 MiB once the day's
    // bytes pass 5 MiB: 6 hours of 20/24 MiB (rounded down) are 2 bytes short of it, 7 are
    // over.
    assert_eq!(alerts, vec![(1, 6, "slow_leak")]);
}

#[test]
fn budget_allowlist_and_daily_budget() {
    let mut config = DetectConfig {
        state_file: None,
        ..DetectConfig::default()
    };
    config.profile.push(config::Profile {
        name: "exports".into(),
        services: vec!["export.service".into()],
        comms: Vec::new(),
        reads: Vec::new(),
        allow: vec!["198.51.100.50/32".parse().expect("net")],
        allow_internal: false,
        daily_budget: Some(bytesize::ByteSize::b(100 * MIB)),
        many_destinations: false,
    });
    let mut feed = Feed::new(config, MONDAY, 10_000);
    // rsync (the shipped backup profile: internal only) to its internal host, then outside.
    assert!(
        feed.flows(vec![send(
            "cron.service",
            3,
            "rsync",
            "10.0.0.5",
            900 * MIB
        )])
        .is_empty()
    );
    assert!(
        feed.flows(vec![send(
            "cron.service",
            3,
            "rsync",
            "198.51.100.66",
            65_535
        )])
        .is_empty()
    );
    let events = feed.flows(vec![send("cron.service", 3, "rsync", "198.51.100.66", 1)]);
    assert_eq!(
        raised(&events)
            .iter()
            .map(|a| (a.kind.as_str(), a.destination.as_str(), a.bytes))
            .collect::<Vec<_>>(),
        vec![("budget", "198.51.100.66", 65_536)]
    );
    // The export service: 60 + 40 MiB to its allowed host is within budget, 1 byte more is not.
    assert!(
        feed.flows(vec![send(
            "export.service",
            8,
            "lftp",
            "198.51.100.50",
            60 * MIB
        )])
        .is_empty()
    );
    assert!(
        feed.flows(vec![send(
            "export.service",
            8,
            "lftp",
            "198.51.100.50",
            40 * MIB
        )])
        .is_empty()
    );
    let events = feed.flows(vec![send("export.service", 8, "lftp", "198.51.100.50", 1)]);
    assert_eq!(
        raised(&events)
            .iter()
            .map(|a| (a.kind.as_str(), a.destination.as_str(), a.bytes))
            .collect::<Vec<_>>(),
        vec![("budget", "*", 100 * MIB + 1)]
    );
}

#[test]
fn the_same_input_gives_the_same_alerts_and_the_state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("exfil-detect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.json");
    let config = DetectConfig {
        state_file: Some(path.clone()),
        ..DetectConfig::default()
    };
    let run = |config: &DetectConfig| {
        let mut feed = Feed::new(config.clone(), MONDAY, 10_000);
        for _ in 0..10 {
            feed.flows(vec![send(
                "backup.service",
                42,
                "curl",
                "198.51.100.7",
                6 * MIB,
            )]);
        }
        feed
    };
    let mut first = run(&config);
    let second = run(&config);
    assert_eq!(first.events, second.events, "deterministic");
    first.detector.save().expect("save");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("state").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A restarted detector keeps the open alert: more bytes grow it, nothing is raised again.
    let mut restarted = Feed::new(config.clone(), first.at, 10_000);
    let note = restarted.detector.restore().expect("restore");
    assert_eq!(
        note,
        Some(format!(
            "detection state restored from {}: 1 alerts open",
            path.display()
        ))
    );
    let events = restarted.flows(vec![send(
        "backup.service",
        42,
        "curl",
        "198.51.100.7",
        6 * MIB,
    )]);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.change, e.alert.id, e.alert.bytes))
            .collect::<Vec<_>>(),
        vec![(AlertChange::Updated, 1, 66 * MIB)]
    );
    assert_eq!(restarted.detector.alerts(&Filter::default()).len(), 1);

    // A corrupt file is set aside, and detection starts afresh.
    std::fs::write(&path, "{not json").expect("corrupt");
    let mut fresh = Feed::new(config, MONDAY, 10_000);
    let note = fresh.detector.restore().expect("restore");
    assert!(note.is_some_and(|n| n.contains("moved to") && n.contains("state.json.bad")));
    assert!(dir.join("state.json.bad").exists());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
