//! The rules that learn: `new_destination`, `baseline` and `slow_leak`.

use super::*;

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

/// Dovecot answers one client from two processes: imap-login (greeting, capabilities) and
/// imap (the mail). The alert holds both processes' bytes of the interval it is raised in,
/// whichever of their flows comes first, and names the larger sender.
#[test]
fn new_destination_holds_every_flow_of_the_interval_that_crosses_it() {
    let config = DetectConfig {
        state_file: None,
        new_destination: config::NewDestinationConfig {
            learning: std::time::Duration::ZERO,
            ..config::NewDestinationConfig::default()
        },
        ..DetectConfig::default()
    };
    for imap_first in [true, false] {
        let mut feed = Feed::new(config.clone(), MONDAY, 10_000);
        let imap = send("dovecot.service", 20, "imap", "198.51.100.7", 2 * MIB);
        let login = send("dovecot.service", 17, "imap-login", "198.51.100.7", 293);
        let flows = if imap_first {
            vec![imap, login]
        } else {
            vec![login, imap]
        };
        let events = feed.flows(flows);
        assert_eq!(
            raised(&events)
                .iter()
                .map(|a| (a.kind.as_str(), a.pid, a.comm.as_str(), a.bytes))
                .collect::<Vec<_>>(),
            vec![("new_destination", 20, "imap", 2 * MIB + 293)],
            "imap first: {imap_first}"
        );
    }
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

/// A service that only ever sent to internal hosts has a quiet baseline of 0 external bytes a
/// day: 20 MiB a day to the outside is a slow leak on its second day, as above.
#[test]
fn slow_leak_of_a_service_that_sent_nothing_outside_before_fires_on_its_second_day() {
    let config = DetectConfig {
        state_file: None,
        ..DetectConfig::default()
    };
    let mut feed = Feed::new(config, MONDAY, HOUR);
    let office = |mib: u64| send("app.service", 5, "app", "10.0.0.7", mib * MIB);
    for _ in 0..6 * 24 {
        assert!(feed.flows(vec![office(3)]).is_empty());
    }
    let mut alerts = Vec::new();
    for day in 0..3 {
        for hour in 0..24 {
            let flows = vec![
                office(3),
                send("app.service", 5, "app", "198.51.100.1", 20 * MIB / 24),
            ];
            for e in feed.flows(flows) {
                if e.change == AlertChange::Raised && e.alert.kind == "slow_leak" {
                    alerts.push((day, hour, e.alert.destination));
                }
            }
        }
    }
    // Day 1: S = 20 − 0 − 2 = 18 MiB; day 2: past h σ = 20 MiB once the day passes 4 MiB (5
    // hours of 20/24 MiB).
    assert_eq!(alerts, vec![(1, 4, "198.51.100.1".to_owned())]);
}
