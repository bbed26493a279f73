//! `cargo xtask flood`: UDP datagrams from unconnected sockets to many distinct destinations,
//! as fast as the machine allows or at a set rate, for the sensor's load benches.
//!
//! Each thread owns one socket and sends with `sendmmsg` in batches, walking its share of the
//! destinations (`198.51.100.1..` × ports from 10000) round-robin, so that every destination
//! gets traffic all through the run. The bench runs it in a namespace whose route to
//! 198.51.100.0/24 is a dummy interface: every send succeeds and the packet goes nowhere.
//! Prints `sent BYTES DATAGRAMS` and each thread's datagrams (thread t walks destinations t,
//! t + threads, ... in order, so what each destination got follows: see [`expected`]), then holds until stdin closes, so that the process is
//! still alive (and named) when the agent is asked about it.

use std::{
    io::{BufRead as _, Write as _},
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How many destinations share one address: the rest of a destination is its port.
pub const PORTS_PER_ADDRESS: u32 = 500;
const FIRST_PORT: u32 = 10_000;
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub destinations: u32,
    /// Datagrams per second over all threads; 0 for as fast as possible.
    pub rate: u64,
    pub seconds: u64,
    pub threads: u32,
    pub size: usize,
}

impl Flood {
    pub fn args(&self) -> Vec<String> {
        vec![
            "--destinations".into(),
            self.destinations.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--size".into(),
            self.size.to_string(),
        ]
    }
}

/// The `index`th destination.
pub fn destination(index: u32) -> libc::sockaddr_in {
    let host = 1 + index / PORTS_PER_ADDRESS;
    let ip = Ipv4Addr::new(198, 51, 100, u8::try_from(host).unwrap_or(u8::MAX));
    let port = u16::try_from(FIRST_PORT + index % PORTS_PER_ADDRESS).unwrap_or(u16::MAX);
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn run(flood: Flood) -> anyhow::Result<()> {
    if flood.destinations == 0 || flood.destinations > 254 * PORTS_PER_ADDRESS {
        bail!(
            "--destinations must be 1..={} (254 addresses × {PORTS_PER_ADDRESS} ports)",
            254 * PORTS_PER_ADDRESS
        );
    }
    let threads = flood.threads.clamp(1, flood.destinations);
    let deadline = Instant::now() + Duration::from_secs(flood.seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || send_share(flood, t, threads, deadline)))
        .collect();
    let (mut bytes, mut datagrams, mut per_thread) = (0u64, 0u64, Vec::new());
    for handle in handles {
        let (b, d) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))??;
        bytes += b;
        datagrams += d;
        per_thread.push(d.to_string());
    }
    println!("sent {bytes} {datagrams} {}", per_thread.join(" "));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// Thread `t` of `threads`: destinations t, t + threads, ... until the deadline.
fn send_share(flood: Flood, t: u32, threads: u32, deadline: Instant) -> anyhow::Result<(u64, u64)> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mine: Vec<libc::sockaddr_in> = (t..flood.destinations)
        .step_by(threads as usize)
        .map(destination)
        .collect();
    let payload = vec![0xa5u8; flood.size];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let per_thread_rate = flood.rate as f64 / f64::from(threads);
    let started = Instant::now();
    let (mut bytes, mut datagrams) = (0u64, 0u64);
    let mut next = 0usize;
    let mut addrs = vec![destination(0); BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value, filled below.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    while Instant::now() < deadline {
        if per_thread_rate > 0.0 {
            let due = Duration::from_secs_f64(datagrams as f64 / per_thread_rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        for (addr, msg) in addrs.iter_mut().zip(msgs.iter_mut()) {
            *addr = mine[next];
            next = (next + 1) % mine.len();
            msg.msg_hdr.msg_name = std::ptr::from_mut(addr).cast();
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msg.msg_hdr.msg_iov = &raw mut iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        // SAFETY: BATCH initialised headers pointing at live addresses and the payload.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        let n = match usize::try_from(n) {
            Ok(n) => n,
            // None sent: the whole batch again (so that every destination keeps its turn,
            // and the counts per destination follow from the thread's total).
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) => 0,
            Err(_) => return Err(std::io::Error::last_os_error()).context("sendmmsg"),
        };
        // Messages past `n` were not sent: send them again next time round.
        next = (next + mine.len() - (BATCH - n) % mine.len()) % mine.len();
        for msg in &msgs[..n] {
            bytes += u64::from(msg.msg_len);
        }
        datagrams += n as u64;
    }
    Ok((bytes, datagrams))
}

/// Datagrams destination `index` got, from each thread's total (`per_thread`, in thread
/// order): thread `index % threads` sent its share in order, round after round.
pub fn expected(index: u32, destinations: u32, per_thread: &[u64]) -> u64 {
    let threads = per_thread.len() as u32;
    if threads == 0 || index >= destinations {
        return 0;
    }
    let t = index % threads;
    let mine = u64::from((destinations - t).div_ceil(threads));
    let position = u64::from(index / threads);
    let sent = per_thread[t as usize];
    sent / mine + u64::from(position < sent % mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_follows_each_threads_round_robin() {
        // 5 destinations, 2 threads: thread 0 has 0, 2, 4; thread 1 has 1, 3.
        // Thread 0 sent 7 (rounds 0 2 4 0 2 4 0), thread 1 sent 3 (1 3 1).
        let got: Vec<u64> = (0..5).map(|i| expected(i, 5, &[7, 3])).collect();
        assert_eq!(got, [3, 2, 2, 1, 2]);
        assert_eq!(got.iter().sum::<u64>(), 10);
    }
}
