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
