//! The web config (`http.web_config_file`, `run --web.config.file`): TLS, basic auth and
//! response headers for the TCP listeners, in the Prometheus exporter-toolkit's
//! `web-config.yml` format, so that a Prometheus scrape job's `scheme: https`, `tls_config`
//! and `basic_auth` work as they do against node_exporter's `--web.config.file`.
//!
//! The format: <https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>.
//! Keys rustls cannot honour (TLS 1.0 and 1.1, CBC and RSA key-exchange suites, P-521,
//! e-mail SANs) are refused with the key named, never ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{SupportedCipherSuite, crypto::SupportedKxGroup};
use serde::Deserialize;
use thiserror::Error;

mod values;

use values::{
    AllowedSan, BcryptHash, CipherSuite, ClientAuthName, ContentTypeOptions, Curve, FrameOptions,
    GoDuration, HeaderText, OneOf,
};

/// A web config that cannot be used: one line naming the file and what is wrong in it.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("web config {path}: {message}")]
pub struct WebConfigError {
    pub path: String,
    pub message: String,
}

/// A parsed, checked web config, its relative paths resolved against the file's directory
/// (as exporter-toolkit does).
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub path: PathBuf,
    /// `None`: plain HTTP (basic auth and headers still apply, as in exporter-toolkit).
    pub tls: Option<TlsSettings>,
    /// `http_server_config.http2`: offer h2 by ALPN (TLS only). Fixed at start.
    pub http2: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `basic_auth_users`: none means no basic auth.
    pub users: Vec<User>,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// A bcrypt hash (`$2y$10$…`), checked to parse at load.
    pub hash: String,
}

/// `rate_limit`: a token bucket over all requests, one token per `interval`, `burst` deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// PEM text from a file (`cert_file`) or inline (`cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub allowed_sans: Option<Vec<String>>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty: rustls's. TLS 1.3 suites are always all
    /// on, as in Go, where they cannot be configured either.
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// Key exchange groups in preference order; empty: rustls's.
    pub curves: Vec<&'static dyn SupportedKxGroup>,
    pub prefer_server_cipher_suites: bool,
}

/// `client_auth_type`: Go's `tls.ClientAuthType`, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Asks for a certificate; takes none, or any, unverified.
    RequestClientCert,
    /// Requires a certificate, any, unverified.
    RequireAnyClientCert,
    /// Verifies a certificate against the client CA if one is sent.
    VerifyClientCertIfGiven,
    /// Requires a certificate that verifies against the client CA: the only mode that
    /// authenticates clients, and so the only one that stands in for the API's bearer token.
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl WebConfig {
    /// Reads, parses and checks the file, including that its certificate and key load (the
    /// TLS setup is built once and thrown away), so that a bad one fails at start.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError {
            path: path.display().to_string(),
            message: io_reason(&e),
        })?;
        let config = Self::parse(&text, path)?;
        if let Some(tls) = &config.tls {
            super::tls::server_config(tls, config.http2).map_err(|message| WebConfigError {
                path: path.display().to_string(),
                message,
            })?;
        }
        Ok(config)
    }

    /// Parses and checks YAML text without reading the files it names; `path` names it in
    /// errors and is where relative paths start.
    pub fn parse(text: &str, path: &Path) -> Result<Self, WebConfigError> {
        let error = |message: String| WebConfigError {
            path: path.display().to_string(),
            message,
        };
        // An empty file is an empty config (Go's yaml.UnmarshalStrict takes it so).
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str::<Option<RawConfig>>(text)
                .map_err(|e| error(e.to_string()))?
                .unwrap_or_default()
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let tls = match raw.tls_server_config {
            Some(tls) if tls.enabled() => Some(tls.settings(dir).map_err(error)?),
            _ => None,
        };
        let http = raw.http_server_config.unwrap_or_default();
        let users = raw
            .basic_auth_users
            .unwrap_or_default()
            .into_iter()
            .map(|(name, hash)| User { name, hash: hash.0 })
            .collect();
        let rate_limit = match raw.rate_limit {
            Some(RawRateLimit {
                interval: Some(GoDuration(interval)),
                burst,
            }) if !interval.is_zero() => Some(RateLimit {
                interval,
                burst: burst.unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            tls,
            http2: http.http2.unwrap_or(true),
            headers: http.headers.unwrap_or_default().into_pairs(),
            users,
            rate_limit,
        })
    }

    /// The files whose change makes the listeners reload the config: the config itself and
    /// the certificate, key and client CA files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        if let Some(tls) = &self.tls {
            for pem in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Pem::File(path) = pem {
                    files.push(path.clone());
                }
            }
        }
        files
    }

    /// Whether clients must present a certificate that verifies (so that they are known
    /// without a bearer token).
    pub fn verifies_clients(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerifyClientCert)
    }
}

/// An I/O error's reason without Rust's " (os error N)" tail: "No such file or directory".
pub(super) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

// The file as written. Every key is optional, and a key given as null (`key:` alone) is the
// same as absent, as in Go's YAML decoder; an empty string is unset, as in exporter-toolkit.

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of tls_server_config, http_server_config, basic_auth_users, rate_limit"
)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, BcryptHash>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of TLS settings")]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<ClientAuthName>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<AllowedSan>>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    cipher_suites: Option<Vec<CipherSuite>>,
    curve_preferences: Option<Vec<Curve>>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of http2 and headers")]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<Headers>,
}

/// The headers exporter-toolkit lets a web config set, and no others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of header names to values")]
struct Headers {
    #[serde(rename = "Content-Security-Policy")]
    content_security_policy: Option<HeaderText>,
    #[serde(rename = "X-Frame-Options")]
    x_frame_options: Option<OneOf<FrameOptions>>,
    #[serde(rename = "X-Content-Type-Options")]
    x_content_type_options: Option<OneOf<ContentTypeOptions>>,
    #[serde(rename = "X-XSS-Protection")]
    x_xss_protection: Option<HeaderText>,
    #[serde(rename = "Strict-Transport-Security")]
    strict_transport_security: Option<HeaderText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of interval and burst")]
struct RawRateLimit {
    interval: Option<GoDuration>,
    burst: Option<u32>,
}

/// A check's result: the message names the key (the file is added by the caller).
type Checked<T> = Result<T, String>;

impl RawTls {
    /// exporter-toolkit's `IsEnabled`: any certificate, key, CA or client auth key set.
    fn enabled(&self) -> bool {
        [
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.cert_file,
            &self.key_file,
            &self.client_ca_file,
        ]
        .iter()
        .any(|v| set(v).is_some())
            || self.client_auth_type.is_some_and(|c| c.0.is_some())
    }

    fn settings(self, dir: &Path) -> Checked<TlsSettings> {
        let pem = |file: &Option<String>, inline: &Option<String>, name: &str| match (
            set(file),
            set(inline),
        ) {
            (Some(_), Some(_)) => Err(format!(
                "tls_server_config: set {name}_file or {name}, not both"
            )),
            (Some(file), None) => Ok(Some(Pem::File(dir.join(file)))),
            (None, Some(text)) => Ok(Some(Pem::Inline(text.to_owned()))),
            (None, None) => Ok(None),
        };
        let cert = pem(&self.cert_file, &self.cert, "cert")?
            .ok_or("tls_server_config: cert_file (or cert) is missing")?;
        let key = pem(&self.key_file, &self.key, "key")?
            .ok_or("tls_server_config: key_file (or key) is missing")?;
        let client_ca = pem(&self.client_ca_file, &self.client_ca, "client_ca")?;
        let client_auth = self
            .client_auth_type
            .and_then(|c| c.0)
            .unwrap_or(ClientAuth::NoClientCert);
        match (client_auth, &client_ca) {
            (ClientAuth::NoClientCert, Some(_)) => {
                return Err(
                    "tls_server_config: client_ca_file is set but client_auth_type is \
                            NoClientCert; set client_auth_type: RequireAndVerifyClientCert"
                        .to_owned(),
                );
            }
            (
                ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert,
                None,
            ) => {
                return Err(format!(
                    "tls_server_config.client_auth_type {client_auth:?} needs client_ca_file \
                     (the CA that client certificates must chain to)"
                ));
            }
            _ => {}
        }
        let min_version = self.min_version.unwrap_or(TlsVersion::Tls12);
        let max_version = self.max_version.unwrap_or(TlsVersion::Tls13);
        if min_version > max_version {
            return Err(format!(
                "tls_server_config: min_version {} is above max_version {}",
                min_version.name(),
                max_version.name()
            ));
        }
        let allowed_sans = self
            .client_allowed_sans
            .map(|sans| sans.into_iter().map(|s| s.0).collect());
        Ok(TlsSettings {
            cert,
            key,
            client_ca,
            client_auth,
            allowed_sans,
            min_version,
            max_version,
            cipher_suites: self
                .cipher_suites
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.0)
                .collect(),
            curves: self
                .curve_preferences
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.0)
                .collect(),
            prefer_server_cipher_suites: self.prefer_server_cipher_suites.unwrap_or(true),
        })
    }
}

/// A string key's value, `None` when empty.
fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl Headers {
    fn into_pairs(self) -> Vec<(HeaderName, HeaderValue)> {
        let named = [
            (
                "content-security-policy",
                self.content_security_policy.map(|h| h.0),
            ),
            ("x-frame-options", self.x_frame_options.map(|h| h.0)),
            (
                "x-content-type-options",
                self.x_content_type_options.map(|h| h.0),
            ),
            ("x-xss-protection", self.x_xss_protection.map(|h| h.0)),
            (
                "strict-transport-security",
                self.strict_transport_security.map(|h| h.0),
            ),
        ];
        named
            .into_iter()
            .filter_map(|(name, value)| Some((HeaderName::from_static(name), value?)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
