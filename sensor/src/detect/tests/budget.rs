//! `budget`: allowlists and daily budgets.

use super::*;

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
        serves: Vec::new(),
        allow: vec!["198.51.100.50/32".parse().expect("net")],
        allow_names: Vec::new(),
        deny_names: Vec::new(),
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
