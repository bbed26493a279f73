//! The aggregator's config reload (`Message::Reload`) and `files.hash_paths`, fed made-up
//! polls.
use std::sync::{Arc, Mutex};

use sensor_common::{
    FileKey, FilePathEvent, FileRead, FlowCounters, PATH_DEPTH, PATH_NAME_LEN, PROTO_TCP,
};

use super::*;
use crate::flow::{class::DestinationClass, identity::Process, path_hash::PathHasher};

/// pid 30 is `rsync` in backup.service (no profile of the default config).
struct Live;
impl ProcessSource for Live {
    fn process(&self, pid: u32) -> Option<Process> {
        (pid == 30).then(|| Process {
            comm: "rsync".into(),
            exe: "/usr/bin/rsync".into(),
            uid: Some(0),
            service: "backup.service".into(),
            parents: Vec::new(),
            lineage: crate::flow::identity::Lineage::default(),
        })
    }
}

fn aggregator(config: &Config) -> Aggregator {
    Aggregator::new(
        config,
        Box::new(Live),
        ProcessTable::new(None),
        Metrics::new(&config.metrics, config.networks()),
    )
    .expect("a good config")
}

/// `extra` with no state file, and no `budget` rule (the test service has no profile: every
/// external byte is over its budget).
fn quiet_config(extra: &str) -> Config {
    let mut config = Config::parse(extra, "test.toml").expect("a good config");
    config.detect.state_file = None;
    config.detect.budget.enabled = false;
    config
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

const DEV: u32 = (254 << 20) | 1;
const PATH: &str = "/var/lib/postgresql/16/main/base/5/16384";

/// A poll at `secs` with `sent` bytes (running total) to 198.51.100.7:443 and `read` bytes
/// of inode 42, and that file's path when `path`.
fn poll(secs: u64, sent: u64, read: u64, path: bool) -> PollInput {
    let mut paths = Vec::new();
    if path {
        let names: Vec<&str> = PATH.split('/').filter(|n| !n.is_empty()).rev().collect();
        let mut event = FilePathEvent {
            dev: DEV,
            depth: u32::try_from(names.len() + 1).expect("a few names"),
            ino: 42,
            names: [[0; PATH_NAME_LEN]; PATH_DEPTH],
        };
        for (slot, name) in event.names.iter_mut().zip(names.into_iter().chain(["/"])) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        paths.push(WalkedPath::from_event(&event));
    }
    PollInput {
        now: at(secs),
        events: Vec::new(),
        mounts: path.then(|| Mounts::parse("1 0 254:1 / / rw - ext4 /dev/vda1 rw")),
        paths,
        sums: KernelSums {
            flows: vec![(
                crate::flow::flows::test_key(30, 7, 443, PROTO_TCP),
                FlowCounters {
                    sent,
                    sends: 1,
                    ..FlowCounters::default()
                },
            )],
            file_reads: vec![(
                FileKey {
                    tgid: 30,
                    dev: DEV,
                    ino: 42,
                },
                FileRead {
                    bytes: read,
                    reads: 1,
                    ..FileRead::default()
                },
            )],
            ..KernelSums::default()
        },
        took: Duration::from_millis(1),
        adopt: false,
        dns: Vec::new(),
    }
}

fn records_to(agg: &mut Aggregator) -> Arc<Mutex<Vec<Record>>> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&records);
    agg.on_record(move |r| sink.lock().expect("records").push(r));
    records
}

fn alerts(agg: &Aggregator) -> Vec<(String, u64)> {
    let Answer::Alerts(alerts) = agg.answer(&Query::Alerts(Filter::default())) else {
        panic!("asked for alerts");
    };
    alerts.into_iter().map(|a| (a.kind, a.bytes)).collect()
}

fn reload(config: Config, text: &str) -> Reload {
    Reload {
        config,
        at: at(100),
        source: "/etc/exfil-sensor/config.toml".into(),
        text: text.into(),
    }
}

#[test]
fn a_reload_lowers_the_burst_threshold_and_reclasses_destinations() {
    let old = quiet_config("");
    let mut agg = aggregator(&old);
    let records = records_to(&mut agg);
    // 20 MiB in one interval: under the default 50 MiB.
    agg.poll(&poll(0, 0, 0, false));
    agg.poll(&poll(10, 20 << 20, 0, false))
        .expect("an interval");
    assert_eq!(alerts(&agg), Vec::new());
    let text = "[networks]\ninternal = [\"198.51.100.0/24\"]\n";
    let new = crate::config::reload::in_force(&old, &quiet_config(text), "c.toml").expect("ok");
    agg.reload(&reload(new, text)).expect("taken");
    // The journal keeps the file the rules came from.
    assert!(records.lock().expect("records").iter().any(|r| matches!(
        r,
        Record::Config(c) if c.config_toml == text
            && c.config_source == "/etc/exfil-sensor/config.toml"
    )));
    let Answer::Flows(flows) = agg.answer(&Query::Flows(Filter::default())) else {
        panic!("asked for flows");
    };
    assert_eq!(flows[0].class, "internal");
    // Internal now: no rule watches it.
    let interval = agg
        .poll(&poll(20, 40 << 20, 0, false))
        .expect("an interval");
    assert_eq!(interval.flows[0].class, DestinationClass::Internal);
    assert_eq!(alerts(&agg), Vec::new());
    let text = "[detect.burst]\nbytes = \"8 MiB\"\n";
    let new = crate::config::reload::in_force(&old, &quiet_config(text), "c.toml").expect("ok");
    agg.reload(&reload(new, text)).expect("taken");
    // External again: its 300 s window holds the first 20 MiB and this 1 MiB (not the
    // internal 20 MiB): over 8 MiB, under the 50 MiB of the start.
    agg.poll(&poll(30, 41 << 20, 0, false))
        .expect("an interval");
    assert_eq!(alerts(&agg), vec![("burst".to_owned(), 21 << 20)]);
}

#[test]
fn a_refused_reload_keeps_the_old_config_whole() {
    let old = quiet_config("");
    let mut agg = aggregator(&old);
    let records = records_to(&mut agg);
    let mut bad = old.clone();
    bad.detect.burst.bytes = bytesize::ByteSize::mib(8);
    bad.networks.internal = vec!["198.51.100.0/24".parse().expect("net")];
    bad.files.records = vec!["/srv/[x".to_owned()];
    let err = agg.reload(&reload(bad, "")).expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("config /etc/exfil-sensor/config.toml: files.records[0]"),
        "{err}"
    );
    assert!(records.lock().expect("records").is_empty());
    agg.poll(&poll(0, 0, 0, false));
    let interval = agg
        .poll(&poll(10, 30 << 20, 0, false))
        .expect("an interval");
    assert_eq!(interval.flows[0].class, DestinationClass::External);
    assert_eq!(alerts(&agg), Vec::new(), "the 50 MiB threshold is in force");
}

/// With `files.hash_paths`, the path of a file read is its keyed hash in the API and in every
/// journal record (the written journal's bytes hold no trace of it), and its class is the
/// real path's.
#[test]
fn hashed_paths_never_show_the_path_and_keep_the_class() {
    let config = quiet_config("[files]\nhash_paths = true\n");
    let mut agg = aggregator(&config);
    let hasher = PathHasher::new([9; 32]);
    let hash = hasher.hash(PATH);
    agg.hash_paths(hasher);
    let records = records_to(&mut agg);
    agg.poll(&poll(0, 0, 4_096, true));
    let interval = agg.poll(&poll(10, 0, 12_288, false)).expect("an interval");
    let file = &interval.files[0];
    assert_eq!(
        (file.path.as_deref(), file.class.as_str(), file.bytes_read),
        (Some(hash.as_str()), "records", 12_288)
    );
    let Answer::Files(rows) = agg.answer(&Query::Files(Filter::default())) else {
        panic!("asked for files");
    };
    assert_eq!(
        rows.iter()
            .map(|r| (r.path.as_deref(), r.class.as_str()))
            .collect::<Vec<_>>(),
        vec![(Some(hash.as_str()), "records")]
    );
    let api = serde_json::to_string(&rows).expect("json");
    assert!(!api.contains("16/main"), "{api}");

    // What the journal writes.
    let dir = std::env::temp_dir().join(format!("exfil-hash-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = crate::journal::JournalConfig {
        dir: dir.clone(),
        fsync: crate::journal::FsyncPolicy::Never,
        ..crate::journal::JournalConfig::default()
    };
    let (mut writer, _) = crate::journal::Writer::open(&journal, at(0)).expect("open");
    let written = std::mem::take(&mut *records.lock().expect("records"));
    assert!(written.iter().any(|r| matches!(r, Record::Interval(_))));
    for record in &written {
        writer.append(record, at(11)).expect("append");
    }
    writer.sync().expect("sync");
    drop(writer);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("journal dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(PATH.as_bytes()), 0);
    assert_eq!(count(b"postgresql/16"), 0);
    assert_eq!(
        count(&hash.as_bytes()[5..]),
        1,
        "the hash, once: the interval record"
    );
}
