//! The sensor under load: exactness at the highest send rate this machine reaches, the
//! agent's CPU and memory at a fixed rate over 10k and 100k flows, and how long `/metrics`
//! takes to render with that many flows behind it.
//!
//! The load is `cargo xtask flood` (unconnected UDP, `sendmmsg`) run inside a namespace whose
//! 198.51.100.0/24 lies behind a veth with ARP off: frames leave addressed to the sending
//! end's own MAC, and the other end drops them as not its own at once, so that the load costs
//! little beyond the sending (this kernel has no dummy interface). Each phase runs its own
//! agent on fresh maps.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::net::UnixStream,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{LISTEN, PIN_DIR, flood::Flood, http_get, program_costs_during, start_sensor};
use crate::status;

const NS: &str = "exfil-flood";
const API: &str = "/tmp/exfil-bench-load.sock";
/// Room for the largest phase's flows and everything else the host does meanwhile.
const FLOW_MAP_ENTRIES: u32 = 262_144;

/// What one phase measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub destinations: u32,
    pub datagrams: u64,
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_counted: u64,
    pub drops: u64,
    pub agent_cpu_percent: f64,
    pub agent_peak_rss_mib: f64,
    /// Peak RSS once the API has also answered one request for every flow (a JSON array
    /// of all of them), MiB.
    pub agent_peak_rss_with_dump_mib: f64,
    /// Median and slowest `/metrics` scrape, ms (measured in the last phase only).
    pub metrics_ms: Option<(f64, f64)>,
    /// The journal's size at the end of the phase (`exfil_sensor_journal_bytes`), and the
    /// agent's seconds up by then: its rate, as a day's worth.
    pub journal_bytes: u64,
    pub journal_gb_per_day: f64,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.datagrams as f64 / self.seconds
    }

    pub fn exactness(&self) -> f64 {
        if self.bytes_sent == 0 {
            return 0.0;
        }
        self.bytes_counted as f64 / self.bytes_sent as f64
    }
}

/// What the load benches measured.
pub struct Load {
    /// The flood's rate with no sensor, for the first phase's load.
    pub off_rate: f64,
    pub phases: Vec<Phase>,
    /// Per program under the fastest flood, with `kernel.bpf_stats_enabled=1`: (runs, ns/run).
    pub programs: BTreeMap<String, (u64, f64)>,
}

/// The flood alone, then the three phases under the sensor, each `seconds` long.
pub fn run(seconds: u64) -> anyhow::Result<Load> {
    let _ns = DummyNamespace::create()?;
    let fastest = Flood {
        destinations: 100_000,
        rate: 0,
        seconds,
        threads: 2,
        size: 64,
    };
    let off_rate = {
        let mut sender = Sender::start(fastest)?;
        let (_, datagrams) = sender.result()?;
        datagrams as f64 / seconds as f64
    };
    println!("bench: as fast as possible, 100k destinations, no sensor: {off_rate:.0} sends/s");
    let phases = [
        ("as fast as possible, 100k destinations", 100_000, 0, false),
        ("100k sends/s, 10k destinations", 10_000, 100_000, false),
        ("100k sends/s, 100k destinations", 100_000, 100_000, true),
    ];
    let mut results = Vec::new();
    for (name, destinations, rate, scrape) in phases {
        let flood = Flood {
            destinations,
            rate,
            seconds,
            threads: 2,
            size: 64,
        };
        let phase = measure(name, flood, scrape)?;
        println!(
            "bench: {name}: {:.0} sends/s, counted/sent {:.6}, drops {}, agent {:.2} % CPU, \
             peak RSS {:.1} MiB ({:.1} after one full /api/v1/flows){}",
            phase.rate(),
            phase.exactness(),
            phase.drops,
            phase.agent_cpu_percent,
            phase.agent_peak_rss_mib,
            phase.agent_peak_rss_with_dump_mib,
            phase
                .metrics_ms
                .map(|(median, max)| format!(", /metrics {median:.1} ms (max {max:.1})"))
                .unwrap_or_default()
        );
        results.push(phase);
    }
    let programs = program_costs(fastest)?;
    Ok(Load {
        off_rate,
        phases: results,
        programs,
    })
}

/// ns per run of the programs the flood runs through (the cgroup sendmsg program and the send
/// tracepoint), in a run of its own: the statistics slow every program down.
fn program_costs(flood: Flood) -> anyhow::Result<BTreeMap<String, (u64, f64)>> {
    let _agent = Agent::start()?;
    program_costs_during(&["udp_sendmsg", "sock_send_lengt"], || {
        Sender::start(flood)?.result().map(drop)
    })
}

fn measure(name: &str, flood: Flood, scrape: bool) -> anyhow::Result<Phase> {
    let agent = Agent::start()?;
    let up = Instant::now();
    let drops_before = agent.drops()?;
    let cpu_before = agent.cpu_seconds()?;
    let started = Instant::now();
    let mut sender = Sender::start(flood)?;
    let (bytes_sent, datagrams) = sender.result()?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = agent.cpu_seconds()? - cpu_before;
    // Before the full flow list below, which is a request's peak, not the load's.
    let peak_rss = agent.peak_rss_mib()?;
    let bytes_counted = agent.settled_bytes(sender.pid(), bytes_sent)?;
    let metrics_ms = if scrape {
        Some(agent.scrape_times(20)?)
    } else {
        None
    };
    let phase = Phase {
        name: name.to_owned(),
        destinations: flood.destinations,
        datagrams,
        seconds: flood.seconds as f64,
        bytes_sent,
        bytes_counted,
        drops: agent.drops()? - drops_before,
        agent_cpu_percent: cpu / seconds * 100.0,
        agent_peak_rss_mib: peak_rss,
        agent_peak_rss_with_dump_mib: agent.peak_rss_mib()?,
        metrics_ms,
        ..Phase::default()
    };
    let journal_bytes = agent.metric("exfil_sensor_journal_bytes")?;
    let phase = Phase {
        journal_bytes,
        journal_gb_per_day: journal_bytes as f64 / up.elapsed().as_secs_f64() * 86_400.0 / 1e9,
        ..phase
    };
    drop(sender);
    Ok(phase)
}

/// The agent on fresh maps; stopped and its pins removed on drop.
pub(super) struct Agent(Child);

impl Agent {
    /// Sized for the load: room for every destination.
    fn start() -> anyhow::Result<Self> {
        Self::start_with(
            "load",
            &format!(
                "kernel.flow_map_entries = {FLOW_MAP_ENTRIES}\nflows.max_flows = {FLOW_MAP_ENTRIES}\n"
            ),
        )
    }

    /// On `keys` (dotted TOML keys, one per line), the API on [`API`].
    pub(super) fn start_with(name: &str, keys: &str) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(PIN_DIR);
        let child = start_sensor(name, &format!("http.api_socket = \"{API}\"\n{keys}"))?;
        Ok(Self(child))
    }

    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }

    pub(super) fn proc_file(&self, name: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{}/{name}", self.0.id());
        std::fs::read_to_string(&path).with_context(|| path)
    }

    /// User plus system CPU time the agent has used.
    pub(super) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(self.0.id())
    }

    pub(super) fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = self.proc_file("status")?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }

    /// Sum of `exfil_sensor_kernel_drops_total` over maps.
    /// The value of an unlabelled metric.
    pub(super) fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = get_tcp("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .with_context(|| format!("no {name} in /metrics"))
    }

    pub(super) fn drops(&self) -> anyhow::Result<u64> {
        let text = get_tcp("/metrics")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("exfil_sensor_kernel_drops_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// The bytes the agent reports for `pid`, once they stop changing (or reach `expected`).
    pub(super) fn settled_bytes(&self, pid: u32, expected: u64) -> anyhow::Result<u64> {
        let (_, counted) = settled_flows(
            pid,
            expected,
            Duration::from_secs(20),
            Duration::from_millis(1500),
        )?;
        Ok(counted)
    }

    /// Median and slowest of `n` `/metrics` scrapes, ms.
    fn scrape_times(&self, n: usize) -> anyhow::Result<(f64, f64)> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            get_tcp("/metrics")?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[n / 2], times[n - 1]))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        super::stop(&mut self.0);
        let _ = std::fs::remove_dir_all(PIN_DIR);
    }
}

/// User plus system CPU time process `pid` (all its threads) has used.
pub(super) fn cpu_seconds_of(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| path)?;
    // Fields after the parenthesised command name: state is the 3rd field, utime the 14th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat too short")?
            .parse()
            .context("/proc/PID/stat field")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

/// The flood inside the namespace; holds after its report until dropped.
pub(super) struct Sender {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Sender {
    pub(super) fn start(flood: Flood) -> anyhow::Result<Self> {
        Self::start_in(flood, None)
    }

    /// In the cgroup `cgroup`, when given.
    pub(super) fn start_in(
        flood: Flood,
        cgroup: Option<&super::cgroup::ServiceCgroup>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", NS])
            .arg(std::env::current_exe()?)
            .arg("flood")
            .args(flood.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(cgroup) = cgroup {
            super::cgroup::place(&mut cmd, &cgroup.procs_files())?;
        }
        let mut child = cmd.spawn().context("starting the flood")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (bytes, datagrams) the flood sent.
    pub(super) fn result(&mut self) -> anyhow::Result<(u64, u64)> {
        self.result_per_thread().map(|(b, d, _)| (b, d))
    }

    /// (bytes, datagrams, each thread's datagrams) the flood sent.
    pub(super) fn result_per_thread(&mut self) -> anyhow::Result<(u64, u64, Vec<u64>)> {
        let stdout = self.child.stdout.take().context("flood stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("sent"), Some(bytes), Some(datagrams)) => Ok((
                bytes.parse()?,
                datagrams.parse()?,
                words.map(str::parse).collect::<Result<_, _>>()?,
            )),
            _ => bail!("the flood did not report: {line:?}"),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A namespace where 198.51.100.0/24 lies behind a veth that drops every frame, removed on
/// drop.
pub(super) struct DummyNamespace;

impl DummyNamespace {
    pub(super) fn create() -> anyhow::Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        let made = Self;
        for args in [
            vec!["netns", "add", NS],
            vec!["-n", NS, "link", "set", "lo", "up"],
            vec![
                "-n", NS, "link", "add", "exf0", "type", "veth", "peer", "name", "exf1",
            ],
            vec!["-n", NS, "link", "set", "exf0", "arp", "off"],
            vec!["-n", NS, "addr", "add", "198.51.100.254/24", "dev", "exf0"],
            vec!["-n", NS, "link", "set", "exf0", "up"],
            vec!["-n", NS, "link", "set", "exf1", "up"],
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(&args);
            status(cmd, &format!("ip {}", args.join(" ")))?;
        }
        Ok(made)
    }
}

impl Drop for DummyNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

pub(super) fn get_tcp(path: &str) -> anyhow::Result<String> {
    let mut conn = std::net::TcpStream::connect(LISTEN)?;
    http_get(&mut conn, path)
}

/// `/api/v1/flows` and the bytes its rows give `pid`, once they reach `expected` or stop
/// changing between two looks `every` apart (`within` at most).
pub(super) fn settled_flows(
    pid: u32,
    expected: u64,
    within: Duration,
    every: Duration,
) -> anyhow::Result<(serde_json::Value, u64)> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        let flows: serde_json::Value =
            serde_json::from_str(&get_unix("/api/v1/flows")?).context("flows JSON")?;
        let counted: u64 = flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["pid"].as_u64() == Some(u64::from(pid)))
            .filter_map(|f| f["bytes_sent"].as_u64())
            .sum();
        if counted == expected || last == Some(counted) || Instant::now() > deadline {
            return Ok((flows, counted));
        }
        last = Some(counted);
        std::thread::sleep(every);
    }
}

pub(super) fn get_unix(path: &str) -> anyhow::Result<String> {
    let mut conn = UnixStream::connect(API).with_context(|| API)?;
    http_get(&mut conn, path)
}
