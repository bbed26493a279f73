//! TLS for the TCP listeners: rustls's server config from the web config's
//! `tls_server_config`, the client certificate policy (Go's `ClientAuthType`), and the
//! accept loop that serves a router over it.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::net::TcpListener;

use super::{
    conn::{Connections, Limits, serve_http1, stopped},
    web::Web,
    web_config::{ClientAuth, Pem, TlsSettings, TlsVersion, io_reason},
};

/// How long a client may take to finish the handshake before its connection is dropped, so
/// that idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls's server config for `tls`. Reads the certificate, key and client CA; the message
/// of an error names the key and the file.
pub fn server_config(tls: &TlsSettings, http2: bool) -> Result<ServerConfig, String> {
    let (cert_pem, cert_key) = read(&tls.cert, "cert")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_key}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_key}: no PEM certificate in it"));
    }
    let (key_pem, key_key) = read(&tls.key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{key_key}: no PEM private key in it")
        }
        e => format!("{key_key}: {e}"),
    })?;

    let provider = Arc::new(provider(tls));
    let versions: Vec<_> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match tls.client_auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        mode => builder.with_client_cert_verifier(client_verifier(tls, mode, &provider)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        TlsError::InconsistentKeys(_) => {
            format!("{key_key} is not the key of {cert_key}")
        }
        e => format!("{cert_key} and {key_key}: {e}"),
    })?;
    // Go's PreferServerCipherSuites; exporter-toolkit's default is true.
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The ring provider with the configured TLS 1.2 suites and key exchange groups.
fn provider(tls: &TlsSettings) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| matches!(s, SupportedCipherSuite::Tls13(_)));
        provider
            .cipher_suites
            .extend(tls.cipher_suites.iter().copied());
    }
    if !tls.curves.is_empty() {
        provider.kx_groups.clone_from(&tls.curves);
    }
    provider
}

/// The PEM text and the key it came from, as errors name it: `tls_server_config.cert_file
/// /etc/x.pem` or `tls_server_config.cert`.
fn read(pem: &Pem, name: &str) -> Result<(Vec<u8>, String), String> {
    match pem {
        Pem::File(path) => {
            let key = format!("tls_server_config.{name}_file {}", path.display());
            match std::fs::read(path) {
                Ok(bytes) => Ok((bytes, key)),
                Err(e) => Err(format!("{key}: {}", io_reason(&e))),
            }
        }
        Pem::Inline(text) => Ok((
            text.as_bytes().to_vec(),
            format!("tls_server_config.{name}"),
        )),
    }
}

fn client_verifier(
    tls: &TlsSettings,
    mode: ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let chain = match (&tls.client_ca, mode) {
        (
            Some(ca),
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert,
        ) => {
            let (pem, key) = read(ca, "client_ca")?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{key}: {e}"))?;
                roots.add(cert).map_err(|e| format!("{key}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("{key}: no PEM certificate in it"));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("{key}: {e}"))?;
            Some(verifier)
        }
        _ => None,
    };
    Ok(Arc::new(ClientCerts {
        mode,
        chain,
        allowed_sans: tls.allowed_sans.clone(),
        algorithms: provider.signature_verification_algorithms,
    }))
}

/// Go's client auth policies on rustls: whether a certificate is asked for and required,
/// whether its chain is verified (against the client CA, by rustls's WebPKI verifier), and
/// `client_allowed_sans`. The client proves it holds the key in every mode that takes one.
#[derive(Debug)]
struct ClientCerts {
    mode: ClientAuth,
    /// The chain check, in the two verifying modes.
    chain: Option<Arc<dyn ClientCertVerifier>>,
    allowed_sans: Option<Vec<String>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientCerts {
    fn client_auth_mandatory(&self) -> bool {
        matches!(
            self.mode,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.as_ref().map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if let Some(chain) = &self.chain {
            chain.verify_client_cert(end_entity, intermediates, now)?;
        }
        if let Some(allowed) = &self.allowed_sans
            && !has_allowed_san(end_entity, allowed)
        {
            return Err(TlsError::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the certificate carries one of `allowed` as a DNS, IP or URI SAN, compared
/// exactly (exporter-toolkit's `VerifyPeerCertificate`).
fn has_allowed_san(cert: &CertificateDer<'_>, allowed: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    allowed.iter().any(|want| {
        cert.valid_dns_names().any(|name| name == want)
            || cert.valid_uri_names().any(|uri| uri == want)
            || want.parse::<IpAddr>().is_ok_and(|ip| {
                cert.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                    .is_ok()
            })
    })
}

/// Serves `router` over TLS on `listener` until `stop` resolves. Each connection gets the
/// config current when it arrives (so a renewed certificate is used without a restart); a
/// failed or slow handshake ends that connection only, logged at debug and counted in
/// `exfil_sensor_http_tls_handshake_errors_total{listener}`. HTTP/1.1 connections have the
/// header read timeout and size bound of `limits`; h2 (by ALPN, when the web config allows
/// it) bounds its header list to the same size.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Arc<Web>,
    name: &'static str,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let handshake_errors = web.handshake_errors(name);
    let mut connections = Connections::default();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: the listener
                    // itself is fine. Pause so that a full table does not spin the loop.
                    tracing::debug!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Some(config) = web.current().tls.clone() else {
            continue;
        };
        let http2 = web.http2();
        let router = router.clone();
        let handshake_errors = handshake_errors.clone();
        connections.spawn(move |stop| async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        handshake_errors.inc();
                        tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        handshake_errors.inc();
                        tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                        return;
                    }
                };
            let h2 = http2 && stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if !h2 {
                serve_http1(stream, router, limits, stop).await;
                return;
            }
            let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
            builder
                .http2()
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            let service = TowerToHyperService::new(router);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopped(stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended");
            }
        });
    }
    connections.close().await;
    Ok(())
}

#[cfg(test)]
mod tests;
