//! The real agent under test: started with a private socket, port and pin directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::http::{http_get_tcp, http_get_unix};

/// The agent binary: `EXFIL_SENSOR_BIN` (set by `cargo xtask test`), else the release build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("EXFIL_SENSOR_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/exfil-sensor"),
        PathBuf::from,
    )
}

/// Runs the agent binary (a CLI command such as `journal verify` or `report`); returns (exit
/// code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("the agent binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One flow from `/api/v1/flows`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub service: String,
    pub destination: String,
    pub class: String,
    pub port: u16,
    pub protocol: String,
    pub direction: String,
    pub bytes_sent: u64,
    pub sends: u64,
    pub bytes_received: u64,
    /// The DNS name this host was given for the destination, when it was (issue 13).
    #[serde(default)]
    pub destination_name: Option<String>,
}

/// One row of `/api/v1/files`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FileRow {
    pub pid: u32,
    pub comm: String,
    pub service: String,
    pub class: String,
    pub device: String,
    pub inode: u64,
    pub path: Option<String>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub writes: u64,
}

/// The real agent, with its API on a private socket; SIGTERM and reaped on drop.
pub struct Agent {
    child: Child,
    pub api_socket: PathBuf,
    metrics: SocketAddr,
    config: PathBuf,
    /// Its own pin directory in bpffs, so no test inherits another's totals; removed (which
    /// detaches the pinned programs) after the agent stops.
    pin_dir: PathBuf,
    /// The agent's stderr; printed when a test fails, removed otherwise.
    log: PathBuf,
    /// Its detection state file.
    state: PathBuf,
    /// Its journal directory.
    journal: PathBuf,
}

/// How often the test agent polls; waits below are in multiples of it.
pub const POLL: Duration = Duration::from_millis(200);

impl Agent {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// An agent whose config has `extra` TOML appended: keys of `[kernel]` first, then any
    /// other sections but `[agent]` and `[http]`.
    pub fn start_with(extra: &str) -> anyhow::Result<Self> {
        Self::start_polling(POLL, extra)
    }

    /// An agent with `extra_http` keys added to its `[http]` section (e.g.
    /// `web_config_file = "…"`) and `extra` config as above.
    pub fn start_with_http(extra_http: &str, extra: &str) -> anyhow::Result<Self> {
        Self::start_full(POLL, None, extra_http, extra, None)
    }

    /// An agent that reads the kernel every `poll`, with `extra` config as above.
    pub fn start_polling(poll: Duration, extra: &str) -> anyhow::Result<Self> {
        Self::start_config(poll, None, extra)
    }

    /// An agent whose interval records (what detection works on) are `interval` long.
    pub fn start_with_interval(interval: Duration, extra: &str) -> anyhow::Result<Self> {
        Self::start_config(POLL, Some(interval), extra)
    }

    /// An agent run as `uid` (group `uid`, no supplementary groups) with exactly the
    /// `capabilities` (e.g. `["bpf", "perfmon"]`) as its ambient set, through `setpriv`: what a
    /// systemd unit's `User=` and `AmbientCapabilities=` give it. Its pin directory is made
    /// for it, owned by `uid`, as the unit's privileged `ExecStartPre` does.
    pub fn start_as(uid: u32, capabilities: &[&str], extra: &str) -> anyhow::Result<Self> {
        let caps = capabilities
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let wrapper = vec![
            "setpriv".to_owned(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            "--".to_owned(),
        ];
        Self::start_full(POLL, None, "", extra, Some((uid, wrapper)))
    }

    /// An agent on a host named `hostname`, as a second server's would be: run in a UTS
    /// namespace of its own, its hostname set there, with interval records `interval` long.
    pub fn start_on_host(hostname: &str, interval: Duration, extra: &str) -> anyhow::Result<Self> {
        // `sh -c SCRIPT NAME AGENT ARGS…`: NAME is $0, the agent and its arguments "$@".
        let wrapper = ["unshare", "--uts", "sh", "-c"]
            .into_iter()
            .map(str::to_owned)
            .chain([
                "echo \"$0\" > /proc/sys/kernel/hostname && exec \"$@\"".to_owned(),
                hostname.to_owned(),
            ])
            .collect();
        Self::start_full(POLL, Some(interval), "", extra, Some((0, wrapper)))
    }

    fn start_config(
        poll: Duration,
        interval: Option<Duration>,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_full(poll, interval, "", extra, None)
    }

    fn start_full(
        poll: Duration,
        interval: Option<Duration>,
        extra_http: &str,
        extra: &str,
        user: Option<(u32, Vec<String>)>,
    ) -> anyhow::Result<Self> {
        let bin = agent_bin();
        if !bin.exists() {
            bail!(
                "{} is missing: run the tests with `cargo xtask test`",
                bin.display()
            );
        }
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir();
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/exfil-e2e-{tag}"));
        let api_socket = dir.join(format!("exfil-e2e-{tag}.sock"));
        let config = dir.join(format!("exfil-e2e-{tag}.toml"));
        // A free loopback port: bound here, released, handed to the agent.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // Its own detection state, so that no test learns from another's traffic.
        let state = dir.join(format!("exfil-e2e-{tag}.state.json"));
        let state_key = format!("[detect]\nstate_file = \"{}\"\n", state.display());
        let extra = if extra.contains("[detect]\n") {
            extra.replacen("[detect]\n", &state_key, 1)
        } else {
            format!("{extra}\n{state_key}")
        };
        // And its own journal, never the system's, unless the test names one (`[journal]`
        // first, then `dir = "…"`).
        let (journal, extra) = match given_journal_dir(&extra) {
            Some(given) => (given, extra),
            None => {
                let journal = dir.join(format!("exfil-e2e-{tag}-journal"));
                let journal_key = format!("[journal]\ndir = \"{}\"\n", journal.display());
                let extra = if extra.contains("[journal]\n") {
                    extra.replacen("[journal]\n", &journal_key, 1)
                } else {
                    format!("{extra}\n{journal_key}")
                };
                (journal, extra)
            }
        };
        std::fs::write(
            &config,
            format!(
                "[agent]\npoll_interval = \"{}ms\"\n{}[http]\nlisten = \"{metrics}\"\n{extra_http}\n\
                 [kernel]\npin_dir = \"{}\"\n{extra}",
                poll.as_millis(),
                interval.map_or_else(String::new, |i| format!(
                    "interval = \"{}ms\"\n",
                    i.as_millis()
                )),
                pin_dir.display()
            ),
        )?;
        let log = dir.join(format!("exfil-e2e-{tag}.log"));
        let wrapper = match user {
            Some((uid, wrapper)) => {
                std::fs::create_dir_all(&pin_dir)?;
                std::os::unix::fs::chown(&pin_dir, Some(uid), Some(uid))?;
                wrapper
            }
            None => Vec::new(),
        };
        let child = Self::spawn(&wrapper, &config, &api_socket, &log)?;
        let mut agent = Self {
            child,
            api_socket,
            metrics,
            config,
            pin_dir,
            log,
            state,
            journal,
        };
        agent.wait_healthy(Duration::from_secs(20))?;
        Ok(agent)
    }

    fn spawn(
        wrapper: &[String],
        config: &Path,
        api_socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Child> {
        let bin = agent_bin();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.stderr(log)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--api-socket")
            .arg(api_socket)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    /// `kill -9` the agent, then start a new one on the same config and pins.
    pub fn kill_and_restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.kill_and_restart_after(|| std::thread::sleep(down_for))
    }

    /// `kill -9` the agent, run `meanwhile` while no agent runs, then start a new one on the
    /// same config and pins.
    pub fn kill_and_restart_after(&mut self, meanwhile: impl FnOnce()) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        meanwhile();
        self.child = Self::spawn(&[], &self.config, &self.api_socket, &self.log)?;
        self.wait_healthy(Duration::from_secs(20))
    }

    /// Starts the agent again on the same config and pins, once [`Agent::stop`] stopped it.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("the agent still runs: stop it first");
        }
        self.child = Self::spawn(&[], &self.config, &self.api_socket, &self.log)?;
        self.wait_healthy(Duration::from_secs(20))
    }

    /// What the agent logged so far, over all its runs.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every intact record of the agent's journal, oldest first (none before it has one).
    pub fn journal_records(&self) -> Vec<sensor::journal::Record> {
        sensor::journal::Reader::open(&self.journal)
            .map(|reader| {
                reader
                    .filter_map(|entry| match entry {
                        sensor::journal::Entry::Record { record, .. } => Some(record),
                        sensor::journal::Entry::Damaged(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("the agent exited during start-up with {status}:\n{log}");
            }
            if let Ok((200, _)) = self.get("/healthz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let health = self
                    .get("/healthz")
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("the agent was not healthy within {limit:?}: {health}\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the agent was started with (a test may rewrite it and SIGHUP).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends the agent `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill {signal}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for a log line containing `needle`; the line.
    pub fn wait_for_log(&self, within: Duration, needle: &str) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's journal directory.
    /// Where it serves `/metrics` and `/healthz` (plain HTTP unless its web config says
    /// TLS): what a scrape config targets.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn journal_dir(&self) -> &Path {
        &self.journal
    }

    /// Its pin directory in bpffs (`layout-N/` maps, `layout-N/links-<build>/` links).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// SIGTERM, and the agent's exit status once it has stopped (within 10 s).
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the agent did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes the agent send over TCP (it answers `scrapes` scrapes of `/metrics`), waits three
    /// polls, and returns the flows counted for the agent itself: there must be none.
    pub fn own_flows_after_scrapes(&self, scrapes: usize) -> anyhow::Result<Vec<Flow>> {
        for _ in 0..scrapes {
            let body = http_get_tcp(self.metrics, "/metrics")?;
            if !body.contains("exfil_sensor_probe_attached{probe=\"sock:sock_send_length\"} 1") {
                bail!("the send probe is not attached:\n{body}");
            }
        }
        std::thread::sleep(POLL * 3);
        let pid = self.pid();
        Ok(self.flows()?.into_iter().filter(|f| f.pid == pid).collect())
    }

    pub fn files(&self) -> anyhow::Result<Vec<FileRow>> {
        let (status, body) = self.get("/api/v1/files")?;
        if status != 200 {
            bail!("/api/v1/files answered {status}: {body}");
        }
        serde_json::from_str(&body).context("parsing /api/v1/files")
    }

    /// The lines the agent has logged at ERROR or WARN so far.
    pub fn log_errors(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }

    /// The whole `/metrics` text.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        http_get_tcp(self.metrics, "/metrics")
    }

    /// `GET path` over the API socket, parsed as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("{path} answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("parsing {path}"))
    }

    /// The value of one series of the agent's `/metrics`, e.g.
    /// `exfil_sensor_kernel_drops_total{map="egress"}`.
    pub fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let text = http_get_tcp(self.metrics, "/metrics")?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("no series {series} in /metrics"))?
            .trim()
            .parse()
            .with_context(|| format!("{series} is not an integer"))
    }

    /// `/api/v1/alerts`, as each test's own view of an alert.
    pub fn alerts<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        self.get_json("/api/v1/alerts").expect("/api/v1/alerts")
    }

    /// Waits up to `within` for an alert that `matches`.
    pub fn wait_for_alert<T: serde::de::DeserializeOwned>(
        &self,
        within: Duration,
        matches: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self.alerts::<T>().into_iter().find(|a| matches(a)) {
                return Some(a);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// `GET path` over the API socket: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get_unix(&self.api_socket, path)
    }

    pub fn flows(&self) -> anyhow::Result<Vec<Flow>> {
        let (status, body) = self.get("/api/v1/flows")?;
        if status != 200 {
            bail!("/api/v1/flows answered {status}: {body}");
        }
        serde_json::from_str(&body).context("parsing /api/v1/flows")
    }

    /// The flow of `pid` to `destination:port` once its count has stopped moving: waits until
    /// it has sent `expected` bytes (or 10 s pass), then two more polls, and returns what the
    /// API says.
    pub fn settled_flow(
        &self,
        pid: u32,
        destination: &str,
        port: u16,
        protocol: &str,
        expected: u64,
    ) -> anyhow::Result<Option<Flow>> {
        self.settled(pid, destination, port, protocol, |f| {
            f.bytes_sent >= expected
        })
    }

    /// Like [`Agent::settled_flow`], waiting until `done` holds for the flow.
    pub fn settled(
        &self,
        pid: u32,
        destination: &str,
        port: u16,
        protocol: &str,
        done: impl Fn(&Flow) -> bool,
    ) -> anyhow::Result<Option<Flow>> {
        let find = || -> anyhow::Result<Option<Flow>> {
            Ok(self.flows()?.into_iter().find(|f| {
                f.pid == pid
                    && f.destination == destination
                    && f.port == port
                    && f.protocol == protocol
            }))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if find()?.is_some_and(|f| done(&f)) {
                break;
            }
            std::thread::sleep(POLL / 2);
        }
        std::thread::sleep(POLL * 2);
        find()
    }
}

/// The journal directory a test's config names right after `[journal]`.
fn given_journal_dir(extra: &str) -> Option<PathBuf> {
    let rest = extra.split_once("[journal]\ndir = \"")?.1;
    Some(PathBuf::from(rest.split_once('"')?.0))
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Not once reaped (Agent::stop): its pid may be another process's by now.
        if let (Ok(None), Ok(pid)) = (self.child.try_wait(), i32::try_from(self.child.id())) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_dir_all(&self.journal);
        let _ = std::fs::remove_file(&self.api_socket);
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- agent log ({}):\n{log}--- end of agent log",
                self.log.display()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
