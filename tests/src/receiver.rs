//! [`WebhookReceiver`]: a tiny HTTP/1.1 server on loopback that keeps every request it is
//! sent and answers each with a status the test sets: the far end of the agent's webhook and
//! Alertmanager sinks, and of Alertmanager's own webhook receivers.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

/// One request the receiver answered, with the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub status: u16,
    pub path: String,
    /// The agent's `X-Exfil-Sensor-Event` header, if any.
    pub event: Option<String>,
    pub body: Vec<u8>,
}

/// Keeps each request and answers it `status` (settable), with keep-alive. Its threads end
/// when it is dropped (each connection read times out).
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl WebhookReceiver {
    /// Listens on `addr` (port 0 for a free one) and answers `status` until told otherwise.
    pub fn start(addr: SocketAddr, status: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (
            Arc::clone(&status),
            Arc::clone(&requests),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, r, st) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&st));
                        std::thread::spawn(move || serve(stream, &s, &r, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            addr,
            status,
            requests,
            stop,
        })
    }

    /// From now on, answer `status`.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// The requests answered `status`, in arrival order.
    pub fn answered(&self, status: u16) -> Vec<Received> {
        self.requests
            .lock()
            .map(|r| r.iter().filter(|r| r.status == status).cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    status: &AtomicU16,
    requests: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut idle = Instant::now();
    while !stop.load(Ordering::Relaxed) && idle.elapsed() < Duration::from_secs(120) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let (mut length, mut event) = (0usize, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-exfil-sensor-event" => event = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = status.load(Ordering::Relaxed);
        if let Ok(mut requests) = requests.lock() {
            requests.push(Received {
                status: answer,
                path,
                event,
                body,
            });
        }
        let reply = format!("HTTP/1.1 {answer} X\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
        idle = Instant::now();
    }
}
