//! A minimal HTTP/1.0 client for the agent's two listeners (and Alertmanager's API).

use std::{net::SocketAddr, os::unix::net::UnixStream, path::Path, time::Duration};

use anyhow::{Context as _, bail};

/// `GET path` over TCP; the body of a 200 answer.
pub fn http_get_tcp(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let (status, body) = http_get(stream, path)?;
    if status != 200 {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body)
}

/// `POST path` of a JSON `body` over TCP; (status, body) of the answer.
pub fn http_post_tcp(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    read_response(stream)
}

/// A minimal HTTP/1.0 GET over a Unix socket: one request, the server closes after answering.
pub fn http_get_unix(socket: &Path, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    http_get(stream, path)
}

/// One HTTP/1.0 request on a fresh stream; the server closes after answering.
fn http_get(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    read_response(stream)
}

/// The answer on `stream`, read to its end (HTTP/1.0: the server closes): (status, body).
fn read_response(mut stream: impl std::io::Read) -> anyhow::Result<(u16, String)> {
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
