//! What ships in deploy/ is checked by the tools that will load it: the Prometheus rules by
//! `promtool check rules` and their unit tests by `promtool test rules`; the Alertmanager
//! example by `amtool check-config`, and its routing by `amtool config routes test`.
//! (`cargo xtask test` installs prometheus and prometheus-alertmanager.)

use std::{path::PathBuf, process::Command};

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
    assert_eq!(
        route(&["alertname=ExfilSensorDown", "instance=mail1:9987"]),
        "operations"
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
        .expect("systemd-analyze runs");
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
