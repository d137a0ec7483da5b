//! TLS ending in the gateway, with real TLS clients against the real gateway binary: curl over
//! HTTP/2, `openssl s_client` for versions, ALPN and SNI, the official MCP SDK client under
//! Node.js, and a rustls client that keeps its connection across a certificate reload. The
//! certificates are made by the test (rcgen): a CA, and leaf certificates signed by it.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use e2e_tests::{
    ALICE, ALICE_KEY, CALL, EverythingServer, Gateway, Options, RecordingUpstream, eventually,
    ok_upstream, sdk_client,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pki::Pki;

/// A gateway serving TLS with `localhost` (CN "first") and `*.mcp.test` (CN "wildcard"), and
/// plain HTTP on `plain_listen`.
fn tls_gateway(pki: &Pki, upstream_url: &str, extra: &str) -> (Gateway, SocketAddr) {
    let (cert, key) = pki.leaf("first", "first", &["localhost"]);
    let (wild_cert, wild_key) = pki.leaf("wildcard", "wildcard", &["*.mcp.test"]);
    let plain = SocketAddr::from(([127, 0, 0, 1], e2e_tests::free_port()));
    let top = format!("plain_listen = \"{plain}\"");
    let sections = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nhandshake_timeout_secs = 1\n\
         [[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        cert.display(),
        key.display(),
        wild_cert.display(),
        wild_key.display()
    );
    let gateway = Gateway::start_with(
        upstream_url,
        Options {
            top: &top,
            sections: &sections,
            ..Options::default()
        },
    );
    (gateway, plain)
}

pub(crate) fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `openssl s_client` with `args`, given no input; its whole output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// Two threads: curl blocks one while the in-process upstream answers on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_calls_a_tool_over_http2_and_tls_and_plain_listen_serves_beside_it() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let pki = Pki::new();
    let (gateway, plain) = tls_gateway(&pki, &upstream.url(), "");
    let url = format!("https://localhost:{}/mcp", gateway.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", gateway.addr.port());
    let ca = pki.ca();
    let authorization = format!("Authorization: {ALICE}");
    let call = [
        "-H",
        &authorization,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "-d",
        CALL,
    ];
    let over_tls = [
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
    ];
    let (out, err) = curl(
        &[
            &over_tls[..],
            &call,
            &["-w", "\n%{http_code} %{http_version}", &url],
        ]
        .concat(),
    );
    assert!(out.ends_with("\n200 2"), "{out}\n{err}\n{}", gateway.logs());
    assert_eq!(upstream.count(), 1);
    let line = gateway
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "request")
        .unwrap();
    assert_eq!(
        line["ip"], "127.0.0.1",
        "the client's own address, as without TLS"
    );

    // Plain HTTP beside it.
    let plain_url = format!("http://{plain}/mcp");
    let (out, _) = curl(&[&call[..], &["-w", "\n%{http_code}", &plain_url]].concat());
    assert!(out.ends_with("\n200"), "{out}");
    // And not on the TLS address: a plain request there is no handshake.
    let (out, _) = curl(&[
        "-w",
        "%{http_code}",
        &format!("http://{}/mcp", gateway.addr),
    ]);
    assert!(!out.ends_with("200"), "{out}");
}

#[test]
fn only_tls_1_3_and_1_2_are_spoken_with_alpn_h2_and_the_certificate_chosen_by_sni() {
    let pki = Pki::new();
    let (gateway, _) = tls_gateway(&pki, "http://127.0.0.1:9/mcp", "");
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let tls13 = s_client(
        gateway.addr,
        &[
            "-tls1_3",
            "-alpn",
            "h2",
            "-servername",
            "localhost",
            "-CAfile",
            ca,
        ],
    );
    assert!(tls13.contains("TLSv1.3"), "{tls13}");
    assert!(tls13.contains("ALPN protocol: h2"), "{tls13}");
    assert!(
        tls13.contains("CN=first") || tls13.contains("CN = first"),
        "{tls13}"
    );
    assert!(tls13.contains("Verify return code: 0 (ok)"), "{tls13}");
    let tls12 = s_client(
        gateway.addr,
        &["-tls1_2", "-alpn", "http/1.1", "-servername", "a.mcp.test"],
    );
    assert!(tls12.contains("TLSv1.2"), "{tls12}");
    assert!(tls12.contains("ALPN protocol: http/1.1"), "{tls12}");
    assert!(
        tls12.contains("CN=wildcard") || tls12.contains("CN = wildcard"),
        "SNI: {tls12}"
    );
    let unknown = s_client(gateway.addr, &["-servername", "other.example"]);
    assert!(
        unknown.contains("CN=first") || unknown.contains("CN = first"),
        "default: {unknown}"
    );
    // The client offers TLS 1.1 (allowed on its side); the server answers with an alert.
    let tls11 = s_client(gateway.addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(tls11.contains("no peer certificate available"), "{tls11}");
    assert!(tls11.contains("alert"), "refused by the server: {tls11}");
}

#[test]
fn the_sdk_client_calls_tools_over_https() {
    let server = EverythingServer::start();
    let pki = Pki::new();
    let (gateway, _) = tls_gateway(&pki, &server.url(), "");
    let url = format!("https://localhost:{}/mcp", gateway.addr.port());
    let ca = pki.ca();
    let report = sdk_client(
        &url,
        Some(ALICE_KEY),
        "call",
        0,
        &[
            ("NODE_EXTRA_CA_CERTS", ca.to_str().unwrap()),
            ("SECRET_ARG", "over tls"),
        ],
    );
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    assert_eq!(report["echo"], "Echo: over tls");
}

/// A rustls client trusting the test CA.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The common name of the certificate the server presents for `name` to a new client (a client
/// that resumed a session would be shown the certificate of that session).
async fn presented_name(addr: SocketAddr, ca: &Path, name: &str) -> Result<String, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let stream = connector.connect(server_name, tcp).await?;
    let certificate = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let text = String::from_utf8_lossy(certificate.as_ref()).into_owned();
    Ok(["first", "second", "wildcard"]
        .into_iter()
        .find(|cn| text.contains(cn))
        .unwrap_or("unknown")
        .to_owned())
}

/// Reads from `stream` until what arrived contains `text`; false if it did not within 5 s.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, text: &str) -> bool {
    let mut arrived = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&arrived).contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => arrived.extend_from_slice(&buffer[..read]),
            _ => return false,
        }
    }
    true
}

// Two threads: the upstream's stream is written from the test while the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_while_a_stream_stays_open_and_a_bad_file_keeps_the_old() {
    let (mut events, upstream) = e2e_tests::streaming_upstream().await;
    let pki = Pki::new();
    let (gateway, _) = tls_gateway(&pki, &upstream.url(), "");
    assert_eq!(
        presented_name(gateway.addr, &pki.ca(), "localhost")
            .await
            .unwrap(),
        "first"
    );

    // A call answered with an SSE stream, open across both reloads.
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca()));
    let mut open = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAuthorization: {ALICE}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{CALL}",
        CALL.len()
    );
    open.write_all(request.as_bytes()).await.unwrap();
    let event = |n: u32| bytes::Bytes::from(format!("data: {{\"n\":{n}}}\n\n"));
    events.send_data(event(1)).await.unwrap();
    assert!(read_until(&mut open, "{\"n\":1}").await, "the first event");

    // A new certificate in the same files, then SIGHUP.
    let (new_cert, new_key) = pki.leaf("second", "second", &["localhost"]);
    std::fs::copy(&new_cert, pki.dir.path().join("first.pem")).unwrap();
    std::fs::copy(&new_key, pki.dir.path().join("first.key")).unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the reload", || {
        gateway.logs().contains("TLS certificates reloaded")
    });
    assert_eq!(
        presented_name(gateway.addr, &pki.ca(), "localhost")
            .await
            .unwrap(),
        "second"
    );
    events.send_data(event(2)).await.unwrap();
    assert!(
        read_until(&mut open, "{\"n\":2}").await,
        "the stream goes on after the reload"
    );

    // A key that does not belong to the certificate: the configuration does not validate, so
    // the reload is refused whole and the certificate in force stays.
    std::fs::copy(
        pki.dir.path().join("wildcard.key"),
        pki.dir.path().join("first.key"),
    )
    .unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the refusal", || gateway.logs().contains("reload refused"));
    assert!(
        gateway
            .logs()
            .contains("does not belong to this certificate"),
        "{}",
        gateway.logs()
    );
    assert_eq!(
        presented_name(gateway.addr, &pki.ca(), "localhost")
            .await
            .unwrap(),
        "second"
    );
    events.send_data(event(3)).await.unwrap();
    assert!(
        read_until(&mut open, "{\"n\":3}").await,
        "and after the refusal"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_and_counted_against_its_source() {
    let pki = Pki::new();
    let (gateway, _) = tls_gateway(
        &pki,
        "http://127.0.0.1:9/mcp",
        "[blocking]\nmalformed = 2\n",
    );
    let staller: std::net::IpAddr = "127.0.0.12".parse().unwrap();
    for _ in 0..2 {
        let mut stream = e2e_tests::connect_from(staller, gateway.addr)
            .await
            .unwrap();
        let started = Instant::now();
        let mut buffer = [0u8; 64];
        // Nothing sent: the gateway closes it after handshake_timeout_secs (1 s).
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    eventually("the staller is blocked", || {
        gateway
            .audit_lines()
            .iter()
            .any(|l| l["event"] == "block" && l["ip"] == "127.0.0.12" && l["reason"] == "malformed")
    });
}

#[test]
fn tls_config_errors_name_the_field_and_the_file() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("a", "a", &["localhost"]);
    let (_, other_key) = pki.leaf("b", "b", &["localhost"]);
    for (sections, expected) in [
        (format!("[tls]\ncert = \"{}\"\n", cert.display()), "tls.key"),
        (
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                other_key.display()
            ),
            "does not belong to this certificate",
        ),
        (
            format!(
                "[tls]\ncert = \"{}/missing.pem\"\nkey = \"{}\"\n",
                pki.dir.path().display(),
                other_key.display()
            ),
            "missing.pem",
        ),
        (
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_auth = \"optional\"\n",
                cert.display(),
                key.display()
            ),
            "tls.client_auth: needs tls.client_ca",
        ),
    ] {
        let stderr = crate::refused_config("", "http://127.0.0.1:9/mcp", "", &sections);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
