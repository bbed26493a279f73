//! The TLS listener over real sockets, with certificates made here by rcgen: loading errors
//! naming the file, basic auth, the client certificate policies, and a certificate renewed
//! on disk taking effect without a restart.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Router, routing::get};
use base64::Engine as _;
use prometheus::Registry;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::super::{Guard, HttpMetrics, Web, WebConfig};

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exfil-web-{}-{name}", std::process::id()));
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

/// A test CA that signs certificates for `names` (DNS names or IP addresses).
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Signed {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, names: &[&str]) -> Signed {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Signed {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The listener under test: `/metrics` answers "metrics\n".
struct Server {
    addr: SocketAddr,
    web: Arc<Web>,
}

async fn serve(config: &Path) -> Server {
    let config = WebConfig::load(config).expect("web config loads");
    let web = Arc::new(Web::start(config, HttpMetrics::register(&Registry::new())).expect("web"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/metrics", get(|| async { "metrics\n" }));
    let guard = Guard {
        web: Arc::clone(&web),
        basic_auth: true,
    };
    tokio::spawn(super::super::serve(
        listener,
        router,
        Some(guard),
        "metrics",
        crate::http::Limits::of(&crate::config::HttpConfig::default()),
        std::future::pending(),
    ));
    Server { addr, web }
}

impl Server {
    fn handshake_errors(&self) -> u64 {
        self.web.handshake_errors("metrics").get()
    }
}

/// A client that trusts `ca` and presents `identity` if given.
fn connector(ca: &str, identity: Option<&Signed>) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET /metrics` over TLS: the whole answer, or why there is none.
async fn fetch(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    user: Option<(&str, &str)>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = client
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let auth = user.map_or_else(String::new, |(u, p)| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Authorization: Basic {encoded}\r\n")
    });
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(answer)
}

fn status(answer: &Result<String, String>) -> String {
    match answer {
        Ok(text) => text.lines().next().unwrap_or_default().to_owned(),
        Err(e) => e.clone(),
    }
}

/// A web config with the server's certificate in `dir` (server.crt, server.key).
fn server_files(dir: &TempDir, ca: &Ca) {
    let server = ca.sign(&["localhost", "127.0.0.1"]);
    dir.write("server.crt", &server.cert);
    dir.write("server.key", &server.key);
}

#[test]
fn file_errors_name_the_key_and_the_file() {
    let dir = TempDir::new("errors");
    let ca = Ca::new("errors CA");
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: x.pem\n  key_file: x.key\n",
    );
    let err = |path: &Path| WebConfig::load(path).map(|_| ()).map_err(|e| e.to_string());
    let d = dir.0.display();
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.cert_file {d}/x.pem: No such file or directory"
        ))
    );
    assert_eq!(
        err(&dir.0.join("absent.yml")),
        Err(format!(
            "web config {d}/absent.yml: No such file or directory"
        ))
    );
    dir.write("x.pem", "not PEM\n");
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.cert_file {d}/x.pem: no PEM certificate in it"
        ))
    );
    let one = ca.sign(&["localhost"]);
    let other = ca.sign(&["localhost"]);
    dir.write("x.pem", &one.cert);
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.key_file {d}/x.key: No such file or directory"
        ))
    );
    dir.write("x.key", &one.cert);
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.key_file {d}/x.key: no PEM private key in it"
        ))
    );
    dir.write("x.key", &other.key);
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.key_file {d}/x.key is not the key of \
             tls_server_config.cert_file {d}/x.pem"
        ))
    );
    dir.write("x.key", &one.key);
    assert_eq!(err(&web), Ok(()));
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: x.pem\n  key_file: x.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    );
    assert_eq!(
        err(&web),
        Err(format!(
            "web config {d}/web.yml: tls_server_config.client_ca_file {d}/ca.pem: No such file or directory"
        ))
    );
    dir.write("ca.pem", &ca.pem());
    assert_eq!(err(&web), Ok(()));
}

#[tokio::test]
async fn basic_auth_over_tls_and_plain_http_refused() {
    let dir = TempDir::new("auth");
    let ca = Ca::new("auth CA");
    server_files(&dir, &ca);
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    );
    let server = serve(&web).await;
    let client = connector(&ca.pem(), None);
    let ok = fetch(server.addr, &client, Some(("prometheus", "s3cret"))).await;
    assert_eq!(status(&ok), "HTTP/1.1 200 OK");
    let ok = ok.unwrap_or_default();
    assert!(ok.ends_with("\r\n\r\nmetrics\n"), "{ok}");
    assert!(ok.contains("x-content-type-options: nosniff\r\n"), "{ok}");
    for user in [
        None,
        Some(("prometheus", "wrong")),
        Some(("root", "s3cret")),
    ] {
        let refused = fetch(server.addr, &client, user).await;
        assert_eq!(status(&refused), "HTTP/1.1 401 Unauthorized", "{user:?}");
        let refused = refused.unwrap_or_default();
        assert!(refused.contains("www-authenticate: Basic\r\n"), "{refused}");
        assert!(
            refused.contains("x-content-type-options: nosniff\r\n"),
            "{refused}"
        );
    }
    assert_eq!(server.handshake_errors(), 0);

    // Plain HTTP to the TLS port: no answer, the handshake counted, the listener still up.
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // A client that does not trust the server's CA.
    let stranger = connector(&Ca::new("other CA").pem(), None);
    assert!(fetch(server.addr, &stranger, None).await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.handshake_errors(), 2);
    assert_eq!(
        status(&fetch(server.addr, &client, Some(("prometheus", "s3cret"))).await),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn client_certificate_policies() {
    let dir = TempDir::new("client-auth");
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let stranger = Ca::new("stranger CA");
    server_files(&dir, &ca);
    dir.write("clients.pem", &clients.pem());
    let prometheus = clients.sign(&["prometheus.example.com"]);
    let other = clients.sign(&["other.example.com"]);
    let forged = stranger.sign(&["prometheus.example.com"]);
    let config = |mode: &str, extra: &str| {
        dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: {mode}\n  client_ca_file: clients.pem\n{extra}"
            ),
        )
    };
    let ask = |server: &Server, id: Option<&Signed>| {
        let client = connector(&ca.pem(), id);
        let addr = server.addr;
        async move { status(&fetch(addr, &client, None).await) }
    };
    let ok = "HTTP/1.1 200 OK";

    let server = serve(&config("RequireAndVerifyClientCert", "")).await;
    assert!(server.web.current().config.verifies_clients());
    assert_eq!(ask(&server, Some(&prometheus)).await, ok);
    assert_eq!(ask(&server, Some(&other)).await, ok);
    assert_ne!(ask(&server, Some(&forged)).await, ok);
    assert_ne!(ask(&server, None).await, ok);

    let server = serve(&config(
        "RequireAndVerifyClientCert",
        "  client_allowed_sans: [prometheus.example.com]\n",
    ))
    .await;
    assert_eq!(ask(&server, Some(&prometheus)).await, ok);
    assert_ne!(ask(&server, Some(&other)).await, ok);

    let server = serve(&config("VerifyClientCertIfGiven", "")).await;
    assert_eq!(ask(&server, None).await, ok);
    assert_eq!(ask(&server, Some(&prometheus)).await, ok);
    assert_ne!(ask(&server, Some(&forged)).await, ok);

    let server = serve(&config("RequireAnyClientCert", "")).await;
    assert_eq!(ask(&server, Some(&forged)).await, ok, "any certificate");
    assert_ne!(ask(&server, None).await, ok);

    let server = serve(&config("RequestClientCert", "")).await;
    assert_eq!(ask(&server, None).await, ok);
    assert_eq!(ask(&server, Some(&forged)).await, ok);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = TempDir::new("renew");
    let old_ca = Ca::new("old CA");
    server_files(&dir, &old_ca);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let server = serve(&web).await;
    let old_client = connector(&old_ca.pem(), None);
    assert_eq!(
        status(&fetch(server.addr, &old_client, None).await),
        "HTTP/1.1 200 OK"
    );
    // A key that does not match the certificate (half-way through a renewal) is not taken.
    let new_ca = Ca::new("new CA");
    let renewed = new_ca.sign(&["localhost"]);
    dir.write("server.crt", &renewed.cert);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status(&fetch(server.addr, &old_client, None).await),
        "HTTP/1.1 200 OK",
        "the old certificate stays while the new pair does not match"
    );
    dir.write("server.key", &renewed.key);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_client = connector(&new_ca.pem(), None);
    assert_eq!(
        status(&fetch(server.addr, &new_client, None).await),
        "HTTP/1.1 200 OK"
    );
    assert!(fetch(server.addr, &old_client, None).await.is_err());
}

#[test]
fn the_tcp_api_goes_without_a_token_only_behind_verified_client_certificates() {
    let dir = TempDir::new("api");
    let ca = Ca::new("api CA");
    server_files(&dir, &ca);
    dir.write("clients.pem", &Ca::new("clients").pem());
    let http = |mode: &str, token: Option<&str>| {
        let web = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: {mode}\n  client_ca_file: clients.pem\n"
            ),
        );
        let http = crate::config::HttpConfig {
            api_listen: Some("127.0.0.1:9968".parse().expect("addr")),
            api_token_file: token.map(PathBuf::from),
            web_config_file: Some(web),
            ..Default::default()
        };
        super::super::web_config(&http)
            .map(|w| w.is_some())
            .map_err(|e| e.to_string())
    };
    assert_eq!(http("RequireAndVerifyClientCert", None), Ok(true));
    assert_eq!(
        http("VerifyClientCertIfGiven", None),
        Err(format!(
            "web config {}/web.yml: http.api_listen = 127.0.0.1:9968 without \
             http.api_token_file needs tls_server_config.client_auth_type: \
             RequireAndVerifyClientCert",
            dir.0.display()
        ))
    );
    // With a token, any web config will do (the token is checked when the agent starts).
    assert_eq!(
        http(
            "VerifyClientCertIfGiven",
            Some("/etc/exfil-sensor/api-token")
        ),
        Ok(true)
    );
}
