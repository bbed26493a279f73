//! `cargo xtask bench`: what the sensor costs, measured side by side in one run.
//!
//! Configurations run interleaved, in an order that rotates every round (off, sensor,
//! bpftrace peer; then sensor, bpftrace, off; ...), so that this VM's drifting speed hits
//! them alike; each figure is the median over rounds of the per-round ratio to `off`.
//! Writes BENCHMARKS.md and target/bench/results.json.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{cargo, status, workspace_root};
pub(crate) use agent::{http_get, start_sensor, stop};
use report::{render, render_micro, results_json};
use workloads::{data_file, dd, dd_write, iperf, mmap_read};

mod agent;
mod cgroup;
pub mod dns;
pub mod flood;
mod latency;
mod load;
mod load_report;
mod long_load;
mod report;
mod sections;
mod soak;
mod workloads;

const NS: &str = "exfil-bench";
const PEER_IP: &str = "198.51.100.2";
const LISTEN: &str = "127.0.0.1:19991";
pub(crate) const PIN_DIR: &str = "/sys/fs/bpf/exfil-bench";

/// How much to measure.
struct Plan {
    rounds: usize,
    iperf_seconds: u32,
    file_bytes: u64,
    latency_trials: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Off,
    Sensor,
    Peer,
}

impl Config {
    const ALL: [Self; 3] = [Self::Off, Self::Sensor, Self::Peer];

    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Sensor => "sensor",
            Self::Peer => "bpftrace",
        }
    }
}

/// A workload and the bpftrace one-liner a user would run instead of the sensor for it.
struct Bench {
    name: &'static str,
    target: f64,
    peer: &'static str,
    run: fn(&Plan, &Path) -> anyhow::Result<f64>,
}

/// Sums of bytes per pid, as the peer would be written by hand.
const PEER_READS: &str =
    "tracepoint:syscalls:sys_exit_read /args->ret > 0/ { @[pid] = sum(args->ret); }";
const PEER_WRITES: &str =
    "tracepoint:syscalls:sys_exit_write /args->ret > 0/ { @[pid] = sum(args->ret); }";
const PEER_SENDS: &str =
    "tracepoint:sock:sock_send_length /args->ret > 0/ { @[pid] = sum(args->ret); }";

const BENCHES: &[Bench] = &[
    Bench {
        name: "dd 4 KiB reads, page-cached file",
        target: 0.90,
        peer: PEER_READS,
        run: |_, data| dd(data, "4k"),
    },
    Bench {
        name: "dd 64 KiB reads, page-cached file",
        target: 0.90,
        peer: PEER_READS,
        run: |_, data| dd(data, "64k"),
    },
    Bench {
        name: "mmap reads, page-cached file",
        target: 0.90,
        peer: PEER_READS,
        run: |_, data| mmap_read(data),
    },
    Bench {
        name: "dd 64 KiB writes, new file",
        target: 0.90,
        peer: PEER_WRITES,
        run: |plan, data| dd_write(plan, data),
    },
    Bench {
        name: "iperf3 TCP over veth, 128 KiB writes",
        target: 0.97,
        peer: PEER_SENDS,
        run: |plan, _| iperf(plan, "128K"),
    },
    Bench {
        name: "iperf3 TCP over veth, 1 KiB writes",
        target: 0.97,
        peer: PEER_SENDS,
        run: |plan, _| iperf(plan, "1K"),
    },
];

pub fn run(quick: bool) -> anyhow::Result<()> {
    let plan = if quick {
        Plan {
            rounds: 2,
            iperf_seconds: 3,
            file_bytes: 256 << 20,
            latency_trials: 2,
        }
    } else {
        Plan {
            rounds: 5,
            iperf_seconds: 10,
            file_bytes: 1 << 30,
            latency_trials: 8,
        }
    };
    let mut build = cargo();
    build.args(["build", "--release", "--package", "sensor"]);
    status(build, "cargo build --release --package sensor")?;
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let data = data_file(&out_dir, plan.file_bytes)?;
    let _ns = Namespace::create()?;
    let _server = Server::start()?;

    // samples[bench][config][round] = throughput
    let mut samples: Vec<BTreeMap<Config, Vec<f64>>> = vec![BTreeMap::new(); BENCHES.len()];
    for round in 0..plan.rounds {
        for (b, bench) in BENCHES.iter().enumerate() {
            for i in 0..Config::ALL.len() {
                let config = Config::ALL[(i + round + b) % Config::ALL.len()];
                let _running = Running::start(config, bench.peer)?;
                let value = (bench.run)(&plan, &data)?;
                println!(
                    "bench: round {} {:<40} {:<8} {value:>10.1}",
                    round + 1,
                    bench.name,
                    config.name()
                );
                samples[b].entry(config).or_default().push(value);
            }
        }
    }
    let kernel = kernel_costs(&plan, &data)?;
    let floor = empty_program_cost(&data)?;
    let load = load::run(u64::from(plan.iperf_seconds))?;
    let latency = latency::run(plan.latency_trials)?;
    let micro = micro_benches(quick)?;
    let mut report = render(&plan, &samples, &kernel, floor, &load, &latency)?;
    render_micro(&mut report, &micro)?;
    let path = workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let report = sections::carry_over(&old, &report);
    std::fs::write(&path, &report)?;
    std::fs::write(
        out_dir.join("results.json"),
        results_json(&samples, &kernel, floor, &load, &latency, &micro),
    )?;
    println!("{report}");
    Ok(())
}

/// The load run's length unless `--seconds` says otherwise.
pub const LOAD_SECONDS: u64 = 600;
/// The soak's length unless `--seconds` says otherwise.
pub const SOAK_SECONDS: u64 = 3600;

/// The command line a long run's section names, as it was run: with `--seconds` when not
/// the run's `default`, under `nice -n N` when this process ran at niceness N.
pub(crate) fn long_run_command(flag: &str, seconds: u64, default: u64) -> String {
    command_at(flag, seconds, default, niceness().unwrap_or(0))
}

fn command_at(flag: &str, seconds: u64, default: u64, nice: i64) -> String {
    let mut command = format!("cargo xtask bench {flag}");
    if seconds != default {
        command.push_str(&format!(" --seconds {seconds}"));
    }
    if nice == 0 {
        command
    } else {
        format!("nice -n {nice} {command}")
    }
}

/// This process's niceness: field 19 of /proc/self/stat, the 17th after the command's
/// closing parenthesis (the command may itself hold spaces and parentheses).
fn niceness() -> Option<i64> {
    nice_field(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn nice_field(stat: &str) -> Option<i64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

/// `cargo xtask bench --soak`: the soak alone, `seconds` long; rewrites its section.
pub fn run_soak(seconds: u64) -> anyhow::Result<()> {
    let out_dir = release_build()?;
    let start = Start::now();
    let soak = soak::run(seconds, &out_dir)?;
    std::fs::write(
        out_dir.join("soak.json"),
        serde_json::to_string_pretty(&soak)?,
    )?;
    let command = long_run_command("--soak", seconds, SOAK_SECONDS);
    let section = sections::render_soak(&soak, &command, &run_context(&start))?;
    write_section(sections::SOAK, &section)
}

/// `cargo xtask bench --load`: the load run alone, `seconds` long; rewrites its section.
pub fn run_load(seconds: u64) -> anyhow::Result<()> {
    let out_dir = release_build()?;
    let start = Start::now();
    let section = long_load::run(seconds, &out_dir, &start)?;
    write_section(sections::LOAD, &section)
}

/// The release agent built; returns target/bench.
fn release_build() -> anyhow::Result<std::path::PathBuf> {
    let mut build = cargo();
    build.args(["build", "--release", "--package", "sensor"]);
    status(build, "cargo build --release --package sensor")?;
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    Ok(out_dir)
}

fn write_section(heading: &str, section: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, sections::splice(&old, heading, section))?;
    println!("{section}");
    Ok(())
}

/// The 1-, 5- and 15-minute load averages and the number of running cargo and rustc
/// processes: what else the (shared) machine was doing.
pub(crate) fn machine_load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let builds = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|c| matches!(c.trim(), "rustc" | "cargo" | "bpf-linker" | "cc" | "ld"))
        .count();
    format!(
        "load average {} ({} rustc/cargo/linker processes running)",
        averages.join(" "),
        builds
    )
}

/// What a load or soak run reports about itself: the commit and the machine's load, taken at
/// its start (the tree may move on while it runs).
pub(crate) struct Start {
    commit: String,
    load: String,
}

impl Start {
    pub(crate) fn now() -> Self {
        Self {
            commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
            load: machine_load(),
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The date, kernel, commit, CPUs, and the machine's load at the start and now.
pub(crate) fn run_context(start: &Start) -> String {
    let out = command_output;
    format!(
        "{}, kernel {}, commit {}, {} CPUs; the machine is shared: at the start {}, at \
         the end {}",
        out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        out("uname", &["-r"]),
        start.commit,
        std::thread::available_parallelism().map_or(0, usize::from),
        start.load,
        machine_load()
    )
}

/// One configuration, running for as long as this lives.
enum Running {
    Off,
    Sensor(Child),
    Peer(Child),
}

impl Running {
    fn start(config: Config, peer: &str) -> anyhow::Result<Self> {
        match config {
            Config::Off => Ok(Self::Off),
            Config::Sensor => {
                let child =
                    start_sensor("sensor", "http.api_socket = \"/tmp/exfil-bench.sock\"\n")?;
                Ok(Self::Sensor(child))
            }
            Config::Peer => {
                let mut child = Command::new("bpftrace")
                    .args(["-e", peer])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()?;
                let stdout = child.stdout.take().context("bpftrace stdout")?;
                let mut lines = BufReader::new(stdout).lines();
                // bpftrace prints "Attaching N probes..." once it is running.
                let attached = lines
                    .next()
                    .transpose()?
                    .is_some_and(|l| l.starts_with("Attaching"));
                std::thread::spawn(move || lines.for_each(drop));
                if !attached {
                    bail!("bpftrace did not attach: {peer}");
                }
                std::thread::sleep(Duration::from_secs(1));
                Ok(Self::Peer(child))
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (Self::Sensor(child) | Self::Peer(child)) = self else {
            return;
        };
        stop(child);
        // The sensor's programs are pinned: remove them, or "off" would still run them.
        let _ = std::fs::remove_dir_all(PIN_DIR);
    }
}

/// The namespace host the TCP benches send to, removed on drop.
struct Namespace;

impl Namespace {
    fn create() -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        let made = Self;
        for args in [
            vec!["netns", "add", NS],
            vec![
                "link", "add", "exb-h", "type", "veth", "peer", "name", "exb-p", "netns", NS,
            ],
            vec!["addr", "add", "198.51.100.1/24", "dev", "exb-h"],
            vec!["link", "set", "exb-h", "up"],
            vec![
                "netns",
                "exec",
                NS,
                "ip",
                "addr",
                "add",
                "198.51.100.2/24",
                "dev",
                "exb-p",
            ],
            vec!["netns", "exec", NS, "ip", "link", "set", "exb-p", "up"],
            vec!["netns", "exec", NS, "ip", "link", "set", "lo", "up"],
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(&args);
            status(cmd, &format!("ip {}", args.join(" ")))?;
        }
        Ok(made)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

/// iperf3's server in the namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start() -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", NS, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Per program: (runs, ns per run) under the sensor, with `kernel.bpf_stats_enabled=1`,
/// over 4 KiB reads, 64 KiB writes and 1 KiB sends.
fn kernel_costs(plan: &Plan, data: &Path) -> anyhow::Result<BTreeMap<String, (u64, f64)>> {
    let _running = Running::start(Config::Sensor, "")?;
    program_costs_during(OUR_PROGRAMS, || {
        dd(data, "4k")?;
        dd_write(plan, data)?;
        iperf(plan, "1K").map(drop)
    })
}

/// ns per run of an empty program (bpftrace's `{}` on `filemap:mm_filemap_get_pages`) over
/// one 4 KiB `dd`: what any program costs on this machine before it does anything.
fn empty_program_cost(data: &Path) -> anyhow::Result<f64> {
    let _running = Running::start(Config::Peer, "tracepoint:filemap:mm_filemap_get_pages { }")?;
    let costs = program_costs_during(&["mm_filemap_get_"], || dd(data, "4k").map(drop))?;
    let (ns, runs) = costs.values().fold((0.0, 0), |(ns, runs), (r, per_run)| {
        (ns + per_run * *r as f64, runs + r)
    });
    if runs == 0 {
        bail!("the empty bpftrace program never ran");
    }
    Ok(ns / runs as f64)
}

/// Our programs' names as bpftool shows them (the kernel keeps 15 characters).
const OUR_PROGRAMS: &[&str] = &[
    "sock_send_lengt",
    "sock_recv_lengt",
    "inet_sock_set_s",
    "mm_filemap_get_",
    "mm_filemap_map_",
    "mm_filemap_faul",
    "iomap_dio_rw_be",
    "ext4_da_write_e",
    "ext4_write_end",
    "ext4_journalled",
    "xfs_file_buffer",
    "sched_process_e",
    "sched_process_f",
    "udp_sendmsg4",
    "udp_sendmsg6",
];

/// (runs, ns per run) of each loaded program whose name starts with one of `names`, over
/// `work`, with `kernel.bpf_stats_enabled=1` only for that long (the statistics slow every
/// program down).
pub(crate) fn program_costs_during(
    names: &[&str],
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<BTreeMap<String, (u64, f64)>> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let before = prog_stats_named(names);
    let worked = work();
    let after = prog_stats_named(names);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    worked?;
    let (before, after) = (before?, after?);
    Ok(after
        .into_iter()
        .filter_map(|(name, (ns, runs))| {
            let (ns0, runs0) = before.get(&name).copied().unwrap_or((0, 0));
            let runs = runs.checked_sub(runs0).filter(|r| *r > 0)?;
            Some((name, (runs, (ns - ns0) as f64 / runs as f64)))
        })
        .collect())
}

/// Run time and count of each loaded program whose name starts with one of `ours`.
fn prog_stats_named(ours: &[&str]) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool -j")?;
    let mut stats = BTreeMap::new();
    for prog in progs.as_array().into_iter().flatten() {
        let name = prog["name"].as_str().unwrap_or_default();
        if ours.iter().any(|o| name.starts_with(o)) {
            let entry = stats.entry(name.to_owned()).or_insert((0, 0));
            entry.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
            entry.1 += prog["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(stats)
}

/// The criterion micro-benchmarks (`cargo bench -p sensor`): median ns per iteration, by
/// title, read back from criterion's own estimates.
fn micro_benches(quick: bool) -> anyhow::Result<BTreeMap<String, f64>> {
    let criterion_dir = workspace_root().join("target/criterion");
    let _ = std::fs::remove_dir_all(&criterion_dir);
    let mut bench = cargo();
    bench.args(["bench", "--package", "sensor", "--bench", "hot_paths", "--"]);
    if quick {
        bench.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    status(bench, "cargo bench --package sensor")?;
    let mut medians = BTreeMap::new();
    for entry in std::fs::read_dir(&criterion_dir)? {
        let new = entry?.path().join("new");
        let Ok(meta) = std::fs::read_to_string(new.join("benchmark.json")) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_str(&meta)?;
        let estimates: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(new.join("estimates.json"))?)?;
        if let (Some(title), Some(ns)) = (
            meta["title"].as_str(),
            estimates["median"]["point_estimate"].as_f64(),
        ) {
            medians.insert(title.to_owned(), ns);
        }
    }
    Ok(medians)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_command_says_seconds_and_niceness_as_run() {
        assert_eq!(
            command_at("--soak", 3600, SOAK_SECONDS, 0),
            "cargo xtask bench --soak"
        );
        assert_eq!(
            command_at("--soak", 60, SOAK_SECONDS, 10),
            "nice -n 10 cargo xtask bench --soak --seconds 60"
        );
        assert_eq!(
            command_at("--load", 600, LOAD_SECONDS, -5),
            "nice -n -5 cargo xtask bench --load"
        );
    }

    #[test]
    fn nice_field_is_the_19th_of_proc_stat() {
        // A command with a space and a parenthesis of its own, as /proc shows it.
        let stat = "4242 (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 30 10 1 0 \
                    5000 1000 200 18446744073709551615";
        assert_eq!(nice_field(stat), Some(10));
        assert_eq!(nice_field("4242 (cat"), None);
    }

    #[test]
    fn niceness_is_this_process_s() {
        // SAFETY: getpriority reads this process's nice value; no memory is passed.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(niceness(), Some(i64::from(nice)));
    }
}
