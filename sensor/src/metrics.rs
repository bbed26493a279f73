//! Prometheus metrics: the flow table's totals as bounded counters, and the sensor's health.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use prometheus::{
    Encoder as _, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sensor_common::{FlowKey, MAP_NAMES, PROG_NAMES};

use crate::{
    flow::{FlowTable, destination, destination_text, protocol_name},
    kernel::{KernelSums, ProbeState, ProbeStatus},
};

/// Labels of one `exfil_sensor_egress_bytes_total` series.
type Series = [String; 4];

/// Owned by the poll loop; the HTTP side only holds a clone of the registry.
pub struct Metrics {
    registry: Registry,
    egress: IntCounterVec,
    unattributed: IntCounter,
    probe_attached: IntGaugeVec,
    kernel_errors: IntCounterVec,
    kernel_drops: IntCounterVec,
    poll_duration: Gauge,
    flow_entries: IntGauge,
    /// Per flow: the series it adds to, and the total already added.
    exported: HashMap<FlowKey, (Series, u64)>,
    /// Per service: its own (destination, port, protocol) series, at most `per_service`.
    series_of_service: HashMap<String, HashSet<Series>>,
    per_service: usize,
    last_errors: Vec<u64>,
    last_drops: Vec<u64>,
    last_unattributed: u64,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("registered once");
    vec
}

impl Metrics {
    pub fn new(per_service: usize) -> Self {
        let registry = Registry::new();
        let egress = counter_vec(
            &registry,
            "exfil_sensor_egress_bytes_total",
            "Bytes sent by a service to a destination (top destinations per service, the rest as other).",
            &["service", "destination", "port", "protocol"],
        );
        let kernel_errors = counter_vec(
            &registry,
            "exfil_sensor_kernel_errors_total",
            "Events a kernel program could not read, per program.",
            &["program"],
        );
        let kernel_drops = counter_vec(
            &registry,
            "exfil_sensor_kernel_drops_total",
            "Inserts refused because a kernel map was full; their bytes went to an overflow bucket.",
            &["map"],
        );
        let unattributed = IntCounter::new(
            "exfil_sensor_egress_unattributed_bytes_total",
            "Bytes sent while the flow map and its per-process overflow map were both full.",
        )
        .expect("static metric definition");
        let probe_attached = IntGaugeVec::new(
            Opts::new(
                "exfil_sensor_probe_attached",
                "1 when the probe is attached, 0 when it was skipped (see the agent's log for why).",
            ),
            &["probe"],
        )
        .expect("static metric definition");
        let poll_duration = Gauge::new(
            "exfil_sensor_poll_duration_seconds",
            "How long the last read of the kernel maps took.",
        )
        .expect("static metric definition");
        let flow_entries = IntGauge::new(
            "exfil_sensor_flow_table_entries",
            "Flows (process x destination) the agent holds.",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "exfil_sensor_build_info",
                "Always 1; the labels say which build is running.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for metric in [
            Box::new(unattributed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(probe_attached.clone()),
            Box::new(poll_duration.clone()),
            Box::new(flow_entries.clone()),
            Box::new(build_info),
        ] {
            registry.register(metric).expect("registered once");
        }
        for name in PROG_NAMES {
            kernel_errors.with_label_values(&[name]);
        }
        for name in MAP_NAMES {
            kernel_drops.with_label_values(&[name]);
        }
        Self {
            registry,
            egress,
            unattributed,
            probe_attached,
            kernel_errors,
            kernel_drops,
            poll_duration,
            flow_entries,
            exported: HashMap::new(),
            series_of_service: HashMap::new(),
            per_service,
            last_errors: vec![0; PROG_NAMES.len()],
            last_drops: vec![0; MAP_NAMES.len()],
            last_unattributed: 0,
        }
    }

    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    pub fn set_probes(&self, probes: &[ProbeStatus]) {
        for status in probes {
            let attached = i64::from(status.state == ProbeState::Attached);
            self.probe_attached
                .with_label_values(&[status.probe])
                .set(attached);
        }
    }

    /// Brings every counter up to the kernel's running totals. Counters only ever grow.
    pub fn observe(&mut self, table: &FlowTable, sums: &KernelSums, poll: Duration) {
        for (key, process, counters) in table.iter() {
            let (series, done) = self.exported.entry(*key).or_insert_with(|| {
                let series = assign_series(
                    &mut self.series_of_service,
                    self.per_service,
                    key,
                    &process.service,
                );
                (series, 0)
            });
            if counters.sent > *done {
                self.egress
                    .with_label_values(series.as_slice())
                    .inc_by(counters.sent - *done);
                *done = counters.sent;
            }
        }
        add_deltas(
            &self.kernel_errors,
            &PROG_NAMES,
            &sums.errors,
            &mut self.last_errors,
        );
        add_deltas(
            &self.kernel_drops,
            &MAP_NAMES,
            &sums.drops,
            &mut self.last_drops,
        );
        let overflow = sums.unattributed.sent;
        self.unattributed
            .inc_by(overflow.saturating_sub(self.last_unattributed));
        self.last_unattributed = self.last_unattributed.max(overflow);
        self.poll_duration.set(poll.as_secs_f64());
        self.flow_entries
            .set(i64::try_from(table.len()).unwrap_or(i64::MAX));
    }

    /// The text exposition format, as `/metrics` serves it.
    pub fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
            tracing::warn!(error = %e, "rendering metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A flow's series: its own while its service has room, else `destination="other"`.
fn assign_series(
    series_of_service: &mut HashMap<String, HashSet<Series>>,
    per_service: usize,
    key: &FlowKey,
    service: &str,
) -> Series {
    if destination(key).is_none() {
        // Overflow: bytes of this service whose destination the kernel could not keep.
        let other = || "other".to_owned();
        return [service.to_owned(), other(), other(), other()];
    }
    let own: Series = [
        service.to_owned(),
        destination_text(key),
        key.port.to_string(),
        protocol_name(key.protocol).to_owned(),
    ];
    let taken = series_of_service.entry(service.to_owned()).or_default();
    if taken.contains(&own) {
        return own;
    }
    if taken.len() < per_service {
        taken.insert(own.clone());
        return own;
    }
    [
        service.to_owned(),
        "other".to_owned(),
        "other".to_owned(),
        protocol_name(key.protocol).to_owned(),
    ]
}

fn add_deltas(vec: &IntCounterVec, names: &[&str], now: &[u64], last: &mut [u64]) {
    for ((name, value), seen) in names.iter().zip(now).zip(last.iter_mut()) {
        vec.with_label_values(&[name])
            .inc_by(value.saturating_sub(*seen));
        *seen = (*seen).max(*value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use sensor_common::{DIRECTION_OUTBOUND, FAMILY_IPV4, FlowCounters, PROTO_TCP};

    use super::*;
    use crate::flow::identity::{Process, ProcessSource};

    struct OneService;
    impl ProcessSource for OneService {
        fn process(&self, _pid: u32) -> Option<Process> {
            Some(Process {
                comm: "send".into(),
                exe: String::new(),
                service: "mail.service".into(),
            })
        }
    }

    fn key(last_octet: u8) -> FlowKey {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, last_octet]);
        FlowKey {
            tgid: 10,
            port: 443,
            family: FAMILY_IPV4,
            protocol: PROTO_TCP,
            addr,
            direction: DIRECTION_OUTBOUND,
            _pad: [0; 7],
        }
    }

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn counters_follow_totals_and_extra_destinations_become_other() {
        let mut metrics = Metrics::new(2);
        let mut table = FlowTable::default();
        let poll = |bytes: u64| -> Vec<(FlowKey, FlowCounters)> {
            (1..=4)
                .map(|i| {
                    (
                        key(i),
                        FlowCounters {
                            sent: bytes * u64::from(i),
                            sends: 1,
                            ..FlowCounters::default()
                        },
                    )
                })
                .collect()
        };
        for bytes in [1_000, 2_500] {
            table.apply(SystemTime::UNIX_EPOCH, &poll(bytes), &[], &OneService);
            metrics.observe(&table, &KernelSums::default(), Duration::from_millis(3));
        }
        let text = Metrics::render(&metrics.registry());
        let own = |ip: &str| {
            value(
                &text,
                &format!(
                    "exfil_sensor_egress_bytes_total{{destination=\"{ip}\",port=\"443\",protocol=\"tcp\",service=\"mail.service\"}}"
                ),
            )
        };
        let mine: Vec<Option<u64>> = [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ]
        .iter()
        .map(|ip| own(ip))
        .collect();
        assert_eq!(
            mine.iter().flatten().count(),
            2,
            "two destinations keep their own series"
        );
        // Which two were seen first depends on hash order; the totals do not.
        let own_total: u64 = mine.iter().flatten().sum();
        let other = value(
            &text,
            "exfil_sensor_egress_bytes_total{destination=\"other\",port=\"other\",protocol=\"tcp\",service=\"mail.service\"}",
        )
        .expect("other series");
        assert_eq!(own_total + other, 2_500 * (1 + 2 + 3 + 4));
        let series = text
            .lines()
            .filter(|l| l.starts_with("exfil_sensor_egress_bytes_total{"))
            .count();
        assert_eq!(series, 3, "two own series plus other:\n{text}");
    }

    #[test]
    fn kernel_counters_are_exported_as_deltas() {
        let mut metrics = Metrics::new(20);
        let table = FlowTable::default();
        let mut sums = KernelSums::default();
        sums.drops[0] = 5;
        sums.unattributed.sent = 1_201;
        metrics.observe(&table, &sums, Duration::ZERO);
        sums.drops[0] = 7;
        metrics.observe(&table, &sums, Duration::ZERO);
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
    }
}
