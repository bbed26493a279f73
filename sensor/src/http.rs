//! The two listeners: `/metrics` and `/healthz` on TCP for Prometheus; `/healthz` and the JSON
//! API on a Unix socket (mode 0660) so that no unprivileged local user reads who talks to whom.

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus::Registry;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};

use crate::{
    flow::{FlowRecord, files::FileRecord},
    kernel::{ProbeState, ProbeStatus},
    metrics::Metrics,
};

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {cause}")]
    Tcp {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot create the API socket {path}: {cause}")]
    Unix {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
}

/// What the HTTP side serves, published by the poll loop after each poll.
#[derive(Debug, Default)]
pub struct View {
    pub probes: Vec<ProbeStatus>,
    pub flows: Vec<FlowRecord>,
    pub files: Vec<FileRecord>,
}

#[derive(Clone)]
struct AppState {
    view: watch::Receiver<Arc<View>>,
    registry: Registry,
}

pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| HttpError::Tcp { addr, cause })
}

/// Binds the API socket: the directory is created (0755) if missing, a stale socket from an
/// earlier run is replaced, and the socket is made 0660, group `exfil-sensor` when it exists.
pub fn bind_unix(path: &Path) -> Result<UnixListener, HttpError> {
    let unix_err = |cause| HttpError::Unix {
        path: path.to_path_buf(),
        cause,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unix_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(unix_err)?,
        Ok(_) => {
            return Err(HttpError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(unix_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(unix_err)?;
    if let Some(gid) = group_id("exfil-sensor") {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(unix_err)?;
    }
    Ok(listener)
}

/// The gid of `name` from /etc/group, if the group exists.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

pub fn metrics_router(view: watch::Receiver<Arc<View>>, registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { view, registry })
}

pub fn api_router(view: watch::Receiver<Arc<View>>, registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/files", get(files))
        .with_state(AppState { view, registry })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        Metrics::render(&state.registry),
    )
}

/// 200 once every required probe is attached (optional ones that are not are listed); 503
/// with the reasons otherwise.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let view = Arc::clone(&state.view.borrow());
    let (healthy, body) = health(&view.probes);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Whether the sensor is healthy, and the text that says why.
fn health(probes: &[ProbeStatus]) -> (bool, String) {
    if probes.is_empty() {
        return (false, "starting\n".to_owned());
    }
    let mut healthy = true;
    let mut skipped = String::new();
    for p in probes {
        if let ProbeState::Skipped(reason) = &p.state {
            healthy &= !p.required;
            let kind = if p.required { "required" } else { "optional" };
            skipped.push_str(&format!("{} ({kind}) not attached: {reason}\n", p.probe));
        }
    }
    if healthy {
        (true, format!("ok\n{skipped}"))
    } else {
        (false, skipped)
    }
}

async fn files(State(state): State<AppState>) -> impl IntoResponse {
    let view = Arc::clone(&state.view.borrow());
    Json(view.files.clone())
}

async fn flows(State(state): State<AppState>) -> impl IntoResponse {
    let view = Arc::clone(&state.view.borrow());
    Json(view.flows.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &'static str, required: bool, attached: bool) -> ProbeStatus {
        ProbeStatus {
            probe: name,
            required,
            state: if attached {
                ProbeState::Attached
            } else {
                ProbeState::Skipped("no cgroup2".into())
            },
        }
    }

    #[test]
    fn health_follows_required_probes() {
        assert_eq!(health(&[]), (false, "starting\n".to_owned()));
        assert_eq!(
            health(&[probe("a", true, true), probe("b", false, true)]),
            (true, "ok\n".to_owned())
        );
        assert_eq!(
            health(&[probe("a", true, true), probe("b", false, false)]),
            (
                true,
                "ok\nb (optional) not attached: no cgroup2\n".to_owned()
            )
        );
        assert_eq!(
            health(&[probe("a", true, false), probe("b", false, true)]),
            (false, "a (required) not attached: no cgroup2\n".to_owned())
        );
    }
}
