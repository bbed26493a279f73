//! DNS servers for the destination-name tests (issue 13), Debian's dnsmasq in the foreground,
//! killed on drop: the outside world's authoritative server in the test namespace, answering
//! the names it is given and nothing else (no upstream, no /etc/hosts); and a local caching
//! resolver on this host's loopback, as systemd-resolved or unbound would be, relaying
//! answers from an upstream server to the applications.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, ServiceCgroup};

/// The answers' TTL: what the agent keeps a name for, plus its grace.
pub const TTL: u32 = 300;

/// What every instance is: foreground, no config file, no pid file, logs to stderr.
const COMMON: [&str; 8] = [
    "--keep-in-foreground",
    "--no-resolv",
    "--no-hosts",
    "--conf-file=/dev/null",
    "--pid-file",
    "--user=root",
    "--bind-interfaces",
    "--log-facility=-",
];

pub struct Dnsmasq {
    child: Child,
    /// Where it listens (port 53).
    pub ip: String,
    /// A resolv.conf naming it, for clients that resolve through the C library.
    pub resolv_conf: PathBuf,
}

impl Dnsmasq {
    /// Serves `names` (name → IPv4 address) on `ip`:53 in `ns` (`ip` must be one of the
    /// namespace's addresses: `NetNs::add_host`). `dir` holds its resolv.conf for clients.
    pub fn start(ns: &NetNs, ip: &str, names: &[(&str, &str)], dir: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "dnsmasq"])
            .args(COMMON)
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--local-ttl={TTL}"));
        for (name, addr) in names {
            cmd.arg(format!("--address=/{name}/{addr}"));
        }
        Self::spawn(cmd, Some(ns), ip, dir)
    }

    /// A caching resolver on this host at `ip`:53 (a loopback address), in `cgroup`, that
    /// asks `upstream` (another `Dnsmasq`) for every name and relays its answers.
    pub fn forwarder(
        ip: &str,
        upstream: &Self,
        cgroup: &ServiceCgroup,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("dnsmasq");
        cmd.args(COMMON)
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--server={}", upstream.ip));
        cgroup.place(&mut cmd)?;
        Self::spawn(cmd, None, ip, dir)
    }

    fn spawn(mut cmd: Command, ns: Option<&NetNs>, ip: &str, dir: &Path) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base; `cargo xtask setup`)")?;
        std::fs::create_dir_all(dir)?;
        let resolv_conf = dir.join(format!("resolv.conf.{ip}"));
        std::fs::write(
            &resolv_conf,
            format!("nameserver {ip}\noptions timeout:2 attempts:2\n"),
        )?;
        let server = Self {
            child,
            ip: ip.to_owned(),
            resolv_conf,
        };
        server.wait_ready(ns)?;
        Ok(server)
    }

    /// Until it listens: its UDP socket shows in /proc/net/udp (the namespace's, or this
    /// host's for `None`).
    fn wait_ready(&self, ns: Option<&NetNs>) -> anyhow::Result<()> {
        let ip: std::net::Ipv4Addr = self.ip.parse()?;
        let local = format!("{:08X}:0035", u32::from_ne_bytes(ip.octets()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let udp = match ns {
                Some(ns) => {
                    let out = Command::new("ip")
                        .args(["netns", "exec", &ns.name, "cat", "/proc/net/udp"])
                        .output()?;
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
                None => std::fs::read_to_string("/proc/net/udp")?,
            };
            if udp
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not listen on {}:53 within 10 s", self.ip)
    }

    /// A command that runs `program` with this server as its only resolver: in a mount
    /// namespace of its own, the server's resolv.conf bound over /etc/resolv.conf (the
    /// host's stays as it is). The program keeps the pid the command starts with.
    pub fn client(&self, program: &Path) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&self.resolv_conf)
            .arg(program);
        cmd
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
