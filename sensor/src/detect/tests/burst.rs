//! `burst`, per destination and spraying; and the benign day that raises nothing at all.

use super::*;

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
