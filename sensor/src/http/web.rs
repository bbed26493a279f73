//! The web config at run time: what the TCP listeners' connections and requests consult.
//!
//! exporter-toolkit re-reads the web config on every request and the certificate on every
//! handshake. Here the files (the config, and the certificate, key and client CA it names)
//! are checked for a change (modification time, size, inode) at most once a second, when a
//! connection or request arrives, and reloaded when one changed: a renewed certificate, a new
//! user or password, new headers take effect without a restart. A reload that fails keeps the
//! config in force, logs the error and counts it in
//! `exfil_sensor_http_web_config_reload_errors_total`. Whether TLS is on, and HTTP/2, are
//! fixed at start (exporter-toolkit cannot change HTTP/2 on the fly either).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rustls::ServerConfig;

use super::{
    auth::BasicAuth,
    web_config::{RateLimit, WebConfig, WebConfigError},
};

/// How often, at most, the files are looked at for a change.
const RECHECK: Duration = Duration::from_secs(1);

/// The TCP listeners' counters.
#[derive(Clone)]
pub struct HttpMetrics {
    handshake_errors: IntCounterVec,
    reload_errors: IntCounter,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        let handshake_errors = IntCounterVec::new(
            Opts::new(
                "exfil_sensor_http_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out on a TCP listener (plain HTTP to a TLS port, an untrusted or missing client certificate, a protocol mismatch).",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let reload_errors = IntCounter::new(
            "exfil_sensor_http_web_config_reload_errors_total",
            "Reloads of the changed web config or its certificate files that failed (the config in force was kept; the log says why).",
        )
        .expect("static metric definition");
        for metric in [
            Box::new(handshake_errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reload_errors.clone()),
        ] {
            registry
                .register(metric)
                .expect("each metric is registered once, with a static definition");
        }
        // The metrics listener always exists: its series from the start, at zero, so that
        // `increase()` sees the first failure.
        handshake_errors.with_label_values(&["metrics"]);
        Self {
            handshake_errors,
            reload_errors,
        }
    }
}

/// The web config in force, and what is needed to notice and load a new one.
pub struct Web {
    path: PathBuf,
    tls: bool,
    http2: bool,
    current: Mutex<Current>,
    auth: BasicAuth,
    metrics: HttpMetrics,
}

struct Current {
    checked: Instant,
    stamps: Vec<Option<Stamp>>,
    loaded: Arc<Loaded>,
}

/// One version of the web config, with its TLS setup built.
pub struct Loaded {
    pub config: WebConfig,
    pub tls: Option<Arc<ServerConfig>>,
    limiter: Option<Mutex<Bucket>>,
}

/// What tells that a file changed: a rewrite, a rename over it (cert-manager, certbot's
/// symlink swap), a removal.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Web {
    pub fn start(config: WebConfig, metrics: HttpMetrics) -> Result<Self, WebConfigError> {
        let loaded = Loaded::new(config)?;
        let stamps = stamps(&loaded.config.watched_files());
        Ok(Self {
            path: loaded.config.path.clone(),
            tls: loaded.tls.is_some(),
            http2: loaded.config.http2,
            current: Mutex::new(Current {
                checked: Instant::now(),
                stamps,
                loaded: Arc::new(loaded),
            }),
            auth: BasicAuth::default(),
            metrics,
        })
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn http2(&self) -> bool {
        self.http2
    }

    pub fn handshake_errors(&self, listener: &str) -> IntCounter {
        self.metrics.handshake_errors.with_label_values(&[listener])
    }

    /// The config in force, reloaded first if a file changed since the last look.
    pub fn current(&self) -> Arc<Loaded> {
        // Poisoned only by a panic in a reload, which does not panic on input; the config in
        // force is still whole then.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.checked.elapsed() < RECHECK {
            return Arc::clone(&current.loaded);
        }
        current.checked = Instant::now();
        let now = stamps(&current.loaded.config.watched_files());
        if now == current.stamps {
            return Arc::clone(&current.loaded);
        }
        match self.reload() {
            Ok(loaded) => {
                tracing::info!(path = %self.path.display(), "web config reloaded");
                current.stamps = stamps(&loaded.config.watched_files());
                current.loaded = Arc::new(loaded);
            }
            Err(e) => {
                // Not retried until a file changes again.
                tracing::error!(error = %e, "web config not reloaded; the one in force stays");
                self.metrics.reload_errors.inc();
                current.stamps = now;
            }
        }
        Arc::clone(&current.loaded)
    }

    fn reload(&self) -> Result<Loaded, WebConfigError> {
        let config = WebConfig::load(&self.path)?;
        let fixed = |message: &str| WebConfigError {
            path: self.path.display().to_string(),
            message: message.to_owned(),
        };
        if config.tls.is_some() != self.tls {
            return Err(fixed(
                "turning TLS on or off (tls_server_config) takes a restart",
            ));
        }
        if config.http2 != self.http2 {
            return Err(fixed("changing http_server_config.http2 takes a restart"));
        }
        Loaded::new(config)
    }

    pub fn auth(&self) -> &BasicAuth {
        &self.auth
    }
}

impl Loaded {
    fn new(config: WebConfig) -> Result<Self, WebConfigError> {
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(
                super::tls::server_config(tls, config.http2).map_err(|message| WebConfigError {
                    path: config.path.display().to_string(),
                    message,
                })?,
            )),
            None => None,
        };
        let limiter = config.rate_limit.map(|r| Mutex::new(Bucket::new(r)));
        Ok(Self {
            config,
            tls,
            limiter,
        })
    }

    /// Whether the rate limit (if any) lets one more request through.
    fn allows(&self) -> bool {
        self.limiter.as_ref().is_none_or(|bucket| {
            bucket
                .lock()
                .is_ok_and(|mut bucket| bucket.take(Instant::now()))
        })
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files.iter().map(|f| stamp(f)).collect()
}

fn stamp(file: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(file).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// `rate_limit` as Go's `rate.NewLimiter(rate.Every(interval), burst)`: a bucket of `burst`
/// tokens, one added per `interval`; a request takes one or is refused (429).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            burst: f64::from(limit.burst),
            per_second: 1.0 / limit.interval.as_secs_f64(),
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a listener's [`guard`] does: always the rate limit and headers; basic auth unless
/// the listener authenticates otherwise (the TCP API's bearer token uses the same
/// `Authorization` header).
#[derive(Clone)]
pub struct Guard {
    pub web: Arc<Web>,
    pub basic_auth: bool,
}

/// The web config's checks on every request and path (exporter-toolkit protects every
/// path, `/healthz` included): 429 over the rate limit, 401 with `WWW-Authenticate: Basic`
/// without a user's right password; the configured headers on every answer.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let loaded = guard.web.current();
    let users = &loaded.config.users;
    let mut response = if !loaded.allows() {
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response()
    } else if guard.basic_auth
        && !users.is_empty()
        && !guard
            .web
            .auth()
            .admits(
                users,
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(axum::http::HeaderValue::as_bytes),
            )
            .await
    {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic")],
            "Unauthorized\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    for (name, value) in &loaded.config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_per_interval() {
        let mut bucket = Bucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        let start = bucket.last;
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        assert!(bucket.take(start + Duration::from_millis(1000)));
        assert!(!bucket.take(start + Duration::from_millis(1100)));
        // Refilled up to the burst only.
        assert!(bucket.take(start + Duration::from_secs(60)));
        assert!(bucket.take(start + Duration::from_secs(60)));
        assert!(!bucket.take(start + Duration::from_secs(60)));
    }

    #[test]
    fn a_zero_burst_refuses_everything_as_go_does() {
        let mut bucket = Bucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 0,
        });
        let start = bucket.last;
        assert!(!bucket.take(start + Duration::from_secs(5)));
    }
}
