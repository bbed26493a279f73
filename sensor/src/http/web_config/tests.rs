use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<WebConfig, String> {
    WebConfig::parse(text, Path::new("/etc/exfil-sensor/web.yml")).map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("parsed: {config:?}"),
        Err(e) => e,
    }
}

/// exporter-toolkit's docs/web-config.yml, as shipped.
const TOOLKIT_SAMPLE: &str = r#"# TLS and basic authentication configuration example.
#
# Additionally, a certificate and a key file are needed.
tls_server_config:
  cert_file: server.crt
  key_file: server.key

# Usernames and passwords required to connect.
# Passwords are hashed with bcrypt: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md#about-bcrypt.
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m

# Rate limiting requests on the endpoint using a token bucket
rate_limit:
  interval: "1s" # time interval between two requests, set to 0 to disable rate limiter
  burst: 20 # and permits a burst of up to 20 requests.
"#;

#[test]
fn the_toolkit_sample_parses_with_paths_from_its_directory() {
    let config = parse(TOOLKIT_SAMPLE).expect("parses");
    let tls = config.tls.as_ref().expect("TLS on");
    assert_eq!(tls.cert, Pem::File("/etc/exfil-sensor/server.crt".into()));
    assert_eq!(tls.key, Pem::File("/etc/exfil-sensor/server.key".into()));
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(tls.client_ca, None);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(tls.prefer_server_cipher_suites);
    assert!(tls.cipher_suites.is_empty() && tls.curves.is_empty());
    assert!(config.http2);
    let users: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(
        config.rate_limit,
        Some(RateLimit {
            interval: Duration::from_secs(1),
            burst: 20
        })
    );
    assert_eq!(
        config.watched_files(),
        [
            PathBuf::from("/etc/exfil-sensor/web.yml"),
            "/etc/exfil-sensor/server.crt".into(),
            "/etc/exfil-sensor/server.key".into()
        ]
    );
    assert!(!config.verifies_clients());
}

#[test]
fn every_documented_key_parses() {
    let config = parse(
        "tls_server_config:
  cert_file: /tls/server.crt
  key_file: /tls/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  client_allowed_sans: [prometheus.example.com, 192.0.2.7, spiffe://example.com/prometheus]
  min_version: TLS13
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    - TLS_AES_128_GCM_SHA256
    - TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
  curve_preferences: [X25519, CurveP256, CurveP384]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    Content-Security-Policy: default-src 'self'
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1; mode=block
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
rate_limit:
  interval: 0
",
    )
    .expect("parses");
    let tls = config.tls.as_ref().expect("TLS on");
    assert_eq!(tls.cert, Pem::File("/tls/server.crt".into()));
    assert_eq!(
        tls.client_ca,
        Some(Pem::File("/etc/exfil-sensor/ca.pem".into()))
    );
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(
        tls.allowed_sans.as_deref(),
        Some(
            &[
                "prometheus.example.com".to_owned(),
                "192.0.2.7".to_owned(),
                "spiffe://example.com/prometheus".to_owned()
            ][..]
        )
    );
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls13, TlsVersion::Tls13)
    );
    // The TLS 1.3 suite is accepted and left out, as Go does.
    let suites: Vec<_> = tls
        .cipher_suites
        .iter()
        .filter_map(|s| s.suite().as_str())
        .collect();
    assert_eq!(
        suites,
        [
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        ]
    );
    assert_eq!(tls.curves.len(), 3);
    assert!(!tls.prefer_server_cipher_suites);
    assert!(!config.http2);
    let headers: Vec<(String, String)> = config
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(
        headers,
        [
            ("content-security-policy", "default-src 'self'"),
            ("x-frame-options", "deny"),
            ("x-content-type-options", "nosniff"),
            ("x-xss-protection", "1; mode=block"),
            ("strict-transport-security", "max-age=31536000"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert!(config.users.is_empty());
    assert_eq!(config.rate_limit, None, "interval 0 is off");
    assert!(config.verifies_clients());
}

#[test]
fn without_certificates_it_is_plain_http_with_auth_as_in_the_toolkit() {
    for text in [
        "",
        "# nothing\n",
        "tls_server_config:\n",
        "tls_server_config:\n  min_version: TLS12\n  cert_file: \"\"\n",
    ] {
        let config = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(config.tls.is_none(), "{text:?}");
    }
    let config = parse("basic_auth_users:\n  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze\n")
        .expect("parses");
    assert!(config.tls.is_none());
    assert_eq!(config.users.len(), 1);
}

#[test]
fn client_auth_types_map_to_gos_policies() {
    for (name, mode) in [
        ("NoClientCert", Some(ClientAuth::NoClientCert)),
        ("RequestClientCert", Some(ClientAuth::RequestClientCert)),
        (
            "RequireAnyClientCert",
            Some(ClientAuth::RequireAnyClientCert),
        ),
        ("RequireClientCert", Some(ClientAuth::RequireAnyClientCert)),
        (
            "VerifyClientCertIfGiven",
            Some(ClientAuth::VerifyClientCertIfGiven),
        ),
        (
            "RequireAndVerifyClientCert",
            Some(ClientAuth::RequireAndVerifyClientCert),
        ),
        ("", None),
    ] {
        assert_eq!(ClientAuth::from_name(name), Ok(mode), "{name}");
    }
    // Only the verifying mode with a CA lets the TCP API go without a token.
    let with = |mode: &str| {
        parse(&format!(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: {mode}\n  client_ca_file: ca\n"
        ))
        .map(|c| c.verifies_clients())
    };
    assert_eq!(with("RequireAndVerifyClientCert"), Ok(true));
    assert_eq!(with("VerifyClientCertIfGiven"), Ok(false));
    assert_eq!(with("RequireAnyClientCert"), Ok(false));
}

const TLS: &str = "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n";

/// The rustls TLS 1.2 suites, as the cipher suite errors list them.
const OFFERED: &str = "TLS 1.2: TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, \
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, \
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, \
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256";

#[test]
fn each_bad_input_has_one_clear_message() {
    let tls = |extra: &str| format!("{TLS}{extra}");
    let cases = [
        (
            "tls_server_confg:\n  cert_file: x\n".to_owned(),
            "unknown field `tls_server_confg`, expected one of `tls_server_config`, \
             `http_server_config`, `basic_auth_users`, `rate_limit`"
                .to_owned(),
        ),
        (
            tls("  cert_fil: x\n"),
            "tls_server_config: unknown field `cert_fil`, expected one of `cert`, `key`, \
             `client_ca`, `cert_file`, `key_file`, `client_auth_type`, `client_ca_file`, \
             `client_allowed_sans`, `min_version`, `max_version`, `cipher_suites`, \
             `curve_preferences`, `prefer_server_cipher_suites` at line 4 column 3"
                .to_owned(),
        ),
        (
            tls("  min_version: TLS10\n"),
            "tls_server_config.min_version: TLS10 is not supported: rustls speaks TLS12 and \
             TLS13 only at line 4 column 16"
                .to_owned(),
        ),
        (
            tls("  max_version: TLS11\n"),
            "tls_server_config.max_version: TLS11 is not supported: rustls speaks TLS12 and \
             TLS13 only at line 4 column 16"
                .to_owned(),
        ),
        (
            tls("  min_version: SSL3\n"),
            "tls_server_config.min_version: unknown TLS version \"SSL3\" (TLS12 or TLS13) at \
             line 4 column 16"
                .to_owned(),
        ),
        (
            tls("  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n"),
            format!(
                "tls_server_config.cipher_suites[0]: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is not \
                 a cipher suite rustls offers ({OFFERED}) at line 4 column 19"
            ),
        ),
        (
            tls("  cipher_suites:\n    - TLS_AES_128_GCM_SHA256\n    - TLS_INVENTED\n"),
            format!(
                "tls_server_config.cipher_suites[1]: TLS_INVENTED is not a cipher suite rustls \
                 offers ({OFFERED}) at line 6 column 7"
            ),
        ),
        (
            tls("  curve_preferences: [X25519, CurveP521]\n"),
            "tls_server_config.curve_preferences[1]: CurveP521 is not supported by rustls \
             (X25519, CurveP256, CurveP384) at line 4 column 31"
                .to_owned(),
        ),
        (
            tls("  curve_preferences: [CurveP1]\n"),
            "tls_server_config.curve_preferences[0]: unknown curve \"CurveP1\" (X25519, \
             CurveP256, CurveP384) at line 4 column 23"
                .to_owned(),
        ),
        (
            tls("  client_auth_type: Always\n"),
            "tls_server_config.client_auth_type: unknown value \"Always\" (NoClientCert, \
             RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, \
             RequireAndVerifyClientCert) at line 4 column 21"
                .to_owned(),
        ),
        (
            tls("  client_allowed_sans: [prom@example.com]\n"),
            "tls_server_config.client_allowed_sans[0]: \"prom@example.com\": e-mail SANs are \
             not supported (DNS names, IP addresses and URIs are) at line 4 column 25"
                .to_owned(),
        ),
        (
            tls("  min_version: TLS13\n  max_version: TLS12\n"),
            "tls_server_config: min_version TLS13 is above max_version TLS12".to_owned(),
        ),
        (
            tls("  cert: inline\n"),
            "tls_server_config: set cert_file or cert, not both".to_owned(),
        ),
        (
            tls("  client_ca_file: ca.pem\n"),
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert; \
             set client_auth_type: RequireAndVerifyClientCert"
                .to_owned(),
        ),
        (
            tls("  client_auth_type: VerifyClientCertIfGiven\n"),
            "tls_server_config.client_auth_type VerifyClientCertIfGiven needs client_ca_file \
             (the CA that client certificates must chain to)"
                .to_owned(),
        ),
        (
            "tls_server_config:\n  cert_file: c.pem\n".to_owned(),
            "tls_server_config: key_file (or key) is missing".to_owned(),
        ),
        (
            "tls_server_config:\n  key: inline\n".to_owned(),
            "tls_server_config: cert_file (or cert) is missing".to_owned(),
        ),
        (
            "basic_auth_users:\n  alice: secret\n".to_owned(),
            "basic_auth_users.alice: not a bcrypt hash ($2y$10$ and 53 characters; make one \
             with htpasswd -nBC 10 \"\" | tr -d ':\\n') at line 2 column 10"
                .to_owned(),
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".to_owned(),
            "http_server_config.headers.X-Frame-Options: \"allow\" is not one of deny, \
             sameorigin at line 3 column 22"
                .to_owned(),
        ),
        (
            "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n".to_owned(),
            "http_server_config.headers.X-Content-Type-Options: \"sniff\" is not one of \
             nosniff at line 3 column 29"
                .to_owned(),
        ),
        (
            "http_server_config:\n  headers:\n    Server: exfil\n".to_owned(),
            "http_server_config.headers: unknown field `Server`, expected one of \
             `Content-Security-Policy`, `X-Frame-Options`, `X-Content-Type-Options`, \
             `X-XSS-Protection`, `Strict-Transport-Security` at line 3 column 5"
                .to_owned(),
        ),
        (
            "http_server_config:\n  http2: maybe\n".to_owned(),
            "http_server_config.http2: invalid type: string \"maybe\", expected a boolean at \
             line 2 column 10"
                .to_owned(),
        ),
        (
            "rate_limit:\n  interval: 1\n  burst: 2\n".to_owned(),
            "rate_limit.interval: 1 has no unit (e.g. 1s, 500ms) at line 2 column 13".to_owned(),
        ),
        (
            "rate_limit:\n  interval: soon\n".to_owned(),
            "rate_limit.interval: \"soon\" is not a duration (e.g. 1s, 500ms) at line 2 column 13"
                .to_owned(),
        ),
        (
            "- a list\n".to_owned(),
            "invalid type: sequence, expected a mapping of tls_server_config, \
             http_server_config, basic_auth_users, rate_limit"
                .to_owned(),
        ),
        (
            "tls_server_config:\n  cert_file: \"c.pem\n".to_owned(),
            "found unexpected end of stream at line 3 column 1, while scanning a quoted scalar \
             at line 2 column 14"
                .to_owned(),
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let got = error(&text);
        let expected = format!("web config /etc/exfil-sensor/web.yml: {expected}");
        if got != expected {
            wrong.push(format!(
                "{text:?}\n  got:      {got}\n  expected: {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
