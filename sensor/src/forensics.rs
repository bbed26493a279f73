//! The incident responder's commands over a journal: `replay`, `report`, `import zeek`. Each
//! returns its stdout text; what it skipped or noticed goes to stderr as it happens.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{ReplayFormat, ReportFormat},
    config::{self, Config},
    flow::{class::Networks, interval::unix_ms},
    import::zeek,
    journal::{self, Damage, Entry, Reader, Record, StartRecord, StopRecord, Writer},
    replay::{self, Rules},
    report,
};

/// Unix ms of a command-line time.
fn ms(time: Option<humantime::Timestamp>) -> Option<u64> {
    time.map(|t| unix_ms(SystemTime::from(t)))
}

/// A spinner counting records on a terminal; nothing otherwise (a pipe, a log).
fn progress(what: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} records ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what);
    bar
}

fn say_damage(damage: &Damage) {
    eprintln!("exfil-sensor: skipped damage: {damage}");
}

pub struct ReplayArgs {
    pub dir: PathBuf,
    pub config: Option<PathBuf>,
    pub from: Option<humantime::Timestamp>,
    pub to: Option<humantime::Timestamp>,
    pub format: ReplayFormat,
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<String> {
    let rules = match &args.config {
        Some(path) => Rules::Given {
            config: Box::new(Config::load(path)?),
            source: path.display().to_string(),
        },
        None => Rules::Recorded,
    };
    let described = match &rules {
        Rules::Recorded => "the recorded config".to_owned(),
        Rules::Given { source, .. } => source.clone(),
    };
    let reader = Reader::open(&args.dir)?;
    let bar = progress("replaying");
    let outcome = replay::replay(
        reader,
        &replay::Options {
            rules,
            from_ms: ms(args.from),
            to_ms: ms(args.to),
        },
        |n| {
            if n % 1024 == 0 {
                bar.set_position(n);
            }
        },
    )?;
    bar.finish_and_clear();
    for damage in &outcome.damage {
        say_damage(damage);
    }
    if outcome.before_first_start > 0 {
        eprintln!(
            "exfil-sensor: {} intervals before the first start record (its segment was retired) \
             replayed with the embedded default config",
            outcome.before_first_start
        );
    }
    let span = outcome.span.map_or_else(String::new, |(from, to)| {
        format!(
            ", {} to {}",
            crate::detect::rfc3339(from),
            crate::detect::rfc3339(to)
        )
    });
    let agreement = if outcome.agrees_with_live() {
        "the same"
    } else {
        "different"
    };
    eprintln!(
        "exfil-sensor: replayed {} records ({} intervals{span}) with {described}: {} alerts; \
         the live agent recorded {} ({agreement})",
        outcome.records,
        outcome.intervals,
        outcome.alerts.len(),
        outcome.live.len()
    );
    Ok(match args.format {
        ReplayFormat::Table => crate::table::alerts(&outcome.alerts),
        ReplayFormat::Json => serde_json::to_string_pretty(&outcome.alerts)? + "\n",
    })
}

pub struct ReportArgs {
    /// Journal directories, one host's each (or several of one host's).
    pub dirs: Vec<PathBuf>,
    pub format: ReportFormat,
    pub service: Option<String>,
    pub from: Option<humantime::Timestamp>,
    pub to: Option<humantime::Timestamp>,
    pub by: Option<report::Bucket>,
    pub top: usize,
}

/// One report over every journal of `args.dirs`, merged by the host their start records name.
pub fn report(args: &ReportArgs) -> anyhow::Result<String> {
    let options = report::Options {
        service: args.service.clone(),
        from_ms: ms(args.from),
        to_ms: ms(args.to),
        bucket: args.by,
        top: args.top,
    };
    let mut builder = report::Builder::new(options.clone());
    let bar = progress("reading");
    let mut read = 0u64;
    for dir in &args.dirs {
        builder.host(&journal_host(dir));
        // Segments that end before `from` are not read at all (their records are filtered
        // out anyway, and a report needs no start record).
        let reader = match options.from_ms {
            Some(from) => Reader::open_from(dir, from)?,
            None => Reader::open(dir)?,
        };
        for entry in reader {
            read += 1;
            if read.is_multiple_of(1024) {
                bar.set_position(read);
            }
            match entry {
                Entry::Record {
                    record: Record::Interval(interval),
                    ..
                } => builder.interval(&interval),
                Entry::Record {
                    record: Record::Alert(event),
                    ..
                } => builder.alert(&event),
                Entry::Record {
                    record: Record::Start(start),
                    ..
                } => builder.host(&start.hostname),
                Entry::Record {
                    record: Record::Resume(resume),
                    ..
                } => builder.resume(&resume),
                Entry::Record { .. } => {}
                Entry::Damaged(damage) => say_damage(&damage),
            }
        }
    }
    bar.finish_and_clear();
    let report = builder.finish();
    Ok(match args.format {
        ReportFormat::Table => report::table(&report),
        ReportFormat::Json => report::json(&report),
        ReportFormat::Csv => report::csv(&report)?,
        ReportFormat::Svg => report::svg(&report)?,
    })
}

/// The host a journal is from: the hostname of its first start record, looked for among the
/// first records only (retention may have retired it); else the directory as given.
fn journal_host(dir: &Path) -> String {
    Reader::open(dir)
        .ok()
        .and_then(|reader| {
            reader.take(64).find_map(|entry| match entry {
                Entry::Record {
                    record: Record::Start(start),
                    ..
                } => Some(start.hostname),
                _ => None,
            })
        })
        .unwrap_or_else(|| dir.display().to_string())
}

/// `import zeek FILE --out DIR`: the log's connections as a journal of interval records of
/// the config's `agent.interval`, destinations classed by its networks. Returns the summary
/// line.
pub fn import_zeek(file: &Path, out: &Path, config: Option<&Path>) -> anyhow::Result<String> {
    let (config, text, source) = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let config = Config::parse(&text, &path.display().to_string())?;
            (config, text, path.display().to_string())
        }
        None => (
            Config::parse(config::DEFAULT_TOML, "(embedded default)")?,
            config::DEFAULT_TOML.to_owned(),
            "(embedded default)".to_owned(),
        ),
    };
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} is not empty: import writes a new journal into an empty or new directory",
            out.display()
        );
    }
    let log = zeek::read(file)?;
    for skipped in log.skipped.iter().take(20) {
        eprintln!(
            "exfil-sensor: {}: line {} skipped: {}",
            file.display(),
            skipped.line,
            skipped.reason
        );
    }
    if log.skipped.len() > 20 {
        eprintln!(
            "exfil-sensor: {}: {} more lines skipped",
            file.display(),
            log.skipped.len() - 20
        );
    }
    let networks = Networks::new(&config.networks.internal);
    let interval_ms = u64::try_from(config.agent.interval.as_millis()).unwrap_or(10_000);
    let intervals = zeek::intervals(&log.conns, &networks, interval_ms);
    let first_ms = intervals.first().map_or(0, |i| i.start_ms);
    let last_ms = intervals.last().map_or(first_ms, |i| i.end_ms);
    let at = |ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    // The evidence's own clock drives rotation; nothing imported is ever retired.
    let journal_config = journal::JournalConfig {
        dir: out.to_owned(),
        retain_size: bytesize::ByteSize::b(u64::MAX),
        retain_age: std::time::Duration::from_secs(u64::MAX / 2),
        fsync: journal::FsyncPolicy::Never,
        ..config.journal.clone()
    };
    let (mut writer, _) = Writer::open(&journal_config, at(first_ms))?;
    writer.append(
        &Record::Start(StartRecord {
            at_ms: first_ms,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: format!("zeek:{}", file.display()),
            config_source: source,
            config_toml: text,
            detect_state: None,
        }),
        at(first_ms),
    )?;
    let (mut sent, mut received) = (0u64, 0u64);
    for interval in &intervals {
        for flow in &interval.flows {
            sent += flow.bytes_sent;
            received += flow.bytes_received;
        }
        writer.append(&Record::Interval(interval.clone()), at(interval.end_ms))?;
    }
    writer.append(&Record::Stop(StopRecord { at_ms: last_ms }), at(last_ms))?;
    writer.sync()?;
    Ok(format!(
        "{}: {} connections ({} lines skipped) into {} interval records in {}: {sent} bytes sent \
         and {received} received by the local side\n",
        file.display(),
        log.conns.len(),
        log.skipped.len(),
        intervals.len(),
        out.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        flow::interval::{FlowInterval, Interval},
        journal::{JournalConfig, StartRecord, Writer},
    };

    const T0: u64 = 1_795_392_000_000;

    /// A journal in a fresh directory: a start record naming `host` (none for `None`), then
    /// one interval of `service` sending `bytes` to 198.51.100.7.
    fn journal(name: &str, host: Option<&str>, service: &str, bytes: u64) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("exfil-forensics-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = JournalConfig {
            dir: dir.clone(),
            ..JournalConfig::default()
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(T0);
        let (mut writer, _) = Writer::open(&config, at).expect("open");
        if let Some(host) = host {
            let start = Record::Start(StartRecord {
                at_ms: T0,
                agent_version: "0.5.0".into(),
                hostname: host.into(),
                config_source: "(embedded default)".into(),
                config_toml: config::DEFAULT_TOML.into(),
                detect_state: None,
            });
            writer.append(&start, at).expect("start");
        }
        let interval = Record::Interval(Interval {
            start_ms: T0,
            end_ms: T0 + 10_000,
            flows: vec![FlowInterval::sample(
                service,
                7,
                "curl",
                "198.51.100.7",
                bytes,
            )],
            ..Interval::default()
        });
        writer.append(&interval, at).expect("interval");
        writer.sync().expect("sync");
        dir
    }

    #[test]
    fn report_merges_journal_directories_by_the_host_their_start_records_name() {
        let mail = journal("mail", Some("mail1"), "dovecot.service", 3_000_017);
        let db = journal("db", Some("db1"), "postgresql.service", 5_000_011);
        let anonymous = journal("anonymous", None, "rsync.service", 1_000_003);
        let text = report(&ReportArgs {
            dirs: vec![mail.clone(), db.clone(), anonymous.clone()],
            format: ReportFormat::Json,
            service: None,
            from: None,
            to: None,
            by: None,
            top: 10,
        })
        .expect("report");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let anonymous_host = anonymous.display().to_string();
        let mut hosts = vec!["db1", "mail1", anonymous_host.as_str()];
        hosts.sort_unstable();
        assert_eq!(json["hosts"], serde_json::json!(hosts));
        assert_eq!(json["external_bytes"], 9_000_031);
        assert_eq!(json["destinations"][0]["hosts"][0], "db1");
        let series: Vec<(String, String, u64)> = json["series"]
            .as_array()
            .expect("series")
            .iter()
            .map(|s| {
                (
                    s["host"].as_str().unwrap_or_default().to_owned(),
                    s["service"].as_str().unwrap_or_default().to_owned(),
                    s["bytes"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert!(series.contains(&("mail1".into(), "dovecot.service".into(), 3_000_017)));
        assert!(series.contains(&("db1".into(), "postgresql.service".into(), 5_000_011)));
        assert!(series.contains(&(anonymous_host, "rsync.service".into(), 1_000_003)));
        assert_eq!(series.len(), 3, "{series:?}");
        for dir in [mail, db, anonymous] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
