//! TCP: the sink, every send path, and a request/answer pair in both directions.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{CHUNK, file::payload_file, hold, say};

pub(crate) fn sink_tcp(addr: SocketAddr) -> anyhow::Result<()> {
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

pub(crate) fn send_tcp(addr: SocketAddr, bytes: u64, via: &str) -> anyhow::Result<()> {
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
pub(crate) fn gather(conn: &TcpStream, bytes: u64, via: &str) -> anyhow::Result<()> {
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

pub(crate) fn serve(addr: SocketAddr, request: u64, response: u64) -> anyhow::Result<()> {
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

pub(crate) fn fetch(addr: SocketAddr, request: u64, response: u64) -> anyhow::Result<()> {
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
pub(crate) fn write_slowly(conn: &mut TcpStream, bytes: u64) -> anyhow::Result<()> {
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
pub(crate) fn connect_mptcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
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

pub(crate) fn write_all(conn: &mut TcpStream, bytes: u64) -> anyhow::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

pub(crate) fn check(ret: isize, what: &str) -> anyhow::Result<usize> {
    usize::try_from(ret).map_err(|_| anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error()))
}

pub(crate) fn sendfile(conn: &TcpStream, file: &std::fs::File, bytes: u64) -> anyhow::Result<()> {
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

pub(crate) fn splice(conn: &TcpStream, file: &std::fs::File, bytes: u64) -> anyhow::Result<()> {
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

pub(crate) fn uring_send(conn: &TcpStream, bytes: u64) -> anyhow::Result<()> {
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
