//! Helper processes with known byte counts: the `exfil-traffic` binary as sink or sender.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::NetNs;

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

    /// Tells a holding helper to go on (one line on its stdin).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
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

    /// A sink on this host (loopback traffic).
    pub fn sink_local(&self, proto: &str, ip: &str) -> anyhow::Result<(Proc, u16)> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["sink", proto, &socket_addr(ip, 0)]);
        let mut sink = Proc::spawn(cmd, &format!("local {proto} sink"))?;
        let port = sink.expect_line("port")?;
        Ok((sink, port))
    }

    /// The helper in `ns`, with these arguments.
    pub fn run_in(&self, ns: &NetNs, args: &[&str]) -> anyhow::Result<Proc> {
        let mut cmd = ns.command(&self.bin);
        cmd.args(args);
        Proc::spawn(cmd, &format!("{} in {}", args.join(" "), ns.name))
    }

    /// A TCP upload of `bytes` to `to` from this host at the helper's slow pace, returned
    /// once it has started sending (so that something can happen to the agent mid-upload).
    pub fn slow_upload(&self, to: &str, bytes: u64) -> anyhow::Result<Proc> {
        let mut upload = self.send(&["send", "tcp", to, &bytes.to_string(), "slow"])?;
        let started: String = upload.expect_line("started")?;
        anyhow::ensure!(started.is_empty(), "unexpected `started {started}`");
        Ok(upload)
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
