//! Forwarding to the MCP server over the worker's pooled connections: HTTP/1.1 over TCP, or over
//! TLS for an `https://` upstream, which may also choose HTTP/2 (`tls.rs`). The upstream sees a
//! plain client: its own Host, the caller's identity in one header, never the caller's key.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    HeaderMap, Request, Response, Uri, Version,
    header::{self, HeaderName, HeaderValue},
    http::{request, uri::PathAndQuery},
};

mod identity;
mod pool;
mod tls;

pub use identity::IdentitySigner;
pub use pool::{ConnectionPool, PoolError, PooledBody};
pub use tls::{ClientIdentity, UpstreamTls};

use crate::config::UpstreamSettings;
use crate::metrics::PoolStats;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the MCP server is unreachable: {0}")]
    Unavailable(#[source] PoolError),
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct Upstream {
    pool: Arc<ConnectionPool>,
    /// The upstream URL's path (and query), where every request goes.
    path: PathAndQuery,
    host: HeaderValue,
    caller_header: HeaderName,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Upstream {
    /// `stats` are shared by every worker's pool.
    pub fn new(settings: &UpstreamSettings, stats: PoolStats) -> Self {
        let url = &settings.url;
        let address = settings.address();
        let host = url
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        Self {
            pool: ConnectionPool::new(address, settings.tls.clone(), stats),
            path: url
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            host,
            caller_header: settings.caller_header.clone(),
            authorization: settings.authorization.clone(),
            timeout: settings.timeout,
        }
    }

    /// Closes idle upstream connections past their time, periodically; spawn it on the worker's
    /// runtime.
    pub fn close_idle_periodically(&self) -> impl Future<Output = ()> + 'static {
        ConnectionPool::close_idle_periodically(Arc::downgrade(&self.pool))
    }

    /// Sends the request upstream and returns the response head with its body still streaming.
    /// It goes to `path` on the server, or to the upstream URL's path, with the client's query.
    /// The timeout covers the wait for the response head only: streams may then run for as long
    /// as the server keeps them open.
    pub async fn send(
        &self,
        parts: request::Parts,
        body: Bytes,
        path: Option<&str>,
        caller: &str,
        client_ip: &HeaderValue,
        request_id: &HeaderValue,
    ) -> Result<Response<PooledBody>, ForwardError> {
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        // The caller's credentials and any identity header it forged never go upstream.
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(&self.caller_header);
        headers.insert(header::HOST, self.host.clone());
        // User names are checked header-safe when the config is read. Made per request rather
        // than kept per user: with 100,000 users that would be ~6 MiB.
        if let Ok(caller) = HeaderValue::from_str(caller) {
            headers.insert(&self.caller_header, caller);
        }
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        headers.insert(REQUEST_ID, request_id.clone());
        append_forwarded_for(&mut headers, client_ip);

        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method;
        *request.uri_mut() = self.target(path, parts.uri.query());
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;

        match tokio::time::timeout(self.timeout, self.pool.send(request)).await {
            Ok(Ok(mut response)) => {
                remove_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Ok(Err(err)) => Err(ForwardError::Unavailable(err)),
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
        }
    }

    /// `path` (or the upstream URL's) in origin form, with the client's query string if it sent
    /// one.
    fn target(&self, path: Option<&str>, query: Option<&str>) -> Uri {
        let path_and_query = match (path, query) {
            (None, None) => self.path.clone(),
            (path, query) => {
                let path = path.unwrap_or(self.path.path());
                let target = match query {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_owned(),
                };
                target.parse().unwrap_or_else(|_| self.path.clone())
            }
        };
        Uri::from(path_and_query)
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names. Runs twice per request, so the common case (no
/// hop-by-hop header at all) is one pass over the headers rather than a lookup per name.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Header names are lowercase; one string match per header is cheaper than comparing it
    // with each name.
    let is_hop_by_hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-authenticate"
                | "keep-alive"
                | "proxy-connection"
        )
    };
    let mut remove: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    if remove.is_empty() {
        return;
    }
    remove.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
    );
    for name in remove {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            let mut value = previous.as_bytes().to_vec();
            value.extend_from_slice(b", ");
            value.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert("mcp-session-id", HeaderValue::from_static("abc"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "mcp-session-id"]);
        // Nothing hop-by-hop: nothing removed.
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, &HeaderValue::from_static("192.0.2.1"));
        append_forwarded_for(&mut headers, &HeaderValue::from_static("::1"));
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.1, ::1");
    }
}
