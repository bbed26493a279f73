//! One HTTP connection's limits, and the set of connections a listener serves.
//!
//! axum's own `serve` gives hyper no timer, so a client that connects and sends nothing (or a
//! header a byte a minute, slowloris) held its connection, and a task, for ever. Here every
//! listener's HTTP/1 connections have a header read timeout (`http.header_read_timeout`: the
//! request line and headers must arrive within it, and a kept-alive connection's next
//! request must start within it) and a bound on the request line and headers
//! (`http.max_header_bytes`; more is answered 431). Bytes that are not HTTP are answered
//! 400 by hyper's parser. At stop, idle connections are closed and requests under way get a
//! few seconds to finish, then their tasks are ended: nothing of a listener outlives it.

use std::{future::Future, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
};

/// How long requests under way at stop may take to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// What one connection may send (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Limits {
    pub fn of(http: &crate::config::HttpConfig) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout,
            max_header_bytes: http.max_header_bytes,
        }
    }

    fn http1(self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_header_size(self.max_header_bytes);
        builder
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Serves HTTP/1.1 on one connection until it ends or `stop` turns true (then it is closed
/// once the request under way, if any, is answered).
pub async fn serve_http1<I>(io: I, router: Router, limits: Limits, stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = limits
        .http1()
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // A header timeout, a malformed or oversized request (answered 400 or 431), a reset.
        tracing::debug!(error = %e, "connection ended");
    }
}

/// A listener's connections: each a task, all told to close at stop.
pub struct Connections {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
        }
    }
}

impl Connections {
    /// Runs `serve(stop)` as a task of its own; `stop` turns true at [`Connections::close`].
    pub fn spawn<F>(&mut self, serve: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Reap the ones that ended, so the set holds only live connections.
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(serve(self.stop.subscribe()));
    }

    /// Tells every connection to close, waits up to [`DRAIN`] for them, then ends the rest.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(DRAIN, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// Serves `router` over plain HTTP/1.1 on `listener` (TCP or the API's Unix socket) until
/// `stop`, each connection within `limits`.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    let mut connections = Connections::default();
    tokio::pin!(stop);
    loop {
        let (io, _) = tokio::select! {
            // axum's listeners retry failed accepts themselves (after a pause).
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let router = router.clone();
        connections.spawn(move |stop| serve_http1(io, router, limits, stop));
    }
    connections.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// A server of `/metrics` with a 300 ms header timeout and 16 KiB of headers.
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/metrics", get(|| async { "metrics\n" }));
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            max_header_bytes: 16 * 1024,
        };
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        addr
    }

    /// Everything the server sends until it closes (or 10 s pass: then `None`, the
    /// connection still open).
    async fn read_all(stream: &mut TcpStream) -> Option<String> {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok()
            .map(|()| String::from_utf8_lossy(&answer).into_owned())
    }

    async fn status_of(addr: SocketAddr, request: &[u8]) -> Option<String> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before it has read everything: a failed write
        // is part of what is tested, not an error of the test.
        let _ = stream.write_all(request).await;
        let answer = read_all(&mut stream).await?;
        Some(answer.lines().next().unwrap_or_default().to_owned())
    }

    async fn get_metrics(addr: SocketAddr) -> Option<String> {
        status_of(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    }

    #[tokio::test]
    async fn a_slow_client_is_closed_after_the_header_timeout() {
        let addr = server().await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("send");
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        // Others are served meanwhile.
        assert_eq!(get_metrics(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
        // Closed (nothing answered to the slow one) well before the 10 s bound.
        assert_eq!(read_all(&mut slow).await.as_deref(), Some(""));
        assert_eq!(read_all(&mut silent).await.as_deref(), Some(""));
        assert_eq!(get_metrics(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn a_kept_alive_connection_that_goes_quiet_is_closed_too() {
        let addr = server().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let answer = read_all(&mut stream)
            .await
            .expect("closed after the timeout");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("metrics\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_1_mib_header_is_refused_with_431() {
        let addr = server().await;
        // Over the 16 KiB bound (hyper's own read buffer limit, about 400 KB, is far above).
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 20 * 1024));
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            status_of(addr, &request).await.as_deref(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 1 << 20));
        request.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            status_of(addr, &request).await.as_deref(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
        assert_eq!(get_metrics(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn garbage_is_answered_400() {
        let addr = server().await;
        assert_eq!(
            status_of(
                addr,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
            )
            .await
            .as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
        assert_eq!(
            status_of(addr, b"NOT HTTP AT ALL\r\n\r\n").await.as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
        assert_eq!(get_metrics(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn close_ends_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/metrics", get(|| async { "metrics\n" }));
        let limits = Limits {
            header_read_timeout: Duration::from_secs(600),
            max_header_bytes: 16 * 1024,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(get_metrics(addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
        let _ = stop.send(());
        // Returns (so the router and what it holds are dropped) without waiting 600 s.
        served.await.expect("joined").expect("served");
        assert_eq!(read_all(&mut idle).await.as_deref(), Some(""));
    }
}
