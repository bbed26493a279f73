//! Harness for the end-to-end tests: a network namespace standing in for "the outside", the
//! real agent, helper processes with known byte counts, and a client for the API socket.
//!
//! Everything that is started or created is owned by a guard whose `Drop` stops or removes
//! it, so a failing assertion leaves no namespace, process or socket behind.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// Panics with a clear message unless the tests run as root: they load BPF programs and
/// create network namespaces. `cargo xtask test` runs them; there is no skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the end-to-end tests load BPF programs and need root (uid is {uid}); run `cargo xtask test` as root"
    );
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace joined to this host by a veth pair. Deleted (with its veth pair) on
/// drop.
pub struct NetNs {
    pub name: String,
    /// This host's end: 198.51.100.1 and 2001:db8::1.
    pub host_ip: &'static str,
    pub host_ip6: &'static str,
    /// The namespace's end: 198.51.100.2 (also 198.51.100.3) and 2001:db8::2.
    pub peer_ip: &'static str,
    pub peer_ip_2: &'static str,
    pub peer_ip6: &'static str,
}

impl NetNs {
    /// The "outside world" (documentation ranges, RFC 5737 and RFC 3849).
    pub fn outside() -> anyhow::Result<Self> {
        Self::create("exfil-e2e")
    }

    fn create(name: &str) -> anyhow::Result<Self> {
        // A namespace left by a killed earlier run would hold the same addresses.
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            host_ip: "198.51.100.1",
            host_ip6: "2001:db8::1",
            peer_ip: "198.51.100.2",
            peer_ip_2: "198.51.100.3",
            peer_ip6: "2001:db8::2",
        };
        let host_if = format!("{name}-h");
        let peer_if = format!("{name}-p");
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", name,
            ],
        )?;
        let v4 = format!("{}/24", ns.host_ip);
        run("ip", &["addr", "add", &v4, "dev", &host_if])?;
        // nodad: usable at once, without duplicate address detection's delay.
        let v6 = format!("{}/64", ns.host_ip6);
        run("ip", &["addr", "add", &v6, "dev", &host_if, "nodad"])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        for ip in [ns.peer_ip, ns.peer_ip_2] {
            in_ns(&["addr", "add", &format!("{ip}/24"), "dev", &peer_if])?;
        }
        let v6 = format!("{}/64", ns.peer_ip6);
        in_ns(&["addr", "add", &v6, "dev", &peer_if, "nodad"])?;
        in_ns(&["link", "set", &peer_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A child process killed and reaped on drop, with line access to its stdout.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            what: what.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, which must start with `prefix`; returns the rest, parsed.
    /// The helper ends itself within 60 s, so this cannot block forever.
    pub fn expect_line<T: std::str::FromStr>(&mut self, prefix: &str) -> anyhow::Result<T> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let rest = line
            .trim_end()
            .strip_prefix(prefix)
            .with_context(|| format!("{}: expected `{prefix}…`, got {line:?}", self.what))?;
        rest.trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{}: cannot parse {rest:?}", self.what))
    }

    /// Closes stdin (a holding sender then exits) and waits for the exit.
    pub fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The traffic helper of this crate (`src/bin/exfil-traffic.rs`). A macro because cargo
/// tells only integration tests, not this library, where the package's binaries are.
#[macro_export]
macro_rules! traffic {
    () => {
        $crate::Traffic::new(env!("CARGO_BIN_EXE_exfil-traffic"))
    };
}

/// Starts the traffic helper: sinks inside a namespace, senders on this host.
pub struct Traffic {
    bin: PathBuf,
}

impl Traffic {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    /// A `proto` sink in `ns`, bound to `ip` on a free port; returns it and the port.
    pub fn sink(&self, ns: &NetNs, proto: &str, ip: &str) -> anyhow::Result<(Proc, u16)> {
        let mut cmd = ns.command(&self.bin);
        cmd.args(["sink", proto, &socket_addr(ip, 0)]);
        let mut sink = Proc::spawn(cmd, &format!("{proto} sink"))?;
        let port = sink.expect_line("port")?;
        Ok((sink, port))
    }

    /// The helper in `ns`, with these arguments.
    pub fn run_in(&self, ns: &NetNs, args: &[&str]) -> anyhow::Result<Proc> {
        let mut cmd = ns.command(&self.bin);
        cmd.args(args);
        Proc::spawn(cmd, &format!("{} in {}", args.join(" "), ns.name))
    }

    /// A sender on this host, with the helper's arguments.
    pub fn send(&self, args: &[&str]) -> anyhow::Result<Proc> {
        self.send_with(args, &[])
    }

    /// A sender on this host, with the helper's arguments and environment.
    pub fn send_with(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).envs(env.iter().copied());
        Proc::spawn(cmd, &format!("sender {}", args.join(" ")))
    }
}

/// `ip:port`, with brackets for IPv6.
pub fn socket_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The agent binary: `EXFIL_SENSOR_BIN` (set by `cargo xtask test`), else the release build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("EXFIL_SENSOR_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/exfil-sensor"),
        PathBuf::from,
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
    pub port: u16,
    pub protocol: String,
    pub direction: String,
    pub bytes_sent: u64,
    pub sends: u64,
    pub bytes_received: u64,
}

/// One row of `/api/v1/files`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FileRow {
    pub pid: u32,
    pub comm: String,
    pub device: String,
    pub inode: u64,
    pub path: Option<String>,
    pub bytes_read: u64,
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

    /// An agent that reads the kernel every `poll`, with `extra` config as above.
    pub fn start_polling(poll: Duration, extra: &str) -> anyhow::Result<Self> {
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
        std::fs::write(
            &config,
            format!(
                "[agent]\npoll_interval = \"{}ms\"\n[http]\nlisten = \"{metrics}\"\n\
                 [kernel]\npin_dir = \"{}\"\n{extra}",
                poll.as_millis(),
                pin_dir.display()
            ),
        )?;
        let log = dir.join(format!("exfil-e2e-{tag}.log"));
        let child = Self::spawn(&config, &api_socket, &log)?;
        let mut agent = Self {
            child,
            api_socket,
            metrics,
            config,
            pin_dir,
            log,
        };
        agent.wait_healthy(Duration::from_secs(20))?;
        Ok(agent)
    }

    fn spawn(config: &Path, api_socket: &Path, log: &Path) -> anyhow::Result<Child> {
        let bin = agent_bin();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        Command::new(&bin)
            .stderr(log)
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
        self.child.kill()?;
        self.child.wait()?;
        std::thread::sleep(down_for);
        self.child = Self::spawn(&self.config, &self.api_socket, &self.log)?;
        self.wait_healthy(Duration::from_secs(20))
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

    /// Where the agent serves `/metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn files(&self) -> anyhow::Result<Vec<FileRow>> {
        let (status, body) = self.get("/api/v1/files")?;
        if status != 200 {
            bail!("/api/v1/files answered {status}: {body}");
        }
        serde_json::from_str(&body).context("parsing /api/v1/files")
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

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
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

/// `GET path` over TCP; the body of a 200 answer.
pub fn http_get_tcp(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let (status, body) = http_get(stream, path)?;
    if status != 200 {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body)
}

/// A minimal HTTP/1.0 GET over a Unix socket: one request, the server closes after answering.
pub fn http_get_unix(socket: &Path, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    http_get(stream, path)
}

/// One HTTP/1.0 request on a fresh stream; the server closes after answering.
fn http_get(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A systemd-style service cgroup, `system.slice/NAME`, made in the cgroup2 hierarchy and in
/// the v1 `name=systemd` one when it exists (both found in /proc/mounts), so that
/// `/proc/PID/cgroup` of a process placed in it reads as under systemd. Removed on drop.
pub struct ServiceCgroup {
    dirs: Vec<PathBuf>,
}

impl ServiceCgroup {
    pub fn create(unit: &str) -> anyhow::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let roots: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let systemd_v1 = f.get(2) == Some(&"cgroup")
                    && f.get(3)
                        .is_some_and(|o| o.split(',').any(|o| o == "name=systemd"));
                (f.get(2) == Some(&"cgroup2") || systemd_v1).then(|| PathBuf::from(f[1]))
            })
            .collect();
        if !roots
            .iter()
            .any(|r| mounts.contains(&format!("{} cgroup2", r.display())))
        {
            bail!("no cgroup2 hierarchy in /proc/mounts");
        }
        let mut made = Self { dirs: Vec::new() };
        for root in roots {
            let dir = root.join("system.slice").join(unit);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            made.dirs.push(dir);
        }
        Ok(made)
    }

    /// Makes `cmd`'s process start inside the cgroup (it moves itself before exec).
    pub fn place(&self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
        let procs: Vec<std::ffi::CString> = self
            .dirs
            .iter()
            .map(|d| std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        // SAFETY: between fork and exec only open/write/close on prepared strings, all
        // async-signal-safe; "0" moves the writing process itself.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
