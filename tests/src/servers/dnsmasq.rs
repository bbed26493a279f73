//! A DNS server of the outside world for the destination-name tests (issue 13): Debian's
//! dnsmasq in the test namespace, answering the names it is given and nothing else (no
//! upstream, no /etc/hosts), in the foreground, killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::NetNs;

/// The answers' TTL: what the agent keeps a name for, plus its grace.
pub const TTL: u32 = 300;

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
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file",
                "--user=root",
                "--bind-interfaces",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--local-ttl={TTL}"));
        for (name, addr) in names {
            cmd.arg(format!("--address=/{name}/{addr}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base; `cargo xtask setup`)")?;
        std::fs::create_dir_all(dir)?;
        let resolv_conf = dir.join("resolv.conf");
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

    /// Until it listens: its UDP socket shows in the namespace's /proc/net/udp.
    fn wait_ready(&self, ns: &NetNs) -> anyhow::Result<()> {
        let ip: std::net::Ipv4Addr = self.ip.parse()?;
        let local = format!("{:08X}:0035", u32::from_ne_bytes(ip.octets()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name, "cat", "/proc/net/udp"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout)
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
