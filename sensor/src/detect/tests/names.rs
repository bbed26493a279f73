//! Detection by DNS name: allow and deny lists of name suffixes for `new_destination` and
//! `budget`, and alerts that name their destination.

use super::*;

/// `flow` with the DNS name its row was bound to.
fn named(flow: FlowInterval, name: &str) -> FlowInterval {
    FlowInterval {
        destination_name: Some(name.into()),
        ..flow
    }
}

fn seen(events: &[AlertEvent]) -> Vec<(&str, &str, Option<&str>, u64, &str)> {
    raised(events)
        .into_iter()
        .map(|a| {
            (
                a.kind.as_str(),
                a.destination.as_str(),
                a.destination_name.as_deref(),
                a.bytes,
                a.summary.as_str(),
            )
        })
        .collect()
}

fn names_config(learning: std::time::Duration) -> DetectConfig {
    DetectConfig {
        state_file: None,
        new_destination: config::NewDestinationConfig {
            learning,
            allow_names: vec!["backup.example.net".into()],
            // Compared as lower case, as answers come.
            deny_names: vec!["Paste.Example.ORG".into()],
            ..config::NewDestinationConfig::default()
        },
        ..DetectConfig::default()
    }
}

#[test]
fn new_destination_knows_allowed_names_and_always_alerts_on_denied_ones() {
    let mut feed = Feed::new(names_config(std::time::Duration::ZERO), MONDAY, 10_000);
    // Named under the allowed suffix: never new, however much.
    let events = feed.flows(vec![named(
        send("app.service", 5, "curl", "198.51.100.20", 5 * MIB),
        "eu1.backup.example.net",
    )]);
    assert_eq!(seen(&events), vec![]);
    // Known from then on, also once no answer names it.
    let events = feed.flows(vec![send(
        "app.service",
        5,
        "curl",
        "198.51.100.20",
        5 * MIB,
    )]);
    assert_eq!(seen(&events), vec![]);
    // Only ends in the same letters: new, and the alert says the name.
    let events = feed.flows(vec![named(
        send("app.service", 5, "curl", "198.51.100.21", 5 * MIB),
        "evilbackup.example.net",
    )]);
    assert_eq!(
        seen(&events),
        vec![(
            "new_destination",
            "198.51.100.21",
            Some("evilbackup.example.net"),
            5 * MIB,
            "app.service sent 5.0 MiB to evilbackup.example.net (198.51.100.21), a destination it never used"
        )]
    );
    // Denied: 100 bytes are an alert, far below the 1 MiB threshold.
    let events = feed.flows(vec![named(
        send("app.service", 5, "curl", "198.51.100.1", 100),
        "dl.paste.example.org",
    )]);
    assert_eq!(
        seen(&events),
        vec![(
            "new_destination",
            "198.51.100.1",
            Some("dl.paste.example.org"),
            100,
            "app.service sent 100 B to dl.paste.example.org (198.51.100.1), a name detect.new_destination.deny_names lists"
        )]
    );
}

#[test]
fn a_denied_name_alerts_during_learning_and_on_a_known_address() {
    let mut feed = Feed::new(
        names_config(std::time::Duration::from_secs(7 * 86_400)),
        MONDAY,
        10_000,
    );
    // Learning: the address becomes known while no answer names it.
    let events = feed.flows(vec![send(
        "app.service",
        5,
        "curl",
        "198.51.100.1",
        5 * MIB,
    )]);
    assert_eq!(seen(&events), vec![]);
    let events = feed.flows(vec![named(
        send("app.service", 5, "curl", "198.51.100.1", 1),
        "paste.example.org",
    )]);
    assert_eq!(
        seen(&events),
        vec![(
            "new_destination",
            "198.51.100.1",
            Some("paste.example.org"),
            1,
            "app.service sent 1 B to paste.example.org (198.51.100.1), a name detect.new_destination.deny_names lists"
        )]
    );
}

#[test]
fn a_profile_sends_to_its_allowed_names_and_never_to_its_denied_ones() {
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
        allow: vec!["198.51.100.32/32".parse().expect("net")],
        allow_names: vec!["backup.example.net".into()],
        deny_names: vec!["files.example-storage.net".into()],
        allow_internal: false,
        daily_budget: None,
        many_destinations: false,
    });
    let mut feed = Feed::new(config, MONDAY, 10_000);
    // 60 MiB in one interval to an allowed name: no budget, and out of `burst` (50 MiB).
    let events = feed.flows(vec![named(
        send("export.service", 8, "lftp", "198.51.100.30", 60 * MIB),
        "eu1.backup.example.net",
    )]);
    assert_eq!(seen(&events), vec![]);
    // The names make an allowlist: an unnamed address is outside it after 64 KiB.
    let events = feed.flows(vec![send(
        "export.service",
        8,
        "lftp",
        "198.51.100.31",
        65_536,
    )]);
    assert_eq!(
        seen(&events),
        vec![(
            "budget",
            "198.51.100.31",
            None,
            65_536,
            "lftp (export.service) sent 64.0 KiB to 198.51.100.31, outside its allowlist"
        )]
    );
    // A denied name: one byte is an alert, though `allow` lists its address.
    let events = feed.flows(vec![named(
        send("export.service", 8, "lftp", "198.51.100.32", 1),
        "files.example-storage.net",
    )]);
    assert_eq!(
        seen(&events),
        vec![(
            "budget",
            "198.51.100.32",
            Some("files.example-storage.net"),
            1,
            "lftp (export.service) sent 1 B to files.example-storage.net (198.51.100.32), a name its profile denies"
        )]
    );
}

#[test]
fn an_alert_names_its_destination_by_the_senders_own_row() {
    let mut feed = Feed::new(names_config(std::time::Duration::ZERO), MONDAY, 10_000);
    // Two processes reach one address by different names; the larger sender's name is the
    // alert's.
    let events = feed.flows(vec![
        named(
            send("app.service", 5, "curl", "198.51.100.40", MIB),
            "cdn.example.com",
        ),
        named(
            send("app.service", 6, "rclone", "198.51.100.40", 3 * MIB),
            "files.example-storage.net",
        ),
    ]);
    assert_eq!(
        seen(&events),
        vec![(
            "new_destination",
            "198.51.100.40",
            Some("files.example-storage.net"),
            4 * MIB,
            "app.service sent 4.0 MiB to files.example-storage.net (198.51.100.40), a destination it never used"
        )]
    );
}

#[test]
fn a_bad_name_suffix_is_refused_with_its_key_line_and_column() {
    let text = "[[detect.profile]]\nname = \"exports\"\nallow_names = [\"backup.example.net\", \"*.example.org\"]\n";
    let err = crate::config::Config::parse(text, "c.toml")
        .expect_err("a wildcard")
        .to_string();
    assert_eq!(
        err,
        "config c.toml: line 3, column 38: detect.profile[0].allow_names[1] = \"*.example.org\": labels are letters, digits, '-' and '_' (no '*': a suffix matches every name under it)"
    );
    let text = "[detect.new_destination]\ndeny_names = [\".paste.example.org\"]\n";
    let err = crate::config::Config::parse(text, "c.toml")
        .expect_err("a leading dot")
        .to_string();
    assert_eq!(
        err,
        "config c.toml: line 2, column 15: detect.new_destination.deny_names[0] = \".paste.example.org\": write the suffix without a leading or trailing dot (backup.example.net)"
    );
}
