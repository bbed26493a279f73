//! Hostile HTTP clients against the real agent, with `http.header_read_timeout = "500ms"` and
//! `http.max_header_bytes = 4096`: a client that sends half a request, or nothing, is closed
//! after the timeout (on the metrics port and on the API socket); a 1 MiB header line is
//! answered 431; bytes that are not HTTP are answered 400; and a normal scrape of /metrics is
//! served all along.

use std::{io::Write as _, net::TcpStream, os::unix::net::UnixStream, time::Duration};

use exfil_tests::{Agent, http_get_tcp, require_root};

/// What the server sends until it closes the connection; `None` if it is still open after
/// 10 s (20 times the timeout).
fn until_closed(stream: &mut impl std::io::Read) -> Option<String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // A reset closes it too.
            Err(_) => return Some(String::from_utf8_lossy(&answer).into_owned()),
        }
    }
}

fn tcp(agent: &Agent) -> TcpStream {
    let stream = TcpStream::connect(agent.metrics_addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn scrape_ok(agent: &Agent) {
    let body = http_get_tcp(agent.metrics_addr(), "/metrics").expect("a normal scrape");
    assert!(body.contains("exfil_sensor_probe_attached"), "{body}");
}

#[test]
fn slow_oversized_and_malformed_requests_are_refused_and_scrapes_go_on() {
    require_root();
    let agent = Agent::start_with_http(
        "header_read_timeout = \"500ms\"\nmax_header_bytes = 4096\n",
        "",
    )
    .expect("agent");

    // Slowloris: half a request, then nothing; and a client that sends nothing at all.
    let mut slow = tcp(&agent);
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let mut silent = tcp(&agent);
    let mut silent_unix = UnixStream::connect(&agent.api_socket).expect("connect");
    silent_unix
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    scrape_ok(&agent);
    assert_eq!(until_closed(&mut slow).as_deref(), Some(""));
    assert_eq!(until_closed(&mut silent).as_deref(), Some(""));
    assert_eq!(until_closed(&mut silent_unix).as_deref(), Some(""));
    scrape_ok(&agent);

    // A 1 MiB header line.
    let mut big = tcp(&agent);
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend_from_slice(b"\r\n\r\n");
    // The agent may answer and close before it has read it all: a failed write is expected.
    let _ = big.write_all(&request);
    let answer = until_closed(&mut big).expect("closed");
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    scrape_ok(&agent);

    // Not HTTP.
    let mut garbage = tcp(&agent);
    garbage
        .write_all(b"\x00\x01\x02 hello \xff\xfe\r\n\r\n")
        .expect("send");
    let answer = until_closed(&mut garbage).expect("closed");
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    scrape_ok(&agent);
}
