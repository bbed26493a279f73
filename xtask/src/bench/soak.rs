//! `cargo xtask bench --soak`: the release agent for an hour at a moderate load, its memory
//! and descriptors sampled every 10 s, to show they stay flat once warmed up.
//!
//! The load: the flood at 20,000 sends/s over 5,000 destinations (in the flood's namespace,
//! where every packet dies behind the veth), and four processes a second that each start,
//! read a 4 MiB page-cached file to the end and exit. The agent runs on its default config
//! (its tables and kernel maps at their default sizes). At the end, the bytes the agent
//! holds for the flood's process must equal what the flood sent.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    flood::Flood,
    load::{Agent, DummyNamespace, Sender, get_tcp},
};

/// Where the sampled agent stands.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub cpu_seconds: f64,
    /// `exfil_sensor_table_entries`: flow and file rows.
    pub flow_rows: u64,
    pub file_rows: u64,
}

/// What the soak measured.
#[derive(Debug, serde::Serialize)]
pub struct Soak {
    pub seconds: u64,
    pub rate: u64,
    pub destinations: u32,
    pub datagrams: u64,
    pub bytes_sent: u64,
    pub bytes_counted: u64,
    pub drops: u64,
    /// Processes started (and reaped) by the churn, and the file bytes they read.
    pub processes: u64,
    pub file_bytes_read: u64,
    pub samples: Vec<Sample>,
    /// Samples before this many seconds are the warm-up.
    pub warm_up_seconds: u64,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const RATE: u64 = 20_000;
const DESTINATIONS: u32 = 5_000;
const CHURN_EVERY: Duration = Duration::from_millis(250);
const FILE_BYTES: u64 = 4 << 20;

pub fn run(seconds: u64, out_dir: &Path) -> anyhow::Result<Soak> {
    let file = out_dir.join("soak-file");
    std::fs::write(&file, vec![0x5au8; FILE_BYTES as usize])
        .with_context(|| file.display().to_string())?;
    let _ns = DummyNamespace::create()?;
    let agent = Agent::start_with("soak", "")?;
    let drops_before = agent.drops()?;
    let flood = Flood {
        destinations: DESTINATIONS,
        rate: RATE,
        seconds,
        threads: 1,
        size: 64,
    };
    let started = Instant::now();
    let mut sender = Sender::start(flood)?;
    let stop = Arc::new(AtomicBool::new(false));
    let processes = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, processes, file) = (stop.clone(), processes.clone(), file.clone());
        std::thread::spawn(move || churn(&file, &stop, &processes))
    };
    let deadline = started + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    let sampled = (|| -> anyhow::Result<()> {
        while Instant::now() < deadline {
            let sample = Sample {
                seconds: started.elapsed().as_secs_f64(),
                rss_kib: rss_kib(&agent)?,
                fds: fds(agent.pid())?,
                cpu_seconds: agent.cpu_seconds()?,
                flow_rows: table_entries("flows").unwrap_or(0),
                file_rows: table_entries("files").unwrap_or(0),
            };
            println!(
                "soak: {:>6.0} s  RSS {:>7} KiB  fds {:>3}  CPU {:>7.1} s  rows: flows {:>6} \
                 files {:>6}",
                sample.seconds,
                sample.rss_kib,
                sample.fds,
                sample.cpu_seconds,
                sample.flow_rows,
                sample.file_rows
            );
            samples.push(sample);
            std::thread::sleep(
                SAMPLE_EVERY.min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let churned = churn
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?;
    sampled?;
    churned?;
    let (bytes_sent, datagrams) = sender.result()?;
    let bytes_counted = agent.settled_bytes(sender.pid(), bytes_sent)?;
    let processes = processes.load(Ordering::Relaxed);
    Ok(Soak {
        seconds,
        rate: RATE,
        destinations: DESTINATIONS,
        datagrams,
        bytes_sent,
        bytes_counted,
        drops: agent.drops()? - drops_before,
        processes,
        file_bytes_read: processes * FILE_BYTES,
        samples,
        // Rows of exited processes stay for `flows.idle_ttl` (10 min): the tables reach
        // their steady size only after it, plus 5 minutes.
        warm_up_seconds: (seconds / 4).min(900),
    })
}

/// Every [`CHURN_EVERY`]: a `cat` of `file` that reads it to the end and exits; counts them.
fn churn(file: &Path, stop: &AtomicBool, processes: &AtomicU64) -> anyhow::Result<()> {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let status = Command::new("cat")
            .arg(file)
            .stdout(Stdio::null())
            .status()
            .context("starting cat")?;
        if !status.success() {
            anyhow::bail!("cat {} failed ({status})", file.display());
        }
        processes.fetch_add(1, Ordering::Relaxed);
        next += CHURN_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

fn rss_kib(agent: &Agent) -> anyhow::Result<u64> {
    agent
        .proc_file("status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// `exfil_sensor_table_entries{table="TABLE"}`.
pub(super) fn table_entries(table: &str) -> anyhow::Result<u64> {
    let text = get_tcp("/metrics")?;
    let prefix = format!("exfil_sensor_table_entries{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {table} table entries in /metrics"))
}

fn fds(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir).with_context(|| dir)?.count() as u64)
}

impl Soak {
    fn after_warm_up(&self) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(|s| s.seconds >= self.warm_up_seconds as f64)
    }

    /// Least-squares slope of RSS over the samples after the warm-up, MiB per hour.
    pub fn rss_slope_mib_per_hour(&self) -> f64 {
        slope(self.after_warm_up().map(|s| (s.seconds, s.rss_kib as f64))) * 3600.0 / 1024.0
    }

    /// Least-squares slope of the open descriptors after the warm-up, per hour.
    pub fn fd_slope_per_hour(&self) -> f64 {
        slope(self.after_warm_up().map(|s| (s.seconds, s.fds as f64))) * 3600.0
    }

    /// (highest during the warm-up, highest after it), of `value`.
    pub fn max_warm_and_after(&self, value: impl Fn(&Sample) -> u64) -> (u64, u64) {
        let warm = self.warm_up_seconds as f64;
        self.samples.iter().fold((0, 0), |(w, a), s| {
            if s.seconds < warm {
                (w.max(value(s)), a)
            } else {
                (w, a.max(value(s)))
            }
        })
    }
}

fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (
            num + (x - mean_x) * (y - mean_y),
            den + (x - mean_x).powi(2),
        )
    });
    if den == 0.0 { 0.0 } else { num / den }
}
