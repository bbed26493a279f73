//! The agent in the Prometheus world: a real Prometheus (the Debian package) scrapes it and
//! stores exact totals, the shipped rules load and evaluate against those series, and every
//! query of the shipped Grafana dashboard parses and returns series.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, FileRow, NetNs, POLL, Proc, Prometheus, Sample, ServiceCgroup, require_root,
    socket_addr, traffic,
};

const UPLOAD: u64 = 5_242_883;
const FILE: u64 = 3_000_017;
const SERVICE: &str = "exfil-e2e-prometheus.service";
const JOB: &str = "exfil-sensor";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The one value of an instant query that must have exactly one sample.
fn single(samples: &[Sample], what: &str) -> f64 {
    assert_eq!(samples.len(), 1, "{what}: {samples:?}");
    samples[0].value
}

/// Waits (10 s at most) until `/api/v1/files` has a row of `pid` in the test's class for
/// which `done` holds.
fn settled_file(agent: &Agent, pid: u32, done: impl Fn(&FileRow) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = agent.files().expect("/api/v1/files");
        let mine: Vec<&FileRow> = rows.iter().filter(|f| f.pid == pid).collect();
        if mine.iter().any(|f| f.class == "e2e_evidence" && done(f)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no settled row of {pid}: {mine:#?}"
        );
        std::thread::sleep(POLL);
    }
}

/// `exfil-traffic` with `args`, started inside the test's service cgroup.
fn in_service(cgroup: &ServiceCgroup, args: &[&str], what: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args(args);
    cgroup.place(&mut cmd).expect("place in the service cgroup");
    Proc::spawn(cmd, what).expect(what)
}

#[test]
fn prometheus_stores_exact_totals_and_every_dashboard_query_returns_series() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let evidence = dir.join("evidence.bin");
    // A class of its own for the test's file, so that its series holds that file's bytes
    // only; a json_lines sink, so that the dashboard's sink panel has series; a burst
    // threshold below the upload, so that the alert panels and annotations have one.
    let agent = Agent::start_with_interval(
        Duration::from_secs(2),
        &format!(
            "\n[alerts]\njson_lines = \"{}\"\n\n[detect.burst]\nbytes = \"4 MiB\"\n\n\
         [[files.class]]\nname = \"e2e_evidence\"\npaths = [\"{}\"]\n",
            dir.join("alerts.jsonl").display(),
            dir.display()
        ),
    )
    .expect("agent");
    let instance = agent.metrics_addr().to_string();
    let prometheus = Prometheus::start(
        &format!("  - job_name: {JOB}\n    static_configs:\n      - targets: ['{instance}']\n"),
        &[&repo().join("deploy/prometheus/rules.yml")],
    )
    .expect("prometheus");

    // Scraping before anything happens (Prometheus takes its first targets a few seconds after
    // start), so that it sees every counter move.
    let up = format!("up{{job=\"{JOB}\", instance=\"{instance}\"}}");
    let scraped = prometheus
        .query_until(&up, Duration::from_secs(30), |s| {
            s.first().is_some_and(|s| s.value == 1.0)
        })
        .expect("up");
    assert_eq!(single(&scraped, &up), 1.0, "Prometheus scrapes the agent");

    let cgroup = ServiceCgroup::create(SERVICE).expect("service cgroup");
    let size = FILE.to_string();
    let mut writer = in_service(
        &cgroup,
        &["write", evidence.to_str().expect("utf-8"), &size, "65536"],
        "writer",
    );
    assert_eq!(writer.expect_line::<u64>("wrote").expect("wrote"), FILE);
    // Each process stays until the agent has its row (its path, so its class, is looked up
    // while it lives).
    settled_file(&agent, writer.pid(), |f| f.bytes_written == FILE);
    writer.finish().expect("writer exits cleanly");
    let mut reader = in_service(
        &cgroup,
        &["read", evidence.to_str().expect("utf-8"), "65536"],
        "reader",
    );
    assert_eq!(reader.expect_line::<u64>("read").expect("read"), FILE);
    settled_file(&agent, reader.pid(), |f| f.bytes_read == FILE);
    reader.finish().expect("reader exits cleanly");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", "198.51.100.2").expect("sink");
    let upload = UPLOAD.to_string();
    let mut sender = in_service(
        &cgroup,
        &[
            "send",
            "tcp",
            &socket_addr("198.51.100.2", port),
            &upload,
            "write",
        ],
        "upload",
    );
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), UPLOAD);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        UPLOAD
    );
    sender.finish().expect("sender exits cleanly");

    // Exact totals, as Prometheus stored them from its scrapes.
    let exact = |expr: String, want: u64| {
        let samples = prometheus
            .query_until(&expr, Duration::from_secs(30), |s| {
                s.first().is_some_and(|s| s.value >= want as f64)
            })
            .expect("query");
        if samples.len() != 1 {
            // What Prometheus does hold, to tell a wrong service from a wrong class.
            let files = prometheus
                .query("{__name__=~\"exfil_sensor_file_(read|write)_bytes_total\"}")
                .expect("query");
            eprintln!("file series in Prometheus: {files:#?}");
        }
        assert_eq!(single(&samples, &expr), want as f64, "{expr}");
    };
    let base = format!("job=\"{JOB}\", instance=\"{instance}\", service=\"{SERVICE}\"");
    exact(
        format!(
            "exfil_sensor_egress_bytes_total{{{base}, destination=\"198.51.100.2\", port=\"{port}\", protocol=\"tcp\"}}"
        ),
        UPLOAD,
    );
    exact(
        format!("exfil_sensor_egress_class_bytes_total{{{base}, class=\"external\"}}"),
        UPLOAD,
    );
    exact(
        format!("exfil_sensor_file_read_bytes_total{{{base}, class=\"e2e_evidence\"}}"),
        FILE,
    );
    exact(
        format!("exfil_sensor_file_write_bytes_total{{{base}, class=\"e2e_evidence\"}}"),
        FILE,
    );
    exact(
        format!(
            "exfil_sensor_alerts_total{{job=\"{JOB}\", instance=\"{instance}\", kind=\"burst\"}}"
        ),
        1,
    );

    // The shipped rules: loaded, evaluated without error, the recording rule fed.
    let recorded = prometheus
        .query_until(
            &format!(
                "instance_service_destination:exfil_sensor_egress_bytes:rate5m{{service=\"{SERVICE}\", destination=\"198.51.100.2\"}}"
            ),
            Duration::from_secs(20),
            |s| !s.is_empty(),
        )
        .expect("recording rule");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let rules = prometheus.get_json("/api/v1/rules").expect("rules");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    let mut evaluated = 0;
    for group in groups {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, 9, "every shipped rule is loaded: {rules}");
    let firing = prometheus.query("ALERTS").expect("ALERTS");
    assert!(
        firing.is_empty(),
        "a healthy agent raises no fleet alert: {firing:?}"
    );

    // Every query of the dashboard, with Grafana's variables as Grafana would fill them.
    let queries = dashboard_queries();
    for (title, query) in &queries {
        let expr = query
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$job", JOB)
            .replace("$instance", &instance);
        let samples = prometheus
            .query_until(&expr, Duration::from_secs(10), |s| !s.is_empty())
            .unwrap_or_else(|e| panic!("{title}: {e:#}"));
        assert!(!samples.is_empty(), "{title}: no series for {expr}");
    }
}

/// Every PromQL expression of deploy/grafana/exfil-sensor.json: panel targets (rows
/// included), annotation queries, and the template variables' `label_values(SELECTOR,
/// LABEL)` as the `group by (LABEL) (SELECTOR)` Grafana's lookup amounts to. Each with the
/// title it is known by.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("deploy/grafana/exfil-sensor.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("every target has a PromQL expr");
            let title = format!("panel {:?} {}", panel["title"], target["refId"]);
            queries.push((title, expr.to_owned()));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().expect("list") {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push((
                format!("annotation {:?}", annotation["name"]),
                expr.to_owned(),
            ));
        }
    }
    assert_eq!(
        queries.len(),
        text.matches("\"expr\"").count(),
        "every expr of the file is found: {queries:#?}"
    );
    for variable in dashboard["templating"]["list"].as_array().expect("list") {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .expect("a label_values() variable");
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        queries.push((
            format!("variable {:?}", variable["name"]),
            format!("group by ({}) ({selector})", label.trim()),
        ));
    }
    queries
}

/// The fleet set-up of the README, for real: three agents (three "servers": each counts every
/// byte of this one host) scraped by a site Prometheus, which a global Prometheus federates
/// with the README's own scrape config and the shipped rules. One 40 MiB upload to one
/// outside address: the global Prometheus holds each server's exact total and fires the fleet
/// alert for that destination, from three servers.
#[test]
fn the_fleet_alert_fires_through_federation_when_three_servers_send_to_one_destination() {
    require_root();
    const SIZE: u64 = 40 << 20;
    let ns = NetNs::outside().expect("namespace");
    let agents: Vec<Agent> = (0..3).map(|_| Agent::start().expect("agent")).collect();
    let targets: Vec<String> = agents
        .iter()
        .map(|a| format!("'{}'", a.metrics_addr()))
        .collect();
    let site = Prometheus::start(
        &format!(
            "  - job_name: {JOB}\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
        &[],
    )
    .expect("site prometheus");
    let global = Prometheus::start(
        &readme_federation(&site.addr.to_string()),
        &[&repo().join("deploy/prometheus/rules.yml")],
    )
    .expect("global prometheus");
    // Every agent is in the global view before the upload, so that its counters' growth is
    // seen from the start.
    let up = format!("up{{job=\"{JOB}\"}} == 1");
    let federated = global
        .query_until(&up, Duration::from_secs(40), |s| s.len() == 3)
        .expect("federated up");
    assert_eq!(federated.len(), 3, "{federated:?}");

    // Slowly (about 13 MB/s), so that the scrapes see the counters grow.
    let (mut sink, port) = traffic!().sink(&ns, "tcp", ns.peer_ip).expect("sink");
    let size = SIZE.to_string();
    let mut sender = traffic!()
        .send(&["send", "tcp", &socket_addr(ns.peer_ip, port), &size, "slow"])
        .expect("sender");
    assert_eq!(
        sender.expect_line::<String>("started").expect("started"),
        ""
    );
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), SIZE);
    assert_eq!(sink.expect_line::<u64>("received").expect("received"), SIZE);

    let per_server = format!(
        "sum by (instance) (exfil_sensor_egress_bytes_total{{job=\"{JOB}\", destination=\"{}\", port=\"{port}\"}})",
        ns.peer_ip
    );
    let totals = global
        .query_until(&per_server, Duration::from_secs(30), |s| {
            s.len() == 3 && s.iter().all(|s| s.value >= SIZE as f64)
        })
        .expect("federated totals");
    let mut instances: Vec<&str> = totals
        .iter()
        .map(|s| {
            assert_eq!(s.value, SIZE as f64, "{s:?}");
            s.labels["instance"].as_str()
        })
        .collect();
    instances.sort_unstable();
    let mut expected: Vec<String> = agents
        .iter()
        .map(|a| a.metrics_addr().to_string())
        .collect();
    expected.sort_unstable();
    assert_eq!(instances, expected);

    let alert = format!(
        "ALERTS{{alertname=\"ExfilSensorDestinationFromManyHosts\", alertstate=\"firing\", destination=\"{}\"}}",
        ns.peer_ip
    );
    let firing = global
        .query_until(&alert, Duration::from_secs(20), |s| s.len() == 1)
        .expect("ALERTS");
    assert_eq!(firing.len(), 1, "the fleet alert fires: {firing:?}");
    assert_eq!(firing[0].labels["severity"], "critical");
    let servers = global
        .query_until(
            &format!(
                "count by (destination) (sum by (instance, destination) (increase(exfil_sensor_egress_bytes_total{{destination=\"{}\"}}[1h])) > 10485760)",
                ns.peer_ip
            ),
            Duration::from_secs(5),
            |s| !s.is_empty(),
        )
        .expect("servers");
    assert_eq!(single(&servers, "servers"), 3.0);
    sender.finish().expect("sender exits cleanly");
}

/// The README's federation scrape config (the yaml block with `job_name:
/// federate-exfil-sensor`), aimed at `site`: the list under its `scrape_configs:`.
fn readme_federation(site: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let block = readme
        .split("```yaml\n")
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("job_name: federate-exfil-sensor"))
        .expect("the README's federation example");
    block
        .lines()
        .skip_while(|l| !l.starts_with("scrape_configs:"))
        .skip(1)
        .map(|line| {
            if line.trim_start().starts_with("- targets:") {
                format!("      - targets: ['{site}']\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}
