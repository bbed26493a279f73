//! Prometheus metrics: bounded counters of what services sent and read, and the sensor's
//! health (shared/CONTRACT.md names them).

mod top_k;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use prometheus::{
    Encoder as _, Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sensor_common::{
    MAP_NAMES, PROG_NAMES,
    dns::{DNS_STAT_COUNT, DNS_STAT_NAMES},
};

pub use self::top_k::{Dest, TopK};
use crate::{
    config::MetricsConfig,
    flow::{
        class::{DestinationClass, Networks},
        destination,
        files::{FileChange, FileTable},
        flows::{Evictions, FlowChange, FlowTable},
        interval::Protocol,
    },
    kernel::{KernelSums, ProbeState, ProbeStatus},
};

/// Alert kinds (shared/CONTRACT.md), each exported from the start so that `increase()` sees
/// the first alert.
/// The `what` labels of `exfil_sensor_tamper_repairs_total`.
pub const TAMPER_REPAIRS: [&str; 3] = ["probe", "link_pin", "map_pin"];

pub const ALERT_KINDS: [&str; 7] = [
    "burst",
    "lineage",
    "new_destination",
    "baseline",
    "slow_leak",
    "budget",
    "tamper",
];

/// The service label of services beyond `metrics.max_services`.
const OTHER_SERVICE: &str = "other";

/// Owned by the agent's single aggregating task; the HTTP side only holds a clone of the
/// registry.
pub struct Metrics {
    registry: Registry,
    egress: TopK,
    /// Every byte sent, per service and destination class: exact where `egress` folds the
    /// destinations beyond the top K into `other`.
    egress_class: ClassCounters,
    networks: Networks,
    /// The class labels, indexed by `DestinationClass as usize`.
    class_labels: [Arc<str>; 4],
    file_read: ClassCounters,
    file_write: ClassCounters,
    /// Services with labels of their own, at most `max_services`.
    services: HashSet<String>,
    max_services: usize,
    unattributed: IntCounter,
    probe_attached: IntGaugeVec,
    kernel_errors: IntCounterVec,
    kernel_drops: IntCounterVec,
    dns_answers: IntCounter,
    dns_malformed: IntCounterVec,
    /// The kernel's DNS counters at the last poll, in `DNS_STAT_NAMES` order.
    last_dns: [u64; DNS_STAT_COUNT as usize],
    poll_duration: Gauge,
    last_poll: Gauge,
    table_entries: IntGaugeVec,
    evictions: IntCounterVec,
    last_errors: Vec<u64>,
    last_drops: Vec<u64>,
    last_unattributed: u64,
    last_evictions: [Evictions; 2],
    alerts: IntCounterVec,
    tamper_repairs: IntCounterVec,
}

/// A `{service, class}` byte counter, with its series kept by service and class, so that a
/// poll's lookups allocate nothing.
struct ClassCounters {
    vec: IntCounterVec,
    series: HashMap<String, HashMap<Arc<str>, IntCounter>>,
}

impl ClassCounters {
    fn new(vec: IntCounterVec) -> Self {
        Self {
            vec,
            series: HashMap::new(),
        }
    }

    /// Adds `bytes` to the series; none is made for zero bytes.
    fn add(&mut self, service: &str, class: &Arc<str>, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if !self.series.contains_key(service) {
            self.series.insert(service.to_owned(), HashMap::new());
        }
        let Some(by_class) = self.series.get_mut(service) else {
            return;
        };
        let counter = by_class
            .entry(Arc::clone(class))
            .or_insert_with_key(|class| self.vec.with_label_values(&[service, class]));
        counter.inc_by(bytes);
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once, with a static definition");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registered(registry, vec)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registered(registry, vec)
}

impl Metrics {
    /// Which destinations are internal from now on (a config reload).
    pub fn set_networks(&mut self, networks: Networks) {
        self.networks = networks;
    }

    /// `networks` says which destinations are internal (the config's, plus the private ranges).
    pub fn new(config: &MetricsConfig, networks: Networks) -> Self {
        let registry = Registry::new();
        let egress = counter_vec(
            &registry,
            "exfil_sensor_egress_bytes_total",
            "Bytes sent by a service to a destination (its top destinations by bytes over the last hour; the rest as other).",
            &["service", "destination", "port", "protocol"],
        );
        let egress_class = counter_vec(
            &registry,
            "exfil_sensor_egress_class_bytes_total",
            "Bytes sent by a service per destination class: external, internal (private ranges and networks.internal), loopback, or other (destination not kept). Every byte, whether or not its destination has an egress series of its own.",
            &["service", "class"],
        );
        let file_read = counter_vec(
            &registry,
            "exfil_sensor_file_read_bytes_total",
            "Bytes a service read from files of a class (classes from the config; never a path).",
            &["service", "class"],
        );
        let file_write = counter_vec(
            &registry,
            "exfil_sensor_file_write_bytes_total",
            "Bytes a service wrote to files of a class through the page cache (ext4, xfs; classes from the config; never a path).",
            &["service", "class"],
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
        let dns_answers = registered(
            &registry,
            IntCounter::new(
                "exfil_sensor_dns_answers_total",
                "DNS responses with A/AAAA answers the kernel parsed and handed to the agent (question name and addresses only).",
            )
            .expect("static metric definition"),
        );
        let dns_malformed = counter_vec(
            &registry,
            "exfil_sensor_dns_malformed_total",
            "DNS responses refused as malformed, never trusted: truncated, bad_pointer (forward, looping or too many compression pointers), bad_name, bad_record, too_complex (more parse steps than a real response needs).",
            &["reason"],
        );
        for reason in &DNS_STAT_NAMES[1..] {
            dns_malformed.with_label_values(&[reason]);
        }
        let alerts = counter_vec(
            &registry,
            "exfil_sensor_alerts_total",
            "Alerts raised, per kind.",
            &["kind"],
        );
        let evictions = counter_vec(
            &registry,
            "exfil_sensor_table_evictions_total",
            "Rows dropped from the agent's tables: full (made room for a new row) or idle (no bytes for flows.idle_ttl). Totals are unaffected.",
            &["table", "reason"],
        );
        let table_entries = gauge_vec(
            &registry,
            "exfil_sensor_table_entries",
            "Rows the agent's tables hold (flows: process x destination; files: process x file).",
            &["table"],
        );
        let unattributed = registered(
            &registry,
            IntCounter::new(
                "exfil_sensor_egress_unattributed_bytes_total",
                "Bytes sent while the flow map and its per-process overflow map were both full.",
            )
            .expect("static metric definition"),
        );
        let probe_attached = gauge_vec(
            &registry,
            "exfil_sensor_probe_attached",
            "1 when the probe is attached, 0 when it was skipped or found detached (see the agent's log for why).",
            &["probe"],
        );
        let tamper_repairs = counter_vec(
            &registry,
            "exfil_sensor_tamper_repairs_total",
            "Repairs after a tamper check found the agent's kernel side changed: probe (attached again), link_pin, map_pin (pinned again).",
            &["what"],
        );
        for what in TAMPER_REPAIRS {
            tamper_repairs.with_label_values(&[what]);
        }
        let poll_duration = registered(
            &registry,
            Gauge::new(
                "exfil_sensor_poll_duration_seconds",
                "How long the last read of the kernel maps took.",
            )
            .expect("static metric definition"),
        );
        let last_poll = registered(
            &registry,
            Gauge::new(
                "exfil_sensor_last_poll_timestamp_seconds",
                "When the kernel maps were last read (Unix time); time() minus this is the poll lag.",
            )
            .expect("static metric definition"),
        );
        let build_info = gauge_vec(
            &registry,
            "exfil_sensor_build_info",
            "Always 1; the labels say which build is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // agent's own cost, under the names node_exporter and every Go exporter use.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once, with a static definition");
        for name in PROG_NAMES {
            kernel_errors.with_label_values(&[name]);
        }
        for name in MAP_NAMES {
            kernel_drops.with_label_values(&[name]);
        }
        // Registered with every kind at zero, so that `increase()` sees the first alert.
        for kind in ALERT_KINDS {
            alerts.with_label_values(&[kind]);
        }
        for table in ["flows", "files"] {
            table_entries.with_label_values(&[table]);
            for reason in ["full", "idle"] {
                evictions.with_label_values(&[table, reason]);
            }
        }
        Self {
            registry,
            egress: TopK::new(egress, config.destinations_per_service, config.series_ttl),
            egress_class: ClassCounters::new(egress_class),
            networks,
            class_labels: [
                DestinationClass::Loopback,
                DestinationClass::Internal,
                DestinationClass::External,
                DestinationClass::Other,
            ]
            .map(|class| Arc::from(class.as_str())),
            file_read: ClassCounters::new(file_read),
            file_write: ClassCounters::new(file_write),
            services: HashSet::new(),
            max_services: config.max_services,
            unattributed,
            probe_attached,
            kernel_errors,
            kernel_drops,
            dns_answers,
            dns_malformed,
            last_dns: [0; DNS_STAT_COUNT as usize],
            poll_duration,
            last_poll,
            table_entries,
            evictions,
            last_errors: vec![0; PROG_NAMES.len()],
            last_drops: vec![0; MAP_NAMES.len()],
            last_unattributed: 0,
            tamper_repairs,
            last_evictions: [Evictions::default(); 2],
            alerts,
        }
    }

    /// Counts an alert raised (not its updates or resolution).
    pub fn alert_raised(&self, kind: &str) {
        self.alerts.with_label_values(&[kind]).inc();
    }

    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// A probe found detached (`false`) or attached again (`true`) by the tamper checks.
    pub fn set_probe_attached(&self, probe: &str, attached: bool) {
        self.probe_attached
            .with_label_values(&[probe])
            .set(i64::from(attached));
    }

    /// One repair after a tamper check; `what` is one of [`TAMPER_REPAIRS`].
    pub fn tamper_repaired(&self, what: &str) {
        self.tamper_repairs.with_label_values(&[what]).inc();
    }

    pub fn set_probes(&self, probes: &[ProbeStatus]) {
        for status in probes {
            let attached = i64::from(status.state == ProbeState::Attached);
            self.probe_attached
                .with_label_values(&[status.probe])
                .set(attached);
        }
    }

    /// The label a service gets: its own name while there is room, else `other`.
    fn service_label<'a>(&mut self, service: &'a str) -> &'a str {
        if self.services.contains(service) {
            return service;
        }
        if self.services.len() < self.max_services {
            self.services.insert(service.to_owned());
            return service;
        }
        OTHER_SERVICE
    }

    /// Adds one poll's changes. Counters only ever grow.
    pub fn observe_poll(
        &mut self,
        now: SystemTime,
        flows: &[FlowChange],
        files: &[FileChange],
        sums: &KernelSums,
        poll: Duration,
    ) {
        for change in flows {
            if change.delta.sent == 0 {
                continue;
            }
            let service = self.service_label(&change.process.service);
            let ip = change.key.as_ref().and_then(destination);
            let class = self.networks.classify(ip) as usize;
            self.egress_class
                .add(service, &self.class_labels[class], change.delta.sent);
            let dest = change.key.as_ref().zip(ip).map(|(key, ip)| Dest {
                ip,
                port: key.port,
                protocol: Protocol::from_kernel(key.protocol),
            });
            self.egress.add(service, dest, change.delta.sent, now);
        }
        self.egress.admit(now);
        for change in files {
            let service = self.service_label(&change.process.service);
            self.file_read
                .add(service, &change.class, change.bytes_read);
            self.file_write
                .add(service, &change.class, change.bytes_written);
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
        let answers = sums.dns[0];
        self.dns_answers
            .inc_by(answers.saturating_sub(self.last_dns[0]));
        self.last_dns[0] = self.last_dns[0].max(answers);
        add_deltas(
            &self.dns_malformed,
            &DNS_STAT_NAMES[1..],
            &sums.dns[1..],
            &mut self.last_dns[1..],
        );
        let overflow = sums.unattributed.sent;
        self.unattributed
            .inc_by(overflow.saturating_sub(self.last_unattributed));
        self.last_unattributed = self.last_unattributed.max(overflow);
        self.poll_duration.set(poll.as_secs_f64());
        self.last_poll.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
    }

    /// Table sizes and evictions; every poll.
    pub fn observe_tables(&mut self, flows: &FlowTable, files: &FileTable) {
        for (i, (table, len, evictions)) in [
            ("flows", flows.len(), flows.evictions),
            ("files", files.len(), files.evictions),
        ]
        .into_iter()
        .enumerate()
        {
            self.table_entries
                .with_label_values(&[table])
                .set(i64::try_from(len).unwrap_or(i64::MAX));
            let last = &mut self.last_evictions[i];
            for (reason, now_count, seen) in [
                ("full", evictions.full, &mut last.full),
                ("idle", evictions.idle, &mut last.idle),
            ] {
                self.evictions
                    .with_label_values(&[table, reason])
                    .inc_by(now_count.saturating_sub(*seen));
                *seen = (*seen).max(now_count);
            }
        }
    }

    /// Re-ranks the egress series; every interval.
    pub fn review(&mut self, now: SystemTime) {
        self.egress.review(now);
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

fn add_deltas(vec: &IntCounterVec, names: &[&str], now: &[u64], last: &mut [u64]) {
    for ((name, value), seen) in names.iter().zip(now).zip(last.iter_mut()) {
        vec.with_label_values(&[name])
            .inc_by(value.saturating_sub(*seen));
        *seen = (*seen).max(*value);
    }
}

#[cfg(test)]
mod tests;
