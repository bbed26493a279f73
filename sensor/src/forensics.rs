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
    pub dir: PathBuf,
    pub format: ReportFormat,
    pub service: Option<String>,
    pub from: Option<humantime::Timestamp>,
    pub to: Option<humantime::Timestamp>,
    pub by: Option<report::Bucket>,
    pub top: usize,
}

pub fn report(args: &ReportArgs) -> anyhow::Result<String> {
    let options = report::Options {
        service: args.service.clone(),
        from_ms: ms(args.from),
        to_ms: ms(args.to),
        bucket: args.by,
        top: args.top,
    };
    // Segments that end before `from` are not read at all (their records are filtered out
    // anyway, and a report needs no start record).
    let reader = match options.from_ms {
        Some(from) => Reader::open_from(&args.dir, from)?,
        None => Reader::open(&args.dir)?,
    };
    let bar = progress("reading");
    let mut builder = report::Builder::new(options);
    for (n, entry) in reader.enumerate() {
        if n % 1024 == 0 {
            bar.set_position(n as u64);
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
            Entry::Record { .. } => {}
            Entry::Damaged(damage) => say_damage(&damage),
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
