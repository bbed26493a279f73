//! One JSON POST, for the network sinks: hyper-util's pooled HTTP/1 client over plain TCP.
//! No TLS yet: a URL must be `http://` (a TLS-terminating proxy on the host covers remote
//! receivers until the agent has a TLS story).

use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    HeaderMap, Request, StatusCode, Uri,
    body::Bytes,
    header::{CONTENT_TYPE, USER_AGENT},
};
use hyper_util::{
    client::legacy::{self, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use thiserror::Error;

use super::SinkError;

pub(super) type Client = legacy::Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Error)]
pub(super) enum PostError {
    #[error("POST {url}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout { url: Uri, timeout: Duration },
    /// Connection refused, name not resolved, connection reset: the whole cause chain.
    #[error("POST {url}: {cause}")]
    Send { url: Uri, cause: String },
    #[error("POST {url}: answered {status}: {body}")]
    Status {
        url: Uri,
        status: StatusCode,
        body: String,
    },
    #[error("POST {url}: cannot build the request: {cause}")]
    Request { url: Uri, cause: hyper::http::Error },
}

/// An `http://` URL with a host, as `key`'s value.
pub(super) fn http_url(key: &'static str, url: &str) -> Result<Uri, SinkError> {
    let invalid = |reason: &str| SinkError::Invalid {
        key,
        value: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        Some("https") => Err(invalid(
            "only http:// is supported (no TLS yet); put a TLS-terminating proxy on this host \
             in front",
        )),
        _ => Err(invalid("must be an http:// URL with a host")),
    }
}

/// Any absolute `http://` or `https://` URL (a link for people, not one we post to).
pub(super) fn absolute_url(key: &'static str, url: &str) -> Result<(), SinkError> {
    let invalid = |reason: String| SinkError::Invalid {
        key,
        value: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(e.to_string()))?;
    if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() {
        Ok(())
    } else {
        Err(invalid(
            "must be an absolute http:// or https:// URL".to_owned(),
        ))
    }
}

pub(super) fn client() -> Client {
    legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        // Below the idle timeouts servers commonly use, so a pooled connection is rarely
        // one the server is closing.
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// POSTs `body` as JSON with `headers`; `Ok` on a 2xx answer. `timeout` bounds everything
/// from connecting to reading the answer.
pub(super) async fn post(
    client: &Client,
    url: &Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<(), PostError> {
    let mut request = Request::post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("exfil-sensor/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|cause| PostError::Request {
            url: url.clone(),
            cause,
        })?;
    request.headers_mut().extend(headers);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| PostError::Send {
            url: url.clone(),
            cause: crate::error_chain(&e),
        })?;
        let status = response.status();
        // Read (a bounded part of) the answer: it lets the connection go back to the pool,
        // and a refusal's reason goes into the log.
        let answer = Limited::new(response.into_body(), 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status {
                url: url.clone(),
                status,
                body: String::from_utf8_lossy(&answer).trim().to_owned(),
            })
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| PostError::Timeout {
            url: url.clone(),
            timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_names_the_url_and_the_cause() {
        // Bind then drop: a loopback port nothing listens on.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url: Uri = format!("http://{addr}/hook").parse().expect("url");
        let err = post(
            &client(),
            &url,
            HeaderMap::new(),
            Bytes::from_static(b"{}"),
            Duration::from_secs(5),
        )
        .await
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "POST http://{addr}/hook: client error (Connect): tcp connect error: \
                 Connection refused (os error 111)"
            )
        );
    }
}
