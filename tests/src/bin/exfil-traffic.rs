//! Traffic with a known byte count, for the end-to-end tests.
//!
//!   exfil-traffic sink tcp ADDR          listen, print `port N`, read one connection to EOF,
//!                                        print `received N`
//!   exfil-traffic sink udp ADDR          bind, print `port N`, count datagrams until 2 s idle,
//!                                        print `received N`
//!   exfil-traffic send tcp ADDR BYTES [write|writev|sendmsg|sendfile|splice|uring|slow|mptcp]
//!                                        connect, send by that path, wait for the sink to
//!                                        close, print `sent N`, stay alive until stdin closes
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
//!   exfil-traffic unix BYTES             send BYTES over a Unix-domain socket pair, print
//!                                        `sent N`, stay alive until stdin closes
//!   exfil-traffic sendto COUNT SIZE ADDR...
//!                                        one unconnected UDP socket, COUNT datagrams of SIZE
//!                                        bytes to each ADDR in turn, addressed with each send
//!
//! Every run ends by itself within 60 s (SIGALRM), whatever the test does.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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
    if arg(0)? == "sendto" {
        let addrs = args[3..]
            .iter()
            .map(|a| a.parse().context("ADDR"))
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        return send_to(
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
        return read_file(
            arg(1)?,
            arg(2)?.parse().context("CHUNK")?,
            args.get(3).map_or("read", String::as_str),
        );
    }
    if let mode @ ("serve" | "fetch") = arg(0)? {
        let addr: SocketAddr = arg(1)?.parse().context("ADDR")?;
        let request: u64 = arg(2)?.parse().context("REQ")?;
        let response: u64 = arg(3)?.parse().context("RESP")?;
        return if mode == "serve" {
            serve(addr, request, response)
        } else {
            fetch(addr, request, response)
        };
    }
    let addr: SocketAddr = arg(2)?.parse().context("ADDR")?;
    match (arg(0)?, arg(1)?) {
        ("sink", "tcp") => sink_tcp(addr),
        ("sink", "udp") => sink_udp(addr),
        ("send", "tcp") => send_tcp(
            addr,
            arg(3)?.parse().context("BYTES")?,
            args.get(4).map_or("write", String::as_str),
        ),
        ("send", "udp") => send_udp(
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

fn send_tcp(addr: SocketAddr, bytes: u64, via: &str) -> anyhow::Result<()> {
    let mut conn = if via == "mptcp" {
        connect_mptcp(addr)?
    } else {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?
    };
    match via {
        "write" | "mptcp" => write_all(&mut conn, bytes)?,
        "writev" | "sendmsg" => gather(&conn, bytes, via)?,
        "slow" => write_slowly(&mut conn, bytes)?,
        "sendfile" => sendfile(&conn, &payload_file(bytes)?, bytes)?,
        "splice" => splice(&conn, &payload_file(bytes)?, bytes)?,
        "uring" => uring_send(&conn, bytes)?,
        other => bail!("unknown send path {other}"),
    }
    conn.shutdown(Shutdown::Write)?;
    // The sink closes once it has read everything: then every byte has arrived.
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    say(&format!("sent {bytes}"))?;
    hold()
}

/// Sends `bytes` as two-part gathers (a 1,000-byte head and the rest of a 64 KiB chunk),
/// by `writev` or by `sendmsg`.
fn gather(conn: &TcpStream, bytes: u64, via: &str) -> anyhow::Result<()> {
    let chunk = vec![0x2bu8; CHUNK];
    let mut left = usize::try_from(bytes)?;
    while left > 0 {
        let n = left.min(CHUNK);
        let head = n.min(1_000);
        let mut iov = [
            libc::iovec {
                iov_base: chunk.as_ptr().cast_mut().cast(),
                iov_len: head,
            },
            libc::iovec {
                iov_base: chunk[head..].as_ptr().cast_mut().cast(),
                iov_len: n - head,
            },
        ];
        // SAFETY: the iovecs point into `chunk`, alive for the call.
        let sent = unsafe {
            if via == "writev" {
                libc::writev(conn.as_raw_fd(), iov.as_ptr(), 2)
            } else {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = 2;
                libc::sendmsg(conn.as_raw_fd(), &raw const msg, 0)
            }
        };
        // A short gather is fine: the rest goes in the next call.
        left -= check(sent, via)?;
    }
    Ok(())
}

fn serve(addr: SocketAddr, request: u64, response: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    say(&format!("port {}", listener.local_addr()?.port()))?;
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = vec![0u8; usize::try_from(request)?];
    conn.read_exact(&mut buf)?;
    write_all(&mut conn, response)?;
    conn.shutdown(Shutdown::Write)?;
    // Wait for the client's close, so that every byte of the answer was read.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    say("served")?;
    hold()
}

fn fetch(addr: SocketAddr, request: u64, response: u64) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    write_all(&mut conn, request)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    if answer.len() as u64 != response {
        bail!("expected {response} bytes, got {}", answer.len());
    }
    drop(conn);
    say(&format!("received {}", answer.len()))?;
    hold()
}

/// 64 KiB every 5 ms (about 13 MB/s), printing `started` after the first chunk, so that a
/// test can act while the upload is under way.
fn write_slowly(conn: &mut TcpStream, bytes: u64) -> anyhow::Result<()> {
    let chunk = vec![0x51u8; CHUNK];
    let mut left = bytes;
    let mut first = true;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
        if first {
            say("started")?;
            first = false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// An MPTCP connection (IPPROTO_MPTCP; it falls back to plain TCP with a peer that does not
/// speak it, as the sink does), as a TcpStream: the socket calls are the same.
fn connect_mptcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    const IPPROTO_MPTCP: libc::c_int = 262;
    let SocketAddr::V4(v4) = addr else {
        bail!("mptcp mode takes an IPv4 address");
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if fd < 0 {
        bail!("MPTCP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own from here on.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sin is a valid sockaddr_in of the given length.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("MPTCP connect {addr}: {}", std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn write_all(conn: &mut TcpStream, bytes: u64) -> anyhow::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The file the file-to-socket paths send: `EXFIL_TRAFFIC_PAYLOAD` when set, else a new file
/// of `bytes` bytes, already unlinked.
fn payload_file(bytes: u64) -> anyhow::Result<std::fs::File> {
    if let Some(path) = std::env::var_os("EXFIL_TRAFFIC_PAYLOAD") {
        return std::fs::File::open(&path)
            .with_context(|| format!("open {}", std::path::Path::new(&path).display()));
    }
    let path = std::env::temp_dir().join(format!("exfil-payload-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let chunk = vec![0x3cu8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(file)
}

fn check(ret: isize, what: &str) -> anyhow::Result<usize> {
    usize::try_from(ret).map_err(|_| anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error()))
}

fn sendfile(conn: &TcpStream, file: &std::fs::File, bytes: u64) -> anyhow::Result<()> {
    let mut offset: libc::off_t = 0;
    let mut left = usize::try_from(bytes)?;
    while left > 0 {
        // SAFETY: both descriptors are open for the call; offset is a valid pointer.
        let ret =
            unsafe { libc::sendfile(conn.as_raw_fd(), file.as_raw_fd(), &raw mut offset, left) };
        left -= check(ret, "sendfile")?;
    }
    Ok(())
}

fn splice(conn: &TcpStream, file: &std::fs::File, bytes: u64) -> anyhow::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two descriptors to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe() returned two fresh descriptors we now own.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut offset: libc::loff_t = 0;
    let mut left = usize::try_from(bytes)?;
    while left > 0 {
        // SAFETY: open descriptors; offset is a valid pointer; null means "current offset".
        let into_pipe = unsafe {
            libc::splice(
                file.as_raw_fd(),
                &raw mut offset,
                pipe_w.as_raw_fd(),
                std::ptr::null_mut(),
                left.min(CHUNK),
                0,
            )
        };
        let mut in_pipe = check(into_pipe, "splice file to pipe")?;
        left -= in_pipe;
        while in_pipe > 0 {
            // SAFETY: as above.
            let out = unsafe {
                libc::splice(
                    pipe_r.as_raw_fd(),
                    std::ptr::null_mut(),
                    conn.as_raw_fd(),
                    std::ptr::null_mut(),
                    in_pipe,
                    0,
                )
            };
            in_pipe -= check(out, "splice pipe to socket")?;
        }
    }
    Ok(())
}

fn uring_send(conn: &TcpStream, bytes: u64) -> anyhow::Result<()> {
    let mut ring = io_uring::IoUring::new(8)?;
    let chunk = vec![0x77u8; CHUNK];
    let mut left = usize::try_from(bytes)?;
    while left > 0 {
        let n = left.min(CHUNK);
        let op = io_uring::opcode::Send::new(
            io_uring::types::Fd(conn.as_raw_fd()),
            chunk.as_ptr(),
            u32::try_from(n)?,
        )
        .build();
        // SAFETY: the buffer outlives the operation: we wait for its completion below.
        unsafe { ring.submission().push(&op)? };
        ring.submit_and_wait(1)?;
        let done = ring.completion().next().context("no io_uring completion")?;
        left -= usize::try_from(done.result())
            .map_err(|_| anyhow::anyhow!("io_uring send: errno {}", -done.result()))?;
    }
    Ok(())
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

fn send_udp(addr: SocketAddr, count: u64, size: usize, via: &str) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(unspecified_for(&addr))?;
    socket.connect(addr)?;
    let datagram = vec![0xa5u8; size];
    match via {
        "send" => {
            for i in 0..count {
                let n = socket.send(&datagram)?;
                if n != size {
                    bail!("datagram {i}: sent {n} of {size} bytes");
                }
                pace(i);
            }
        }
        "sendmmsg" => sendmmsg(&socket, &datagram, count)?,
        other => bail!("unknown send path {other}"),
    }
    say(&format!("sent {}", count * size as u64))?;
    hold()
}

/// `count` datagrams in batches of 50 `sendmmsg` calls.
fn sendmmsg(socket: &UdpSocket, datagram: &[u8], count: u64) -> anyhow::Result<()> {
    const BATCH: usize = 50;
    let mut iov = libc::iovec {
        iov_base: datagram.as_ptr().cast_mut().cast(),
        iov_len: datagram.len(),
    };
    let mut left = usize::try_from(count)?;
    while left > 0 {
        let batch = left.min(BATCH);
        // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs holds `batch` valid headers pointing at a live iovec.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                u32::try_from(batch)?,
                0,
            )
        };
        let sent = usize::try_from(sent)
            .map_err(|_| anyhow::anyhow!("sendmmsg: {}", std::io::Error::last_os_error()))?;
        if msgs[..sent]
            .iter()
            .any(|m| m.msg_len as usize != datagram.len())
        {
            bail!("sendmmsg sent a short datagram");
        }
        left -= sent;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Unconnected: every datagram names its destination (`sendto`).
fn send_to(count: u64, size: usize, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let first = addrs.first().context("no ADDR")?;
    let socket = UdpSocket::bind(unspecified_for(first))?;
    let datagram = vec![0x99u8; size];
    for i in 0..count {
        for addr in addrs {
            let n = socket.send_to(&datagram, addr)?;
            if n != size {
                bail!("datagram {i} to {addr}: sent {n} of {size} bytes");
            }
        }
        pace(i);
    }
    say(&format!(
        "sent {}",
        count * size as u64 * addrs.len() as u64
    ))?;
    hold()
}

/// Pace a little so the sink's receive queue keeps up; the counts are of sends anyway.
fn pace(i: u64) {
    if i % 50 == 49 {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_file(path: &str, chunk: usize, via: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    let size = usize::try_from(file.metadata()?.len())?;
    let mut buf = vec![0u8; chunk.max(1)];
    let mut total = 0usize;
    match via {
        "read" => loop {
            match file.read(&mut buf)? {
                0 => break,
                n => total += n,
            }
        },
        "readv" => loop {
            let half = buf.len() / 2;
            let (first, second) = buf.split_at_mut(half);
            let mut slices = [
                std::io::IoSliceMut::new(first),
                std::io::IoSliceMut::new(second),
            ];
            match file.read_vectored(&mut slices)? {
                0 => break,
                n => total += n,
            }
        },
        "pread" => {
            while total < size {
                match file.read_at(&mut buf, total as u64)? {
                    0 => break,
                    n => total += n,
                }
            }
        }
        "mmap" => {
            // SAFETY: a private read-only mapping of a file we opened, released below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            let bytes = base.cast::<u8>();
            let mut sum = 0u64;
            for offset in (0..size).step_by(4096).chain(std::iter::once(size - 1)) {
                // SAFETY: offset < size, inside the mapping.
                sum = sum.wrapping_add(u64::from(unsafe { bytes.add(offset).read_volatile() }));
            }
            std::hint::black_box(sum);
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(base, size) };
            total = size;
        }
        "direct" => total = read_direct(path, chunk)?,
        other => bail!("unknown read path {other}"),
    }
    say(&format!("read {total}"))?;
    hold()
}

/// Reads with O_DIRECT, past the page cache, into a page-aligned buffer (as O_DIRECT needs).
fn read_direct(path: &str, chunk: usize) -> anyhow::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path} with O_DIRECT"))?;
    let layout = std::alloc::Layout::from_size_align(chunk.max(4096), 4096)?;
    // SAFETY: a non-zero-sized layout; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        bail!("no memory for {chunk} bytes");
    }
    let mut total = 0usize;
    let result = loop {
        // SAFETY: buf holds layout.size() bytes.
        let n = unsafe { libc::read(file.as_raw_fd(), buf.cast(), layout.size()) };
        match usize::try_from(n) {
            Ok(0) => break Ok(total),
            Ok(n) => total += n,
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "O_DIRECT read: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    };
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    result
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
