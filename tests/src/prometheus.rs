//! A real Prometheus server (the Debian package's `prometheus`) on loopback, scraping the
//! agent every second, and a client for its HTTP API.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::http::http_get_tcp;

/// One element of an instant query's result: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorElement>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorElement {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Prometheus with its own config and TSDB in a temporary directory; killed and removed on
/// drop (its log is printed first when a test is failing).
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping and evaluating rules every second. `scrape_configs` is the
    /// YAML list under `scrape_configs:` (indented by two spaces); `rule_files` are loaded as
    /// given. Returns once `/-/ready` answers.
    pub fn start(scrape_configs: &str, rule_files: &[&Path]) -> anyhow::Result<Self> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("exfil-e2e-prometheus-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let rules: String = rule_files
            .iter()
            .map(|path| format!("  - {}\n", path.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}scrape_configs:\n{scrape_configs}"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (installed by `cargo xtask setup`)")?;
        let prometheus = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get_tcp(addr, "/-/ready").is_err() {
            if Instant::now() > deadline {
                bail!("prometheus was not ready in 30 s:\n{}", prometheus.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through `/api/v1/query`: its samples (one for a scalar result), or
    /// the error Prometheus gives (a parse error names the position).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let body = http_get_tcp(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .with_context(|| format!("query {expr}"))?;
        let answer: Answer =
            serde_json::from_str(&body).with_context(|| format!("parsing the answer to {expr}"))?;
        if answer.status != "success" {
            bail!("query {expr}: {}", answer.error.unwrap_or(body));
        }
        let value = |v: &str| -> anyhow::Result<f64> {
            v.parse().with_context(|| format!("value {v:?} of {expr}"))
        };
        match answer.data {
            Some(Data::Vector(elements)) => elements
                .into_iter()
                .map(|e| {
                    Ok(Sample {
                        value: value(&e.value.1)?,
                        labels: e.metric,
                    })
                })
                .collect(),
            Some(Data::Scalar((_, v))) => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&v)?,
            }]),
            Some(Data::Matrix(_) | Data::String(_)) | None => {
                bail!("query {expr}: not a vector or scalar: {body}")
            }
        }
    }

    /// Queries `expr` until `done` holds for its samples (or `limit` passes); returns the
    /// last samples either way.
    pub fn query_until(
        &self,
        expr: &str,
        limit: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = Instant::now() + limit;
        loop {
            let samples = self.query(expr)?;
            if done(&samples) || Instant::now() > deadline {
                return Ok(samples);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET path` of the HTTP API, parsed.
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = http_get_tcp(self.addr, path)?;
        serde_json::from_str(&body).with_context(|| format!("parsing {path}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log:\n{}--- end of prometheus log",
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (RFC 3986: all but the unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
