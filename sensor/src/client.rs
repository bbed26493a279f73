//! The client side of the agent's JSON API: one HTTP/1.1 GET over its Unix socket, for
//! `exfil-sensor flows|files|alerts|top`. Each request opens its own connection, so a
//! restarted agent is picked up on the next request without any reconnect logic.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{ACCEPT, HOST},
};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;

/// How long one request may take, connect to last body byte. The agent answers from a
/// snapshot it already holds, so anything near this is a stuck agent, not a slow one; `top`
/// must show that rather than freeze.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {}: No such file or directory (is `exfil-sensor run` running?)",
        socket.display()
    )]
    NoSocket { socket: PathBuf },
    #[error(
        "cannot reach the agent at {}: connection refused (is `exfil-sensor run` running?)",
        socket.display()
    )]
    Refused { socket: PathBuf },
    #[error(
        "cannot reach the agent at {}: permission denied (the API socket is for root and the \
         exfil-sensor group)",
        socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("cannot reach the agent at {}: {cause}", socket.display())]
    Connect { socket: PathBuf, cause: io::Error },
    #[error(
        "the agent at {} did not answer GET {path} within {}s",
        socket.display(),
        REQUEST_TIMEOUT.as_secs()
    )]
    Timeout { socket: PathBuf, path: String },
    #[error("{path} is not a request path: {cause}")]
    BadPath {
        path: String,
        cause: hyper::http::Error,
    },
    #[error("GET {path} from the agent at {}: {cause}", socket.display())]
    Http {
        socket: PathBuf,
        path: String,
        cause: hyper::Error,
    },
    #[error("the agent at {} answered GET {path} with {status}: {body}", socket.display())]
    Status {
        socket: PathBuf,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error(
        "the agent at {} sent {endpoint} that is not the expected JSON: {cause}",
        socket.display()
    )]
    Json {
        socket: PathBuf,
        /// The path without its query string: which endpoint's records did not decode.
        endpoint: String,
        cause: serde_json::Error,
    },
}

/// GETs `path` (with its query string) from the agent at `socket`: the body of a 200 answer,
/// else an error that names the socket and says what to do.
pub async fn get(socket: &Path, path: &str) -> Result<Bytes, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, get_unbounded(socket, path))
        .await
        .map_err(|_| ClientError::Timeout {
            socket: socket.to_path_buf(),
            path: path.to_owned(),
        })?
}

/// GETs `path` and decodes its JSON body as `T`.
pub async fn get_json<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let body = get(socket, path).await?;
    serde_json::from_slice(&body).map_err(|cause| ClientError::Json {
        socket: socket.to_path_buf(),
        endpoint: path.split('?').next().unwrap_or(path).to_owned(),
        cause,
    })
}

async fn get_unbounded(socket: &Path, path: &str) -> Result<Bytes, ClientError> {
    let request = Request::get(path)
        // HTTP/1.1 requires a Host; a Unix socket has no name, so this is what curl sends.
        .header(HOST, "localhost")
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|cause| ClientError::BadPath {
            path: path.to_owned(),
            cause,
        })?;
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|cause| connect_error(socket, cause))?;
    let http_error = |cause| ClientError::Http {
        socket: socket.to_path_buf(),
        path: path.to_owned(),
        cause,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    // The connection task moves the bytes; it ends when `sender` is dropped. Its own error
    // also fails `send_request` or the body, which is where it is reported.
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http_error)?
        .to_bytes();
    drop(sender);
    driver.abort();
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(ClientError::Status {
            socket: socket.to_path_buf(),
            path: path.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).trim_end().to_owned(),
        })
    }
}

fn connect_error(socket: &Path, cause: io::Error) -> ClientError {
    let socket = socket.to_path_buf();
    match cause.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket { socket },
        // A socket file left by an agent that was killed: nobody listens on it.
        io::ErrorKind::ConnectionRefused => ClientError::Refused { socket },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket },
        _ => ClientError::Connect { socket, cause },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::{Json, Router, http::StatusCode as AxumStatus, routing::get as route_get};
    use tokio::net::UnixListener;

    use super::*;
    use crate::api::DestinationRecord;

    /// A fresh socket path per test, under the temp dir (tests run in parallel).
    fn socket_path(name: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "exfil-sensor-client-{}-{n}-{name}.sock",
            std::process::id()
        ))
    }

    /// Serves a tiny API on a fresh socket; the path is removed when the guard drops.
    struct TestAgent {
        socket: PathBuf,
    }

    impl Drop for TestAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    fn serve(name: &str) -> TestAgent {
        let socket = socket_path(name);
        let listener = UnixListener::bind(&socket).expect("bind test socket");
        let router = Router::new()
            .route(
                "/api/v1/destinations",
                route_get(|| async {
                    Json(vec![DestinationRecord {
                        destination: "198.51.100.2".into(),
                        destination_name: None,
                        class: "external".into(),
                        bytes_sent: 7_340_032,
                        bytes_received: 5120,
                    }])
                }),
            )
            .route("/text", route_get(|| async { "not json" }))
            .fallback(|| async { (AxumStatus::NOT_FOUND, "no such endpoint\n") });
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestAgent { socket }
    }

    #[tokio::test]
    async fn ok_json_decodes() {
        let agent = serve("ok");
        let got: Vec<DestinationRecord> = get_json(&agent.socket, "/api/v1/destinations?limit=1")
            .await
            .expect("decodes");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].destination, "198.51.100.2");
        assert_eq!(got[0].bytes_sent, 7_340_032);
    }

    #[tokio::test]
    async fn not_found_reports_the_status_and_body() {
        let agent = serve("404");
        let err = get(&agent.socket, "/api/v1/nothing")
            .await
            .expect_err("404");
        assert!(
            matches!(err, ClientError::Status { status, .. } if status == StatusCode::NOT_FOUND),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the agent at {} answered GET /api/v1/nothing with 404 Not Found: no such endpoint",
                agent.socket.display()
            )
        );
    }

    #[tokio::test]
    async fn bad_json_names_the_endpoint() {
        let agent = serve("text");
        let err = get_json::<Vec<DestinationRecord>>(&agent.socket, "/text?limit=3")
            .await
            .expect_err("not json");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the agent at {} sent /text that is not the expected JSON: ",
                agent.socket.display()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn missing_socket_says_to_start_the_agent() {
        let socket = socket_path("missing");
        let err = get(&socket, "/healthz").await.expect_err("no socket");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the agent at {}: No such file or directory \
                 (is `exfil-sensor run` running?)",
                socket.display()
            )
        );
    }

    #[tokio::test]
    async fn stale_socket_is_refused() {
        let socket = socket_path("stale");
        // Bound, then dropped without removing the file: what a killed agent leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        let err = get(&socket, "/healthz").await.expect_err("refused");
        let _ = std::fs::remove_file(&socket);
        assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
    }
}
