//! [`CountingRelay`]: a client host in the test namespace whose connection this process makes
//! and counts, for the bytes a server sent to a real client program (`psql`) that can neither
//! choose its source address nor report what it received.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::NetNs;

/// Bytes a relayed connection carried, each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the server to the client: what the server sent.
    pub from_server: u64,
    pub to_server: u64,
}

/// A client host `from` in the test namespace, for a real client program there that cannot
/// choose its source address (`psql`) and whose received bytes cannot be counted from
/// outside it: the program connects to `127.0.0.1:port` inside the namespace, and a thread
/// of this process, in the namespace, makes the connection to the server from `from` and
/// copies both ways, counting. Every byte the server sends on that connection reaches the
/// relay's socket, so the count is exactly what the server sent.
pub struct CountingRelay {
    pub port: u16,
    thread: std::thread::JoinHandle<anyhow::Result<Relayed>>,
}

/// How long the relay waits for its client, and for either end to send.
const RELAY_IDLE: Duration = Duration::from_secs(30);

impl CountingRelay {
    /// Listens in `ns` for one connection and relays it from `from` (an address the
    /// namespace holds: see [`NetNs::add_host`]) to `server`.
    pub fn start(ns: &NetNs, from: Ipv4Addr, server: SocketAddr) -> anyhow::Result<Self> {
        let netns = PathBuf::from(format!("/run/netns/{}", ns.name));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> anyhow::Result<Relayed> {
            let ns_file = std::fs::File::open(&netns)
                .with_context(|| format!("opening {}", netns.display()))?;
            // SAFETY: setns(2) moves only this thread (a network namespace is per task); the
            // thread ends with the relay and is never reused.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "setns {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let _ = tx.send(listener.local_addr()?.port());
            let client = accept_within(&listener, RELAY_IDLE)?;
            let upstream = connect_from(from, server)?;
            for conn in [&client, &upstream] {
                conn.set_read_timeout(Some(RELAY_IDLE))?;
            }
            let (mut client_r, mut upstream_w) = (client.try_clone()?, upstream.try_clone()?);
            let up = std::thread::spawn(move || -> std::io::Result<u64> {
                let n = std::io::copy(&mut client_r, &mut upstream_w)?;
                upstream_w.shutdown(std::net::Shutdown::Write)?;
                Ok(n)
            });
            let (mut upstream_r, mut client_w) = (upstream, client);
            let from_server = std::io::copy(&mut upstream_r, &mut client_w)?;
            client_w.shutdown(std::net::Shutdown::Write)?;
            let to_server = up
                .join()
                .map_err(|_| anyhow::anyhow!("the relay's upstream copy panicked"))??;
            Ok(Relayed {
                from_server,
                to_server,
            })
        });
        let Ok(port) = rx.recv_timeout(Duration::from_secs(10)) else {
            if thread.is_finished() {
                // It failed before listening: its error says why.
                let failed = thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the relay panicked"))?;
                return Err(failed
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the relay ended before listening")));
            }
            bail!("the relay did not listen within 10 s");
        };
        Ok(Self { port, thread })
    }

    /// Waits for the connection to end both ways; what it carried.
    pub fn finish(self) -> anyhow::Result<Relayed> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the relay panicked"))?
    }
}

fn accept_within(listener: &TcpListener, limit: Duration) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no client connected to the relay within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A TCP connection to `to` from the address `from` (bound before connecting).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let IpAddr::V4(to_ip) = to.ip() else {
        bail!("the relay speaks IPv4 only, not {to}");
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = sockaddr(from, 0);
    // SAFETY: bind(2) with a sockaddr_in that lives across the call, and its size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) } != 0 {
        bail!("bind {from}: {}", std::io::Error::last_os_error());
    }
    let remote = sockaddr(to_ip, to.port());
    // SAFETY: connect(2) likewise.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len) } != 0 {
        bail!(
            "connect {to} from {from}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(TcpStream::from(fd))
}
