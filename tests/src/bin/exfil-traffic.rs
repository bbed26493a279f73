//! Traffic with a known byte count, for the end-to-end tests.
//!
//!   exfil-traffic sink tcp ADDR          listen, print `port N`, read one connection to EOF,
//!                                        print `received N`
//!   exfil-traffic sink udp ADDR          bind, print `port N`, count datagrams until 2 s idle,
//!                                        print `received N`
//!   exfil-traffic send tcp ADDR BYTES    connect, send, wait for the sink to close, print
//!                                        `sent N`, then stay alive until stdin closes
//!   exfil-traffic send udp ADDR COUNT SIZE
//!                                        connected UDP socket, COUNT datagrams of SIZE bytes
//!
//! Every run ends by itself within 60 s (SIGALRM), whatever the test does.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail};

const CHUNK: usize = 64 * 1024;

fn main() -> anyhow::Result<()> {
    // SAFETY: alarm has no preconditions; the default SIGALRM action ends the process.
    unsafe { libc::alarm(60) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {}; see the file's doc comment", i + 1))
    };
    let addr: SocketAddr = arg(2)?.parse().context("ADDR")?;
    match (arg(0)?, arg(1)?) {
        ("sink", "tcp") => sink_tcp(addr),
        ("sink", "udp") => sink_udp(addr),
        ("send", "tcp") => send_tcp(addr, arg(3)?.parse().context("BYTES")?),
        ("send", "udp") => send_udp(
            addr,
            arg(3)?.parse().context("COUNT")?,
            arg(4)?.parse().context("SIZE")?,
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

fn sink_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    say(&format!("port {}", listener.local_addr()?.port()))?;
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    say(&format!("received {total}"))
}

fn sink_udp(addr: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
    say(&format!("port {}", socket.local_addr()?.port()))?;
    let mut buf = vec![0u8; 65_536];
    let mut total = 0u64;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    while let Ok(n) = socket.recv(&mut buf) {
        total += n as u64;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    say(&format!("received {total}"))
}

fn send_tcp(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    // The sink closes once it has read everything: then every byte has arrived.
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    say(&format!("sent {bytes}"))?;
    hold()
}

fn send_udp(addr: SocketAddr, count: u64, size: usize) -> anyhow::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    let datagram = vec![0xa5u8; size];
    for i in 0..count {
        let n = socket.send(&datagram)?;
        if n != size {
            bail!("datagram {i}: sent {n} of {size} bytes");
        }
        // Pace a little so the sink's receive queue keeps up; the count is of sends anyway.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    say(&format!("sent {}", count * size as u64))?;
    hold()
}

/// Stays alive (so the agent can name this process) until the test closes stdin.
fn hold() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(())
}
