//! What ships in deploy/ is checked by the tools that will load it: the Prometheus rules by
//! `promtool check rules` and their unit tests by `promtool test rules`; the Alertmanager
//! example by `amtool check-config`, its routing by `amtool config routes test`, and its
//! inhibit rule (which amtool cannot test) by a real Alertmanager running it.
//! (`cargo xtask test` installs prometheus and prometheus-alertmanager.)

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{Alertmanager, WebhookReceiver, shipped_alertmanager_config};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs `program` in deploy/`dir`; returns (success, stdout).
fn run(program: &str, dir: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .current_dir(deploy(dir))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (`cargo xtask setup` installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[test]
fn the_prometheus_rules_load_and_pass_their_unit_tests() {
    let (_, checked) = run("promtool", "prometheus", &["check", "rules", "rules.yml"]);
    assert_eq!(checked, "Checking rules.yml\n  SUCCESS: 9 rules found\n\n");
    let (_, tested) = run(
        "promtool",
        "prometheus",
        &["test", "rules", "rules_test.yml"],
    );
    assert_eq!(tested, "Unit Testing:  rules_test.yml\n  SUCCESS\n\n");
}

#[test]
fn the_alertmanager_example_loads_and_routes_data_leaving_to_security() {
    let (_, checked) = run(
        "amtool",
        "alertmanager",
        &["check-config", "alertmanager.yml"],
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let route = |labels: &[&str]| {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend_from_slice(labels);
        run("amtool", "alertmanager", &args).1.trim().to_owned()
    };
    assert_eq!(
        route(&[
            "alertname=ExfilSensorBurst",
            "service=dovecot.service",
            "destination=198.51.100.9"
        ]),
        "security"
    );
    assert_eq!(
        route(&["alertname=ExfilSensorDestinationFromManyHosts"]),
        "security"
    );
    for health in [
        "ExfilSensorDown",
        "ExfilSensorPollStalled",
        "ExfilSensorJournalFailing",
    ] {
        assert_eq!(
            route(&[&format!("alertname={health}"), "instance=mail1:9987"]),
            "operations",
            "{health}"
        );
    }
}

/// The alerts a real Alertmanager holds, by (alertname, instance): (state, inhibited by).
fn states(am: &Alertmanager) -> BTreeMap<(String, String), (String, Vec<String>)> {
    am.alerts()
        .expect("GET /api/v2/alerts")
        .iter()
        .map(|a| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            let by = a["status"]["inhibitedBy"]
                .as_array()
                .map(|by| by.iter().map(text).collect())
                .unwrap_or_default();
            (
                (
                    text(&a["labels"]["alertname"]),
                    text(&a["labels"]["instance"]),
                ),
                (text(&a["status"]["state"]), by),
            )
        })
        .collect()
}

/// The shipped inhibit rule, in a real Alertmanager on the shipped file (its webhooks on a
/// receiver of the test): while mail1's agent is down, mail1's poll and journal alerts are
/// suppressed by it; mail2's poll alert, and mail1's data-leaving alert, are not.
#[test]
fn the_alertmanager_example_inhibits_the_health_alerts_of_a_down_agent() {
    let webhook =
        WebhookReceiver::start("127.0.0.1:0".parse().expect("addr"), 200).expect("receiver");
    let config = shipped_alertmanager_config(webhook.addr).expect("the shipped config");
    let am = Alertmanager::start(&config).expect("Alertmanager on the shipped config");
    let alert = |name: &str, instance: &str| {
        serde_json::json!({
            "labels": { "alertname": name, "instance": instance, "job": "exfil-sensor" },
            "annotations": { "summary": "from the inhibit test" },
        })
    };
    let (mail1, mail2) = ("mail1:9987", "mail2:9987");
    am.post_alerts(&serde_json::json!([
        alert("ExfilSensorDown", mail1),
        alert("ExfilSensorPollStalled", mail1),
        alert("ExfilSensorJournalFailing", mail1),
        alert("ExfilSensorPollStalled", mail2),
        alert("ExfilSensorBurst", mail1),
    ]))
    .expect("POST the alerts");
    // Alertmanager works out each alert's state as it processes it: wait until all five are.
    let deadline = Instant::now() + Duration::from_secs(20);
    let states = loop {
        let states = states(&am);
        if states.len() == 5 && states.values().all(|(state, _)| state != "unprocessed") {
            break states;
        }
        assert!(Instant::now() < deadline, "{states:?}\n{}", am.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let down = am
        .alerts()
        .expect("GET /api/v2/alerts")
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "ExfilSensorDown")
        .and_then(|a| a["fingerprint"].as_str().map(str::to_owned))
        .expect("the down alert's fingerprint");
    let key = |name: &str, instance: &str| (name.to_owned(), instance.to_owned());
    let suppressed = ("suppressed".to_owned(), vec![down]);
    let active = ("active".to_owned(), Vec::new());
    assert_eq!(
        states,
        BTreeMap::from([
            (key("ExfilSensorDown", mail1), active.clone()),
            (key("ExfilSensorPollStalled", mail1), suppressed.clone()),
            (key("ExfilSensorJournalFailing", mail1), suppressed),
            (key("ExfilSensorPollStalled", mail2), active.clone()),
            (key("ExfilSensorBurst", mail1), active),
        ])
    );
}

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze checks that ExecStart= exists: the unit as shipped, pointing at the
    // binary under test instead of /usr/bin.
    let unit = std::fs::read_to_string(deploy("systemd/exfil-sensor.service")).expect("unit");
    let bin = exfil_tests::agent_bin();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("exfil-sensor.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/exfil-sensor", &bin.display().to_string()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian package systemd: `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("exfil-sensor.service"),
        "no complaint about the unit: {stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The dashboard as Grafana lays it out: unique panel ids, every panel inside the 24-column
/// grid and overlapping none, every query on the `$datasource` variable with a refId unique
/// in its panel, and every host panel filtered by `$instance`. (Its queries run against a
/// real Prometheus in tests/prometheus.rs.)
#[test]
fn the_grafana_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(deploy("grafana/exfil-sensor.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(dashboard["uid"], "exfil-sensor");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut cells = std::collections::HashSet::new();
    let mut host_row = false;
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "{title}: id");
        let pos = |k: &str| panel["gridPos"][k].as_u64().expect("gridPos");
        let (x, y, w, h) = (pos("x"), pos("y"), pos("w"), pos("h"));
        assert!(x + w <= 24, "{title}: beyond the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            host_row = title.contains("$instance");
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let mut refs = std::collections::HashSet::new();
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}"
            );
            let expr = target["expr"].as_str().expect("expr");
            if host_row {
                assert!(expr.contains("instance=\"$instance\""), "{title}: {expr}");
            }
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
}
