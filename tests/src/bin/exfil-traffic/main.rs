//! Traffic with a known byte count, for the end-to-end tests.
//!
//!   exfil-traffic sink tcp ADDR          listen, print `port N`, read one connection to EOF,
//!                                        print `received N`
//!   exfil-traffic sink udp ADDR          bind, print `port N`, count datagrams until 2 s idle,
//!                                        print `received N`
//!   exfil-traffic send tcp ADDR BYTES [write|writev|sendmsg|sendfile|splice|uring|slow|mptcp]
//!                                        connect, send by that path, wait for the sink to
//!                                        close, print `sent N`, stay alive until stdin closes.
//!                                        ADDR may be NAME:PORT: resolved by the C library
//!                                        (getaddrinfo, /etc/resolv.conf), the first IPv4
//!                                        address printed as `resolved IP` first
//!   exfil-traffic send udp ADDR COUNT SIZE [send|sendmmsg]
//!                                        connected UDP socket, COUNT datagrams of SIZE bytes
//!   exfil-traffic serve ADDR REQ RESP    listen, print `port N`, accept one connection, read
//!                                        REQ bytes, answer RESP bytes, print `served`, stay
//!                                        alive until stdin closes
//!   exfil-traffic fetch ADDR REQ RESP    connect, send REQ bytes, read the answer to EOF,
//!                                        print `received N`, stay alive until stdin closes
//!   exfil-traffic read FILE CHUNK [read|pread|readv|mmap|direct]
//!                                        read all of FILE, CHUNK bytes a call (or page by
//!                                        page through a mapping), print `read N`, stay alive
//!   exfil-traffic write FILE SIZE CHUNK [create|overwrite|threads]
//!                                        write SIZE bytes to FILE, CHUNK bytes a call (a new
//!                                        file; `pwrite` from 0 on an existing one; four
//!                                        threads a quarter each), print `wrote N`, stay alive
//!   exfil-traffic unix BYTES             send BYTES over a Unix-domain socket pair, print
//!                                        `sent N`, stay alive until stdin closes
//!   exfil-traffic sendto COUNT SIZE ADDR...
//!                                        one unconnected UDP socket, COUNT datagrams of SIZE
//!                                        bytes to each ADDR in turn, addressed with each send
//!   exfil-traffic connect-unix PATH      connect to a Unix socket, print `connected` or
//!                                        `refused <reason>`
//!
//! With `EXFIL_TRAFFIC_READ_FIRST=FILE` set, any mode first reads all of FILE (a process that
//! reads a file and then sends, for the lineage tests). With
//! `EXFIL_TRAFFIC_WAIT_AFTER_RESOLVING` set, a name is resolved and then a line of stdin
//! awaited before connecting (a process that looked a name up a while before it sends).
//!
//! Every run ends by itself within 60 s (SIGALRM), whatever the test does.

mod file;
mod tcp;
mod udp;

use std::{
    io::{BufRead as _, Write as _},
    net::SocketAddr,
};

use anyhow::{Context as _, bail};

/// Bytes per write (and per read in the sinks).
const CHUNK: usize = 64 * 1024;

/// `IP:PORT` as it is; `NAME:PORT` through the C library's resolver (what a real client
/// does: a DNS query from this process), its first IPv4 address printed.
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let found = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{addr}: no IPv4 address"))?;
    say(&format!("resolved {}", found.ip()))?;
    if std::env::var_os("EXFIL_TRAFFIC_WAIT_AFTER_RESOLVING").is_some() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    Ok(found)
}

fn main() -> anyhow::Result<()> {
    // SAFETY: alarm has no preconditions; the default SIGALRM action ends the process.
    unsafe { libc::alarm(60) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {}; see the file's doc comment", i + 1))
    };
    if let Some(path) = std::env::var_os("EXFIL_TRAFFIC_READ_FIRST") {
        let path = std::path::PathBuf::from(path);
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    }
    if arg(0)? == "connect-unix" {
        return match std::os::unix::net::UnixStream::connect(arg(1)?) {
            Ok(_) => say("connected"),
            Err(e) => say(&format!("refused {e}")),
        };
    }
    if arg(0)? == "sendto" {
        let addrs = args[3..]
            .iter()
            .map(|a| a.parse().context("ADDR"))
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        return udp::send_to(
            arg(1)?.parse().context("COUNT")?,
            arg(2)?.parse().context("SIZE")?,
            &addrs,
        );
    }
    if arg(0)? == "unix" {
        let bytes: u64 = arg(1)?.parse().context("BYTES")?;
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
        let reader = std::thread::spawn(move || -> std::io::Result<u64> {
            std::io::copy(&mut b, &mut std::io::sink())
        });
        let chunk = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left.min(CHUNK as u64))?;
            a.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        drop(a);
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        say(&format!("sent {got}"))?;
        return hold();
    }
    if arg(0)? == "read" {
        return file::read_file(
            arg(1)?,
            arg(2)?.parse().context("CHUNK")?,
            args.get(3).map_or("read", String::as_str),
        );
    }
    if arg(0)? == "write" {
        return file::write_file(
            arg(1)?,
            arg(2)?.parse().context("SIZE")?,
            arg(3)?.parse().context("CHUNK")?,
            args.get(4).map_or("create", String::as_str),
        );
    }
    if let mode @ ("serve" | "fetch") = arg(0)? {
        let addr: SocketAddr = arg(1)?.parse().context("ADDR")?;
        let request: u64 = arg(2)?.parse().context("REQ")?;
        let response: u64 = arg(3)?.parse().context("RESP")?;
        return if mode == "serve" {
            tcp::serve(addr, request, response)
        } else {
            tcp::fetch(addr, request, response)
        };
    }
    let addr = resolve(arg(2)?)?;
    match (arg(0)?, arg(1)?) {
        ("sink", "tcp") => tcp::sink_tcp(addr),
        ("sink", "udp") => udp::sink_udp(addr),
        ("send", "tcp") => tcp::send_tcp(
            addr,
            arg(3)?.parse().context("BYTES")?,
            args.get(4).map_or("write", String::as_str),
        ),
        ("send", "udp") => udp::send_udp(
            addr,
            arg(3)?.parse().context("COUNT")?,
            arg(4)?.parse().context("SIZE")?,
            args.get(5).map_or("send", String::as_str),
        ),
        (mode, proto) => bail!("unknown mode {mode} {proto}"),
    }
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Stays alive (so the agent can name this process) until the test closes stdin; exits at
/// once when `EXFIL_TRAFFIC_NO_HOLD` is set, to play a process gone before the agent looks.
fn hold() -> anyhow::Result<()> {
    if std::env::var_os("EXFIL_TRAFFIC_NO_HOLD").is_some() {
        return Ok(());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(())
}
