//! An `https://` upstream: a TLS server made by the test (rustls, hyper), reached through the
//! real gateway binary. It checks what a remote MCP server behind TLS needs: verification against
//! a configured CA, the URL's host as SNI and as the name checked, HTTP/2 when the server offers
//! it and HTTP/1.1 when not, a client certificate for a server that asks, and a clear 502 for a
//! certificate that must not be trusted.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use e2e_tests::{ALICE, CALL, Gateway, Options, json_reply, post};
use http_body_util::BodyExt;
use hyper::{HeaderMap, Request, StatusCode, Version, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::pki::Pki;

/// What reached the TLS upstream with one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    server_name: Option<String>,
    /// The common name in the client's certificate, if it sent one ("gateway" or "stranger").
    client: Option<&'static str>,
    headers: HeaderMap,
    body: Bytes,
}

/// An MCP server behind TLS, in the test process: offers the `alpn` protocols, asks for a client
/// certificate signed by `client_ca` if given, and answers every request with an empty result.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
}

impl TlsUpstream {
    async fn start(cert: &Path, key: &Path, alpn: &[&str], client_ca: Option<&Path>) -> Self {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (record, count) = (Arc::clone(&seen), Arc::clone(&handshakes));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let connection = stream.get_ref().1;
                    let server_name = connection.server_name().map(str::to_owned);
                    let client = connection.peer_certificates().map(|chain| {
                        let text = String::from_utf8_lossy(chain[0].as_ref()).into_owned();
                        if text.contains("gateway") {
                            "gateway"
                        } else {
                            "stranger"
                        }
                    });
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (record, server_name) = (Arc::clone(&record), server_name.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            record.lock().unwrap().push(Seen {
                                version: parts.version,
                                server_name,
                                client,
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(json_reply(
                                StatusCode::OK,
                                r#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#,
                            ))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            seen,
            handshakes,
        }
    }

    /// The upstream's URL by the name its certificate carries.
    fn url(&self) -> String {
        format!("https://localhost:{}/mcp", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A gateway in front of `upstream`, with `keys` added to its `[upstream]` table.
fn gateway(upstream: &TlsUpstream, keys: &str) -> Gateway {
    Gateway::start_with(
        &upstream.url(),
        Options {
            upstream: keys,
            ..Options::default()
        },
    )
}

fn ca_key(pki: &Pki) -> String {
    format!("ca = \"{}\"", pki.ca().display())
}

async fn call(gateway: &Gateway) -> e2e_tests::Answer {
    post(gateway, &[("authorization", ALICE)], CALL).await
}

#[tokio::test]
async fn calls_reach_an_https_upstream_over_http2_when_it_offers_it_and_http1_when_not() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("upstream", "upstream", &["localhost"]);
    for (alpn, version) in [
        (&["h2", "http/1.1"][..], Version::HTTP_2),
        (&["http/1.1"][..], Version::HTTP_11),
    ] {
        let upstream = TlsUpstream::start(&cert, &key, alpn, None).await;
        let gateway = gateway(&upstream, &ca_key(&pki));
        // Four at once, twice.
        for _ in 0..2 {
            let answers = tokio::join!(
                call(&gateway),
                call(&gateway),
                call(&gateway),
                call(&gateway)
            );
            for answer in [answers.0, answers.1, answers.2, answers.3] {
                assert_eq!(answer.status, StatusCode::OK, "{}", gateway.logs());
            }
        }
        let seen = upstream.seen();
        assert_eq!(seen.len(), 8);
        for request in &seen {
            assert_eq!(request.version, version, "{alpn:?}");
            assert_eq!(request.server_name.as_deref(), Some("localhost"), "SNI");
            assert_eq!(request.headers["x-mcp-caller"], "alice");
            assert!(request.headers.get("authorization").is_none());
            assert_eq!(request.body, CALL);
        }
        if version == Version::HTTP_2 {
            // Each of the gateway's workers (one per core here, 2) keeps one HTTP/2 connection
            // for all its requests, concurrent ones included.
            let handshakes = upstream.handshakes.load(Ordering::SeqCst);
            assert!((1..=2).contains(&handshakes), "{handshakes} connections");
        }
    }
}

#[tokio::test]
async fn an_upstream_certificate_that_must_not_be_trusted_gives_502_saying_why() {
    let pki = Pki::new();
    let (wrong_host, wrong_host_key) = pki.leaf("other", "other", &["other.example"]);
    let (expired, expired_key) = pki.expired_leaf("expired", "expired", &["localhost"]);
    let (good, good_key) = pki.leaf("good", "good", &["localhost"]);
    for (cert, key, keys, reason) in [
        (
            &wrong_host,
            &wrong_host_key,
            ca_key(&pki),
            "not valid for name",
        ),
        (&expired, &expired_key, ca_key(&pki), "expired"),
        // Signed by the test CA, which only `ca` makes trusted: not the system's roots.
        (&good, &good_key, String::new(), "UnknownIssuer"),
    ] {
        let upstream = TlsUpstream::start(cert, key, &["http/1.1"], None).await;
        let gateway = gateway(&upstream, &keys);
        let answer = call(&gateway).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{reason}");
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("TLS with"), "{message}");
        assert!(message.contains(reason), "{reason}: {message}");
        assert!(upstream.seen().is_empty(), "nothing was sent");
    }
}

#[tokio::test]
async fn the_gateway_presents_its_client_certificate_to_an_upstream_that_asks_for_one() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("upstream", "upstream", &["localhost"]);
    let (client_cert, client_key) = pki.leaf("client", "gateway", &["gateway.test"]);
    let upstream = TlsUpstream::start(&cert, &key, &["h2", "http/1.1"], Some(&pki.ca())).await;

    let without = gateway(&upstream, &ca_key(&pki));
    let answer = call(&without).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(upstream.seen().is_empty());

    let keys = format!(
        "{}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        ca_key(&pki),
        client_cert.display(),
        client_key.display()
    );
    let with = gateway(&upstream, &keys);
    let answer = call(&with).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", with.logs());
    assert_eq!(upstream.seen()[0].client, Some("gateway"));
}

#[test]
fn upstream_tls_config_errors_name_the_field() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("a", "a", &["localhost"]);
    let missing = pki.dir.path().join("missing.pem");
    for (url, keys, expected) in [
        (
            "http://127.0.0.1:9/mcp",
            format!("ca = \"{}\"", pki.ca().display()),
            "upstream.ca: only for an https:// url",
        ),
        (
            "https://localhost/mcp",
            format!("ca = \"{}\"", missing.display()),
            "upstream.ca: ",
        ),
        (
            "https://localhost/mcp",
            format!("client_cert = \"{}\"", cert.display()),
            "upstream.client_key: needed with client_cert",
        ),
        ("ftp://localhost/mcp", String::new(), "upstream.url"),
    ] {
        let stderr = crate::refused_config("", url, &keys, "");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        if expected == "upstream.ca: " {
            assert!(stderr.contains("missing.pem"), "{stderr}");
        }
    }
}
