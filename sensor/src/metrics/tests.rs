//! The metrics from made-up polls: exact series, bounded labels, kernel deltas.
use std::sync::Arc;

use sensor_common::{FlowCounters, PROTO_TCP};

use super::*;
use crate::flow::identity::Process;

fn process(service: &str) -> Arc<Process> {
    Arc::new(Process {
        comm: "send".into(),
        exe: String::new(),
        uid: None,
        service: service.into(),
        parents: Vec::new(),
        lineage: crate::flow::identity::Lineage::default(),
    })
}

fn change(service: &str, last_octet: Option<u8>, sent: u64) -> FlowChange {
    let key = last_octet.map(|octet| crate::flow::flows::test_key(10, octet, 443, PROTO_TCP));
    FlowChange {
        process: process(service),
        key,
        delta: FlowCounters {
            sent,
            sends: 1,
            ..FlowCounters::default()
        },
    }
}

fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn config(per_service: usize, max_services: usize) -> MetricsConfig {
    MetricsConfig {
        destinations_per_service: per_service,
        max_services,
        ..MetricsConfig::default()
    }
}

const NOW: SystemTime = SystemTime::UNIX_EPOCH;

#[test]
fn egress_counts_per_service_with_k_own_series_and_other() {
    let mut metrics = Metrics::new(&config(2, 10), Networks::new(&[]));
    let sums = KernelSums::default();
    for round in 1..=2 {
        let changes: Vec<FlowChange> = (1..=4)
            .map(|i| change("mail.service", Some(i), 1_000 * u64::from(i) * round))
            .chain([change("mail.service", None, 7)])
            .collect();
        metrics.observe_poll(NOW, &changes, &[], &sums, Duration::ZERO);
    }
    let text = Metrics::render(&metrics.registry());
    let series = |dest: &str, port: &str, proto: &str| {
        value(
            &text,
            &format!(
                "exfil_sensor_egress_bytes_total{{destination=\"{dest}\",port=\"{port}\",protocol=\"{proto}\",service=\"mail.service\"}}"
            ),
        )
    };
    assert_eq!(series("198.51.100.1", "443", "tcp"), Some(3_000));
    assert_eq!(series("198.51.100.2", "443", "tcp"), Some(6_000));
    assert_eq!(series("198.51.100.3", "443", "tcp"), None);
    assert_eq!(series("other", "other", "other"), Some(9_000 + 12_000 + 14));
    let count = text
        .lines()
        .filter(|l| l.starts_with("exfil_sensor_egress_bytes_total{"))
        .count();
    assert_eq!(count, 3, "two own series plus other:\n{text}");
}

#[test]
fn egress_per_destination_class_counts_every_byte_beyond_the_top_k() {
    // 198.51.100.0/24 declared internal here; one top-K slot, so most destinations fold
    // into egress's `other` while the class counters stay exact.
    let mut metrics = Metrics::new(
        &config(1, 10),
        Networks::new(&["198.51.100.0/25".parse().expect("net")]),
    );
    let mut loopback = crate::flow::flows::test_key(10, 1, 443, PROTO_TCP);
    loopback.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let changes = [
        change("mail.service", Some(1), 1_000),
        change("mail.service", Some(2), 2_000),
        change("mail.service", Some(200), 40_000),
        change("mail.service", Some(201), 500),
        change("mail.service", None, 7),
        FlowChange {
            key: Some(loopback),
            ..change("mail.service", None, 90)
        },
    ];
    metrics.observe_poll(NOW, &changes, &[], &KernelSums::default(), Duration::ZERO);
    let text = Metrics::render(&metrics.registry());
    let class = |class: &str| {
        value(
            &text,
            &format!(
                "exfil_sensor_egress_class_bytes_total{{class=\"{class}\",service=\"mail.service\"}}"
            ),
        )
    };
    assert_eq!(class("internal"), Some(3_000));
    assert_eq!(class("external"), Some(40_500));
    assert_eq!(class("other"), Some(7));
    assert_eq!(class("loopback"), Some(90));
}

#[test]
fn services_beyond_the_cap_share_the_other_service_label() {
    let mut metrics = Metrics::new(&config(5, 1), Networks::new(&[]));
    let changes = [
        change("a.service", Some(1), 5),
        change("b.service", Some(1), 6),
    ];
    let files = [FileChange {
        process: process("b.service"),
        class: Arc::from("mail_store"),
        bytes_read: 4_096,
        bytes_written: 0,
    }];
    metrics.observe_poll(
        NOW,
        &changes,
        &files,
        &KernelSums::default(),
        Duration::ZERO,
    );
    let text = Metrics::render(&metrics.registry());
    assert_eq!(
        value(
            &text,
            "exfil_sensor_egress_bytes_total{destination=\"198.51.100.1\",port=\"443\",protocol=\"tcp\",service=\"other\"}"
        ),
        Some(6)
    );
    assert_eq!(
        value(
            &text,
            "exfil_sensor_file_read_bytes_total{class=\"mail_store\",service=\"other\"}"
        ),
        Some(4_096)
    );
    assert!(
        !text.contains("exfil_sensor_file_write_bytes_total{"),
        "no series for zero bytes written:\n{text}"
    );
}

#[test]
fn file_writes_count_per_service_and_class_beside_reads() {
    let mut metrics = Metrics::new(&config(5, 10), Networks::new(&[]));
    let change = |read, written| FileChange {
        process: process("backup.service"),
        class: Arc::from("records"),
        bytes_read: read,
        bytes_written: written,
    };
    let sums = KernelSums::default();
    metrics.observe_poll(NOW, &[], &[change(0, 10_000_000)], &sums, Duration::ZERO);
    metrics.observe_poll(NOW, &[], &[change(7, 19)], &sums, Duration::ZERO);
    let text = Metrics::render(&metrics.registry());
    assert_eq!(
        value(
            &text,
            "exfil_sensor_file_write_bytes_total{class=\"records\",service=\"backup.service\"}"
        ),
        Some(10_000_019)
    );
    assert_eq!(
        value(
            &text,
            "exfil_sensor_file_read_bytes_total{class=\"records\",service=\"backup.service\"}"
        ),
        Some(7)
    );
    assert_eq!(
        value(
            &text,
            "exfil_sensor_kernel_drops_total{map=\"file_writes\"}"
        ),
        Some(0)
    );
    assert_eq!(
        value(
            &text,
            "exfil_sensor_kernel_errors_total{program=\"file_write\"}"
        ),
        Some(0)
    );
}

#[test]
fn kernel_counters_are_exported_as_deltas() {
    let mut metrics = Metrics::new(&MetricsConfig::default(), Networks::new(&[]));
    let mut sums = KernelSums::default();
    sums.drops[0] = 5;
    sums.unattributed.sent = 1_201;
    metrics.observe_poll(NOW, &[], &[], &sums, Duration::ZERO);
    sums.drops[0] = 7;
    metrics.observe_poll(NOW, &[], &[], &sums, Duration::ZERO);
    let text = Metrics::render(&metrics.registry());
    assert_eq!(
        value(&text, "exfil_sensor_kernel_drops_total{map=\"flows\"}"),
        Some(7)
    );
    assert_eq!(
        value(
            &text,
            "exfil_sensor_kernel_errors_total{program=\"sock_send_length\"}"
        ),
        Some(0)
    );
    assert_eq!(
        value(&text, "exfil_sensor_egress_unattributed_bytes_total"),
        Some(1_201)
    );
    assert_eq!(
        value(&text, "exfil_sensor_alerts_total{kind=\"burst\"}"),
        Some(0)
    );
}

#[test]
fn the_kernels_dns_counters_are_exported_as_deltas() {
    let mut metrics = Metrics::new(&MetricsConfig::default(), Networks::new(&[]));
    let mut sums = KernelSums {
        dns: [3, 1, 0, 0, 0, 0],
        ..KernelSums::default()
    };
    metrics.observe_poll(NOW, &[], &[], &sums, Duration::ZERO);
    sums.dns = [5, 1, 2, 0, 1, 3];
    sums.drops[sensor_common::MAP_DNS_EVENTS as usize] = 4;
    metrics.observe_poll(NOW, &[], &[], &sums, Duration::ZERO);
    let text = Metrics::render(&metrics.registry());
    assert_eq!(value(&text, "exfil_sensor_dns_answers_total"), Some(5));
    for (reason, count) in [
        ("truncated", 1),
        ("bad_pointer", 2),
        ("bad_name", 0),
        ("bad_record", 1),
        ("too_complex", 3),
    ] {
        assert_eq!(
            value(
                &text,
                &format!("exfil_sensor_dns_malformed_total{{reason=\"{reason}\"}}")
            ),
            Some(count),
            "{reason}"
        );
    }
    assert_eq!(
        value(&text, "exfil_sensor_kernel_drops_total{map=\"dns\"}"),
        Some(4)
    );
}
