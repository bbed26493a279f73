//! The two listeners: `/metrics` and `/healthz` on TCP for Prometheus; `/healthz` and the JSON
//! API on a Unix socket (mode 0660) so that no unprivileged local user reads who talks to whom.
//! The TCP listeners (and the optional TCP JSON API) take TLS, basic auth and headers from a
//! web config in exporter-toolkit's format (`web_config`, `web`, `tls`, `auth`).

mod auth;
mod conn;
mod tls;
mod web;
mod web_config;

pub use conn::Limits;
pub use web::{Guard, HttpMetrics, Web};
pub use web_config::{ClientAuth, WebConfig, WebConfigError};

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Query as Params, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::Registry;
use subtle::ConstantTimeEq as _;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};

use crate::{
    agent::{Answer, Message, Query},
    api::Filter,
    health::Health,
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
    #[error("API token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
}

/// The web config `http` names, loaded and checked (certificate, key and client CA read),
/// and whether it lets the TCP JSON API run without a bearer token: only when it requires
/// and verifies client certificates. For `run` and `check-config` alike.
pub fn web_config(http: &crate::config::HttpConfig) -> Result<Option<WebConfig>, HttpError> {
    let web = http
        .web_config_file
        .as_deref()
        .map(WebConfig::load)
        .transpose()?;
    if let (Some(addr), None) = (http.api_listen, &http.api_token_file)
        && !web.as_ref().is_some_and(WebConfig::verifies_clients)
    {
        let path = web
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |w| w.path.display().to_string());
        return Err(WebConfigError {
            path,
            message: format!(
                "http.api_listen = {addr} without http.api_token_file needs \
                 tls_server_config.client_auth_type: RequireAndVerifyClientCert"
            ),
        }
        .into());
    }
    Ok(web)
}

/// Serves `router` on `listener` until `stop`: plain HTTP without a web config; with one,
/// its [`web::guard`] on every request, over TLS when it has a `tls_server_config`. Each
/// connection within `limits` (see [`conn`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    guard: Option<Guard>,
    name: &'static str,
    limits: Limits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(guard) = guard else {
        return conn::serve(listener, router, limits, stop).await;
    };
    let web = Arc::clone(&guard.web);
    let router = router.layer(middleware::from_fn_with_state(guard, web::guard));
    if web.tls() {
        tls::serve(listener, router, web, name, limits, stop).await
    } else {
        conn::serve(listener, router, limits, stop).await
    }
}

/// Serves the JSON API on its Unix socket until `stop`, each connection within `limits`.
pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, router, limits, stop).await
}

/// What every handler needs: the probe table (fixed after load), the aggregator to ask,
/// and the metrics registry.
#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
    pub agent: mpsc::Sender<Message>,
    pub registry: Registry,
}

/// The token TCP API clients must present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl BearerToken {
    /// Reads the token file: one line, at least 16 characters, readable by its owner only.
    pub fn read(path: &Path) -> Result<Self, HttpError> {
        let bad = |reason: String| HttpError::Token {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:04o} lets others read it; chmod 0600",
                meta.permissions().mode() & 0o7777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(bad("the token must be at least 16 characters".to_owned()));
        }
        Ok(Self(Arc::from(token.as_bytes())))
    }

    /// Whether an `Authorization` header value carries the token, compared in constant time.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .is_some_and(|given| bool::from(given.ct_eq(&self.0)))
    }
}

pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| HttpError::Tcp { addr, cause })
}

/// Binds the API socket: the directory is created (0755) if missing, a stale socket from an
/// earlier run is replaced, and the socket is made 0660. Run as root, it is then owned by root
/// and group `exfil-sensor` when that group exists; run by the unit as the `exfil-sensor`
/// user, it is already that user's and group's (the unit has no CAP_CHOWN to give it to root).
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && let Some(gid) = group_id("exfil-sensor") {
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

pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/files", get(files))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/services", get(services))
        .with_state(state)
}

/// The JSON API on TCP: the same routes, each request carrying the bearer token.
pub fn tcp_api_router(state: AppState, token: BearerToken) -> Router {
    api_router(state).layer(middleware::from_fn_with_state(token, require_token))
}

async fn require_token(State(token): State<BearerToken>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    if token.admits(header) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response()
    }
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

/// 200 while every required probe is attached and the polls come (optional probes that are
/// not are listed); 503 with the reasons otherwise (`health`).
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let (healthy, body) = state.health.answer(std::time::Instant::now());
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Asks the aggregator; 503 if it is gone (the agent is stopping).
async fn ask(state: &AppState, query: Query) -> Result<Answer, (StatusCode, &'static str)> {
    let unavailable = (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n");
    let (reply, answer) = oneshot::channel();
    state
        .agent
        .send(Message::Query(query, reply))
        .await
        .map_err(|_| unavailable)?;
    answer.await.map_err(|_| unavailable)
}

type ApiResult = Result<Response, (StatusCode, &'static str)>;

async fn flows(State(state): State<AppState>, Params(filter): Params<Filter>) -> ApiResult {
    match ask(&state, Query::Flows(filter)).await? {
        Answer::Flows(rows) => Ok(Json(rows).into_response()),
        _ => Err(mismatch()),
    }
}

async fn files(State(state): State<AppState>, Params(filter): Params<Filter>) -> ApiResult {
    match ask(&state, Query::Files(filter)).await? {
        Answer::Files(rows) => Ok(Json(rows).into_response()),
        _ => Err(mismatch()),
    }
}

async fn alerts(State(state): State<AppState>, Params(filter): Params<Filter>) -> ApiResult {
    match ask(&state, Query::Alerts(filter)).await? {
        Answer::Alerts(rows) => Ok(Json(rows).into_response()),
        _ => Err(mismatch()),
    }
}

/// `/api/v1/services?destinations=N`: per service totals and top N destinations (default 20).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesParams {
    destinations: Option<usize>,
}

async fn services(
    State(state): State<AppState>,
    Params(params): Params<ServicesParams>,
) -> ApiResult {
    let per_service = params.destinations.unwrap_or(20);
    match ask(&state, Query::Services(per_service)).await? {
        Answer::Services(rows) => Ok(Json(rows).into_response()),
        _ => Err(mismatch()),
    }
}

fn mismatch() -> (StatusCode, &'static str) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the agent answered another question\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file in a fresh temp dir, with `mode`.
    fn token_file(name: &str, text: &str, mode: u32) -> PathBuf {
        let path = std::env::temp_dir().join(format!("exfil-token-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn token_files_must_be_private_and_long() {
        let open = token_file("open", "0123456789abcdef\n", 0o644);
        let short = token_file("short", "abc\n", 0o600);
        let good = token_file("good", "0123456789abcdef\n", 0o600);
        let err = |p: &Path| BearerToken::read(p).err().map(|e| e.to_string());
        assert_eq!(
            err(&open),
            Some(format!(
                "API token file {}: mode 0644 lets others read it; chmod 0600",
                open.display()
            ))
        );
        assert_eq!(
            err(&short),
            Some(format!(
                "API token file {}: the token must be at least 16 characters",
                short.display()
            ))
        );
        let token = BearerToken::read(&good).expect("good token");
        for p in [open, short, good] {
            let _ = std::fs::remove_file(p);
        }
        assert!(token.admits(Some(b"Bearer 0123456789abcdef")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdeF")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcde")));
        assert!(!token.admits(Some(b"0123456789abcdef")));
        assert!(!token.admits(None));
    }

    /// The TCP JSON API over a real socket: no token, a wrong one, the right one.
    #[tokio::test]
    async fn the_tcp_api_answers_only_with_the_token() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (agent, mut inbox) = mpsc::channel::<Message>(4);
        // A stand-in aggregator: no alerts.
        tokio::spawn(async move {
            while let Some(Message::Query(_, reply)) = inbox.recv().await {
                let _ = reply.send(Answer::Alerts(Vec::new()));
            }
        });
        let state = AppState {
            health: Arc::new(Health::new(Vec::new(), std::time::Duration::from_secs(1))),
            agent,
            registry: Registry::new(),
        };
        let file = token_file("tcp", "0123456789abcdef", 0o600);
        let token = BearerToken::read(&file).expect("token");
        let _ = std::fs::remove_file(&file);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, tcp_api_router(state, token)).await });
        let get = |auth: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!(
                "GET /api/v1/alerts HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            let status = answer.lines().next().unwrap_or_default().to_owned();
            let body = answer
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            (status, body)
        };
        assert_eq!(
            get("").await,
            (
                "HTTP/1.1 401 Unauthorized".to_owned(),
                "a bearer token is required\n".to_owned()
            )
        );
        assert_eq!(
            get("Authorization: Bearer 0123456789abcdeX\r\n").await.0,
            "HTTP/1.1 401 Unauthorized"
        );
        assert_eq!(
            get("Authorization: Bearer 0123456789abcdef\r\n").await,
            ("HTTP/1.1 200 OK".to_owned(), "[]".to_owned())
        );
    }
}
