//! TLS and basic auth on the metrics listener, as Prometheus uses them: the agent started
//! with a web-config.yml (exporter-toolkit's format; a test CA, a server certificate for
//! 127.0.0.1 and localhost, a bcrypt hash, all made here), scraped by a real `prometheus`
//! (Debian package; `cargo xtask setup` installs it) with `scheme: https`, `tls_config` and
//! `basic_auth`, and asked directly by a rustls client. Loopback only; no namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use exfil_tests::{Agent, Prometheus, http_get_tcp, require_root};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";
/// How long any wait below may take.
const LIMIT: Duration = Duration::from_secs(30);

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("exfil-e2e-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test CA, and a server certificate for the agent signed by it: (CA PEM, cert, key).
fn certificates() -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "exfil-sensor e2e CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

/// One HTTP/1.1 GET over TLS (trusting `ca`), with basic auth if `user` is given: (status,
/// head, body).
fn get_tls(
    addr: SocketAddr,
    ca: &str,
    path: &str,
    user: Option<(&str, &str)>,
) -> Result<(u16, String, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    let auth = user.map_or_else(String::new, |(u, p)| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Authorization: Basic {encoded}\r\n")
    });
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("TLS: {e}"))?;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        // A peer that closes without close_notify after the whole answer is still an answer.
        if e.kind() != std::io::ErrorKind::UnexpectedEof || answer.is_empty() {
            return Err(format!("TLS: {e}"));
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers: {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The value of a series in an exposition text.
fn series(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().to_owned())
}

fn promtool_lint(metrics: &str) -> String {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool ran");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn prometheus_scrapes_the_agent_over_tls_with_basic_auth() {
    require_root();
    let started = Instant::now();
    let dir = TempDir::new();
    let (ca, cert, key) = certificates();
    let ca_file = dir.write("ca.pem", &ca);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let hash = bcrypt::hash(PASSWORD, 10).expect("bcrypt");
    // Relative certificate paths: they start at the web config's directory.
    let web = dir.write(
        "web-config.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  {USER}: {hash}\n"
        ),
    );
    let agent = Agent::start_with_http(&format!("web_config_file = \"{}\"\n", web.display()), "")
        .expect("the agent starts with the web config");
    let addr = agent.metrics_addr();

    // Asked directly: the right password, a wrong one, none; every path is protected.
    let (status, _, metrics) =
        get_tls(addr, &ca, "/metrics", Some((USER, PASSWORD))).expect("TLS scrape");
    assert_eq!(status, 200, "{metrics}");
    for (path, user) in [
        ("/metrics", Some((USER, "wrong"))),
        ("/metrics", None),
        ("/healthz", None),
    ] {
        let (status, head, _) = get_tls(addr, &ca, path, user).expect("TLS");
        assert_eq!(status, 401, "{path} {user:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nwww-authenticate: basic"),
            "{head}"
        );
    }
    let (status, _, health) = get_tls(addr, &ca, "/healthz", Some((USER, PASSWORD))).expect("TLS");
    assert_eq!((status, health.lines().next()), (200, Some("ok")));
    // Plain HTTP to the TLS port gets no answer, and counts as one failed handshake.
    assert!(
        http_get_tcp(addr, "/metrics").is_err(),
        "plain HTTP must not be answered"
    );

    // A real Prometheus: one job with the right password, one with a wrong one.
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n    \
             basic_auth:\n      username: {USER}\n      password: \"{password}\"\n    \
             static_configs:\n      - targets: [\"{addr}\"]\n",
            ca_file.display()
        )
    };
    let prometheus = Prometheus::start(
        &format!(
            "{}{}",
            job("exfil-sensor", PASSWORD),
            job("exfil-sensor-wrong-password", "wrong")
        ),
        &[],
    )
    .expect("prometheus");
    // The one value of `promql`, once there is exactly one.
    let value = |promql: &str| -> Option<f64> {
        match prometheus.query(promql).expect("query").as_slice() {
            [sample] => Some(sample.value),
            _ => None,
        }
    };
    let up = |job: &str, want: Option<f64>| {
        let promql = format!("up{{job=\"{job}\"}}");
        let samples = prometheus
            .query_until(&promql, LIMIT, |s| match want {
                Some(want) => s.first().is_some_and(|s| s.value == want),
                None => !s.is_empty(),
            })
            .expect("query");
        samples.first().map(|s| s.value)
    };
    assert_eq!(up("exfil-sensor", Some(1.0)), Some(1.0));
    assert_eq!(up("exfil-sensor-wrong-password", None), Some(0.0));
    let targets = prometheus.get_json("/api/v1/targets").expect("targets");
    let error = targets["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["labels"]["job"] == "exfil-sensor-wrong-password")
        .and_then(|t| t["lastError"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("401"), "scrape error: {error}");

    // What Prometheus stored is what the agent serves.
    let probes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("exfil_sensor_probe_attached{"))
        .collect();
    assert!(!probes.is_empty(), "{metrics}");
    let attached = probes.iter().filter(|l| l.ends_with(" 1")).count();
    assert_eq!(
        value("count(exfil_sensor_probe_attached{job=\"exfil-sensor\"})"),
        Some(probes.len() as f64)
    );
    assert_eq!(
        value("sum(exfil_sensor_probe_attached{job=\"exfil-sensor\"})"),
        Some(attached as f64)
    );
    let build_info = prometheus
        .query("exfil_sensor_build_info{job=\"exfil-sensor\"}")
        .expect("query");
    assert_eq!(build_info.len(), 1, "{build_info:?}");
    assert_eq!(build_info[0].value, 1.0);
    let version = metrics
        .lines()
        .find_map(|l| l.strip_prefix("exfil_sensor_build_info{version=\""))
        .and_then(|rest| rest.split('"').next())
        .expect("build_info in /metrics");
    assert_eq!(build_info[0].labels["version"], version);
    assert!(
        prometheus
            .query("exfil_sensor_build_info{job=\"exfil-sensor-wrong-password\"}")
            .expect("query")
            .is_empty(),
        "nothing stored from the refused job"
    );

    // Prometheus's handshakes all succeeded: the one failure is the plain HTTP request.
    let (_, _, after) = get_tls(addr, &ca, "/metrics", Some((USER, PASSWORD))).expect("TLS");
    let handshake_errors = "exfil_sensor_http_tls_handshake_errors_total{listener=\"metrics\"}";
    assert_eq!(
        series(&after, handshake_errors).as_deref(),
        Some("1"),
        "{after}"
    );
    assert_eq!(
        series(&after, "exfil_sensor_http_web_config_reload_errors_total").as_deref(),
        Some("0")
    );
    let lint = promtool_lint(&after);
    assert_eq!(lint.trim(), "", "promtool check metrics");
    eprintln!(
        "tls e2e: {} probes, {attached} attached, handshake errors 1, scrape error {error:?}, {:.1} s",
        probes.len(),
        started.elapsed().as_secs_f64()
    );
}
