//! Every metric the agent serves has its row in the README's Metrics reference, with its type
//! and labels, and every metric named in the sources is served.

use std::time::Duration;

use prometheus::proto::MetricType;

use super::*;
use crate::{
    config::MetricsConfig,
    kernel::{ProbeState, ProbeStatus},
    metrics::Metrics,
};

/// The registry `/metrics` serves, as the daemon builds it, with a series in every family:
/// the agent's own metrics after one poll of traffic, the journal's, and every sink's.
fn served_registry() -> prometheus::Registry {
    use std::sync::Arc;

    use sensor_common::{FlowCounters, PROTO_TCP};

    use crate::{
        flow::{
            files::FileChange,
            flows::FlowChange,
            identity::{Lineage, Process},
        },
        kernel::KernelSums,
        sinks::{AlertmanagerConfig, Sinks, SinksConfig, WebhookConfig},
    };

    let mut metrics = Metrics::new(
        &MetricsConfig::default(),
        crate::flow::class::Networks::new(&[]),
    );
    let process = Arc::new(Process {
        comm: "smtp".into(),
        exe: String::new(),
        uid: None,
        service: "postfix@-.service".into(),
        parents: Vec::new(),
        lineage: Lineage::default(),
    });
    let flow = FlowChange {
        process: Arc::clone(&process),
        key: Some(crate::flow::flows::test_key(7, 9, 443, PROTO_TCP)),
        delta: FlowCounters {
            sent: 1_000,
            sends: 1,
            ..FlowCounters::default()
        },
    };
    let file = FileChange {
        process,
        class: Arc::from("mail_store"),
        bytes_read: 4_096,
        bytes_written: 512,
    };
    metrics.observe_poll(
        std::time::SystemTime::now(),
        &[flow],
        &[file],
        &KernelSums::default(),
        Duration::from_millis(1),
    );
    metrics.set_probes(&[ProbeStatus {
        probe: "sock:sock_send_length",
        required: true,
        state: ProbeState::Attached,
    }]);
    let registry = metrics.registry();
    crate::journal::live::JournalMetrics::register(&registry);
    crate::http::HttpMetrics::register(&registry);
    crate::daemon::reload::ReloadMetrics::register(&registry);
    crate::journal::permissions::register_metric(&registry);
    crate::dns::DnsMetrics::register(&registry);
    let dir = std::env::temp_dir().join(format!("exfil-docs-sinks-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let config = SinksConfig {
        json_lines: Some(dir.join("alerts.jsonl")),
        alertmanager: Some(AlertmanagerConfig::new("http://127.0.0.1:9")),
        webhook: Some(WebhookConfig::new("http://127.0.0.1:9/hook")),
    };
    let sinks = runtime
        .block_on(async { Sinks::start(&config, &registry, "docs") })
        .expect("the sinks start");
    drop(sinks);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
    registry
}

/// As the exposition's `# TYPE` line says it.
fn type_name(kind: MetricType) -> String {
    format!("{kind:?}").to_lowercase()
}

/// Every `"exfil_sensor_…"` string in the sensor's sources: a metric registered somewhere the
/// registry above does not reach is still named here.
fn metric_names_in_sources() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                for (i, _) in text.match_indices("\"exfil_sensor_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // A whole name, not a prefix (`"exfil_sensor_alert_sink_{what}"`).
                    if text[i + 1 + name.len()..].starts_with('"') && !name.ends_with('_') {
                        names.insert(name);
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names
}

#[test]
fn every_metric_is_in_the_metrics_reference_with_its_type_and_labels() {
    let readme = read("README.md");
    let reference = section(&readme, "Metrics reference");
    let documented: BTreeMap<&str, Vec<&str>> = rows_by_code(reference)
        .into_iter()
        .filter(|(name, _)| name.starts_with("exfil_sensor_") || name.starts_with("process_"))
        .collect();
    let families = served_registry().gather();
    let mut served = BTreeSet::new();
    for family in &families {
        let name = family.name();
        served.insert(name.to_owned());
        let Some(cells) = documented.get(name) else {
            panic!("`{name}` has no row in the README's Metrics reference");
        };
        assert_eq!(
            cells.get(1).copied(),
            Some(type_name(family.get_field_type()).as_str()),
            "`{name}`: the type column"
        );
        let labels: BTreeSet<&str> = family
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter().map(|l| l.name()))
            .collect();
        let shown: BTreeSet<&str> = cells
            .get(2)
            .map(|c| code_spans(c).into_iter().collect())
            .unwrap_or_default();
        assert_eq!(shown, labels, "`{name}`: the labels column");
    }
    let in_sources = metric_names_in_sources();
    assert!(
        in_sources.is_subset(&served),
        "metric names in the sources that the registry does not serve (registered elsewhere?): \
         {:?}",
        in_sources.difference(&served).collect::<Vec<_>>()
    );
    let stale: Vec<&&str> = documented
        .keys()
        .filter(|n| !served.contains(**n))
        .collect();
    assert!(
        stale.is_empty(),
        "rows in the Metrics reference for metrics the agent does not export: {stale:?}"
    );
    // The default config's comments, which `config default` prints, name metrics too.
    for (i, _) in DEFAULT_TOML.match_indices("exfil_sensor_") {
        let name: String = DEFAULT_TOML[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            name.ends_with('_') || served.contains(&name),
            "sensor/config/default.toml names `{name}`, which the agent does not export"
        );
    }
    // The bounded label values a user may match on are all listed.
    let spans: BTreeSet<&str> = code_spans(reference).into_iter().collect();
    for value in sensor_common::MAP_NAMES
        .iter()
        .chain(&sensor_common::PROG_NAMES)
        .chain(&crate::metrics::ALERT_KINDS)
        .chain(&crate::kernel::probe_names())
    {
        assert!(
            spans.contains(value),
            "label value `{value}` is not listed in the Metrics reference"
        );
    }
}

// ---- Alerts --------------------------------------------------------------------------------
