//! Replay against a live run simulated here with the same detector the agent runs: the same
//! alerts (ids included) with the recorded config and state; other alerts with other rules.
use std::path::PathBuf;

use super::*;
use crate::{
    config::DEFAULT_TOML,
    flow::interval::FlowInterval,
    journal::{DamageKind, Position, StartRecord},
};

/// 2026-11-24T00:00:00Z.
const T0: u64 = 1_795_478_400_000;
const MIB: u64 = 1 << 20;
const INTERVAL_MS: u64 = 10_000;

fn send(service: &str, to: &str, bytes: u64) -> FlowInterval {
    FlowInterval::sample(service, 4242, "curl", to, bytes)
}

/// The `n`th interval from `from_ms`, with `flows`.
fn interval(from_ms: u64, n: u64, flows: Vec<FlowInterval>) -> Interval {
    Interval {
        start_ms: from_ms + n * INTERVAL_MS,
        end_ms: from_ms + (n + 1) * INTERVAL_MS,
        flows,
        ..Interval::default()
    }
}

/// An upload of `chunks` × `chunk` bytes, one chunk per interval, from interval `first` on.
fn upload(from_ms: u64, first: u64, chunks: u64, chunk: u64, to: &str) -> Vec<Interval> {
    (first..first + chunks)
        .map(|n| interval(from_ms, n, vec![send("exfil-e2e.service", to, chunk)]))
        .collect()
}

fn entry(record: Record) -> Entry {
    Entry::Record {
        position: Position {
            segment: PathBuf::from("0000000000000001.journal"),
            offset: 0,
            number: 0,
        },
        record,
    }
}

fn start(at_ms: u64, config_toml: &str, detect_state: Option<String>) -> Entry {
    entry(Record::Start(StartRecord {
        at_ms,
        agent_version: "0.3.0".into(),
        hostname: "mail1".into(),
        config_source: "/etc/exfil-sensor/config.toml".into(),
        config_toml: config_toml.into(),
        detect_state,
    }))
}

/// What the live agent does with its intervals: detection, then the interval record, then
/// the alert changes it caused. Returns the journal entries.
fn live_run(detector: &mut Detector, intervals: Vec<Interval>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for interval in intervals {
        let events = detector.observe(&interval);
        entries.push(entry(Record::Interval(interval)));
        entries.extend(events.into_iter().map(|e| entry(Record::Alert(e))));
    }
    entries
}

fn live_detector(config_toml: &str) -> Detector {
    let config = Config::parse(config_toml, "live.toml").expect("config");
    let mut detect = config.detect;
    detect.state_file = None;
    Detector::new(&detect, "live.toml").expect("detector")
}

fn run(entries: Vec<Entry>, rules: Rules) -> Outcome {
    replay(
        entries.into_iter(),
        &Options {
            rules,
            from_ms: None,
            to_ms: None,
        },
        |_| {},
    )
    .expect("replay")
}

fn given(toml: &str) -> Rules {
    Rules::Given {
        config: Box::new(Config::parse(toml, "other.toml").expect("config")),
        source: "other.toml".into(),
    }
}

#[test]
fn replay_with_the_recorded_config_raises_exactly_the_live_alerts() {
    let mut live = live_detector(DEFAULT_TOML);
    // 80 MiB in 8 MiB steps to one external host.
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(
        &mut live,
        upload(T0, 0, 10, 8 * MIB, "198.51.100.2"),
    ));
    let outcome = run(entries, Rules::Recorded);
    assert_eq!(outcome.live.len(), 1);
    assert_eq!(
        outcome.alerts, outcome.live,
        "ids, times, bytes: all the same"
    );
    assert!(outcome.agrees_with_live());
    let burst = &outcome.alerts[0];
    assert_eq!(
        (burst.kind.as_str(), burst.destination.as_str(), burst.bytes),
        ("burst", "198.51.100.2", 80 * MIB)
    );
    // The start, ten intervals, the raise (at 56 MiB) and three updates.
    assert_eq!((outcome.records, outcome.intervals), (15, 10));
    assert_eq!(outcome.span, Some((T0, T0 + 10 * INTERVAL_MS)));
}

/// The names the live agent bound to its flow rows travel in the journal's interval records:
/// replay's alerts name their destinations as the live ones did.
#[test]
fn replayed_alerts_carry_the_names_the_live_rows_had() {
    let mut live = live_detector(DEFAULT_TOML);
    let mut intervals = upload(T0, 0, 10, 8 * MIB, "198.51.100.2");
    for flow in intervals.iter_mut().flat_map(|i| i.flows.iter_mut()) {
        flow.destination_name = Some("upload.example.test".into());
    }
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(&mut live, intervals));
    // Through the journal's encoding, as `exfil-sensor replay` reads them.
    let entries = entries
        .into_iter()
        .map(|e| match e {
            Entry::Record { record, .. } => {
                let mut payload = Vec::new();
                record.encode(false, &mut payload).expect("encodes");
                entry(Record::decode(record.record_type() as u8, &payload).expect("decodes"))
            }
            damage => damage,
        })
        .collect();
    let outcome = run(entries, Rules::Recorded);
    assert_eq!(outcome.alerts, outcome.live);
    assert_eq!(
        outcome
            .alerts
            .iter()
            .map(|a| (
                a.destination.as_str(),
                a.destination_name.as_deref(),
                a.summary.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![(
            "198.51.100.2",
            Some("upload.example.test"),
            "exfil-e2e.service sent 56.0 MiB to upload.example.test (198.51.100.2) within 300s"
        )]
    );
}

#[test]
fn each_restart_takes_the_state_the_agent_restored() {
    // Run 1: eight days of a service talking to one host: learning ends.
    let state_file = std::env::temp_dir().join(format!("exfil-replay-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state_file);
    let config = Config::parse(DEFAULT_TOML, "live.toml").expect("config");
    let mut detect = config.detect.clone();
    detect.state_file = Some(state_file.clone());
    let mut first = Detector::new(&detect, "live.toml").expect("detector");
    let day = 86_400_000;
    let learning: Vec<Interval> = (0..9)
        .map(|d| {
            interval(
                T0 + d * day,
                0,
                vec![send("exfil-e2e.service", "198.51.100.2", 2 * MIB)],
            )
        })
        .collect();
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(&mut first, learning));
    first.save().expect("save");
    // Run 2, after a restart: 2 MiB to a host never seen is a new destination now.
    let mut second = Detector::new(&detect, "live.toml").expect("detector");
    second.restore().expect("restore");
    let text = second.restored_state().map(str::to_owned);
    assert!(text.is_some());
    let later = T0 + 9 * day;
    entries.push(start(later, DEFAULT_TOML, text));
    entries.extend(live_run(
        &mut second,
        vec![interval(
            later,
            0,
            vec![send("exfil-e2e.service", "203.0.113.50", 2 * MIB)],
        )],
    ));
    let _ = std::fs::remove_file(&state_file);

    let outcome = run(entries.clone(), Rules::Recorded);
    assert_eq!(
        outcome
            .live
            .iter()
            .map(|a| (a.kind.as_str(), a.destination.as_str()))
            .collect::<Vec<_>>(),
        [("new_destination", "203.0.113.50")]
    );
    assert_eq!(outcome.alerts, outcome.live);

    // Without the recorded state the second run would still be learning: the restore is what
    // makes them agree. (Drop the state from the second start and see.)
    let stateless: Vec<Entry> = entries
        .into_iter()
        .map(|e| match e {
            Entry::Record {
                record: Record::Start(mut s),
                position,
            } if s.at_ms == later => {
                s.detect_state = None;
                Entry::Record {
                    position,
                    record: Record::Start(s),
                }
            }
            other => other,
        })
        .collect();
    assert!(run(stateless, Rules::Recorded).alerts.is_empty());
}

#[test]
fn another_config_finds_what_the_live_rules_did_not() {
    let mut live = live_detector(DEFAULT_TOML);
    // 30 MiB: under the default 50 MiB burst threshold.
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(
        &mut live,
        upload(T0, 0, 3, 10 * MIB, "198.51.100.2"),
    ));
    let recorded = run(entries.clone(), Rules::Recorded);
    assert!(recorded.live.is_empty() && recorded.alerts.is_empty());

    let lower = run(
        entries.clone(),
        given("[detect.burst]\nbytes = \"20 MiB\"\n"),
    );
    assert_eq!(
        lower
            .alerts
            .iter()
            .map(|a| (a.kind.as_str(), a.destination.as_str(), a.bytes))
            .collect::<Vec<_>>(),
        [("burst", "198.51.100.2", 30 * MIB)]
    );
    assert!(!lower.agrees_with_live());

    // The same rules with the destination declared internal: nothing.
    let internal = run(
        entries,
        given("[networks]\ninternal = [\"198.51.100.0/24\"]\n[detect.burst]\nbytes = \"20 MiB\"\n"),
    );
    assert!(internal.alerts.is_empty(), "{:?}", internal.alerts);
}

#[test]
fn from_and_to_choose_the_alerts_shown_while_earlier_records_still_teach() {
    let mut live = live_detector(DEFAULT_TOML);
    let hour = 3_600_000;
    let mut intervals = upload(T0, 0, 6, 10 * MIB, "198.51.100.2");
    intervals.extend(upload(T0 + 2 * hour, 0, 6, 10 * MIB, "198.51.100.3"));
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(&mut live, intervals));
    let ranged = replay(
        entries.into_iter(),
        &Options {
            rules: Rules::Recorded,
            from_ms: Some(T0 + hour),
            to_ms: Some(T0 + 3 * hour),
        },
        |_| {},
    )
    .expect("replay");
    assert_eq!(
        ranged
            .alerts
            .iter()
            .map(|a| a.destination.as_str())
            .collect::<Vec<_>>(),
        ["198.51.100.3"]
    );
    assert_eq!(ranged.alerts, ranged.live);
}

#[test]
fn damage_is_reported_and_the_records_around_it_still_replay() {
    let mut live = live_detector(DEFAULT_TOML);
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(
        &mut live,
        upload(T0, 0, 10, 8 * MIB, "198.51.100.2"),
    ));
    // The fourth interval's record is lost to damage.
    let lost = Damage {
        segment: PathBuf::from("0000000000000001.journal"),
        offset: 4096,
        number: 5,
        kind: DamageKind::Checksum,
        skipped_bytes: 310,
    };
    entries[4] = Entry::Damaged(lost.clone());
    let mut seen = 0;
    let outcome = replay(
        entries.into_iter(),
        &Options {
            rules: Rules::Recorded,
            from_ms: None,
            to_ms: None,
        },
        |n| seen = n,
    )
    .expect("replay");
    assert_eq!(outcome.damage, [lost]);
    assert_eq!((seen, outcome.intervals), (15, 9));
    // 72 MiB arrived: still a burst, 8 MiB smaller than the live one.
    assert_eq!(outcome.alerts[0].bytes, 72 * MIB);
    assert_eq!(outcome.live[0].bytes, 80 * MIB);
}

#[test]
fn intervals_before_any_start_record_are_replayed_with_the_default_rules() {
    let mut live = live_detector(DEFAULT_TOML);
    let entries = live_run(&mut live, upload(T0, 0, 7, 8 * MIB, "198.51.100.2"));
    let outcome = run(entries, Rules::Recorded);
    assert_eq!(outcome.before_first_start, 7);
    assert_eq!(outcome.alerts, outcome.live);
    assert_eq!(outcome.alerts.len(), 1);
}

/// A `tamper` alert the live agent's own checks raised between intervals: replay cannot see
/// what they saw, so it takes the alert as recorded, and the burst after it keeps its live id.
#[test]
fn recorded_tamper_alerts_are_taken_as_they_were_and_later_ids_match() {
    let mut live = live_detector(DEFAULT_TOML);
    let mut entries = vec![start(T0, DEFAULT_TOML, None)];
    entries.extend(live_run(&mut live, vec![interval(T0, 0, Vec::new())]));
    let tamper = crate::detect::tamper::Tamper {
        subject: "probe cgroup:sendmsg4".into(),
        summary: "probe cgroup:sendmsg4 was detached from the kernel (link 7): …".into(),
        description: "…".into(),
    };
    let raised = live.tamper(&tamper, T0 + INTERVAL_MS + 500, 4242);
    assert_eq!(raised.alert.id, 1);
    entries.push(entry(Record::Alert(raised)));
    entries.extend(live_run(
        &mut live,
        upload(T0, 1, 10, 8 * MIB, "198.51.100.2"),
    ));
    let outcome = run(entries, Rules::Recorded);
    assert_eq!(
        outcome
            .live
            .iter()
            .map(|a| (a.id, a.kind.as_str()))
            .collect::<Vec<_>>(),
        [(1, "tamper"), (2, "burst")]
    );
    assert_eq!(
        outcome.alerts, outcome.live,
        "ids, times, bytes: all the same"
    );
    assert!(outcome.agrees_with_live());
}
