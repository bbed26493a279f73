//! UDP: the sink, connected sends (one by one or `sendmmsg`), and unconnected `sendto`.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{hold, say};

pub(crate) fn sink_udp(addr: SocketAddr) -> anyhow::Result<()> {
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

pub(crate) fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

pub(crate) fn send_udp(addr: SocketAddr, count: u64, size: usize, via: &str) -> anyhow::Result<()> {
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
pub(crate) fn sendmmsg(socket: &UdpSocket, datagram: &[u8], count: u64) -> anyhow::Result<()> {
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
pub(crate) fn send_to(count: u64, size: usize, addrs: &[SocketAddr]) -> anyhow::Result<()> {
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
pub(crate) fn pace(i: u64) {
    if i % 50 == 49 {
        std::thread::sleep(Duration::from_millis(2));
    }
}
