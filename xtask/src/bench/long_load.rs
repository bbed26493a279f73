//! `cargo xtask bench --load`: the flood as fast as it goes to 100,000 destinations for 10
//! minutes, against the release agent on its default config (a kernel flow map of 65,536
//! entries: it fills, and the rest counts in the flood's per-process overflow entry), with
//! the totals checked exact three ways and the agent's RSS sampled every 5 s.
//!
//! The flood and a churn of short-lived `cat`s run in a cgroup of their own,
//! `system.slice/exfil-load.service`, so that the agent's per-service metrics hold exactly
//! their bytes on a machine where other processes send and read too.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Start,
    cgroup::{ServiceCgroup, place},
    flood::{self, Flood},
    load::{Agent, DummyNamespace, Sender, cpu_seconds_of, get_tcp, get_unix, settled_flows},
    load_report::{Measured, render},
};

pub(super) const UNIT: &str = "exfil-load.service";
pub(super) const DESTINATIONS: u32 = 100_000;
pub(super) const SIZE: usize = 64;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const CHURN_EVERY: Duration = Duration::from_millis(100);
pub(super) const CHURN_FILE_BYTES: u64 = 1 << 20;
/// The name of the file the churn reads, in target/bench.
const CHURN_FILE: &str = "exfil-load-churn-file";
/// The file class the churn's file is given.
pub(super) const CHURN_CLASS: &str = "bench_churn";
/// The window, from the flood's start, over which the programs' run times are counted.
const STATS_FROM: Duration = Duration::from_secs(60);
pub(super) const STATS_FOR: Duration = Duration::from_secs(30);

pub fn run(seconds: u64, out_dir: &Path, start: &Start) -> anyhow::Result<String> {
    let file = out_dir.join(CHURN_FILE);
    std::fs::write(&file, vec![0x5au8; CHURN_FILE_BYTES as usize])?;
    let _ns = DummyNamespace::create()?;
    let cgroup = ServiceCgroup::create(UNIT)?;
    let flood = Flood {
        destinations: DESTINATIONS,
        rate: 0,
        seconds,
        threads: 2,
        size: SIZE,
    };
    // The flood alone (every agent of the machine's other users still counts it).
    let off_seconds = seconds.min(30);
    let (off_rate, off_flood_cpu) = {
        let mut sender = Sender::start_in(
            Flood {
                seconds: off_seconds,
                ..flood
            },
            Some(&cgroup),
        )?;
        let datagrams = sender.result()?.1;
        let cpu = cpu_seconds_of(sender.pid())?;
        (
            datagrams as f64 / off_seconds as f64,
            cpu / off_seconds as f64 * 100.0,
        )
    };
    println!("load: the flood alone: {off_rate:.0} sends/s, {off_flood_cpu:.0} % CPU");

    let ours_before = program_ids()?;
    // The churn's file has a class of its own, so that its bytes are one exact series
    // whatever happens to the `cat`s' rows (the files table holds the whole machine's reads).
    let agent = Agent::start_with(
        "load-long",
        &format!(
            "[[files.class]]\nname = \"{CHURN_CLASS}\"\npaths = [\"{}\"]\n",
            file.canonicalize()?.display()
        ),
    )?;
    let ours: Vec<u64> = program_ids()?
        .into_iter()
        .filter(|id| !ours_before.contains_key(&id.0))
        .map(|id| id.0)
        .collect();
    let drops_before = drops_by_map()?;
    let file_evictions_before = file_evictions()?;
    let cpu_before = agent.cpu_seconds()?;
    let started = Instant::now();
    let mut sender = Sender::start_in(flood, Some(&cgroup))?;
    let stop = Arc::new(AtomicBool::new(false));
    let processes = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, processes, file) = (stop.clone(), processes.clone(), file.clone());
        let procs = cgroup.procs_files();
        std::thread::spawn(move || churn(&file, &procs, &stop, &processes))
    };
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut programs = BTreeMap::new();
    let mut other_send_programs = 0;
    let deadline = started + Duration::from_secs(seconds);
    let sampled = (|| -> anyhow::Result<()> {
        while Instant::now() < deadline {
            let at = started.elapsed();
            if at >= STATS_FROM && programs.is_empty() && seconds > 120 {
                programs = program_costs(&ours, STATS_FOR)?;
                other_send_programs = bpftool_progs()?
                    .iter()
                    .filter(|p| p.1 == "sock_send_length" && !ours.contains(&p.0))
                    .count();
                continue;
            }
            let rss = rss_kib(&agent)?;
            let rows = table_flows().unwrap_or(0);
            println!(
                "load: {:>5.0} s  RSS {rss:>7} KiB  flow rows {rows}",
                at.as_secs_f64()
            );
            samples.push((at.as_secs_f64(), rss, rows));
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
    let (bytes_sent, datagrams, per_thread) = sender.result_per_thread()?;
    let flood_seconds = started.elapsed().as_secs_f64().min(seconds as f64);
    let flood_cpu = cpu_seconds_of(sender.pid())? / flood_seconds * 100.0;
    let cpu = agent.cpu_seconds()? - cpu_before;
    let peak_rss_kib = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let processes = processes.load(Ordering::Relaxed);

    // The flood's rows add up to what it sent, or stop changing (60 s at most).
    let (flows, _) = settled_flows(
        sender.pid(),
        bytes_sent,
        Duration::from_secs(60),
        Duration::from_secs(3),
    )?;
    let metrics = settled_metrics(bytes_sent, processes * CHURN_FILE_BYTES)?;
    let drops_after = drops_by_map()?;
    let drop = |map: &str| {
        drops_after.get(map).copied().unwrap_or(0) - drops_before.get(map).copied().unwrap_or(0)
    };
    let hwm_after_dump = agent.peak_rss_mib()?;
    let check = check_flows(&flows, sender.pid(), &per_thread);
    let churn_rows = churn_rows()?;
    let file_evictions = file_evictions()? - file_evictions_before;
    drop_sender(sender);

    let m = Measured {
        seconds,
        off_seconds,
        off_rate,
        off_flood_cpu,
        flood_cpu,
        rate: datagrams as f64 / flood_seconds,
        datagrams,
        bytes_sent,
        check,
        metrics,
        drops_flows: drop("flows"),
        drops_overflow: drop("flow_overflow"),
        drops_process_events: drop("process_events"),
        drops_file_overflow: drop("file_overflow"),
        processes,
        cpu_percent: cpu / flood_seconds * 100.0,
        peak_rss_kib,
        first_rss_kib: samples.first().map_or(0, |s| s.1),
        last_rss_kib: samples.last().map_or(0, |s| s.1),
        max_rows: samples.iter().map(|s| s.2).max().unwrap_or(0),
        hwm_after_dump,
        programs,
        churn_rows,
        file_evictions,
        other_send_programs,
    };
    std::fs::write(
        out_dir.join("load-samples.json"),
        serde_json::to_string(&samples)?,
    )?;
    render(&m, seconds, start)
}

/// The churn's rows in `/api/v1/files` (rows of exited processes stay for `flows.idle_ttl`).
#[derive(Default)]
pub(super) struct ChurnRows {
    pub(super) rows: u64,
    pub(super) bytes: u64,
    /// Rows per service.
    pub(super) services: BTreeMap<String, u64>,
}

fn churn_rows() -> anyhow::Result<ChurnRows> {
    let files: serde_json::Value =
        serde_json::from_str(&get_unix("/api/v1/files")?).context("files JSON")?;
    let mut rows = ChurnRows::default();
    for row in files.as_array().into_iter().flatten() {
        let ours = row["path"]
            .as_str()
            .is_some_and(|p| p.ends_with(&format!("/{CHURN_FILE}")));
        if ours {
            rows.rows += 1;
            rows.bytes += row["bytes_read"].as_u64().unwrap_or(0);
            *rows
                .services
                .entry(row["service"].as_str().unwrap_or("-").to_owned())
                .or_default() += 1;
        }
    }
    Ok(rows)
}

fn drop_sender(sender: Sender) {
    drop(sender);
}

/// The flood's rows in `/api/v1/flows`, against what each destination was sent.
#[derive(Default)]
pub(super) struct FlowCheck {
    /// Bytes and sends over the flood's rows, all of them (the `other` row included).
    pub(super) bytes: u64,
    /// Bytes and sends of its `other` row.
    pub(super) other_bytes: u64,
    pub(super) other_sends: u64,
    /// Destinations with a row of their own: as many bytes as sent to them, or fewer (a
    /// row made after the map had filled, when an entry came free; the rest is in `other`).
    pub(super) rows: u64,
    pub(super) rows_exact: u64,
    pub(super) rows_short: u64,
    /// Rows with more than their destination was sent, or with no such destination: 0.
    pub(super) rows_wrong: u64,
    /// The service the flood's rows are under.
    pub(super) services: BTreeMap<String, u64>,
}

fn check_flows(flows: &serde_json::Value, pid: u32, per_thread: &[u64]) -> FlowCheck {
    let mut check = FlowCheck::default();
    for row in flows.as_array().into_iter().flatten() {
        if row["pid"].as_u64() != Some(u64::from(pid)) {
            continue;
        }
        let bytes = row["bytes_sent"].as_u64().unwrap_or(0);
        check.bytes += bytes;
        *check
            .services
            .entry(row["service"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
        let destination = row["destination"].as_str().unwrap_or_default();
        if destination == "other" {
            check.other_bytes += bytes;
            check.other_sends += row["sends"].as_u64().unwrap_or(0);
            continue;
        }
        check.rows += 1;
        let port = row["port"].as_u64().unwrap_or(0);
        let expected = destination_index(destination, port)
            .map(|i| flood::expected(i, DESTINATIONS, per_thread) * SIZE as u64);
        match expected {
            Some(e) if e == bytes => check.rows_exact += 1,
            Some(e) if bytes < e => check.rows_short += 1,
            _ => check.rows_wrong += 1,
        }
    }
    check
}

/// The flood's index of `address:port`, if it is one of its destinations.
fn destination_index(address: &str, port: u64) -> Option<u32> {
    let addr: std::net::Ipv4Addr = address.parse().ok()?;
    (0..DESTINATIONS)
        .step_by(flood::PORTS_PER_ADDRESS as usize)
        .find_map(|first| {
            let d = flood::destination(first);
            (u32::from_be(d.sin_addr.s_addr) == u32::from(addr)).then(|| {
                let first_port = u64::from(u16::from_be(d.sin_port));
                port.checked_sub(first_port)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p < flood::PORTS_PER_ADDRESS)
                    .map(|p| first + p)
            })?
        })
}

/// The unit's series in `/metrics`, summed.
#[derive(Default)]
pub(super) struct MetricSums {
    pub(super) egress: u64,
    pub(super) class: BTreeMap<String, u64>,
    pub(super) file_read: u64,
    /// `exfil_sensor_file_read_bytes_total{service="unknown"}`, summed.
    pub(super) file_read_unknown: u64,
    /// The unit's `exfil_sensor_file_read_bytes_total{class=CHURN_CLASS}`: the churn's file.
    pub(super) churn_class: u64,
}

impl MetricSums {
    pub(super) fn class_total(&self) -> u64 {
        self.class.values().sum()
    }
}

/// The metrics once they hold `sent` egress bytes and `read` file bytes for the unit, or
/// stop changing (60 s at most: they move at each interval).
fn settled_metrics(sent: u64, read: u64) -> anyhow::Result<MetricSums> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let text = get_tcp("/metrics")?;
        let unit = format!("service=\"{UNIT}\"");
        let series = |name: &str| {
            let prefix = format!("{name}{{");
            text.lines()
                .filter(move |l| l.starts_with(&prefix))
                .filter_map(|l| {
                    let (labels, value) = l.rsplit_once(' ')?;
                    Some((labels.to_owned(), parse_value(value)?))
                })
                .collect::<Vec<_>>()
        };
        let mut sums = MetricSums::default();
        for (labels, v) in series("exfil_sensor_egress_bytes_total") {
            if labels.contains(&unit) {
                sums.egress += v;
            }
        }
        for (labels, v) in series("exfil_sensor_egress_class_bytes_total") {
            if labels.contains(&unit) {
                let class = labels
                    .split("class=\"")
                    .nth(1)
                    .and_then(|c| c.split('"').next())
                    .unwrap_or("-");
                *sums.class.entry(class.to_owned()).or_default() += v;
            }
        }
        for (labels, v) in series("exfil_sensor_file_read_bytes_total") {
            if labels.contains(&unit) {
                sums.file_read += v;
                if labels.contains(&format!("class=\"{CHURN_CLASS}\"")) {
                    sums.churn_class += v;
                }
            } else if labels.contains("service=\"unknown\"") {
                sums.file_read_unknown += v;
            }
        }
        let key = (sums.egress, sums.class_total(), sums.file_read);
        let done = sums.egress == sent && sums.class_total() == sent && sums.churn_class == read;
        if done || last == Some(key) || Instant::now() > deadline {
            return Ok(sums);
        }
        last = Some(key);
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn parse_value(v: &str) -> Option<u64> {
    v.parse::<u64>()
        .ok()
        .or_else(|| v.parse::<f64>().ok().map(|f| f as u64))
}

fn drops_by_map() -> anyhow::Result<BTreeMap<String, u64>> {
    let text = get_tcp("/metrics")?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("exfil_sensor_kernel_drops_total{map=\""))
        .filter_map(|l| {
            let (map, rest) = l.split_once('"')?;
            Some((map.to_owned(), parse_value(rest.rsplit(' ').next()?)?))
        })
        .collect())
}

/// `exfil_sensor_table_evictions_total{table="files"}`, both reasons.
fn file_evictions() -> anyhow::Result<u64> {
    let text = get_tcp("/metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("exfil_sensor_table_evictions_total{"))
        .filter(|l| l.contains("table=\"files\""))
        .filter_map(|l| parse_value(l.rsplit(' ').next()?))
        .sum())
}

fn table_flows() -> anyhow::Result<u64> {
    let text = get_tcp("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("exfil_sensor_table_entries{table=\"flows\"} "))
        .and_then(parse_value)
        .context("no flows table entries in /metrics")
}

fn rss_kib(agent: &Agent) -> anyhow::Result<u64> {
    agent
        .proc_file("status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Every [`CHURN_EVERY`]: a `cat` in the unit's cgroup reads the file to the end and exits.
fn churn(
    file: &Path,
    procs: &[PathBuf],
    stop: &AtomicBool,
    processes: &AtomicU64,
) -> anyhow::Result<()> {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut cmd = Command::new("cat");
        cmd.arg(file).stdout(Stdio::null());
        place(&mut cmd, procs)?;
        let status = cmd.status().context("starting cat")?;
        if !status.success() {
            bail!("cat {} failed ({status})", file.display());
        }
        processes.fetch_add(1, Ordering::Relaxed);
        next += CHURN_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// Program id → name, of the loaded programs.
fn program_ids() -> anyhow::Result<BTreeMap<u64, String>> {
    Ok(bpftool_progs()?.into_iter().map(|p| (p.0, p.1)).collect())
}

/// (id, name, run_time_ns, run_cnt) of every loaded program.
fn bpftool_progs() -> anyhow::Result<Vec<(u64, String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool -j")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["name"].as_str()?.to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// (runs, ns per run) of the agent's own programs (`ours`, by id: other agents on the
/// machine load programs of the same names) over `window`, with
/// `kernel.bpf_stats_enabled=1` for that long; the setting is put back as it was.
fn program_costs(ours: &[u64], window: Duration) -> anyhow::Result<BTreeMap<String, (u64, f64)>> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(STATS)?;
    std::fs::write(STATS, "1")?;
    let before = bpftool_progs();
    std::thread::sleep(window);
    let after = bpftool_progs();
    std::fs::write(STATS, was.trim())?;
    let before: BTreeMap<u64, (u64, u64)> = before?
        .into_iter()
        .map(|(id, _, ns, runs)| (id, (ns, runs)))
        .collect();
    let mut costs = BTreeMap::new();
    for (id, name, ns, runs) in after? {
        if !ours.contains(&id) {
            continue;
        }
        let (ns0, runs0) = before.get(&id).copied().unwrap_or((0, 0));
        let runs = runs.saturating_sub(runs0);
        if runs > 0 {
            costs.insert(name, (runs, ns.saturating_sub(ns0) as f64 / runs as f64));
        }
    }
    Ok(costs)
}
