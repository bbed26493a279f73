//! Micro-benchmarks of the agent's pure hot paths, run by `cargo bench -p sensor`:
//! folding one poll's kernel totals into the flow table, exporting them as metrics,
//! detection, and the journal's encoding, writing and reading.

use std::{
    hint::black_box,
    time::{Duration, SystemTime},
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sensor::{
    config::MetricsConfig,
    flow::{
        FlowTable,
        class::Networks,
        flows::Limits,
        identity::{Process, ProcessSource},
    },
    kernel::KernelSums,
    metrics::Metrics,
};
use sensor_common::{DIRECTION_OUTBOUND, FAMILY_IPV4, FlowCounters, FlowKey, PROTO_UDP};

/// Process `pid` belongs to service `pid % SERVICES`.
const SERVICES: u32 = 100;

struct Services;
impl ProcessSource for Services {
    fn process(&self, pid: u32) -> Option<Process> {
        Some(Process {
            comm: "sender".into(),
            exe: "/usr/bin/sender".into(),
            uid: Some(0),
            service: format!("svc-{}.service", pid % SERVICES),
            parents: Vec::new(),
            lineage: sensor::flow::identity::Lineage::default(),
        })
    }
}

/// `n` flows spread over the services' processes, each with `sent` bytes.
fn sums(n: u32, sent: u64) -> Vec<(FlowKey, FlowCounters)> {
    (0..n)
        .map(|i| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&[198, 51, (i >> 8) as u8, i as u8]);
            let key = FlowKey {
                tgid: 1_000 + i % (SERVICES * 2),
                port: 10_000 + (i % 500) as u16,
                family: FAMILY_IPV4,
                protocol: PROTO_UDP,
                addr,
                direction: DIRECTION_OUTBOUND,
                _pad: [0; 7],
            };
            let counters = FlowCounters {
                sent: sent + u64::from(i),
                sends: sent / 64,
                received: 0,
                recvs: 0,
            };
            (key, counters)
        })
        .collect()
}

fn table(flows: &[(FlowKey, FlowCounters)]) -> FlowTable {
    let limits = Limits {
        max_rows: 100_000,
        idle_ttl: Duration::from_secs(600),
    };
    let mut table = FlowTable::new(limits, Networks::default());
    table.apply(SystemTime::UNIX_EPOCH, flows, &[], &Services);
    table
}

/// One poll of a steady table: every flow known, every counter moved.
fn poll(c: &mut Criterion) {
    for n in [10_000, 100_000] {
        let before = sums(n, 1_000);
        let after = sums(n, 2_000);
        c.bench_function(&format!("flow table: one poll, {n} flows"), |b| {
            b.iter_batched_ref(
                || table(&before),
                |table| table.apply(SystemTime::UNIX_EPOCH, black_box(&after), &[], &Services),
                BatchSize::LargeInput,
            );
        });
    }
}

/// One poll of a steady table of 100,000 unnamed flows with DNS names on and the name cache
/// full (65,536 other addresses): every moved row looks its address up, in vain (the worst
/// case: a named row never looks again). Against `flow table: one poll, 100000 flows`.
fn poll_named(c: &mut Criterion) {
    use sensor::dns::{DnsAnswer, NameCache};

    let before = sums(100_000, 1_000);
    let after = sums(100_000, 2_000);
    let answers: Vec<DnsAnswer> = (0..65_536u32)
        .map(|i| DnsAnswer {
            pid: Some(1_000 + i % 200),
            name: format!("host-{i}.example.net"),
            addrs: vec![(
                std::net::IpAddr::from([203, 0, (i >> 8) as u8, i as u8]),
                300,
            )],
        })
        .collect();
    c.bench_function(
        "flow table: one poll, 100000 unnamed flows, names on",
        |b| {
            b.iter_batched_ref(
                || {
                    let mut t = FlowTable::new(
                        Limits {
                            max_rows: 100_000,
                            idle_ttl: Duration::from_secs(600),
                        },
                        Networks::default(),
                    );
                    t.name_destinations(NameCache::new(Duration::from_secs(3600), 65_536));
                    t.learn_names(SystemTime::UNIX_EPOCH, &answers);
                    t.apply(SystemTime::UNIX_EPOCH, &before, &[], &Services);
                    t
                },
                |table| table.apply(SystemTime::UNIX_EPOCH, black_box(&after), &[], &Services),
                BatchSize::LargeInput,
            );
        },
    );
    // 1,000 answers again for addresses it holds: each refreshes its binding and its place
    // in the eviction order.
    c.bench_function("name cache: learn 1,000 answers into a full cache", |b| {
        b.iter_batched_ref(
            || {
                let mut cache = NameCache::new(Duration::from_secs(3600), 65_536);
                cache.learn(SystemTime::UNIX_EPOCH, &answers);
                cache
            },
            |cache| cache.learn(SystemTime::UNIX_EPOCH, black_box(&answers[..1_000])),
            BatchSize::LargeInput,
        );
    });
}

/// Ending an interval: one record per moved flow, for detection and the journal.
fn interval(c: &mut Criterion) {
    let before = sums(100_000, 1_000);
    let after = sums(100_000, 2_000);
    c.bench_function("flow table: end an interval, 100k moved flows", |b| {
        b.iter_batched_ref(
            || {
                let mut t = table(&before);
                t.tick(SystemTime::UNIX_EPOCH);
                t.apply(SystemTime::UNIX_EPOCH, &after, &[], &Services);
                t
            },
            |table| black_box(table.tick(SystemTime::UNIX_EPOCH)),
            BatchSize::LargeInput,
        );
    });
}

/// Exporting a poll and rendering `/metrics` with every service at its destination cap
/// (20 own series plus `other`): 100 services, 100,000 flows behind them.
fn metrics(c: &mut Criterion) {
    let flows = sums(100_000, 1_000);
    let mut table = table(&flows);
    let mut metrics = Metrics::new(&MetricsConfig::default(), Networks::new(&[]));
    let kernel = KernelSums::default();
    let now = SystemTime::UNIX_EPOCH;
    let moved = table.apply(now, &sums(100_000, 2_000), &[], &Services);
    metrics.observe_poll(now, &moved, &[], &kernel, Duration::ZERO);
    c.bench_function(
        "metrics: export one poll, 100k moved flows at the cap",
        |b| {
            b.iter(|| metrics.observe_poll(now, black_box(&moved), &[], &kernel, Duration::ZERO));
        },
    );
    let registry = metrics.registry();
    c.bench_function("metrics: render /metrics at the cap (2,100 series)", |b| {
        b.iter(|| black_box(Metrics::render(&registry)));
    });
}

/// Detection over one interval record of 100k moved flows (100 services, each to 1,000
/// destinations), steady state: every rule's windows already hold that traffic.
fn detection(c: &mut Criterion) {
    let before = sums(100_000, 1_000);
    let mut t = table(&before);
    t.tick(SystemTime::UNIX_EPOCH);
    t.apply(
        SystemTime::UNIX_EPOCH,
        &sums(100_000, 2_000),
        &[],
        &Services,
    );
    let flows = t.tick(SystemTime::UNIX_EPOCH);
    let config = sensor::detect::DetectConfig {
        state_file: None,
        ..sensor::detect::DetectConfig::default()
    };
    let mut detector = sensor::detect::Detector::new(&config, "bench").expect("default config");
    let mut start = 1_795_392_000_000u64;
    let mut next = || {
        let interval = sensor::flow::interval::Interval {
            start_ms: start,
            end_ms: start + 10_000,
            flows: flows.clone(),
            files: Vec::new(),
            processes: Vec::new(),
        };
        start += 10_000;
        interval
    };
    for _ in 0..30 {
        detector.observe(&next());
    }
    c.bench_function("detection: one interval of 100k moved flows", |b| {
        b.iter_batched(
            &mut next,
            |interval| black_box(detector.observe(&interval)),
            BatchSize::LargeInput,
        );
    });
}

/// One interval record of `n` moved flows, as the flow table makes it.
fn moved_interval(n: u32) -> sensor::flow::interval::Interval {
    let mut t = table(&sums(n, 1_000));
    t.tick(SystemTime::UNIX_EPOCH);
    t.apply(SystemTime::UNIX_EPOCH, &sums(n, 2_000), &[], &Services);
    sensor::flow::interval::Interval {
        start_ms: 1_795_392_000_000,
        end_ms: 1_795_392_010_000,
        flows: t.tick(SystemTime::UNIX_EPOCH),
        files: Vec::new(),
        processes: Vec::new(),
    }
}

/// The journal: what the aggregator pays per interval (a copy for the writer thread), what
/// the writer thread pays (encode, checksum, chain, write), and how fast a replay reads
/// records back. Flow rows per second are 10,000 (200,000 for the read) over the time.
/// Ungrouped, so that `cargo xtask bench` finds each in target/criterion.
fn journal(c: &mut Criterion) {
    use sensor::journal::{JournalConfig, Reader, Record, Writer, config::FsyncPolicy};

    let interval = moved_interval(10_000);
    let record = Record::Interval(interval.clone());
    let mut payload = Vec::new();
    record.encode(false, &mut payload).expect("encodes");
    let dir = std::env::temp_dir().join(format!("exfil-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = JournalConfig {
        dir: dir.clone(),
        fsync: FsyncPolicy::Never,
        // Rotation and retention are part of the cost; the disk is not filled.
        retain_size: bytesize::ByteSize::mib(512),
        ..JournalConfig::default()
    };

    c.bench_function(
        "journal: copy one interval of 10k flows for the writer",
        |b| {
            b.iter(|| black_box(Record::Interval(interval.clone())));
        },
    );
    c.bench_function("journal: encode one interval of 10k flows", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            record.encode(false, &mut out).expect("encodes");
            black_box(out.len())
        });
    });
    c.bench_function("journal: decode one interval of 10k flows", |b| {
        b.iter(|| black_box(Record::decode(3, black_box(&payload)).expect("decodes")));
    });
    let (mut writer, _) = Writer::open(&config, SystemTime::now()).expect("journal");
    c.bench_function("journal: append one interval of 10k flows", |b| {
        b.iter(|| writer.append(&record, SystemTime::now()).expect("append"));
    });
    drop(writer);
    // A journal of 20 such intervals, read back from the page cache with every check.
    let _ = std::fs::remove_dir_all(&dir);
    let (mut writer, _) = Writer::open(&config, SystemTime::now()).expect("journal");
    for _ in 0..20 {
        writer.append(&record, SystemTime::now()).expect("append");
    }
    drop(writer);
    c.bench_function(
        "journal: read 20 intervals of 10k flows (checked, decoded)",
        |b| {
            b.iter(|| black_box(Reader::open(&dir).expect("reader").count()));
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    replay(c, &config, &interval);
}

/// `exfil-sensor replay`'s work: a journal of a start record and 20 intervals of 10k flows,
/// each 10 s after the last, read back and run through detection with the recorded config.
fn replay(
    c: &mut Criterion,
    config: &sensor::journal::JournalConfig,
    interval: &sensor::flow::interval::Interval,
) {
    use sensor::journal::{Reader, Record, StartRecord, Writer};
    use sensor::replay::{Options, Rules, replay};

    let _ = std::fs::remove_dir_all(&config.dir);
    let (mut writer, _) = Writer::open(config, SystemTime::now()).expect("journal");
    let start = Record::Start(StartRecord {
        at_ms: interval.start_ms,
        agent_version: "bench".into(),
        hostname: "bench".into(),
        config_source: "(embedded default)".into(),
        config_toml: sensor::config::DEFAULT_TOML.into(),
        detect_state: None,
    });
    writer.append(&start, SystemTime::now()).expect("append");
    for n in 0..20u64 {
        let mut next = interval.clone();
        next.start_ms += n * 10_000;
        next.end_ms += n * 10_000;
        writer
            .append(&Record::Interval(next), SystemTime::now())
            .expect("append");
    }
    drop(writer);
    let options = Options {
        rules: Rules::Recorded,
        from_ms: None,
        to_ms: None,
    };
    c.bench_function(
        "replay: 20 intervals of 10k flows, read and detected",
        |b| {
            b.iter(|| {
                let reader = Reader::open(&config.dir).expect("reader");
                black_box(replay(reader, &options, |_| {}).expect("replay").intervals)
            });
        },
    );
    let _ = std::fs::remove_dir_all(&config.dir);
}

criterion_group!(
    benches, poll, poll_named, interval, metrics, detection, journal
);
criterion_main!(benches);
