//! The web config's values, checked as they are parsed, inside serde's visitor, so that its
//! error names the key's path, line and column (an error raised after `String::deserialize`
//! returned would carry the enclosing mapping's instead).

use std::time::Duration;

use axum::http::HeaderValue;
use rustls::{SupportedCipherSuite, crypto::SupportedKxGroup};
use serde::Deserialize;

use super::{Checked, ClientAuth, TlsVersion};

/// Deserializes a string with `parse`; `expecting` says what in serde's type errors.
fn parsed<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Checked<T>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Parse<T> {
        expecting: &'static str,
        parse: fn(&str) -> Checked<T>,
    }
    impl<T> serde::de::Visitor<'_> for Parse<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(E::custom)
        }
    }
    d.deserialize_str(Parse { expecting, parse })
}

/// A header value that HTTP can carry.
#[derive(Debug)]
pub(super) struct HeaderText(pub(super) HeaderValue);

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a header value", |text| {
            HeaderValue::from_str(text)
                .map(HeaderText)
                .map_err(|_| format!("{text:?} is not a valid header value"))
        })
    }
}

/// A header value from a fixed list (exporter-toolkit's `extraHTTPHeaders`).
#[derive(Debug)]
pub(super) struct OneOf<T>(pub(super) HeaderValue, std::marker::PhantomData<T>);

pub(super) trait Allowed {
    const VALUES: &'static [&'static str];
}

#[derive(Debug)]
pub(super) struct FrameOptions;
impl Allowed for FrameOptions {
    const VALUES: &'static [&'static str] = &["deny", "sameorigin"];
}

#[derive(Debug)]
pub(super) struct ContentTypeOptions;
impl Allowed for ContentTypeOptions {
    const VALUES: &'static [&'static str] = &["nosniff"];
}

impl<'de, T: Allowed> Deserialize<'de> for OneOf<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a header value", |text| {
            match T::VALUES.iter().find(|v| **v == text) {
                Some(value) => Ok(OneOf(
                    HeaderValue::from_static(value),
                    std::marker::PhantomData,
                )),
                None => Err(format!("{text:?} is not one of {}", T::VALUES.join(", "))),
            }
        })
    }
}

/// `client_auth_type`; `None` for "" (unset).
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientAuthName(pub(super) Option<ClientAuth>);

impl<'de> Deserialize<'de> for ClientAuthName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a client auth type", |text| {
            ClientAuth::from_name(text).map(ClientAuthName)
        })
    }
}

impl ClientAuth {
    /// Go's names; `RequireClientCert` is exporter-toolkit's old name for
    /// `RequireAnyClientCert`, and "" is unset.
    pub fn from_name(name: &str) -> Checked<Option<Self>> {
        Ok(Some(match name {
            "" => return Ok(None),
            "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            other => {
                return Err(format!(
                    "unknown value {other:?} (NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                ));
            }
        }))
    }
}

impl TlsVersion {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Tls12 => "TLS12",
            Self::Tls13 => "TLS13",
        }
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a TLS version", |text| match text {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            "TLS10" | "TLS11" => Err(format!(
                "{text} is not supported: rustls speaks TLS12 and TLS13 only"
            )),
            _ => Err(format!("unknown TLS version {text:?} (TLS12 or TLS13)")),
        })
    }
}

/// One of `cipher_suites`: a TLS 1.2 suite rustls has, by its Go (IANA) name; `None` for a
/// TLS 1.3 suite, which Go accepts and ignores (TLS 1.3 suites are not configurable).
#[derive(Debug)]
pub(super) struct CipherSuite(pub(super) Option<SupportedCipherSuite>);

impl<'de> Deserialize<'de> for CipherSuite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a cipher suite name", |text| {
            if matches!(
                text,
                "TLS_AES_128_GCM_SHA256"
                    | "TLS_AES_256_GCM_SHA384"
                    | "TLS_CHACHA20_POLY1305_SHA256"
            ) {
                return Ok(Self(None));
            }
            let tls12: Vec<SupportedCipherSuite> = rustls::crypto::ring::default_provider()
                .cipher_suites
                .into_iter()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                .collect();
            match tls12.iter().find(|s| s.suite().as_str() == Some(text)) {
                Some(suite) => Ok(Self(Some(*suite))),
                None => {
                    let offered: Vec<&str> =
                        tls12.iter().filter_map(|s| s.suite().as_str()).collect();
                    Err(format!(
                        "{text} is not a cipher suite rustls offers (TLS 1.2: {})",
                        offered.join(", ")
                    ))
                }
            }
        })
    }
}

/// One of `curve_preferences`, by Go's name.
#[derive(Debug)]
pub(super) struct Curve(pub(super) &'static dyn SupportedKxGroup);

impl<'de> Deserialize<'de> for Curve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use rustls::crypto::ring::kx_group;
        parsed(d, "a curve name", |text| match text {
            "X25519" => Ok(Self(kx_group::X25519)),
            "CurveP256" => Ok(Self(kx_group::SECP256R1)),
            "CurveP384" => Ok(Self(kx_group::SECP384R1)),
            "CurveP521" => {
                Err("CurveP521 is not supported by rustls (X25519, CurveP256, CurveP384)".into())
            }
            _ => Err(format!(
                "unknown curve {text:?} (X25519, CurveP256, CurveP384)"
            )),
        })
    }
}

/// One of `client_allowed_sans`: a DNS name, IP address or URI the client certificate must
/// carry. rustls-webpki reads no e-mail SANs, so an address is refused, not ignored.
#[derive(Debug)]
pub(super) struct AllowedSan(pub(super) String);

impl<'de> Deserialize<'de> for AllowedSan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a DNS name, IP address or URI", |text| {
            if text.contains('@') && !text.contains(':') {
                return Err(format!(
                    "{text:?}: e-mail SANs are not supported (DNS names, IP addresses and URIs are)"
                ));
            }
            Ok(Self(text.to_owned()))
        })
    }
}

/// A `basic_auth_users` value: a bcrypt hash, as `htpasswd -nBC 10 "" | tr -d ':\n'` prints.
#[derive(Debug)]
pub(super) struct BcryptHash(pub(super) String);

impl<'de> Deserialize<'de> for BcryptHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a bcrypt hash", |text| {
            match text.parse::<bcrypt::HashParts>() {
                Ok(_) => Ok(Self(text.to_owned())),
                Err(_) => Err(
                    "not a bcrypt hash ($2y$10$ and 53 characters; make one with \
                 htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                        .to_owned(),
                ),
            }
        })
    }
}

/// A Go duration (`1s`, `500ms`, `1m30s`), or 0.
#[derive(Debug)]
pub(super) struct GoDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = GoDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as 1s or 500ms")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<GoDuration, E> {
                match n {
                    0 => Ok(GoDuration(Duration::ZERO)),
                    n => Err(E::custom(format!("{n} has no unit (e.g. 1s, 500ms)"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<GoDuration, E> {
                Err(E::custom(format!("{n} is not a duration (e.g. 1s, 500ms)")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<GoDuration, E> {
                if text == "0" {
                    return Ok(GoDuration(Duration::ZERO));
                }
                humantime::parse_duration(text)
                    .map(GoDuration)
                    .map_err(|_| E::custom(format!("{text:?} is not a duration (e.g. 1s, 500ms)")))
            }
        }
        d.deserialize_any(Visit)
    }
}
