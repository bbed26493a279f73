//! What the sinks' tests share: a sample alert, a temp dir, metric values, and a fake HTTP
//! receiver that records each request and answers from a script.

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use prometheus::Registry;
use tokio::sync::mpsc;

use crate::api::{AlertChange, AlertEvent, AlertRecord};

/// Alert 7 in the state `change` leaves it in.
pub(super) fn event(change: AlertChange) -> AlertEvent {
    let mut alert = AlertRecord {
        id: 7,
        kind: "burst".to_owned(),
        severity: "critical".to_owned(),
        service: "postfix.service".to_owned(),
        pid: 4242,
        comm: "smtp".to_owned(),
        destination: "203.0.113.9".to_owned(),
        port: 443,
        bytes: 52_428_800,
        window_s: 60,
        started_at: "2026-11-23T19:39:10Z".to_owned(),
        raised_at: "2026-11-23T19:39:40Z".to_owned(),
        updated_at: "2026-11-23T19:39:40Z".to_owned(),
        resolved_at: None,
        status: "firing".to_owned(),
        class: None,
        summary: "postfix.service sent 50 MiB to 203.0.113.9 in 60s".to_owned(),
        description: "52428800 bytes to 203.0.113.9:443 within 60s; the burst rule fires at \
                      10 MiB."
            .to_owned(),
        destination_name: None,
    };
    match change {
        AlertChange::Raised => {}
        AlertChange::Updated => {
            alert.bytes = 73_400_320;
            alert.updated_at = "2026-11-23T19:39:50Z".to_owned();
        }
        AlertChange::Resolved => {
            alert.bytes = 73_400_320;
            alert.updated_at = "2026-11-23T19:39:50Z".to_owned();
            alert.resolved_at = Some("2026-11-23T19:45:00Z".to_owned());
            alert.status = "resolved".to_owned();
        }
    }
    AlertEvent { change, alert }
}

/// The value of `exfil_sensor_alert_sink_{what}{sink}`: `what` is `sent_total`'s stem
/// (`sent`, `failures`, `dropped`) or `queue_length`.
pub(super) fn metric(registry: &Registry, what: &str, sink: &str) -> f64 {
    let name = if what == "queue_length" {
        format!("exfil_sensor_alert_sink_{what}")
    } else {
        format!("exfil_sensor_alert_sink_{what}_total")
    };
    let family = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} is not registered"));
    let series = family
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == sink))
        .unwrap_or_else(|| panic!("{name} has no sink={sink} series"));
    if what == "queue_length" {
        series.get_gauge().get_value()
    } else {
        series.get_counter().get_value()
    }
}

/// A directory of its own under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "exfil-sinks-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    /// A file in the dir with `text`, mode `mode`.
    pub(super) fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the fake receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reply {
    Status(StatusCode),
    /// Never answers: the client's timeout is what ends the request.
    Hang,
}

/// One request the fake receiver got.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) at: Instant,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Received {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Script {
    requests: mpsc::UnboundedSender<Received>,
    replies: Mutex<VecDeque<Reply>>,
    then: Reply,
}

/// An HTTP server on 127.0.0.1 taking POSTs at `path`: it answers them with `replies` in
/// order, then always with `then`.
pub(super) struct Receiver {
    pub(super) base: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub(super) async fn start(path: &str, replies: &[Reply], then: Reply) -> Self {
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Script {
            requests: tx,
            replies: Mutex::new(replies.iter().copied().collect()),
            then,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route(path, post(receive)).with_state(script);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base: format!("http://{addr}"),
            requests,
        }
    }

    /// The next request, if one arrives within `within`.
    pub(super) async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn receive(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = script
        .replies
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(script.then);
    let _ = script.requests.send(Received {
        at: Instant::now(),
        headers,
        body,
    });
    match reply {
        Reply::Status(status) => status.into_response(),
        Reply::Hang => std::future::pending().await,
    }
}
