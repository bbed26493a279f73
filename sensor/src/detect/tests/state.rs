//! Determinism, and the state file across a restart.

use super::*;

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
